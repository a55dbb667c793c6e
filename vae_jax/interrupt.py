"""A graceful stop: SIGTERM (a cluster's or a cloud's preemption) and SIGINT (Ctrl-C) ask a run to stop at the next
check between two pieces of its work, which then keeps a checkpoint of all it finished and exits with
`128 + signal` (143 for SIGTERM, 130 for SIGINT). A second signal ends the process at once.

Python runs a signal handler only between two bytecodes of the main thread, never inside a compiled JAX call: the
time a stop takes is the time of one piece of work, which `fit`'s `stop_check_steps` bounds.
"""

from __future__ import annotations

import signal
import threading
from types import FrameType

from vae_jax.errors import VaeError

SIGNALS = (signal.SIGTERM, signal.SIGINT)


class StopRequested(VaeError):
    """A run stopped on a signal after keeping a checkpoint of what it finished; `exit_code` is `128 + signal`."""

    def __init__(self, message: str, signal_number: int) -> None:
        super().__init__(message)
        self.exit_code = 128 + signal_number


class StopSignals:
    """While entered (in the main thread), the first SIGTERM or SIGINT is recorded in `received` instead of ending
    the process, and the default handlers come back, so that a second signal ends it at once. On exit the previous
    handlers are restored. Elsewhere than in the main thread it records nothing."""

    def __init__(self) -> None:
        self.received: int | None = None
        self._previous: dict[int, object] = {}

    def _handle(self, signal_number: int, frame: FrameType | None) -> None:
        self.received = signal_number
        for number in SIGNALS:
            signal.signal(number, signal.SIG_DFL)

    def __enter__(self) -> StopSignals:
        if threading.current_thread() is threading.main_thread():
            self._previous = {number: signal.signal(number, self._handle) for number in SIGNALS}
        return self

    def __exit__(self, *exc_info: object) -> None:
        for number, handler in self._previous.items():
            signal.signal(number, handler)

    @property
    def name(self) -> str:
        """The received signal's name, e.g. `SIGTERM`."""
        return signal.Signals(self.received).name if self.received else ""
