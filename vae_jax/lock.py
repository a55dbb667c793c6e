"""One writer per work directory: `WorkdirLock`, an exclusive lock on `<workdir>/.lock`.

A training run holds the lock for its whole life; a second run in the same work directory is refused at once with
`RunLockedError`, which names the holder's pid and host. The lock is a `fcntl.flock` on the open file, so the kernel
releases it when its holder exits, however it ends (a killed run never leaves a stale lock; the file itself stays and
is reused). Readers (`eval`, `gaps`, `sample`, `compare`) take no lock: they never write checkpoints.

The file holds the holder's `{"pid": ..., "host": ...}` as JSON, for the message only. The lock is as good as the
file system's `flock`: local disks and NFS (where Linux maps it to byte-range locks that other clients see).
"""

from __future__ import annotations

import fcntl
import json
import os
import socket
from pathlib import Path
from types import TracebackType

from vae_jax.errors import RunLockedError, StorageError, os_cause

LOCK_NAME = ".lock"


class WorkdirLock:
    """Holds the exclusive lock of a work directory, as a context manager:

        with WorkdirLock(workdir):
            ...  # the only process writing checkpoints and metrics in workdir

    Entering creates the work directory if needed, raises `RunLockedError` if another process (or another
    `WorkdirLock` of this one) holds it, and `StorageError` if the lock file cannot be created or written (a read-only
    or unwritable work directory: the run could not write anything there either). Leaving releases it.
    """

    def __init__(self, workdir: str | os.PathLike) -> None:
        """Names the lock of `workdir`; `acquire` (or entering the `with` block) takes it."""
        self.workdir = Path(workdir)
        self.path = self.workdir / LOCK_NAME
        self._fd: int | None = None

    @property
    def held(self) -> bool:
        """Whether this object holds the lock."""
        return self._fd is not None

    def acquire(self) -> None:
        """Takes the lock without waiting, and writes this process's pid and host into the lock file.

        Raises:
            RunLockedError: another holder has it.
            StorageError: the work directory or the lock file cannot be created or written.
        """
        if self._fd is not None:
            return
        try:
            self.workdir.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        except OSError as error:
            raise StorageError(f"cannot create the lock file {self.path} ({os_cause(error)}); the run needs a "
                               "writable work directory, nothing was written") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise RunLockedError(f"work directory {self.workdir} is in use by another run ({self._holder()}); "
                                 "wait for it to finish or stop it, or use another --workdir (eval, gaps, sample "
                                 "and compare need no lock)") from None
        try:
            os.ftruncate(fd, 0)
            os.pwrite(fd, json.dumps({"pid": os.getpid(), "host": socket.gethostname()}).encode() + b"\n", 0)
        except OSError as error:
            os.close(fd)
            raise StorageError(f"cannot write the lock file {self.path} ({os_cause(error)}); the run needs a "
                               "writable work directory, nothing was written") from None
        self._fd = fd

    def release(self) -> None:
        """Releases the lock (if held). The file stays: removing it could let two runs lock two different files."""
        if self._fd is not None:
            fd, self._fd = self._fd, None
            os.close(fd)

    def _holder(self) -> str:
        """`pid P on host H` of the holder, from the lock file (which it may not have written yet)."""
        try:
            holder = json.loads(self.path.read_text())
            return f"pid {int(holder['pid'])} on host {holder['host']}"
        except (OSError, ValueError, KeyError, TypeError):
            return "a process that has not written its pid yet"

    def __enter__(self) -> WorkdirLock:
        self.acquire()
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None,
                 traceback: TracebackType | None) -> None:
        self.release()
