"""SIGTERM (`baton jobs stop`, a scheduler's preemption) becomes an exception in the driver.

Unwinding runs every `finally` on the way out: worker groups killed, placement groups released,
metrics flushed. `ray.init` installs its own SIGTERM handler (it ends the process from C++,
skipping all of that), so the driver installs this one again after Ray has started.
"""
from __future__ import annotations

import signal
import threading


class StopRequested(BaseException):
    """Not an Exception: recovery and `except Exception` blocks must not swallow a stop."""


def _raise_stop(signum: int, frame: object) -> None:
    signal.signal(signal.SIGTERM, signal.SIG_DFL)  # a second SIGTERM ends the process at once
    raise StopRequested()


def install() -> None:
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, _raise_stop)
