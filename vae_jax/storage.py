"""I/O faults in what Orbax and TensorStore raise and log, for `checkpoint` to report them as `StorageError`.

Orbax raises an `OSError` for the folders and small files it writes itself (e.g. `[Errno 30] Read-only file system:
'.../checkpoints/2.orbax-checkpoint-tmp'`), and TensorStore, which writes the arrays, a `ValueError` that carries the
system's error code, e.g. `RESOURCE_EXHAUSTED: Error writing "opt_state..." in OCDBT database at local file "...":
Failed to write 2706136 bytes to file 4: No space left on device [os_error_code='28']`. A save that fails in the
background is also logged by Orbax's threads, a traceback each, before the failure reaches the caller.
"""

from __future__ import annotations

import logging
import os
import re

from vae_jax.errors import first_line, os_cause

_OS_ERROR_CODE = re.compile(r"os_error_code='?(\d+)")
# TensorStore's statuses of a failed write that carry no error code.
_IO_STATUS = ("RESOURCE_EXHAUSTED", "PERMISSION_DENIED")
ORBAX_LOGGER = "absl"  # Orbax logs through absl, whose records go to this Python logger


def io_fault_cause(error: BaseException | None) -> str | None:
    """The cause of an I/O fault in words (e.g. "No space left on device"), or None if `error` is no I/O fault.

    An `OSError`, or TensorStore's `ValueError` of a failed write, in `error` or the chain of its causes and contexts.
    """
    for _ in range(8):  # chains are short; the bound guards against a cycle
        if error is None:
            return None
        if isinstance(error, OSError):
            return os_cause(error)
        if isinstance(error, ValueError):
            code = _OS_ERROR_CODE.search(str(error))
            if code:
                return os.strerror(int(code.group(1)))
            if str(error).startswith(_IO_STATUS):
                return first_line(error)
        error = error.__cause__ or error.__context__
    return None


class _DropLoggedIoFaults(logging.Filter):
    """Drops the records of Orbax's code that carry the traceback of an I/O fault."""

    def filter(self, record: logging.LogRecord) -> bool:
        error = record.exc_info[1] if record.exc_info else None
        return not (f"{os.sep}orbax{os.sep}" in record.pathname and io_fault_cause(error) is not None)


_DROP_LOGGED_IO_FAULTS = _DropLoggedIoFaults()


def drop_logged_io_faults() -> None:
    """Stops Orbax from logging tracebacks of I/O faults (once for the process; calling again does nothing).

    `checkpoint.Checkpointer` raises each of these faults as a one-line `StorageError` at the next `save` or at
    `close`, so the tracebacks would only bury that line; Orbax's other records are left alone.
    """
    logger = logging.getLogger(ORBAX_LOGGER)
    if _DROP_LOGGED_IO_FAULTS not in logger.filters:
        logger.addFilter(_DROP_LOGGED_IO_FAULTS)
