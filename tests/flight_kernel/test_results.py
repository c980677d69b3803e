"""ExecutionResult: the one response value, its JSON form and the "kernel died" answer."""

from __future__ import annotations

import json

from flight_kernel.results import ErrorKind, ExecutionResult, LogRecord

FAILED = ExecutionResult(
    success=False,
    flow_id=3,
    node_id=7,
    execution_id="ex-1",
    output_paths=["flight:///outputs/3/7/main"],
    published_artifacts=["model"],
    deleted_artifacts=["old"],
    stdout="before\n",
    stderr="warning\n",
    error="ZeroDivisionError: division by zero",
    error_kind=ErrorKind.EXCEPTION,
    traceback='Traceback (most recent call last):\n  File "<node 7>", line 2\n',
    logs=[
        LogRecord("INFO", "started", 3, 7, "2024-01-01T00:00:00+00:00"),
        LogRecord("ERROR", "failed", 3, "7", "2024-01-01T00:00:01+00:00"),
    ],
    display_outputs=[{"mime_type": "text/plain", "data": "42"}],
    execution_time_ms=12.5,
    kernel_restarted=False,
    lost_state=[],
    exit_code=None,
)


def test_from_json_of_to_json_gives_back_the_result():
    assert ExecutionResult.from_json(FAILED.to_json()) == FAILED


def test_from_json_of_the_json_text_gives_back_the_result():
    assert ExecutionResult.from_json(json.loads(json.dumps(FAILED.to_json()))) == FAILED


def test_to_json_has_lists_plain_dicts_and_the_error_kind_as_its_string():
    body = FAILED.to_json()
    assert json.loads(json.dumps(body)) == body
    assert type(body["error_kind"]) is str
    assert body["error_kind"] == "exception"
    assert body["logs"] == [
        {
            "level": "INFO",
            "message": "started",
            "flow_id": 3,
            "node_id": 7,
            "timestamp": "2024-01-01T00:00:00+00:00",
        },
        {
            "level": "ERROR",
            "message": "failed",
            "flow_id": 3,
            "node_id": "7",
            "timestamp": "2024-01-01T00:00:01+00:00",
        },
    ]
    assert {k for k, v in body.items() if type(v) is list} == {
        "output_paths",
        "published_artifacts",
        "deleted_artifacts",
        "logs",
        "display_outputs",
        "lost_state",
        "lost_artifacts",
        "lost_namespaces",
    }


def test_to_json_of_a_success_has_no_error_kind():
    body = ExecutionResult(success=True, flow_id=0, node_id="n", execution_id="e").to_json()
    assert body["error_kind"] is None
    assert body["logs"] == []


def test_from_json_ignores_unknown_fields_and_fills_missing_optional_ones():
    body = {
        "success": True,
        "flow_id": 1,
        "node_id": "n",
        "execution_id": "e",
        "added_in_a_later_version": {"a": 1},
    }
    assert ExecutionResult.from_json(body) == ExecutionResult(
        success=True, flow_id=1, node_id="n", execution_id="e"
    )


def test_from_json_takes_null_logs_and_error_kind():
    body = {
        "success": True,
        "flow_id": 1,
        "node_id": "n",
        "execution_id": "e",
        "logs": None,
        "error_kind": None,
    }
    assert ExecutionResult.from_json(body) == ExecutionResult(
        success=True, flow_id=1, node_id="n", execution_id="e"
    )


def test_kernel_died_is_a_failure_with_a_restarted_kernel():
    died = ExecutionResult.kernel_died(
        flow_id=2,
        node_id="n1",
        execution_id="ex-9",
        error="Timeout: the execution exceeded 1 s; the kernel was restarted",
        error_kind=ErrorKind.TIMEOUT,
        execution_time_ms=1234.56789,
        lost_state=["artifacts"],
        lost_artifacts=["model"],
        exit_code=-9,
    )
    assert died == ExecutionResult(
        success=False,
        flow_id=2,
        node_id="n1",
        execution_id="ex-9",
        error="Timeout: the execution exceeded 1 s; the kernel was restarted",
        error_kind=ErrorKind.TIMEOUT,
        execution_time_ms=1234.568,
        kernel_restarted=True,
        lost_state=["artifacts"],
        lost_artifacts=["model"],
        exit_code=-9,
    )


def test_kernel_died_is_of_kind_kernel_died_unless_told():
    died = ExecutionResult.kernel_died(
        flow_id=0,
        node_id=1,
        execution_id="e",
        error="KernelDied: exit code 3",
        execution_time_ms=5.0,
        lost_state=[],
        lost_artifacts=[],
        exit_code=3,
    )
    assert (died.success, died.error_kind, died.kernel_restarted, died.exit_code) == (
        False,
        ErrorKind.KERNEL_DIED,
        True,
        3,
    )
