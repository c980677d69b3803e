"""Hostile input, tested by machines: whatever a client sends, the kernel answers cleanly.

Every Flight call either succeeds or raises a pyarrow Flight error whose message carries no
server traceback (NOT_FOUND excepted: pyarrow itself appends one to `ArrowKeyError`), and the
server answers `health` afterwards. Then explicit cases of hostile values that are valid:
huge code, deep JSON, unicode names, odd node and flow ids.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from typing import Any
from urllib.parse import quote

import pyarrow as pa
import pyarrow.flight as flight
import pytest
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.helpers import flight_action

TRACEBACK = "Traceback (most recent call last)"
ACTIONS = [
    "execute",
    "list_artifacts",
    "clear",
    "clear_node_artifacts",
    "interrupt",
    "health",
    "delete",
]
FIELDS = [
    "node_id",
    "code",
    "input_paths",
    "output_dir",
    "flow_id",
    "timeout_s",
    "node_ids",
    "path",
]
DEPTH = 10_000

# One server per test, shared by its examples on purpose: state left by one example is
# part of the hostile input of the next.
FUZZ = settings(
    max_examples=150,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
FEW = settings(
    max_examples=15,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


def _answers_cleanly(call: Callable[[], object]) -> None:
    """Run one Flight call: it succeeds or fails with a clear Flight error."""
    try:
        call()
    except KeyError as exc:  # ArrowKeyError: NOT_FOUND, whose message pyarrow extends
        assert isinstance(exc, pa.ArrowKeyError), repr(exc)
    except flight.FlightInternalError as exc:  # the server's catch-all: a bug
        pytest.fail(f"internal error: {exc}")
    except flight.FlightError as exc:
        assert TRACEBACK not in str(exc), str(exc)
        assert str(exc).strip(), "an error without a message"


def _health(client: flight.FlightClient) -> dict[str, Any]:
    [result] = client.do_action(flight.Action("health", b""))
    body: dict[str, Any] = json.loads(result.body.to_pybytes())
    return body


def _assert_healthy(client: flight.FlightClient) -> None:
    assert _health(client)["status"] == "healthy"


# -- strategies --------------------------------------------------------------------------

segments = st.one_of(
    st.sampled_from(["tables", "outputs", "artifacts", "", ".", "..", "a/b", "a\\b", "x\x00y"]),
    st.text(max_size=12),
    st.integers().map(str),
)
paths = st.lists(segments, max_size=5).map("/".join)
tickets = st.one_of(st.binary(max_size=64), paths.map(str.encode))
descriptor_segments = st.lists(
    st.one_of(st.binary(max_size=16), segments.map(str.encode)), max_size=5
)
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=20,
)


def _safe_execute_body(body: dict[str, Any]) -> dict[str, Any]:
    """Generated code really runs: keep it short, and give it a timeout when it has none
    (a generated timeout is hostile input too, and the code is short either way)."""
    if isinstance(body.get("code"), str):
        body["code"] = body["code"][:100]
    body["timeout_s"] = 1.0 if body.get("timeout_s") is None else body["timeout_s"]
    return body


deep_bodies = st.sampled_from(
    [
        b"[" * DEPTH + b"]" * DEPTH,
        b'{"a": ' * DEPTH + b"1" + b"}" * DEPTH,
        b'{"node_id": "n", "code": "x = 1", "extra": ' + b"[" * DEPTH + b"]" * DEPTH + b"}",
        b'{"node_ids": ' + b"[" * DEPTH + b"]" * DEPTH + b"}",
    ]
)
bodies = st.one_of(
    st.binary(max_size=64),  # mostly not JSON, often not UTF-8
    json_values.map(lambda v: json.dumps(v).encode()),  # JSON, mostly not an object
    st.dictionaries(st.sampled_from(FIELDS), json_values, max_size=6)  # the fields, wrong types
    .map(_safe_execute_body)
    .map(lambda v: json.dumps(v).encode()),
    deep_bodies,
)
table = pa.table({"x": [1, 2]})


# -- the Flight surface ------------------------------------------------------------------


@FUZZ
@given(ticket=tickets)
def test_do_get_of_any_ticket_answers_cleanly(flight_client, ticket):
    _answers_cleanly(lambda: flight_client.do_get(flight.Ticket(ticket)).read_all())
    _assert_healthy(flight_client)


def _reaches_the_server(segs: list[bytes]) -> bool:
    """Path segments are a protobuf `string`: gRPC drops a request whose segments are not
    UTF-8 before any server code runs (the client sees an empty FlightInternalError)."""
    try:
        for seg in segs:
            seg.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


def _answers_cleanly_or_never_arrives(segs: list[bytes], call: Callable[[], object]) -> None:
    if _reaches_the_server(segs):
        _answers_cleanly(call)
    else:
        with pytest.raises(flight.FlightError):
            call()


@FUZZ
@given(segs=descriptor_segments)
def test_get_flight_info_of_any_descriptor_answers_cleanly(flight_client, segs):
    descriptor = flight.FlightDescriptor.for_path(*segs)
    _answers_cleanly_or_never_arrives(segs, lambda: flight_client.get_flight_info(descriptor))
    _assert_healthy(flight_client)


@FUZZ
@given(segs=descriptor_segments)
def test_do_put_to_any_descriptor_answers_cleanly(flight_client, segs):
    def put() -> None:
        writer, _ = flight_client.do_put(flight.FlightDescriptor.for_path(*segs), table.schema)
        try:
            writer.write_table(table)
        finally:
            writer.close()

    _answers_cleanly_or_never_arrives(segs, put)
    _assert_healthy(flight_client)


@FUZZ
@given(command=st.binary(max_size=32))
def test_command_descriptors_are_refused_cleanly(flight_client, command):
    descriptor = flight.FlightDescriptor.for_command(command)
    with pytest.raises(flight.FlightServerError, match="only path descriptors"):
        flight_client.get_flight_info(descriptor)
    _assert_healthy(flight_client)


@FUZZ
@given(criteria=st.one_of(st.binary(max_size=32), paths.map(str.encode)))
def test_list_flights_with_any_criteria_answers_cleanly(flight_client, criteria):
    _answers_cleanly(lambda: list(flight_client.list_flights(criteria)))
    _assert_healthy(flight_client)


@FUZZ
@given(name=st.one_of(st.sampled_from(ACTIONS), st.text(max_size=30)), body=bodies)
def test_do_action_with_any_name_and_body_answers_cleanly(flight_client, name, body):
    _answers_cleanly(lambda: list(flight_client.do_action(flight.Action(name, body))))
    _assert_healthy(flight_client)


@pytest.mark.parametrize("action", ACTIONS)
@pytest.mark.parametrize(
    "body",
    [
        pytest.param(b"[" * DEPTH + b"]" * DEPTH, id="nested-lists"),
        pytest.param(b'{"x": ' + b"[" * DEPTH + b"]" * DEPTH + b"}", id="nested-in-a-field"),
        pytest.param(b"{" * DEPTH, id="unclosed"),
        pytest.param(b"\xff\xfe\x00", id="not-utf8"),
        pytest.param(b"[1, 2]", id="a-list"),
        pytest.param(b'"text"', id="a-string"),
        pytest.param(b"NaN", id="nan"),
    ],
)
def test_action_bodies_that_are_not_json_objects_are_refused(flight_client, action, body):
    with pytest.raises(flight.FlightServerError, match=f"body of action '{action}'") as info:
        list(flight_client.do_action(flight.Action(action, body)))
    assert TRACEBACK not in str(info.value)
    _assert_healthy(flight_client)


@pytest.mark.parametrize(
    ("action", "body", "field"),
    [
        pytest.param("execute", {"node_id": True, "code": ""}, "node_id", id="execute-bool-node"),
        pytest.param("execute", {"node_id": 1.5, "code": ""}, "node_id", id="execute-float-node"),
        pytest.param("execute", {"node_id": "n", "code": 1}, "code", id="execute-int-code"),
        pytest.param(
            "execute",
            {"node_id": "n", "code": "", "flow_id": "1"},
            "flow_id",
            id="execute-str-flow",
        ),
        pytest.param(
            "execute",
            {"node_id": "n", "code": "", "input_paths": {"a": "x"}},
            "input_paths",
            id="execute-str-inputs",
        ),
        pytest.param(
            "execute",
            {"node_id": "n", "code": "", "output_dir": 3},
            "output_dir",
            id="execute-int-output-dir",
        ),
        pytest.param(
            "execute",
            {"node_id": "n", "code": "", "timeout_s": -1},
            "timeout_s",
            id="execute-negative-timeout",
        ),
        pytest.param(
            "execute",
            {"node_id": "n", "code": "", "timeout_s": "1"},
            "timeout_s",
            id="execute-str-timeout",
        ),
        pytest.param("list_artifacts", {"flow_id": [1]}, "flow_id", id="list-list-flow"),
        pytest.param("list_artifacts", {"node_id": {}}, "node_id", id="list-dict-node"),
        pytest.param("clear", {"flow_id": 1.0}, "flow_id", id="clear-float-flow"),
        pytest.param("clear_node_artifacts", {"node_ids": "n"}, "node_ids", id="clear-str-nodes"),
        pytest.param(
            "clear_node_artifacts", {"node_ids": [None]}, "node_ids", id="clear-null-node"
        ),
        pytest.param("interrupt", {"flow_id": True}, "flow_id", id="interrupt-bool-flow"),
        pytest.param("delete", {"path": 7}, "path", id="delete-int-path"),
        pytest.param("delete", {}, "path", id="delete-no-path"),
    ],
)
def test_fields_of_the_wrong_type_are_refused_naming_the_field(flight_client, action, body, field):
    with pytest.raises(flight.FlightServerError, match=f"'{field}'") as info:
        flight_action(flight_client, action, body)
    assert TRACEBACK not in str(info.value)
    _assert_healthy(flight_client)


@pytest.mark.parametrize(
    "timeout",
    [
        pytest.param(float("nan"), id="nan"),
        pytest.param(float("inf"), id="inf"),
        pytest.param(1e308, id="1e308"),
        pytest.param(1e10, id="1e10"),
        pytest.param(10**400, id="int-10**400"),
        pytest.param(0, id="zero"),
        pytest.param(-1e-9, id="negative"),
    ],
)
def test_timeouts_no_timer_can_wait_for_are_refused(flight_client, timeout):
    body = {"node_id": "n", "code": "x = 1", "timeout_s": timeout}
    with pytest.raises(flight.FlightServerError, match="'timeout_s'"):
        flight_action(flight_client, "execute", body)
    _assert_healthy(flight_client)


@FUZZ
@given(timeout=st.one_of(st.floats(), st.integers(), st.integers(min_value=2**60)))
def test_any_numeric_timeout_runs_or_is_refused_naming_the_field(flight_client, timeout):
    body = {"node_id": "n", "code": "x = 1", "timeout_s": timeout}
    try:
        result = flight_action(flight_client, "execute", body)
    except flight.FlightServerError as exc:
        assert "'timeout_s'" in str(exc)
    else:  # a tiny timeout may interrupt even `x = 1`
        assert result["success"] is True or result["error"].startswith("Timeout")
    _assert_healthy(flight_client)


def test_the_longest_timeout_a_timer_can_wait_for_is_accepted(flight_client):
    body = {"node_id": "n", "code": "x = 1", "timeout_s": threading.TIMEOUT_MAX}
    assert flight_action(flight_client, "execute", body)["success"] is True


# -- hostile values that are valid -------------------------------------------------------


def _execute(client: TestClient, **body: Any) -> dict[str, Any]:
    response = client.post("/execute", json=body)
    assert response.status_code == 200, response.text
    result: dict[str, Any] = response.json()
    return result


@pytest.mark.parametrize(
    ("code", "stdout"),
    [
        # 5 MB: past gRPC's default 4 MB message limit, on both planes.
        pytest.param(
            's = """\n' + "x = 1\n" * (5 * 1024 * 1024 // 6) + '"""\nprint(len(s))\n',
            f"{6 * (5 * 1024 * 1024 // 6) + 1}\n",
            id="5MB-of-x=1-in-a-literal",
        ),
        # As statements: CPython's compiler is superlinear in them (5 MB, 870k lines: ~12 s).
        pytest.param("x = 1\n" * 100_000 + "print(x)\n", "1\n", id="100k-statements"),
    ],
)
def test_huge_code_executes(client, code, stdout):
    result = _execute(client, node_id="big", code=code)
    assert result["success"] is True, result["error"]
    assert result["stdout"] == stdout


@pytest.mark.parametrize(
    "body",
    [
        pytest.param(
            '{"node_id": "n", "code": "x = 1", "extra": %s}' % ("[" * DEPTH + "]" * DEPTH),
            id="in-an-unknown-field",
        ),
        pytest.param(
            '{"node_id": %s, "code": "x = 1"}' % ("[" * DEPTH + "]" * DEPTH), id="as-node-id"
        ),
        pytest.param(
            '{"node_id": "n", "code": "x = 1", "input_paths": {"a": %s}}'
            % ("[" * DEPTH + "]" * DEPTH),
            id="in-input-paths",
        ),
        pytest.param("[" * DEPTH + "]" * DEPTH, id="as-the-body"),
        pytest.param(
            '{"node_id": "n", "code": "x = 1", "extra": %s}' % ("[" * 200 + "]" * 200),
            id="moderately-deep",
        ),
    ],
)
def test_deeply_nested_json_over_http_is_refused_or_ignored(client, body):
    response = client.post("/execute", content=body, headers={"content-type": "application/json"})
    assert response.status_code in (200, 422), response.text
    if response.status_code == 200:
        assert response.json()["success"] is True
    else:
        assert isinstance(response.json()["detail"], list)  # FastAPI's standard error body
    assert client.get("/health").json()["status"] == "healthy"


@pytest.mark.parametrize(
    "body",
    [
        pytest.param('{"node_id": "n", "code": "x = 1", "timeout_s": NaN}', id="nan-timeout"),
        pytest.param(
            '{"node_id": "n", "code": "x = 1", "timeout_s": -Infinity}', id="-inf-timeout"
        ),
        pytest.param('{"node_id": "n", "code": "x = 1", "timeout_s": Infinity}', id="inf-timeout"),
        pytest.param('{"node_id": "n", "code": "x = 1", "timeout_s": 1e10}', id="huge-timeout"),
        pytest.param('{"node_id": "n", "code": "x = 1", "timeout_s": true}', id="bool-timeout"),
        pytest.param('{"node_id": "n", "code": "x = 1", "timeout_s": "1"}', id="str-timeout"),
        pytest.param('{"node_id": NaN, "code": "x = 1"}', id="nan-node-id"),
        pytest.param('{"node_id": "n", "code": "x = 1", "flow_id": Infinity}', id="inf-flow-id"),
        pytest.param(b'{"node_id": "n", "code": "\xff"}', id="not-utf8"),
    ],
)
def test_malformed_execute_bodies_over_http_get_422(client, body):
    response = client.post("/execute", content=body, headers={"content-type": "application/json"})
    assert response.status_code == 422, response.text
    assert isinstance(response.json()["detail"], list)


UNICODE_NAMES = ["модель", "模型✓", "résumé 📊", "ṱ̶͖e̴s̷t", "\u200b", "a b\tc", "ü" * 300]


@pytest.mark.parametrize("name", UNICODE_NAMES)
def test_unicode_artifact_and_output_names_round_trip(client, flight_client, name):
    code = (
        "import polars as pl\n"
        f"flowfile.publish_artifact({name!r}, pl.DataFrame({{'x': [1, 2]}}))\n"
        f"flowfile.publish_output(pl.DataFrame({{'y': [3]}}), name={name!r})\n"
    )
    result = _execute(client, node_id="n", code=code, flow_id=3)
    assert result["success"] is True, result["error"]
    assert result["published_artifacts"] == [name]
    assert result["output_paths"] == [f"flight:///outputs/3/n/{name}"]

    [record] = client.get("/artifacts", params={"flow_id": 3}).json()
    assert record["name"] == name
    served = flight_client.do_get(flight.Ticket(record["ticket"].encode())).read_all()
    assert served.to_pydict() == {"x": [1, 2]}
    output = flight_client.do_get(flight.Ticket(f"outputs/3/n/{name}".encode())).read_all()
    assert output.to_pydict() == {"y": [3]}
    info = flight_client.get_flight_info(flight.FlightDescriptor.for_path("artifacts", "3", name))
    assert info.total_records == 2


BAD_NAMES = ["a/b", "..", ".", "", "../escape", "/abs", "a\\b", "x\x00y"]


@pytest.mark.parametrize("name", BAD_NAMES)
def test_artifact_names_that_are_not_plain_names_are_refused(client, name):
    result = _execute(client, node_id="n", code=f"flowfile.publish_artifact({name!r}, 1)")
    assert result["success"] is False
    assert result["error"].startswith("ValueError: ")
    assert repr(name) in result["error"]
    assert client.get("/artifacts").json() == []


@pytest.mark.parametrize("name", BAD_NAMES)
def test_output_names_that_are_not_plain_names_are_refused(client, name):
    code = f"import polars as pl\nflowfile.publish_output(pl.DataFrame({{'x': [1]}}), {name!r})"
    result = _execute(client, node_id="n", code=code)
    assert result["success"] is False
    assert repr(name) in result["error"]
    assert result["output_paths"] == []


def _usable_segment(value: str) -> bool:
    return value not in ("", ".", "..") and not any(c in value for c in "/\\\x00")


@FEW
@given(
    node_id=st.one_of(
        st.text(max_size=40),
        st.integers(),
        st.integers(min_value=2**63, max_value=2**80),
        st.text(min_size=1, max_size=3).map(lambda s: s * 5000),
    )
)
def test_any_node_id_executes_and_finds_its_artifacts(client, flight_client, node_id):
    client.post("/clear")
    code = "flowfile.publish_artifact('a', 1)\nprint('ok')"
    result = _execute(client, node_id=node_id, code=code, flow_id=1)
    assert result["success"] is True, result["error"]
    assert result["node_id"] == node_id
    assert result["stdout"] == "ok\n"

    # Over Flight: any node id.
    [record] = flight_action(flight_client, "list_artifacts", {"node_id": node_id, "flow_id": 1})
    assert record["node_id"] == node_id
    # Over HTTP: node ids compare by their string form; only a URL path segment can be asked.
    if str(node_id) not in ("", ".", "..") and "/" not in str(node_id) and len(str(node_id)) < 2000:
        found = client.get(f"/artifacts/node/{quote(str(node_id), safe='')}", params={"flow_id": 1})
        assert found.status_code == 200, found.text
        assert [r["name"] for r in found.json()] == ["a"]

    # An output in the Flight store has the node id in its path: refused when it cannot be.
    out = _execute(
        client,
        node_id=node_id,
        flow_id=1,
        code="import polars as pl\nflowfile.publish_output(pl.DataFrame({'x': [1]}))",
    )
    if _usable_segment(str(node_id)):
        assert out["success"] is True, out["error"]
        [uri] = out["output_paths"]
        ticket = uri.removeprefix("flight:///").encode()
        assert flight_client.do_get(flight.Ticket(ticket)).read_all().to_pydict() == {"x": [1]}
    else:
        assert out["success"] is False
        assert "node_id" in out["error"]
    _assert_healthy(flight_client)


@pytest.mark.parametrize("flow_id", [2**62, 2**63 - 1, 2**63, 2**100, -1, -(2**62), 0])
def test_huge_and_negative_flow_ids_keep_artifacts_and_outputs(client, flight_client, flow_id):
    code = (
        "import polars as pl\nflowfile.publish_artifact('a', [1, 2])\n"
        "flowfile.publish_output(pl.DataFrame({'x': [1]}), 'o')\n"
        "print(flowfile.read_artifact('a'))"
    )
    result = _execute(client, node_id="n", code=code, flow_id=flow_id)
    assert result["success"] is True, result["error"]
    assert result["stdout"] == "[1, 2]\n"
    assert result["output_paths"] == [f"flight:///outputs/{flow_id}/n/o"]

    [record] = client.get("/artifacts", params={"flow_id": flow_id}).json()
    assert (record["flow_id"], record["name"]) == (flow_id, "a")
    assert record["ticket"] == f"artifacts/{flow_id}/a"
    served = flight_client.do_get(flight.Ticket(f"outputs/{flow_id}/n/o".encode())).read_all()
    assert served.to_pydict() == {"x": [1]}
    info = flight_client.get_flight_info(
        flight.FlightDescriptor.for_path("artifacts", str(flow_id), "a")
    )
    assert info.total_records == 1

    cleared = client.post("/clear", params={"flow_id": flow_id}).json()
    assert "a" in cleared["removed"]
    assert client.get("/artifacts", params={"flow_id": flow_id}).json() == []
