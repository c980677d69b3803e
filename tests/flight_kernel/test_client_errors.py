"""KernelClient callers see KernelError subclasses only: never httpx's or pyarrow's errors."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator

import httpx
import pyarrow as pa
import pytest

from control.app import create_app
from flight_kernel.client import KernelClient
from flight_kernel.errors import (
    ConnectionLost,
    InvalidRequest,
    KernelError,
    KernelUnavailable,
    NotFound,
    error_classes,
)
from flight_kernel.server import KernelFlightServer
from flight_kernel.settings import Settings
from tests.conftest import attached
from tests.control.doubles import function_kernels
from tests.helpers import free_port, serving

EVERY_CLASS = [pytest.param(cls, id=kind) for kind, cls in sorted(error_classes().items())]


def refusing(error: KernelError):
    """A kernel whose every action is refused with `error`."""

    def handler(action, body):
        raise error

    return handler


@pytest.fixture
def kc(
    settings: Settings, kernel_server: KernelFlightServer, kernel_location: str
) -> Iterator[KernelClient]:
    """A client of the real app over an in-process kernel."""
    app_settings = dataclasses.replace(settings, http_port=0)
    app = create_app(app_settings, kernels=attached(app_settings, kernel_location))
    with serving(app) as http_url:
        flight_url = app.state.service.flight_location
        with KernelClient(http_url, flight_url, timeout=30) as client:
            yield client


@pytest.fixture
def nowhere() -> Iterator[KernelClient]:
    """A client of ports where nothing listens."""
    http_url = f"http://127.0.0.1:{free_port()}"
    flight_url = f"grpc://127.0.0.1:{free_port()}"
    with KernelClient(http_url, flight_url, timeout=30) as client:
        yield client


def _assert_ours(exc: BaseException) -> None:
    assert isinstance(exc, KernelError)
    assert not isinstance(exc, httpx.HTTPError)
    assert not isinstance(exc, pa.ArrowException)
    assert exc.__cause__ is None


# -- refusals of the service ---------------------------------------------------------------


@pytest.mark.parametrize("cls", EVERY_CLASS)
def test_an_http_refusal_is_the_kernel_error_its_error_kind_names(cls):
    settings = Settings(flight_port=0)
    app = create_app(settings, kernels=function_kernels(settings, refusing(cls("no flow 9"))))
    with (
        serving(app) as http_url,
        KernelClient(http_url, f"grpc://127.0.0.1:{free_port()}", timeout=30) as client,
        pytest.raises(KernelError) as refused,
    ):
        client.list_artifacts()
    assert type(refused.value) is cls
    assert "no flow 9" in str(refused.value)
    _assert_ours(refused.value)


def test_execute_with_a_bad_field_is_refused_locally_naming_it(kc):
    with pytest.raises(InvalidRequest) as refused:
        kc.execute("n", "x", flow_id="bad")
    assert "flow_id" in str(refused.value)
    _assert_ours(refused.value)


def test_a_422_of_fastapi_is_invalid_request_naming_the_field(kc):
    with pytest.raises(InvalidRequest) as refused:
        kc.clear_node_artifacts([1.5])
    assert "node_ids" in str(refused.value)
    assert "422" in str(refused.value)
    _assert_ours(refused.value)


def test_get_table_of_a_missing_table_is_not_found_and_a_key_error(kc):
    with pytest.raises(KeyError) as refused:
        kc.get_table("tables/missing")
    assert type(refused.value) is NotFound
    assert "tables/missing" in str(refused.value)
    _assert_ours(refused.value)


def test_delete_of_a_missing_path_is_not_found(kc):
    with pytest.raises(NotFound) as refused:
        kc.delete("tables/missing")
    assert "tables/missing" in str(refused.value)
    _assert_ours(refused.value)


# -- nothing listening ---------------------------------------------------------------------

CALLS = [
    pytest.param(lambda kc: kc.execute("n", "x = 1"), id="execute"),
    pytest.param(lambda kc: kc.list_artifacts(), id="list_artifacts"),
    pytest.param(lambda kc: kc.clear(), id="clear"),
    pytest.param(lambda kc: kc.health(), id="health"),
    pytest.param(lambda kc: kc.get_table("tables/t"), id="get_table"),
    pytest.param(lambda kc: kc.put_table("t", pa.table({"a": [1]})), id="put_table"),
    pytest.param(lambda kc: kc.get_artifact(1, "a"), id="get_artifact"),
    pytest.param(lambda kc: kc.delete("tables/t"), id="delete"),
    pytest.param(
        lambda kc: kc.get_table(f"flight://127.0.0.1:{free_port()}/tables/t"),
        id="get_table_of_another_kernel",
    ),
]


@pytest.mark.parametrize("call", CALLS)
def test_a_call_to_nowhere_is_connection_lost(nowhere, call):
    with pytest.raises(KernelError) as refused:
        call(nowhere)
    assert type(refused.value) is ConnectionLost
    assert isinstance(refused.value, KernelUnavailable)
    _assert_ours(refused.value)


# -- health --------------------------------------------------------------------------------


def test_health_of_a_starting_kernel_is_a_503_body_not_an_error():
    settings = Settings(flight_port=0)
    starting = function_kernels(settings, refusing(KernelUnavailable("not up yet")))
    with (
        serving(create_app(settings, kernels=starting)) as http_url,
        KernelClient(http_url, f"grpc://127.0.0.1:{free_port()}", timeout=30) as client,
    ):
        health = client.health()
    assert health["status"] == "starting"
    assert health["artifact_count"] is None
