"""The HTTP schemas mirror the shared result values field for field."""

from __future__ import annotations

import dataclasses

from control import schemas
from flight_kernel import results
from flight_kernel.results import ErrorKind, ExecutionResult, LogRecord


def test_execute_response_has_the_fields_of_execution_result():
    assert set(schemas.ExecuteResponse.model_fields) == {
        f.name for f in dataclasses.fields(ExecutionResult)
    }


def test_the_log_record_schema_has_the_fields_of_the_log_record_value():
    assert set(schemas.LogRecord.model_fields) == {
        f.name for f in dataclasses.fields(results.LogRecord)
    }


def test_the_json_of_a_result_is_a_valid_execute_response():
    result = ExecutionResult(
        success=False,
        flow_id=1,
        node_id=4,
        execution_id="e",
        error="ValueError: no",
        error_kind=ErrorKind.EXCEPTION,
        logs=[LogRecord("WARNING", "careful", 1, 4, "2024-01-01T00:00:00+00:00")],
        execution_time_ms=1.5,
    )
    response = schemas.ExecuteResponse.model_validate(result.to_json())
    assert response.model_dump(mode="json") == result.to_json()
