"""A Flight connection to a kernel, turning Flight errors back into `KernelError`s."""

from __future__ import annotations

import json
from typing import Any

import pyarrow.flight as flight

from flight_kernel.auth import call_options
from flight_kernel.errors import (
    Conflict,
    InvalidRequest,
    KernelError,
    KernelUnavailable,
    NotFound,
    SerializationFailed,
    Unauthenticated,
)

_KINDS: dict[str, type[KernelError]] = {
    cls.kind: cls
    for cls in (
        NotFound,
        InvalidRequest,
        Conflict,
        Unauthenticated,
        KernelUnavailable,
        SerializationFailed,
    )
}


def clean_message(message: str) -> str:
    """Flight appends gRPC debug context (and for KeyError a server traceback): cut it."""
    for marker in (". Detail:", ". gRPC client debug context:", ". Client context:"):
        message = message.split(marker, 1)[0]
    return message.strip().strip("'\"")


class TransportError(Exception):
    """The call did not reach the kernel or the kernel went away while answering."""


class KernelConnection:
    """Calls the kernel's JSON actions over one Flight client (thread-safe)."""

    def __init__(self, location: str, token: str | None = None) -> None:
        self.location = location
        self._token = token
        self._client = flight.connect(location)
        self._options = call_options(token)

    def call(
        self, action: str, body: dict[str, Any] | None = None, timeout: float | None = None
    ) -> bytes:
        """Run an action; return its raw JSON result."""
        payload = json.dumps(body or {}).encode()
        options = self._options if timeout is None else call_options(self._token, timeout)
        try:
            results = list(self._client.do_action(flight.Action(action, payload), options))
        except KeyError as exc:
            raise NotFound(clean_message(str(exc))) from None
        except flight.FlightServerError as exc:
            kind = (exc.extra_info or b"").decode(errors="replace")
            raise _KINDS.get(kind, KernelError)(clean_message(str(exc))) from None
        except flight.FlightUnauthenticatedError:
            raise Unauthenticated("the kernel refused the control plane's token") from None
        except flight.FlightTimedOutError:
            raise
        except (flight.FlightError, OSError) as exc:
            raise TransportError(clean_message(str(exc))) from exc
        return results[0].body.to_pybytes() if results else b"null"

    def call_json(
        self, action: str, body: dict[str, Any] | None = None, timeout: float | None = None
    ) -> Any:
        return json.loads(self.call(action, body, timeout))

    def close(self) -> None:
        self._client.close()
