"""The kernel process (`python -m flight_kernel`, configured by KERNEL_* variables).

When its parent passes `KERNEL_ANNOUNCE_FD`, the kernel writes one JSON line there once it
listens, `{"pid", "kernel_id", "location", "channel"}` (its Flight location and its
private channel's socket, `flight_kernel.channel`), or `{"error"}` when it cannot start: the parent
never has to trust whatever answers on a port.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import os
import shutil
import signal
import socket
import stat
from types import FrameType
from typing import Any

from flight_kernel import interrupts
from flight_kernel.actions import handle
from flight_kernel.channel import ChannelServer
from flight_kernel.context import install_capture
from flight_kernel.fdcapture import FdCapture
from flight_kernel.journal import StartJournal
from flight_kernel.kernel import Kernel
from flight_kernel.requests import InterruptRequest
from flight_kernel.server import KernelFlightServer
from flight_kernel.settings import Settings

logger = logging.getLogger("flight_kernel")

ANNOUNCE_FD = "KERNEL_ANNOUNCE_FD"
TOKEN_FD = "KERNEL_TOKEN_FD"  # the parent writes the auth token there, never into the env
KERNEL_ID = "KERNEL_ID"
JOURNAL_FD = "KERNEL_JOURNAL_FD"  # a `journal.StartJournal` shared with the parent
SPOOL_DIR = "KERNEL_SPOOL_DIR"  # where printed output is mirrored (`flight_kernel.spool`)
FLOW_ID = "KERNEL_FLOW_ID"  # the flow a kernel serves; "spare": none yet; unset: every flow
TERM_FLUSH_S = 2.0  # how long a stopped kernel may go on persisting artifacts


def _announce(message: dict[str, Any]) -> None:
    fd = os.environ.pop(ANNOUNCE_FD, None)
    if fd is None:
        return
    with os.fdopen(int(fd), "w") as pipe:
        pipe.write(json.dumps(message) + "\n")


def _forget_kernel_sockets(port: int, channel: str) -> None:
    """In a child that user code forks: close the kernel's server sockets (the listening ones
    and their connections: on the Flight port, or the channel's path), so that a child
    outliving the kernel never keeps a request hanging or the port taken."""
    for name in os.listdir("/proc/self/fd"):
        fd = int(name)
        with contextlib.suppress(OSError):
            if not stat.S_ISSOCK(os.fstat(fd).st_mode):
                continue
            with socket.socket(fileno=os.dup(fd)) as sock:
                if sock.family == socket.AF_UNIX:
                    ours = sock.getsockname() == channel
                else:
                    ours = sock.family in (socket.AF_INET, socket.AF_INET6) and (
                        sock.getsockname()[1] == port
                    )
            if ours:
                os.close(fd)


def _settings() -> Settings:
    """Settings from the environment; the token from the parent's pipe, if it sent one. The
    token leaves the environment either way: user code and its children never see it."""
    settings = Settings.from_env()
    os.environ.pop("KERNEL_AUTH_TOKEN", None)
    fd = os.environ.pop(TOKEN_FD, None)
    if fd is not None:
        with os.fdopen(int(fd), "r") as pipe:
            token = pipe.read()
        settings = dataclasses.replace(settings, auth_token=token or None)
    return settings


def _flow() -> tuple[int | None, bool]:
    """The flow this kernel serves (None: every flow), and whether it is a spare."""
    raw = os.environ.pop(FLOW_ID, "")
    if raw == "spare":
        return None, True
    return (int(raw) if raw else None), False


def main() -> None:
    os.environ.setdefault("MPLBACKEND", "Agg")  # figures render to PNG displays, never a window
    settings = _settings()
    flow_id, spare = _flow()
    kernel = Kernel(settings, kernel_id=os.environ.pop(KERNEL_ID, ""), flow_id=flow_id, spare=spare)
    capture = FdCapture(kernel.executor.sole_running)  # before logging takes sys.stderr
    kernel.executor.before_end = capture.drain
    logging.basicConfig(
        level=settings.log_level,
        format="%(asctime)s kernel %(levelname)s %(name)s: %(message)s",
    )
    install_capture()
    try:
        server = KernelFlightServer(kernel)
    except Exception as exc:
        _announce({"error": f"cannot listen on Flight port {settings.flight_port}: {exc}"})
        raise SystemExit(2) from None
    channel = ChannelServer(
        lambda name, body, send: handle(kernel, name, body, send), settings.auth_token
    )

    def interrupt() -> None:
        # A SIGINT is an interrupt, as in a terminal: it stops the running executions, never
        # the kernel. Any other signal that ends the kernel ends it (the supervisor reports it
        # as a death and restarts it; it stops the kernel itself with SIGTERM).
        reason = "Interrupted: the kernel process received SIGINT"
        kernel.executor.interrupt(InterruptRequest(), reason)

    def terminate(signum: int, frame: FrameType | None) -> None:
        # The supervisor stops a kernel with SIGTERM: what is still being persisted gets a
        # moment to reach the store, then the signal ends the kernel as it would have.
        kernel.artifacts.flush(TERM_FLUSH_S)
        shutil.rmtree(channel.directory, ignore_errors=True)
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        os.kill(os.getpid(), signal.SIGTERM)

    os.register_at_fork(after_in_child=lambda: _forget_kernel_sockets(server.port, channel.path))
    interrupts.on_interrupt(interrupt)
    kernel.executor.cancel_queries = interrupts.cancel_queries
    signal.signal(signal.SIGTERM, terminate)
    journal = os.environ.pop(JOURNAL_FD, None)
    if journal is not None:  # tells the parent which executions started, should this die
        kernel.executor.on_start = StartJournal(int(journal)).mark
    kernel.executor.spool_dir = os.environ.pop(SPOOL_DIR, None)  # and what they printed
    _announce(
        {
            "pid": os.getpid(),
            "kernel_id": kernel.kernel_id,
            "location": kernel.location,
            "channel": channel.path,
        }
    )
    logger.info("kernel serving Flight on %s:%s", settings.host, server.port)
    # The server serves from its own threads since it was made. Not `server.serve()`: it
    # installs handlers that shut the server down on SIGINT and SIGTERM, in place of ours.
    # The main thread only waits, in Python, so that the handlers above run. `pause`, not a
    # lock's wait: polars' SIGINT handler (which chains ours) is installed with SA_RESTART,
    # and a lock's wait restarted after the signal never gets to run our handler.
    while True:
        signal.pause()


if __name__ == "__main__":
    main()
