"""Flight paths, tickets, descriptors and `flight://` URIs: the good forms and the bad ones."""

from __future__ import annotations

import pytest

from flight_kernel.errors import InvalidRequest
from flight_kernel.paths import (
    ArtifactPath,
    FlightPath,
    FlightURI,
    OutputPath,
    TablePath,
    from_segments,
    is_flight_uri,
    local_uri,
    parse_descriptor_path,
    parse_flight_uri,
    parse_ticket,
)

GOOD = [
    pytest.param(b"tables/sales", TablePath("sales"), id="table"),
    pytest.param(b"outputs/3/node_1/cleaned", OutputPath(3, "node_1", "cleaned"), id="output"),
    pytest.param(b"artifacts/7/model", ArtifactPath(7, "model"), id="artifact"),
    pytest.param("tables/caf\u00e9".encode(), TablePath("caf\u00e9"), id="utf8-name"),
    pytest.param(b"outputs/0/42/output_0", OutputPath(0, "42", "output_0"), id="int-node"),
]


@pytest.mark.parametrize(("raw", "expected"), GOOD)
def test_ticket_parses_to_its_path(raw: bytes, expected: FlightPath) -> None:
    assert parse_ticket(raw) == expected


@pytest.mark.parametrize(("raw", "expected"), GOOD)
def test_path_prints_as_its_ticket(raw: bytes, expected: FlightPath) -> None:
    assert str(expected).encode() == raw


@pytest.mark.parametrize(("raw", "expected"), GOOD)
def test_descriptor_segments_parse_to_the_same_path(raw: bytes, expected: FlightPath) -> None:
    assert parse_descriptor_path(raw.split(b"/")) == expected


@pytest.mark.parametrize(("raw", "expected"), GOOD)
def test_descriptor_with_one_slashed_segment_is_accepted(raw: bytes, expected: FlightPath) -> None:
    assert parse_descriptor_path([raw]) == expected


@pytest.mark.parametrize(("raw", "expected"), GOOD)
def test_local_uri_round_trips(raw: bytes, expected: FlightPath) -> None:
    uri = local_uri(expected)
    assert uri == "flight:///" + raw.decode()
    assert parse_flight_uri(uri) == FlightURI(expected)


def test_local_flight_uri_has_no_host() -> None:
    uri = parse_flight_uri("flight:///tables/sales")
    assert (uri.path, uri.host, uri.port, uri.is_local) == (TablePath("sales"), None, None, True)


def test_remote_flight_uri_keeps_host_and_port() -> None:
    uri = parse_flight_uri("flight://127.0.0.1:8815/outputs/1/n1/result")
    assert (uri.path, uri.host, uri.port, uri.is_local) == (
        OutputPath(1, "n1", "result"),
        "127.0.0.1",
        8815,
        False,
    )
    assert str(uri) == "flight://127.0.0.1:8815/outputs/1/n1/result"


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        pytest.param("flight:///tables/x", True, id="local"),
        pytest.param("flight://h:1/tables/x", True, id="remote"),
        pytest.param("/shared/in.parquet", False, id="file"),
        pytest.param("grpc://h:1/tables/x", False, id="grpc"),
    ],
)
def test_is_flight_uri(value: str, expected: bool) -> None:
    assert is_flight_uri(value) is expected


BAD_TICKETS = [
    pytest.param(b"", "empty", id="empty"),
    pytest.param(b"\xff\xfetables/x", "not valid UTF-8", id="not-utf8"),
    pytest.param(b"files/x", "unknown Flight path kind 'files'", id="unknown-kind"),
    pytest.param(b"/tables/x", "unknown Flight path kind ''", id="leading-slash"),
    pytest.param(b"tables", "has 1 segments; a tables path has 2", id="tables-too-short"),
    pytest.param(b"tables/a/b", "has 3 segments; a tables path has 2", id="tables-too-long"),
    pytest.param(b"outputs/1/n", "has 3 segments; a outputs path has 4", id="outputs-short"),
    pytest.param(b"artifacts/1/a/b", "has 4 segments; a artifacts path has 3", id="artifacts-long"),
    pytest.param(b"tables/..", "'..'", id="dotdot"),
    pytest.param(b"outputs/1/../x", "'..'", id="dotdot-node"),
    pytest.param(b"tables/.", "'.'", id="dot"),
    pytest.param(b"tables/", "''", id="empty-name"),
    pytest.param(b"tables/a\\b", "'a\\\\b'", id="backslash"),
    pytest.param(b"tables/a\x00b", "NUL", id="nul"),
    pytest.param(b"artifacts/one/model", "flow id 'one'", id="flow-id-not-int"),
    pytest.param(b"outputs/1.5/n/x", "flow id '1.5'", id="flow-id-float"),
]


@pytest.mark.parametrize(("raw", "says"), BAD_TICKETS)
def test_bad_ticket_is_invalid_request_naming_the_problem(raw: bytes, says: str) -> None:
    with pytest.raises(InvalidRequest) as info:
        parse_ticket(raw)
    assert says in info.value.message


@pytest.mark.parametrize(
    ("segments", "says"),
    [
        pytest.param([], "empty", id="no-segments"),
        pytest.param([b""], "empty", id="one-empty-segment"),
        pytest.param([b"tables", b"\xff"], "not valid UTF-8", id="not-utf8"),
        pytest.param([b"nope", b"x"], "unknown Flight path kind 'nope'", id="unknown-kind"),
        pytest.param([b"tables", b"a", b"b"], "has 3 segments", id="wrong-count"),
        pytest.param([b"tables", b".."], "'..'", id="dotdot"),
        pytest.param([b"artifacts", b"x", b"m"], "flow id 'x'", id="flow-id-not-int"),
    ],
)
def test_bad_descriptor_is_invalid_request(segments: list[bytes], says: str) -> None:
    with pytest.raises(InvalidRequest) as info:
        parse_descriptor_path(segments)
    assert says in info.value.message


@pytest.mark.parametrize(
    ("value", "says"),
    [
        pytest.param("flight://", "empty", id="nothing"),
        pytest.param("flight:///", "empty", id="no-path"),
        pytest.param("flight:///things/x", "unknown Flight path kind 'things'", id="unknown-kind"),
        pytest.param("flight:///tables/a/b", "has 3 segments", id="wrong-count"),
        pytest.param("flight:///tables/..", "'..'", id="dotdot"),
        pytest.param("flight:///artifacts/x/m", "flow id 'x'", id="flow-id-not-int"),
        pytest.param("flight://host/tables/x", "flight://<host>:<port>/<path>", id="no-port"),
        pytest.param(
            "flight://host:port/tables/x", "flight://<host>:<port>/<path>", id="port-not-int"
        ),
        pytest.param("flight://:8815/tables/x", "flight://<host>:<port>/<path>", id="no-host"),
    ],
)
def test_bad_flight_uri_is_invalid_request(value: str, says: str) -> None:
    with pytest.raises(InvalidRequest) as info:
        parse_flight_uri(value)
    assert says in info.value.message


def test_from_segments_accepts_what_paths_print() -> None:
    path = OutputPath(12, "node-a", "out")
    assert from_segments(str(path).split("/")) == path
