"""The Flight bearer check reads `authorization` as HTTP does: the scheme in any case."""

from __future__ import annotations

from collections.abc import Iterator

import pyarrow.flight as flight
import pytest

from flight_kernel.auth import BearerAuthMiddlewareFactory
from flight_kernel.kernel import Kernel
from flight_kernel.server import KernelFlightServer
from flight_kernel.settings import Settings

TOKEN = "s3cret"


@pytest.fixture
def secured() -> Iterator[flight.FlightClient]:
    with (
        KernelFlightServer(Kernel(Settings(flight_port=0, auth_token=TOKEN))) as server,
        flight.connect(f"grpc://127.0.0.1:{server.port}") as client,
    ):
        yield client


def _with_authorization(value: bytes) -> flight.FlightCallOptions:
    return flight.FlightCallOptions(headers=[(b"authorization", value)])


@pytest.mark.parametrize(
    "value",
    [
        pytest.param(b"bearer s3cret", id="lower-case"),
        pytest.param(b"Bearer s3cret", id="capitalised"),
        pytest.param(b"BEARER s3cret", id="upper-case"),
        pytest.param(b"bEaReR s3cret", id="mixed-case"),
        pytest.param(b"bearer   s3cret ", id="extra-spaces"),  # as HTTP's HTTPBearer strips
    ],
)
def test_the_scheme_is_accepted_in_any_case(secured: flight.FlightClient, value: bytes) -> None:
    assert list(secured.list_flights(b"", _with_authorization(value))) == []


@pytest.mark.parametrize(
    "value",
    [
        pytest.param(b"bearer wrong", id="wrong-token"),
        pytest.param(b"bearer S3CRET", id="token-in-another-case"),
        pytest.param(b"bearer s3cret-and-more", id="token-with-a-suffix"),
        pytest.param(b"bearer", id="scheme-only"),
        pytest.param(b"bearer ", id="empty-token"),
        pytest.param(b"s3cret", id="token-only"),
        pytest.param(b"basic s3cret", id="other-scheme"),
        pytest.param(b"bearers3cret", id="no-space"),
    ],
)
def test_a_wrong_token_is_refused_whatever_the_scheme_case(
    secured: flight.FlightClient, value: bytes
) -> None:
    with pytest.raises(flight.FlightUnauthenticatedError):
        list(secured.list_flights(b"", _with_authorization(value)))


@pytest.mark.parametrize("name", ["authorization", "Authorization", "AUTHORIZATION"])
def test_the_header_name_is_looked_up_in_any_case(name: str) -> None:
    # gRPC lower-cases metadata keys on the wire; the factory does not rely on it.
    factory = BearerAuthMiddlewareFactory(TOKEN)
    assert factory.start_call(None, {name: ["bearer s3cret"]}) is None
    with pytest.raises(flight.FlightUnauthenticatedError):
        factory.start_call(None, {name: ["bearer wrong"]})
