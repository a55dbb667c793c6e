"""Exceptions that the library raises for bad input; the CLI turns them into one-line messages."""


class VaeError(Exception):
    """Base class of every error a user can fix: the message names the problem and the fix."""


class ConfigError(VaeError, ValueError):
    """An unknown preset, an unknown field or a value out of range in a config."""


class DataError(VaeError):
    """A dataset that cannot be found, prepared or read, or arrays of the wrong shape."""


class CheckpointError(VaeError):
    """A work directory without usable checkpoints."""


class DivergenceError(VaeError):
    """Training produced a non-finite loss or gradient; the message names the epoch and step."""


class StorageError(VaeError):
    """An I/O fault (a full disk, a read-only or missing directory, a permission): the one-line message names the path
    and the cause (the system's `strerror`) and what was not written; nothing else was lost."""


class RunLockedError(VaeError):
    """A second writer in a work directory: the message names the run holding it (pid and host) and the fix."""


def first_line(error: BaseException, limit: int = 200) -> str:
    """The first line of an exception's message (its type name if empty), cut to `limit` characters."""
    return (str(error).strip().splitlines() or [type(error).__name__])[0][:limit]


def os_cause(error: OSError) -> str:
    """What an `OSError` says went wrong, e.g. "No space left on device" (its `strerror`, else its first line)."""
    return error.strerror or first_line(error)
