"""How the control plane reaches a kernel: the `Connection` protocol and its Flight form.

Whatever the transport, a call returns the kernel's raw JSON answer or raises a
`KernelError` subclass: `ConnectionLost` when the call did not reach the kernel or the
kernel went away while answering, `DeadlineExceeded` when it did not answer in time.
"""

from __future__ import annotations

import json
from typing import Any, Protocol

import pyarrow.flight as flight

from flight_kernel.auth import call_options
from flight_kernel.flight_errors import client_errors


class Connection(Protocol):
    """One kernel's actions: JSON in, raw JSON out."""

    def call(
        self, action: str, body: dict[str, Any] | None = None, timeout: float | None = None
    ) -> bytes:
        """Run an action; return its raw JSON result."""
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
        self, action: str, body: dict[str, Any] | None = None, timeout: float | None = None
    ) -> bytes:
        payload = json.dumps(body or {}).encode()
        options = self._options if timeout is None else call_options(self._token, timeout)
        with client_errors(f"kernel action {action!r}"):
            results = list(self._client.do_action(flight.Action(action, payload), options))
        return results[0].body.to_pybytes() if results else b"null"

    def close(self) -> None:
        self._client.close()


def call_json(
    conn: Connection, action: str, body: dict[str, Any] | None = None, timeout: float | None = None
) -> Any:
    """`conn.call`, decoded."""
    return json.loads(conn.call(action, body, timeout))
