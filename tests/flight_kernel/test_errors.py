"""The refusal tree and its Flight conversion: every class survives a round trip."""

from __future__ import annotations

import json
from collections.abc import Iterator

import pyarrow.flight as flight
import pytest

from flight_kernel.errors import (
    InvalidRequest,
    KernelError,
    NotFound,
    decode_error,
    error_classes,
)
from flight_kernel.flight_errors import client_errors, server_errors

MESSAGE = "no artifact 'model' in flow 1 (known: a, b)"

EVERY_CLASS = [pytest.param(cls, id=kind) for kind, cls in sorted(error_classes().items())]


class RefusingServer(flight.FlightServerBase):  # type: ignore[misc]
    """Each action raises, inside `server_errors`, the KernelError its type names."""

    def do_action(self, context, action):
        body = json.loads(action.body.to_pybytes())
        with server_errors("do_action"):
            if action.type == "bug":
                raise RuntimeError(body["message"])
            raise error_classes()[action.type](body["message"])


@pytest.fixture
def refusing_client() -> Iterator[flight.FlightClient]:
    with (
        RefusingServer("grpc://127.0.0.1:0") as server,
        flight.connect(f"grpc://127.0.0.1:{server.port}") as client,
    ):
        yield client


def _refused(client: flight.FlightClient, kind: str, message: str) -> None:
    action = flight.Action(kind, json.dumps({"message": message}).encode())
    list(client.do_action(action))


def _through_flight_errors(error: Exception) -> Exception:
    """What a client sees of `error` raised inside `server_errors`, in-process."""
    try:
        with server_errors("x"):
            raise error
    except Exception as raised:
        converted = raised
    try:
        with client_errors("x"):
            raise converted
    except Exception as back:
        return back
    raise AssertionError("client_errors swallowed the error")


def test_every_kernel_error_class_is_in_error_classes():
    def tree(cls: type[KernelError]) -> set[type[KernelError]]:
        return {cls}.union(*(tree(sub) for sub in cls.__subclasses__()))

    assert set(error_classes().values()) == tree(KernelError)


@pytest.mark.parametrize("cls", EVERY_CLASS)
def test_kind_is_the_class_name(cls):
    assert cls("x").kind == cls.__name__


@pytest.mark.parametrize("cls", EVERY_CLASS)
def test_decode_error_gives_back_the_class_of_a_kind(cls):
    decoded = decode_error(cls.__name__, MESSAGE)
    assert type(decoded) is cls
    assert decoded.message == MESSAGE


@pytest.mark.parametrize("kind", [pytest.param("NoSuchKind", id="unknown"), None, ""])
def test_decode_error_of_an_unknown_kind_is_a_kernel_error(kind):
    decoded = decode_error(kind, MESSAGE)
    assert type(decoded) is KernelError
    assert str(decoded) == MESSAGE


def test_not_found_is_also_a_key_error():
    assert isinstance(NotFound(MESSAGE), KeyError)
    assert str(NotFound(MESSAGE)) == MESSAGE  # not KeyError's quoted repr


@pytest.mark.parametrize("cls", EVERY_CLASS)
def test_every_kernel_error_survives_server_errors_then_client_errors(cls):
    back = _through_flight_errors(cls(MESSAGE))
    assert type(back) is cls
    assert MESSAGE in str(back)


@pytest.mark.parametrize("cls", [InvalidRequest, NotFound], ids=lambda cls: cls.__name__)
def test_a_message_ending_in_a_quote_keeps_its_quote(cls):
    message = "path segment '..' is not usable as a name: it must not be '.' or '..'"
    back = _through_flight_errors(cls(message))
    assert str(back) == message


def test_a_refusal_of_the_kernel_ending_in_a_quote_reaches_the_client_whole(flight_client):
    with pytest.raises(InvalidRequest) as refused, client_errors("do_get"):
        flight_client.do_get(flight.Ticket(b"tables/..")).read_all()
    assert str(refused.value).endswith("not '.' or '..'")


def test_a_bug_becomes_an_internal_error_without_its_traceback():
    try:
        with server_errors("do_get tables/t"):
            raise RuntimeError("boom")
    except Exception as raised:
        converted = raised
    assert type(converted) is flight.FlightInternalError
    assert str(converted) == "internal error in do_get tables/t: RuntimeError: boom"
    assert converted.__cause__ is None
    assert converted.__suppress_context__ is True


@pytest.mark.parametrize("cls", EVERY_CLASS)
def test_kernel_errors_survive_a_flight_server(refusing_client, cls):
    with pytest.raises(KernelError) as refused, client_errors("do_action"):
        _refused(refusing_client, cls.__name__, MESSAGE)
    assert type(refused.value) is cls
    assert MESSAGE in str(refused.value)


def test_not_found_from_a_flight_server_is_a_key_error(refusing_client):
    with pytest.raises(KeyError) as refused, client_errors("do_action"):
        _refused(refusing_client, "NotFound", MESSAGE)
    assert type(refused.value) is NotFound
    assert refused.value.message == MESSAGE


def test_invalid_request_from_a_flight_server_keeps_its_message(refusing_client):
    with pytest.raises(KernelError) as refused, client_errors("do_action"):
        _refused(refusing_client, "InvalidRequest", MESSAGE)
    assert refused.value.kind == "InvalidRequest"
    assert refused.value.message == MESSAGE


def test_a_bug_in_a_flight_server_reaches_the_client_without_its_traceback(refusing_client):
    with pytest.raises(flight.FlightInternalError) as refused:
        _refused(refusing_client, "bug", "boom")
    assert "RuntimeError: boom" in str(refused.value)
    assert "Traceback" not in str(refused.value)
    assert "raise RuntimeError" not in str(refused.value)
