"""A kernel double that takes a function (httpx's `MockTransport`, for kernels)."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import pyarrow as pa
import pyarrow.flight as flight

from control.handle import KernelHandle
from control.processes import AttachedKernel
from control.router import KernelRouter, SharedRouter
from flight_kernel.errors import NotFound
from flight_kernel.settings import Settings

Handler = Callable[[str, dict[str, Any]], Any]


class FunctionConnection:
    """A `Connection` whose every call is `handler(action, body)`, JSON-encoded."""

    def __init__(self, handler: Handler) -> None:
        self.handler = handler
        self.calls: list[tuple[str, dict[str, Any]]] = []

    def call(
        self,
        action: str,
        body: dict[str, Any] | None = None,
        timeout: float | None = None,
        on_event: Callable[[bytes], None] | None = None,
    ) -> bytes:
        self.calls.append((action, body or {}))
        return json.dumps(self.handler(action, body or {})).encode()

    def read(self, path: str) -> flight.FlightStreamReader:
        raise NotFound(f"nothing stored at {path} (a function kernel holds no data)")

    def write(self, path: str, table: pa.Table) -> None:
        raise NotFound(f"nothing stored at {path} (a function kernel holds no data)")

    def infos(self, prefix: str, timeout: float | None = None) -> list[flight.FlightInfo]:
        return []

    def info(self, path: str, timeout: float | None = None) -> flight.FlightInfo:
        raise NotFound(f"nothing stored at {path} (a function kernel holds no data)")

    def close(self) -> None:
        pass


def function_kernels(settings: Settings, handler: Handler) -> KernelRouter:
    """Kernels for `create_app` that answer every action with `handler`."""
    return SharedRouter(KernelHandle(AttachedKernel(FunctionConnection(handler)), settings))
