"""The private channel: how the control process calls a kernel's JSON actions.

A Unix socket in a directory only the service's user can enter, instead of a Flight action
over loopback TCP: a call costs a few tens of microseconds here against 0.25 to 0.6 ms for
a Flight action (gRPC's machinery on both ends). Tables still move over the kernel's Flight
port. Each message is a frame: a 4-byte big-endian length, then the bytes. A connection
opens with one frame holding the token (empty without one); then each call is two frames,
the action's name and its JSON body, and its answer one frame: `0` and the JSON result, or
`1` and `{"kind", "message"}` of the refusal (`errors.decode_error` rebuilds it). A
streaming execution's events come before its answer, a frame each: `2` and the event's JSON.
"""

from __future__ import annotations

import hmac
import json
import logging
import os
import shutil
import socket
import socketserver
import struct
import tempfile
import threading
from collections.abc import Callable

from flight_kernel.errors import KernelError

logger = logging.getLogger(__name__)

_LENGTH = struct.Struct(">I")
# Taken now: user code that breaks `json.dumps` (the kernel's actions then fail) must still
# get its refusal said, so that the supervisor hears the kernel is broken and restarts it.
_dumps = json.dumps
OK, REFUSED, EVENT = b"0", b"1", b"2"
SOCKET_NAME = "channel.sock"


def read_frame(sock: socket.socket) -> bytes:
    """One frame; `EOFError` when the peer closed the connection between frames."""
    head = _read_exactly(sock, _LENGTH.size)
    return _read_exactly(sock, _LENGTH.unpack(head)[0])


def _read_exactly(sock: socket.socket, n: int) -> bytes:
    chunks = []
    while n:
        chunk = sock.recv(min(n, 1 << 20))
        if not chunk:
            raise EOFError("the peer closed the channel")
        chunks.append(chunk)
        n -= len(chunk)
    return b"".join(chunks)


def write_frames(sock: socket.socket, *frames: bytes) -> None:
    sock.sendall(b"".join(_LENGTH.pack(len(f)) + f for f in frames))


def refusal(exc: KernelError) -> bytes:
    return REFUSED + _dumps({"kind": exc.kind, "message": exc.message}).encode()


# action name, JSON body, where to send events before the answer -> JSON result
Handler = Callable[[str, bytes, Callable[[bytes], None]], bytes]


class ChannelServer:
    """Serves `handle` on a Unix socket in a fresh private directory, a thread per
    connection (the control process opens one per call in flight)."""

    def __init__(self, handle: Handler, token: str | None) -> None:
        self.directory = tempfile.mkdtemp(prefix="kernel-channel-")  # mode 0700
        self.path = os.path.join(self.directory, SOCKET_NAME)
        expected = (token or "").encode()

        class Connection(socketserver.BaseRequestHandler):
            def handle(self) -> None:
                sock: socket.socket = self.request
                try:
                    if not hmac.compare_digest(read_frame(sock), expected):
                        return  # not the control process: no answer at all

                    def send(event: bytes) -> None:
                        write_frames(sock, EVENT + event)

                    while True:
                        action, body = read_frame(sock), read_frame(sock)
                        name = action.decode(errors="replace")
                        write_frames(sock, _answer(handle, name, body, send))
                except (EOFError, OSError):  # the control process closed it, or went away
                    return

        self._server = socketserver.ThreadingUnixStreamServer(self.path, Connection)
        self._server.daemon_threads = True
        self._thread = threading.Thread(
            target=self._server.serve_forever, name="channel", daemon=True
        )
        self._thread.start()

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        shutil.rmtree(self.directory, ignore_errors=True)


def _answer(handle: Handler, action: str, body: bytes, send: Callable[[bytes], None]) -> bytes:
    try:
        return OK + handle(action, body, send)
    except KernelError as exc:
        return refusal(exc)
    except Exception as exc:  # a bug of the kernel: said, never a dropped connection
        logger.exception("action %r failed", action)
        return refusal(KernelError(f"action {action!r} failed: {type(exc).__name__}: {exc}"))
