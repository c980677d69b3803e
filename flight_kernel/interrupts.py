"""SIGINT in a kernel process: an interrupt of its executions, and how polars queries are
cancelled.

polars cancels its running queries when the process receives SIGINT, then calls the
handler it found installed when it was imported. So the kernel installs its handler first,
before anything imports polars, and never replaces it (replacing it would unhook polars):
what a SIGINT does is decided here, when it arrives. A SIGINT the kernel sends itself to
cancel the queries of an interrupted execution has done its work once polars saw it; any
other SIGINT (user code signalling its own process, a terminal) interrupts every running
execution, as in a terminal.
"""

from __future__ import annotations

import os
import signal
import threading
from collections.abc import Callable
from types import FrameType

_lock = threading.Lock()
_own = False  # a SIGINT sent by `cancel_queries` and not handled yet
_on_interrupt: Callable[[], None] | None = None


def _handle(signum: int, frame: FrameType | None) -> None:
    global _own
    with _lock:
        own, _own = _own, False
        react = _on_interrupt
    if not own and react is not None:
        react()


def install() -> None:
    """Take SIGINT; call before polars is imported."""
    signal.signal(signal.SIGINT, _handle)


def on_interrupt(react: Callable[[], None]) -> None:
    """What a SIGINT from elsewhere does."""
    global _on_interrupt
    with _lock:
        _on_interrupt = react


def cancel_queries() -> None:
    """Cancel every polars query running in this process (signals coalesce: one SIGINT
    pending at a time is enough)."""
    global _own
    with _lock:
        _own = True
    os.kill(os.getpid(), signal.SIGINT)
