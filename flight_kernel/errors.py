"""Refusals of the kernel. User code failing is a result, never one of these.

Each transport converts these in exactly one place, from tables keyed by the classes
below; a class's `kind` (its name) is what travels on the wire and what decoders look up.
"""

from __future__ import annotations

from typing import TypeVar

_T = TypeVar("_T")


class KernelError(Exception):
    """Base of every refusal; each transport converts these in one place."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    @property
    def kind(self) -> str:
        """The wire name of this refusal: its class name."""
        return type(self).__name__

    def __str__(self) -> str:
        return self.message


class NotFound(KernelError, KeyError):
    """The thing named does not exist (HTTP 404, Flight NOT_FOUND); also a `KeyError`, as
    pyarrow's own NOT_FOUND error is."""


class InvalidRequest(KernelError):
    """The request is malformed (HTTP 422, FlightServerError)."""


class Conflict(KernelError):
    """The request clashes with what exists (HTTP 409, FlightServerError)."""


class Unauthenticated(KernelError):
    """Missing or wrong token (HTTP 401, FlightUnauthenticatedError)."""


class KernelUnavailable(KernelError):
    """The kernel is not running right now (HTTP 503, FlightUnavailableError)."""


class ConnectionLost(KernelUnavailable):
    """A call did not reach its server, or the server went away while answering."""


class DeadlineExceeded(KernelUnavailable):
    """A server did not answer within the call's deadline."""


class SerializationFailed(KernelError):
    """An artifact cannot be turned into bytes (HTTP 422, FlightServerError)."""


class StoreFull(KernelError):
    """The store has no room for what was being written, and nothing of it remains (HTTP 507,
    FlightServerError)."""


class StoreInUse(KernelError):
    """Another service owns the store directory (HTTP 409, FlightServerError)."""


def error_classes() -> dict[str, type[KernelError]]:
    """Every refusal by its `kind`, derived from the class tree (decoders use this)."""
    found: dict[str, type[KernelError]] = {"KernelError": KernelError}
    todo = list(KernelError.__subclasses__())
    while todo:
        cls = todo.pop()
        found[cls.__name__] = cls
        todo.extend(cls.__subclasses__())
    return found


def decode_error(kind: str | None, message: str) -> KernelError:
    """The refusal a transport reported by kind; an unknown kind is a plain `KernelError`."""
    return error_classes().get(kind or "", KernelError)(message)


def lookup(table: dict[type[KernelError], _T], exc: KernelError) -> _T | None:
    """The entry of the nearest class along `exc`'s MRO (starlette's handler lookup)."""
    for cls in type(exc).__mro__:
        if cls in table and issubclass(cls, KernelError):
            return table[cls]
    return None
