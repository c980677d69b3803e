"""Bearer tokens on Flight: the call options a client sends, the middleware a server checks."""

from __future__ import annotations

import hmac
from typing import Any

import pyarrow.flight as flight


def call_options(token: str | None, timeout: float | None = None) -> flight.FlightCallOptions:
    """Options carrying `authorization: Bearer <token>` (none without a token)."""
    headers = [(b"authorization", f"Bearer {token}".encode())] if token else []
    return flight.FlightCallOptions(headers=headers, timeout=timeout)


class BearerAuthMiddlewareFactory(flight.ServerMiddlewareFactory):  # type: ignore[misc]
    """Every call must carry `authorization: Bearer <token>` (compared in constant time)."""

    def __init__(self, token: str) -> None:
        super().__init__()
        self._expected = f"Bearer {token}".encode()

    def start_call(self, info: Any, headers: dict[str, list[Any]]) -> None:
        values = headers.get("authorization") or headers.get("Authorization") or []
        given = values[0] if values else ""
        given_b = given.encode() if isinstance(given, str) else bytes(given)
        if not hmac.compare_digest(given_b, self._expected):
            raise flight.FlightUnauthenticatedError("missing or invalid bearer token")
        return None
