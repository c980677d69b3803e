"""How the control plane reaches a kernel: the `Connection` protocol and its Flight form.

Whatever the transport, a call returns the kernel's raw JSON answer or raises a
`KernelError` subclass: `ConnectionLost` when the call did not reach the kernel or the
kernel went away while answering, `DeadlineExceeded` when it did not answer in time. The
data calls (`read`, `write`, `infos`) serve the artifacts that only the kernel holds (live
objects not persisted yet); the store serves everything else without asking a kernel.
"""

from __future__ import annotations

import json
import queue
import shutil
import socket
import time
from collections.abc import Callable
from typing import Any, Protocol

import pyarrow as pa
import pyarrow.flight as flight

from flight_kernel.auth import call_options
from flight_kernel.channel import EVENT, OK, read_frame, write_frames
from flight_kernel.errors import ConnectionLost, DeadlineExceeded, decode_error
from flight_kernel.flight_errors import client_errors

OnEvent = Callable[[bytes], None]  # told each event of a streaming execution (raw JSON)


class Connection(Protocol):
    """One kernel's actions: JSON in, raw JSON out."""

    def call(
        self,
        action: str,
        body: dict[str, Any] | None = None,
        timeout: float | None = None,
        on_event: OnEvent | None = None,
    ) -> bytes:
        """Run an action; return its raw JSON result. A streaming execution's events, sent
        before it, go to `on_event` as they come."""
        ...

    def read(self, path: str) -> flight.FlightStreamReader:
        """`do_get` of a path; a refusal is raised here, before the first batch."""
        ...

    def write(self, path: str, table: pa.Table) -> None:
        """`do_put` of a whole table to a path."""
        ...

    def infos(self, prefix: str, timeout: float | None = None) -> list[flight.FlightInfo]:
        """`list_flights` with a path prefix."""
        ...

    def info(self, path: str, timeout: float | None = None) -> flight.FlightInfo:
        """`get_flight_info` of a path."""
        ...

    def close(self) -> None: ...


class KernelConnection:
    """Calls a kernel's JSON actions over one Flight client (thread-safe)."""

    def __init__(self, location: str, token: str | None = None) -> None:
        self.location = location
        self._token = token
        self._client = flight.connect(location)
        self._options = call_options(token)

    def call(
        self,
        action: str,
        body: dict[str, Any] | None = None,
        timeout: float | None = None,
        on_event: OnEvent | None = None,
    ) -> bytes:
        payload = json.dumps(body or {}).encode()
        options = self._options if timeout is None else call_options(self._token, timeout)
        answer = b"null"
        with client_errors(f"kernel action {action!r}"):
            for result in self._client.do_action(flight.Action(action, payload), options):
                data = result.body.to_pybytes()
                if data[:1] != EVENT:  # the answer (JSON), after a stream's events
                    answer = data
                elif on_event is not None:
                    on_event(data[1:])
        return answer

    def _timed(self, timeout: float | None) -> flight.FlightCallOptions:
        return self._options if timeout is None else call_options(self._token, timeout)

    def read(self, path: str) -> flight.FlightStreamReader:
        with client_errors(f"do_get {path}"):
            reader = self._client.do_get(flight.Ticket(path.encode()), self._options)
            reader.schema  # noqa: B018 -- waits for the answer: a refusal raises here
        return reader

    def write(self, path: str, table: pa.Table) -> None:
        descriptor = flight.FlightDescriptor.for_path(*path.split("/"))
        with client_errors(f"do_put {path}"):
            writer, _ = self._client.do_put(descriptor, table.schema, self._options)
            writer.write_table(table)
            writer.close()

    def infos(self, prefix: str, timeout: float | None = None) -> list[flight.FlightInfo]:
        with client_errors(f"list_flights {prefix!r}"):
            return list(self._client.list_flights(prefix.encode(), self._timed(timeout)))

    def info(self, path: str, timeout: float | None = None) -> flight.FlightInfo:
        descriptor = flight.FlightDescriptor.for_path(*path.split("/"))
        with client_errors(f"get_flight_info {path}"):
            return self._client.get_flight_info(descriptor, self._timed(timeout))

    def close(self) -> None:
        self._client.close()


class ChannelConnection(KernelConnection):
    """A local kernel: its actions over its private channel (a Unix socket, one connection
    per call in flight, kept for the next), its data over Flight."""

    def __init__(self, channel: str, location: str, token: str | None = None) -> None:
        super().__init__(location, token)
        self.channel = channel
        self._hello = (token or "").encode()
        self._idle: queue.SimpleQueue[socket.socket] = queue.SimpleQueue()
        self._closed = False

    def _socket(self) -> socket.socket:
        try:
            return self._idle.get_nowait()
        except queue.Empty:
            pass
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.connect(self.channel)
            write_frames(sock, self._hello)
        except OSError as exc:
            sock.close()
            raise ConnectionLost(f"the kernel's channel {self.channel} refused: {exc}") from None
        return sock

    def call(
        self,
        action: str,
        body: dict[str, Any] | None = None,
        timeout: float | None = None,
        on_event: OnEvent | None = None,
    ) -> bytes:
        payload = json.dumps(body or {}).encode()
        sock = self._socket()
        deadline = None if timeout is None else time.monotonic() + timeout
        try:
            sock.settimeout(timeout)
            write_frames(sock, action.encode(), payload)
            answer = read_frame(sock)
            while answer[:1] == EVENT:  # a streaming execution's, before its answer
                if on_event is not None:
                    on_event(answer[1:])
                if deadline is not None:
                    sock.settimeout(max(deadline - time.monotonic(), 1e-3))
                answer = read_frame(sock)
        except TimeoutError:  # a late answer would desynchronize the connection: drop it
            sock.close()
            raise DeadlineExceeded(
                f"kernel action {action!r} did not answer within {timeout:g} s"
            ) from None
        except (OSError, EOFError) as exc:
            sock.close()
            raise ConnectionLost(
                f"kernel action {action!r}: the kernel went away ({exc})"
            ) from None
        if self._closed:
            sock.close()
        else:
            self._idle.put(sock)
        if answer[:1] == OK:
            return answer[1:]
        refused = json.loads(answer[1:])
        raise decode_error(refused.get("kind"), str(refused.get("message", "")))

    def close(self) -> None:
        self._closed = True
        while True:
            try:
                self._idle.get_nowait().close()
            except queue.Empty:
                break
        super().close()

    def remove(self) -> None:
        """Remove the channel's directory (its kernel is dead: nobody else will)."""
        shutil.rmtree(self.channel.rsplit("/", 1)[0], ignore_errors=True)


def call_json(
    conn: Connection, action: str, body: dict[str, Any] | None = None, timeout: float | None = None
) -> Any:
    """`conn.call`, decoded."""
    return json.loads(conn.call(action, body, timeout))
