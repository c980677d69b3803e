"""Refusals of the kernel. User code failing is a result, never one of these."""


class KernelError(Exception):
    """Base of every refusal; each transport converts these in one place."""

    kind = "KernelError"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def __str__(self) -> str:
        return self.message


class NotFound(KernelError):
    """The thing named does not exist (HTTP 404, Flight NOT_FOUND)."""

    kind = "NotFound"


class InvalidRequest(KernelError):
    """The request is malformed (HTTP 422, FlightServerError)."""

    kind = "InvalidRequest"


class Conflict(KernelError):
    """The request clashes with what exists (HTTP 409, FlightServerError)."""

    kind = "Conflict"


class Unauthenticated(KernelError):
    """Missing or wrong token (HTTP 401, FlightUnauthenticatedError)."""

    kind = "Unauthenticated"


class KernelUnavailable(KernelError):
    """The kernel is not running right now (HTTP 503, FlightUnavailableError)."""

    kind = "KernelUnavailable"


class SerializationFailed(KernelError):
    """An artifact cannot be turned into bytes (HTTP 422, FlightServerError)."""

    kind = "SerializationFailed"
