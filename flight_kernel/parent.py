"""A kernel dies with the control process that started it, even one killed outright.

The kernel asks for SIGKILL when its parent goes (Linux `PR_SET_PDEATHSIG`), first thing
after it starts: asking in the child between fork and exec would need a `preexec_fn`,
which makes `subprocess` fork the whole control process instead of using vfork (30 ms and
a stalled thread per kernel start). A parent that died before the request is caught by
comparing the parent with the pid the control process passed (`KERNEL_PARENT_PID`). The
signal fires when the *thread* that started the kernel ends: the control process starts
kernels from long-lived threads.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal

PARENT_PID = "KERNEL_PARENT_PID"
_PR_SET_PDEATHSIG = 1


def die_with_parent() -> None:
    """Ask to be killed with the parent; exit at once when it is gone already."""
    expected = os.environ.pop(PARENT_PID, "")
    if not expected:  # not started by a control process (a test, by hand)
        return
    with contextlib.suppress(Exception):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
    if os.getppid() != int(expected):  # it died before the request took effect
        os._exit(1)
