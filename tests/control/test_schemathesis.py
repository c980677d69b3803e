"""Schemathesis over the control plane's own OpenAPI schema: no 500, no response off-schema.

The app is the `client` fixture's (a TestClient, so the lifespan runs, attached to an
in-process kernel). Generated `code` is executed by that kernel: it is random text, mostly
SyntaxErrors, but each request is clamped to short code and a small timeout so that nothing
generated can hang the run.
"""

from __future__ import annotations

import threading
from typing import Any

import schemathesis
from fastapi import FastAPI
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, settings

from control.app import create_app
from flight_kernel.settings import Settings
from tests.control.doubles import function_kernels

MAX_CODE_CHARS = 200
MAX_TIMEOUT_S = 1.0


def _schema_app() -> FastAPI:
    """An app built only for its OpenAPI document: never started, so nothing to close."""
    settings = Settings(flight_port=0)
    return create_app(settings, kernels=function_kernels(settings, lambda action, body: None))


# Not `schemathesis.pytest.from_fixture`: its lazy schema sets `Item._nodeid`, gone in pytest 9.
schema = schemathesis.openapi.from_dict(_schema_app().openapi())


def _clamp_execute_body(body: Any) -> None:
    """Short code, small timeout: valid values stay valid, invalid ones are left alone."""
    if not isinstance(body, dict):
        return
    code = body.get("code")
    if isinstance(code, str):
        body["code"] = code[:MAX_CODE_CHARS]
    timeout = body.get("timeout_s")
    is_number = isinstance(timeout, int | float) and not isinstance(timeout, bool)
    # Above the schema's maximum (a timer's) it is invalid, refused and never run: kept.
    if timeout is None or (is_number and MAX_TIMEOUT_S < timeout <= threading.TIMEOUT_MAX):
        body["timeout_s"] = MAX_TIMEOUT_S


def _httpx_kwargs(kwargs: dict[str, Any]) -> dict[str, Any]:
    """Schemathesis serializes for `requests`; the TestClient speaks httpx."""
    kwargs = dict(kwargs)
    # httpx deprecates per-request cookies and raw bytes as `data`.
    cookies = kwargs.pop("cookies", None) or {}
    if cookies:
        kwargs["headers"] = {
            **kwargs.get("headers", {}),
            "Cookie": "; ".join(f"{k}={v}" for k, v in cookies.items()),
        }
    if isinstance(kwargs.get("data"), bytes | str):
        kwargs["content"] = kwargs.pop("data")
    return kwargs


@schema.parametrize()
@settings(max_examples=100, deadline=None, suppress_health_check=list(HealthCheck))
def test_api_conforms_to_its_schema(case: Any, client: TestClient) -> None:
    if case.operation.path == "/execute":
        _clamp_execute_body(case.body)
    response = client.request(**_httpx_kwargs(case.as_transport_kwargs()))
    case.validate_response(response)  # every check that applies
