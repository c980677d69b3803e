"""Output written straight to file descriptors 1 and 2: subprocesses, `os.system`, C code.

A kernel process replaces fds 1 and 2 with pipes; a reader thread per pipe hands what
arrives to the execution that is running (when exactly one is: a file descriptor does not
say which thread wrote to it), else to the kernel's own log. The kernel itself writes to
copies of the original descriptors, so its log never lands in an execution's output.
"""

from __future__ import annotations

import array
import codecs
import ctypes
import fcntl
import os
import select
import sys
import termios
import threading
import time
from collections.abc import Callable
from typing import TextIO

from flight_kernel.context import CappedBuffer, ExecutionContext

_libc = ctypes.CDLL(None)
DRAIN_LIMIT_S = 0.2  # how long the end of an execution waits for output still in a pipe
_POLL_S = 0.001


def _pending(fd: int) -> int:
    """Bytes waiting in a pipe."""
    count = array.array("i", [0])
    fcntl.ioctl(fd, termios.FIONREAD, count)
    return int(count[0])


class _Pipe:
    """One captured descriptor: its pipe and the thread that empties it."""

    def __init__(
        self,
        fd: int,
        which: str,
        owner: Callable[[], ExecutionContext | None],
        fallback: TextIO,
    ) -> None:
        self._which = which
        self._owner = owner
        self._fallback = fallback
        self._busy = threading.Lock()
        self._decoder = codecs.getincrementaldecoder("utf-8")("replace")
        self._read, write = os.pipe()
        os.dup2(write, fd)  # inheritable, as fds 1 and 2 must be for subprocesses
        os.close(write)
        threading.Thread(target=self._pump, name=f"fd{fd}-capture", daemon=True).start()

    def _pump(self) -> None:
        # Reading happens only under `_busy`: so `drain` knows that bytes no longer in the pipe
        # have been delivered once it can take the lock.
        while True:
            select.select([self._read], [], [])
            with self._busy:
                chunk = os.read(self._read, 65536)  # readable: returns at once
                if not chunk:
                    return
                self._deliver(self._decoder.decode(chunk))  # a character may span chunks

    def _deliver(self, text: str) -> None:
        ctx = self._owner()
        target: TextIO | CappedBuffer = self._fallback
        if ctx is not None and not ctx.done:
            target = ctx.stdout if self._which == "stdout" else ctx.stderr
        target.write(text)
        if target is self._fallback:
            self._fallback.flush()

    def drain(self, deadline: float) -> None:
        """Wait until what was written so far has been delivered (bounded)."""
        while time.monotonic() < deadline:
            if _pending(self._read) == 0:
                with self._busy:  # a chunk being delivered is delivered first
                    if _pending(self._read) == 0:
                        return
            time.sleep(_POLL_S)


class FdCapture:
    """Fds 1 and 2 of this process, captured; `drain` before an execution's result."""

    def __init__(self, owner: Callable[[], ExecutionContext | None]) -> None:
        # The kernel's own streams (sys.stdout/err and what logs through them) keep the
        # original descriptors, under new numbers.
        sys.stdout.flush()
        sys.stderr.flush()
        out = os.fdopen(os.dup(1), "w", buffering=1, encoding="utf-8", errors="replace")
        err = os.fdopen(os.dup(2), "w", buffering=1, encoding="utf-8", errors="replace")
        sys.stdout, sys.stderr = out, err
        self._pipes = [_Pipe(1, "stdout", owner, out), _Pipe(2, "stderr", owner, err)]

    def drain(self) -> None:
        _libc.fflush(None)  # what C code of this process printf'd is still in stdio's buffer
        deadline = time.monotonic() + DRAIN_LIMIT_S
        for pipe in self._pipes:
            pipe.drain(deadline)  # at once when the pipe is empty and its reader idle
