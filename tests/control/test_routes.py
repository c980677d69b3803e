"""The routes over a function-backed kernel: what they forward, refuse and answer."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from fastapi.testclient import TestClient

from control.app import create_app
from control.handle import KernelHandle
from control.processes import AttachedKernel
from control.router import SharedRouter, merge_dicts_of_lists, merge_lists
from flight_kernel.results import ExecutionResult
from flight_kernel.settings import Settings
from tests.control.doubles import FunctionConnection

SETTINGS = Settings(flight_port=0)


class Recorder:
    """Answers every action from `answers`, remembering what it was asked."""

    def __init__(self, answers: dict[str, Any]) -> None:
        self.answers = answers
        self.conn = FunctionConnection(lambda action, body: self.answers[action])


@pytest.fixture
def kernel() -> Recorder:
    result = ExecutionResult(success=True, flow_id=4, node_id="n", execution_id="e1")
    return Recorder(
        {
            "execute": result.to_json(),
            "interrupt": {"interrupted": []},
            "clear": {"status": "cleared", "removed": ["a"]},
            "list_artifacts": [],
            "health": {"status": "healthy", "version": "x", "artifact_count": 0},
        }
    )


@pytest.fixture
def http(kernel: Recorder) -> Iterator[TestClient]:
    router = SharedRouter(KernelHandle(AttachedKernel(kernel.conn), SETTINGS))
    with TestClient(create_app(SETTINGS, kernels=router)) as client:
        yield client


def test_execute_forwards_the_validated_request_with_an_execution_id(http, kernel):
    response = http.post("/execute", json={"node_id": 7, "code": "x = 1", "extra": "ignored"})

    assert response.status_code == 200
    assert response.json()["execution_id"] == "e1"
    [(action, body)] = kernel.conn.calls
    assert action == "execute"
    assert body["node_id"] == 7
    assert body["code"] == "x = 1"
    assert body["flow_id"] == 0
    assert body["input_paths"] == {}
    assert "extra" not in body
    assert body["execution_id"]  # minted before it leaves the control plane


def test_a_malformed_execute_never_reaches_the_kernel(http, kernel):
    response = http.post("/execute", json={"node_id": True, "code": "x"})
    assert response.status_code == 422
    assert response.json()["detail"][0]["loc"][:2] == ["body", "node_id"]
    assert kernel.conn.calls == []


def test_an_interrupt_with_an_unknown_field_is_refused_not_widened(http, kernel):
    response = http.post("/interrupt", json={"exec_token": "abc"})
    assert response.status_code == 422
    assert kernel.conn.calls == []


def test_an_interrupt_by_execution_id_is_forwarded_as_given(http, kernel):
    response = http.post("/interrupt", json={"execution_id": "e1"})
    assert response.json() == {"interrupted": []}
    assert kernel.conn.calls == [("interrupt", {"execution_id": "e1"})]


def test_clear_without_a_flow_asks_every_kernel(http, kernel):
    assert http.post("/clear").json() == {"status": "cleared", "removed": ["a"]}
    assert kernel.conn.calls == [("clear", {"flow_id": None})]


def test_health_merges_the_kernels_answer_with_the_supervisors(http):
    body = http.get("/health").json()
    assert body["status"] == "healthy"
    assert body["restarts"] == 0
    assert isinstance(body["supervisor_pid"], int)


def test_merges_concatenate_what_each_kernel_answered():
    assert merge_lists([[1], [], [2, 3]]) == [1, 2, 3]
    merged = merge_dicts_of_lists(
        [{"status": "cleared", "removed": ["a"]}, {"status": "cleared", "removed": ["b"]}]
    )
    assert merged == {"status": "cleared", "removed": ["a", "b"]}
