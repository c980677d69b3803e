"""The HTTP control plane (SPEC §3), against an in-process kernel."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
from fastapi.testclient import TestClient

import flight_kernel
from control.app import HTTP_STATUS, create_app
from flight_kernel.errors import ConnectionLost, KernelError, error_classes, lookup
from flight_kernel.settings import Settings
from tests.control.doubles import function_kernels
from tests.helpers import poll

RESPONSE_FIELDS: dict[str, type | tuple[type, ...]] = {
    "success": bool,
    "output_paths": list,
    "published_artifacts": list,
    "deleted_artifacts": list,
    "stdout": str,
    "stderr": str,
    "error": (str, type(None)),
    "traceback": (str, type(None)),
    "execution_time_ms": (int, float),
}
RECORD_FIELDS = {"name", "flow_id", "node_id", "type_name", "size_bytes", "created_at", "ticket"}


# -- /health -----------------------------------------------------------------------------


def test_health(client, run_code):
    run_code("flowfile.publish_artifact('a', 1)\nflowfile.publish_artifact('b', 2)", flow_id=1)
    response = client.get("/health")
    assert response.status_code == 200
    body = response.json()
    assert body["status"] == "healthy"
    assert body["version"] == flight_kernel.__version__
    assert body["artifact_count"] == 2


# -- /execute ----------------------------------------------------------------------------


def test_execute_response_has_the_contract_fields(client):
    response = client.post("/execute", json={"node_id": "node_1", "code": "print('hi')"})
    assert response.status_code == 200
    body = response.json()
    for name, kind in RESPONSE_FIELDS.items():
        assert isinstance(body[name], kind), name
    assert body["success"] is True
    assert body["stdout"] == "hi\n"
    assert body["stderr"] == ""
    assert body["error"] is None
    assert body["traceback"] is None
    assert body["output_paths"] == []
    assert body["published_artifacts"] == []
    assert body["deleted_artifacts"] == []


def test_failing_code_is_http_200_with_success_false(client):
    response = client.post("/execute", json={"node_id": "n", "code": "raise ValueError('no')"})
    assert response.status_code == 200
    body = response.json()
    assert body["success"] is False
    assert body["error"] == "ValueError: no"
    assert "raise ValueError('no')" in body["traceback"]


def test_unknown_fields_are_ignored(client):
    response = client.post("/execute", json={"node_id": "n", "code": "print(1)", "color": "red"})
    assert response.status_code == 200
    assert response.json()["stdout"] == "1\n"


@pytest.mark.parametrize("node_id", [pytest.param("node_1", id="str"), pytest.param(7, id="int")])
def test_node_id_may_be_a_string_or_an_int(client, run_code, node_id):
    result = run_code("flowfile.publish_artifact('a', 1)", node_id=node_id, flow_id=1)
    assert result["success"] is True
    [record] = client.get("/artifacts").json()
    assert record["node_id"] == node_id


@pytest.mark.parametrize("node_id", [pytest.param(7, id="int"), pytest.param("7", id="str")])
def test_artifacts_of_node_7_are_found_at_artifacts_node_7(client, run_code, node_id):
    run_code("flowfile.publish_artifact('seven', 7)", node_id=node_id, flow_id=1)
    run_code("flowfile.publish_artifact('eight', 8)", node_id=8, flow_id=1)
    response = client.get("/artifacts/node/7")
    assert response.status_code == 200
    assert [r["name"] for r in response.json()] == ["seven"]


def test_int_and_str_node_ids_are_the_same_node(run_code):
    run_code("flowfile.publish_artifact('m', 1)", node_id=7, flow_id=1)
    again = run_code("flowfile.publish_artifact('m', 2)", node_id="7", flow_id=1)
    assert again["success"] is True
    # re-executing node "7" cleared node 7's artifact first: not reported as deleted
    assert again["deleted_artifacts"] == []


def test_timeout_s_limits_the_execution(run_code):
    result = run_code("while True:\n    pass\n", timeout_s=0.2)
    assert result["success"] is False
    assert result["error"].startswith("Timeout")


# -- malformed requests: 422 naming the field --------------------------------------------


@pytest.mark.parametrize(
    ("body", "field"),
    [
        pytest.param({"node_id": "n"}, "code", id="missing-code"),
        pytest.param({"code": "x"}, "node_id", id="missing-node-id"),
        pytest.param({"node_id": "n", "code": 5}, "code", id="code-not-str"),
        pytest.param({"node_id": [1], "code": "x"}, "node_id", id="node-id-list"),
        pytest.param({"node_id": 1.5, "code": "x"}, "node_id", id="node-id-float"),
        pytest.param({"node_id": None, "code": "x"}, "node_id", id="node-id-null"),
        pytest.param({"node_id": "n", "code": "x", "flow_id": "1"}, "flow_id", id="flow-id-str"),
        pytest.param({"node_id": "n", "code": "x", "flow_id": 1.5}, "flow_id", id="flow-id-float"),
        pytest.param(
            {"node_id": "n", "code": "x", "input_paths": ["a"]},
            "input_paths",
            id="input-paths-list",
        ),
        pytest.param(
            {"node_id": "n", "code": "x", "input_paths": {"main": "a.parquet"}},
            "input_paths",
            id="input-paths-not-lists",
        ),
        pytest.param(
            {"node_id": "n", "code": "x", "input_paths": {"main": [1]}},
            "input_paths",
            id="input-path-not-str",
        ),
        pytest.param(
            {"node_id": "n", "code": "x", "output_dir": 3}, "output_dir", id="output-dir-not-str"
        ),
        pytest.param(
            {"node_id": "n", "code": "x", "timeout_s": -1}, "timeout_s", id="timeout-negative"
        ),
        pytest.param(
            {"node_id": "n", "code": "x", "timeout_s": "soon"}, "timeout_s", id="timeout-not-number"
        ),
    ],
)
def test_malformed_execute_is_422_naming_the_field(client, body, field):
    response = client.post("/execute", json=body)
    assert response.status_code == 422
    locations = [e["loc"] for e in response.json()["detail"]]
    assert all(loc[:2] == ["body", field] for loc in locations), locations


@pytest.mark.parametrize(
    "content",
    [
        pytest.param(b"{bad json", id="broken"),
        pytest.param(b"", id="empty"),
        pytest.param(b'"a string"', id="not-an-object"),
        pytest.param(b"[1, 2]", id="a-list"),
    ],
)
def test_malformed_json_is_422(client, content):
    response = client.post(
        "/execute", content=content, headers={"content-type": "application/json"}
    )
    assert response.status_code == 422
    assert response.json()["detail"][0]["loc"][0] == "body"


@pytest.mark.parametrize(
    ("method", "url", "body", "loc"),
    [
        pytest.param("POST", "/clear?flow_id=abc", None, ["query", "flow_id"], id="clear-flow-id"),
        pytest.param(
            "GET", "/artifacts?flow_id=x", None, ["query", "flow_id"], id="artifacts-flow-id"
        ),
        pytest.param(
            "GET",
            "/artifacts/node/7?flow_id=x",
            None,
            ["query", "flow_id"],
            id="node-artifacts-flow-id",
        ),
        pytest.param(
            "POST",
            "/clear_node_artifacts",
            {"flow_id": 1},
            ["body", "node_ids"],
            id="clear-nodes-missing-node-ids",
        ),
        pytest.param(
            "POST",
            "/clear_node_artifacts",
            {"node_ids": "n1"},
            ["body", "node_ids"],
            id="clear-nodes-node-ids-not-list",
        ),
        pytest.param(
            "POST",
            "/clear_node_artifacts",
            {"node_ids": ["n"], "flow_id": "1"},
            ["body", "flow_id"],
            id="clear-nodes-flow-id-str",
        ),
        pytest.param(
            "POST",
            "/interrupt",
            {"flow_id": "one"},
            ["body", "flow_id"],
            id="interrupt-flow-id-str",
        ),
        pytest.param(
            "POST", "/interrupt", {"node_id": [1]}, ["body", "node_id"], id="interrupt-node-id-list"
        ),
    ],
)
def test_other_malformed_requests_are_422_naming_the_field(client, method, url, body, loc):
    response = client.request(method, url, json=body)
    assert response.status_code == 422
    assert response.json()["detail"][0]["loc"][:2] == loc


# -- artifacts ---------------------------------------------------------------------------


@pytest.fixture
def three_artifacts(run_code) -> None:
    run_code(
        "import polars as pl\nflowfile.publish_artifact('totals', pl.DataFrame({'x': [1]}))",
        node_id="node_1",
        flow_id=1,
    )
    run_code("flowfile.publish_artifact('model', {'w': 1})", node_id="node_2", flow_id=1)
    run_code("flowfile.publish_artifact('totals', [1, 2])", node_id="node_1", flow_id=2)


def _keys(records: list[dict[str, Any]]) -> list[tuple[int, str]]:
    return sorted((r["flow_id"], r["name"]) for r in records)


def test_list_all_artifacts(client, three_artifacts):
    records = client.get("/artifacts").json()
    assert _keys(records) == [(1, "model"), (1, "totals"), (2, "totals")]
    for record in records:
        assert set(record) >= RECORD_FIELDS
        assert record["ticket"] == f"artifacts/{record['flow_id']}/{record['name']}"
    types = {(r["flow_id"], r["name"]): r["type_name"] for r in records}
    assert types == {(1, "model"): "dict", (1, "totals"): "DataFrame", (2, "totals"): "list"}


def test_list_one_flows_artifacts(client, three_artifacts):
    assert _keys(client.get("/artifacts?flow_id=1").json()) == [(1, "model"), (1, "totals")]
    assert client.get("/artifacts?flow_id=9").json() == []


def test_list_one_nodes_artifacts(client, three_artifacts):
    assert _keys(client.get("/artifacts/node/node_1?flow_id=1").json()) == [(1, "totals")]
    assert _keys(client.get("/artifacts/node/node_1").json()) == [(1, "totals"), (2, "totals")]
    assert client.get("/artifacts/node/nobody").json() == []


def test_clear_everything_returns_what_it_removed(client, three_artifacts):
    response = client.post("/clear")
    assert response.status_code == 200
    assert sorted(response.json()["removed"]) == ["model", "totals", "totals"]
    assert client.get("/artifacts").json() == []
    assert client.get("/health").json()["artifact_count"] == 0


def test_clear_one_flow_returns_what_it_removed(client, three_artifacts):
    response = client.post("/clear?flow_id=1")
    assert sorted(response.json()["removed"]) == ["model", "totals"]
    assert _keys(client.get("/artifacts").json()) == [(2, "totals")]


def test_clear_also_drops_flight_outputs(client, run_code):
    run_code(
        "import polars as pl\nflowfile.publish_output(pl.DataFrame({'x': [1]}))",
        node_id="n",
        flow_id=1,
    )
    assert client.get("/health").json()["output_count"] == 1
    assert client.post("/clear?flow_id=1").json()["removed_outputs"] == ["outputs/1/n/output_0"]
    assert client.get("/health").json()["output_count"] == 0


def test_clear_node_artifacts_returns_what_it_removed(client, three_artifacts):
    response = client.post(
        "/clear_node_artifacts", json={"node_ids": ["node_1", "node_2"], "flow_id": 1}
    )
    assert response.status_code == 200
    assert sorted(response.json()["removed"]) == ["model", "totals"]
    assert _keys(client.get("/artifacts").json()) == [(2, "totals")]


def test_clear_node_artifacts_takes_int_node_ids(client, run_code):
    run_code("flowfile.publish_artifact('a', 1)", node_id="7", flow_id=1)
    response = client.post("/clear_node_artifacts", json={"node_ids": [7]})
    assert response.json()["removed"] == ["a"]


# -- /interrupt --------------------------------------------------------------------------


@pytest.mark.parametrize(
    "kwargs",
    [
        pytest.param({}, id="no-body"),
        pytest.param({"json": {}}, id="empty-object"),
        pytest.param({"json": {"flow_id": 1, "node_id": "node_1"}}, id="no-match"),
    ],
)
def test_interrupt_with_nothing_running(client, kwargs):
    response = client.post("/interrupt", **kwargs)
    assert response.status_code == 200
    assert response.json() == {"interrupted": []}


def test_interrupt_stops_a_running_execution(client, kernel_server):
    release = threading.Event()
    kernel_server.kernel.artifacts.publish(2, None, "release", release)
    waiting = "flowfile.read_artifact('release').wait(10)\nprint('done')"
    with ThreadPoolExecutor(2) as pool:
        looping = pool.submit(
            client.post,
            "/execute",
            json={
                "node_id": "node_1",
                "flow_id": 1,
                "code": "while True:\n    pass\n",
                "timeout_s": 30,
            },
        )  # an interrupt that never arrives fails the test, not hangs it
        other = pool.submit(
            client.post, "/execute", json={"node_id": "node_1", "flow_id": 2, "code": waiting}
        )
        poll(
            lambda: len(client.get("/health").json()["running"]) == 2,
            timeout=10,
            what="two running executions",
        )

        response = client.post("/interrupt", json={"flow_id": 1, "node_id": "node_1"})

        interrupted = response.json()["interrupted"]
        assert [(i["flow_id"], i["node_id"]) for i in interrupted] == [(1, "node_1")]
        stopped = looping.result(timeout=10)
        release.set()
        finished = other.result(timeout=10)

    assert stopped.status_code == 200
    assert stopped.json()["success"] is False
    assert stopped.json()["error"].startswith("Interrupted")
    assert finished.json()["success"] is True
    assert finished.json()["stdout"] == "done\n"


# -- errors: KernelError -> HTTP status --------------------------------------------------


def test_every_kernel_error_has_an_http_status():
    # Direct subclasses each have a row; deeper ones inherit theirs along the MRO.
    assert set(KernelError.__subclasses__()) | {KernelError} == set(HTTP_STATUS)
    for cls in error_classes().values():
        assert lookup(HTTP_STATUS, cls("x")) is not None, cls


def test_a_subclass_takes_its_parents_status():
    settings = Settings(flight_port=0)
    lost = function_kernels(settings, _refusing(ConnectionLost("the kernel went away")))
    with TestClient(create_app(settings, kernels=lost)) as refused:
        response = refused.get("/artifacts")
    assert response.status_code == 503
    assert response.json() == {"detail": "the kernel went away", "error_kind": "ConnectionLost"}


def _refusing(error: KernelError):
    """A kernel whose every call is refused with `error`."""

    def handler(action, body):
        raise error

    return handler


@pytest.mark.parametrize(
    ("error_class", "status"),
    [pytest.param(cls, code, id=cls.__name__) for cls, code in HTTP_STATUS.items()],
)
def test_kernel_errors_become_their_http_status(error_class, status):
    settings = Settings(flight_port=0)
    refusal = error_class("no artifact 'x'")
    app = create_app(settings, kernels=function_kernels(settings, _refusing(refusal)))
    with TestClient(app) as refused:
        response = refused.get("/artifacts")
    assert response.status_code == status
    detail = response.json()["detail"]
    if status == 422:  # FastAPI's 422 shape, naming what was wrong
        assert [d["msg"] for d in detail] == ["no artifact 'x'"]
    else:
        assert detail == "no artifact 'x'"
    assert response.json()["error_kind"] == error_class.__name__


def test_openapi_docs_are_served(client):
    assert client.get("/docs").status_code == 200
    paths = client.get("/openapi.json").json()["paths"]
    assert {
        "/health",
        "/execute",
        "/artifacts",
        "/artifacts/node/{node_id}",
        "/clear",
        "/clear_node_artifacts",
        "/interrupt",
    } <= set(paths)
