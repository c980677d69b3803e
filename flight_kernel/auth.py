"""Bearer tokens on Flight: the call options a client sends, the middleware a server checks."""

from __future__ import annotations

import hmac
from typing import Any

import pyarrow.flight as flight

AUTHORIZATION = "authorization"
SCHEME = "bearer"


def call_options(token: str | None, timeout: float | None = None) -> flight.FlightCallOptions:
    """Options carrying `authorization: Bearer <token>` (none without a token)."""
    headers = [(AUTHORIZATION.encode(), f"Bearer {token}".encode())] if token else []
    return flight.FlightCallOptions(headers=headers, timeout=timeout)


def _text(value: Any) -> str:
    """A header value as text (pyarrow gives `str`, or `bytes` for binary headers)."""
    if isinstance(value, bytes | bytearray):
        return bytes(value).decode(errors="replace")
    return str(value)


def _authorization(headers: dict[Any, list[Any]]) -> str:
    """The first `authorization` value, the header's name in any case; "" when there is none."""
    for name, values in headers.items():
        if _text(name).lower() == AUTHORIZATION and values:
            return _text(values[0])
    return ""


class BearerAuthMiddlewareFactory(flight.ServerMiddlewareFactory):  # type: ignore[misc]
    """Every call must carry `authorization: Bearer <token>` (compared in constant time).

    Read as the HTTP plane (FastAPI's `HTTPBearer`) reads it: the scheme in any case
    (RFC 7235), then a space, then the token with surrounding spaces ignored.
    """

    def __init__(self, token: str) -> None:
        super().__init__()
        self._expected = token.encode()

    def start_call(
        self, info: Any, headers: dict[Any, list[Any]]
    ) -> flight.ServerMiddleware | None:
        """Accept the call (no middleware of its own) or refuse it as unauthenticated."""
        scheme, _, credentials = _authorization(headers).partition(" ")
        given = credentials.strip().encode(errors="replace")
        # The scheme is no secret; the token is compared in constant time.
        if scheme.lower() != SCHEME or not hmac.compare_digest(given, self._expected):
            raise flight.FlightUnauthenticatedError("missing or invalid bearer token")
        return None
