"""The one place where refusals become Flight errors, and Flight errors become refusals.

The server side raises what a pyarrow client expects (`KeyError` is the only exception
pyarrow maps to NOT_FOUND; every other error is a `Flight*Error`, so pyarrow appends no
server traceback). The client side turns them back into `KernelError` subclasses; both
tables are keyed by the classes of `flight_kernel.errors` and looked up along the MRO.
"""

from __future__ import annotations

import ast
import contextlib
import logging
from collections.abc import Callable, Iterator

import pyarrow as pa
import pyarrow.flight as flight

from flight_kernel.errors import (
    Conflict,
    ConnectionLost,
    DeadlineExceeded,
    InvalidRequest,
    KernelError,
    KernelUnavailable,
    NotFound,
    SerializationFailed,
    Unauthenticated,
    decode_error,
    error_classes,
    lookup,
)

logger = logging.getLogger(__name__)


def _server_error(exc: KernelError) -> Exception:
    error: Exception = flight.FlightServerError(exc.message, exc.kind.encode())
    return error


FLIGHT_ERRORS: dict[type[KernelError], Callable[[KernelError], Exception]] = {
    KernelError: _server_error,
    NotFound: lambda exc: KeyError(exc.message),
    InvalidRequest: _server_error,
    Conflict: _server_error,
    SerializationFailed: _server_error,
    Unauthenticated: lambda exc: flight.FlightUnauthenticatedError(exc.message),
    KernelUnavailable: lambda exc: flight.FlightUnavailableError(exc.message, exc.kind.encode()),
}


@contextlib.contextmanager
def server_errors(what: str) -> Iterator[None]:
    """Convert every error to what a Flight client should see (the one place that does)."""
    try:
        yield
    except KernelError as exc:
        convert = lookup(FLIGHT_ERRORS, exc) or _server_error
        raise convert(exc) from None
    except flight.FlightError:
        raise
    except Exception as exc:
        logger.exception("internal error in %s", what)
        raise flight.FlightInternalError(
            f"internal error in {what}: {type(exc).__name__}: {exc}"
        ) from None


def clean_message(message: str) -> str:
    """Flight appends gRPC debug context (and for KeyError a server traceback): cut it."""
    for marker in (". Detail:", ". gRPC client debug context:", ". Client context:"):
        message = message.split(marker, 1)[0]
    return message.strip()


def _unquote(message: str) -> str:
    """A `KeyError` travels as the repr of its message: undo exactly that."""
    try:
        value = ast.literal_eval(message)
    except (ValueError, SyntaxError):
        return message
    return value if isinstance(value, str) else message


@contextlib.contextmanager
def client_errors(what: str) -> Iterator[None]:
    """Turn what a Flight call raised into the `KernelError` the server meant."""
    try:
        yield
    except KeyError as exc:
        raise NotFound(_unquote(clean_message(str(exc)))) from None
    except flight.FlightUnauthenticatedError as exc:
        raise Unauthenticated(clean_message(str(exc))) from None
    except flight.FlightTimedOutError as exc:
        raise DeadlineExceeded(f"{what}: no answer in time: {clean_message(str(exc))}") from None
    except flight.FlightServerError as exc:
        kind = (exc.extra_info or b"").decode(errors="replace")
        raise decode_error(kind, clean_message(str(exc))) from None
    except (flight.FlightUnavailableError, flight.FlightCancelledError, OSError) as exc:
        kind = (getattr(exc, "extra_info", None) or b"").decode(errors="replace")
        if kind in error_classes():  # the server said so itself
            raise decode_error(kind, clean_message(str(exc))) from None
        raise ConnectionLost(f"{what}: {clean_message(str(exc))}") from None
    except (flight.FlightError, pa.ArrowException) as exc:  # internal errors, a closed client
        raise KernelError(f"{what}: {clean_message(str(exc))}") from None
