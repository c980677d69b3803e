"""Shared fixtures: an in-process Flight kernel, a Flight client, and the app over them."""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable, Iterator
from typing import Any

import pyarrow.flight as flight
import pytest
from fastapi.testclient import TestClient

from control.app import create_app
from control.connection import KernelConnection
from control.handle import KernelHandle
from control.processes import AttachedKernel
from control.router import KernelRouter
from flight_kernel.kernel import Kernel
from flight_kernel.server import KernelFlightServer
from flight_kernel.settings import Settings
from tests.helpers import execute


def attached(settings: Settings, location: str) -> KernelRouter:
    """Kernels for `create_app`: the one kernel that listens at `location`."""
    conn = KernelConnection(location, settings.auth_token)
    return KernelRouter(KernelHandle(AttachedKernel(conn), settings))


@pytest.fixture
def settings() -> Settings:
    return Settings(flight_port=0)


@pytest.fixture
def kernel_server(settings: Settings) -> Iterator[KernelFlightServer]:
    with KernelFlightServer(Kernel(settings)) as server:
        yield server


@pytest.fixture
def kernel_location(kernel_server: KernelFlightServer) -> str:
    return f"grpc://127.0.0.1:{kernel_server.port}"


@pytest.fixture
def flight_client(kernel_location: str) -> Iterator[flight.FlightClient]:
    with flight.connect(kernel_location) as client:
        yield client


@pytest.fixture
def client(
    settings: Settings, kernel_server: KernelFlightServer, kernel_location: str
) -> Iterator[TestClient]:
    app_settings = dataclasses.replace(settings, flight_port=kernel_server.port)
    app = create_app(app_settings, kernels=attached(app_settings, kernel_location))
    with TestClient(app) as test_client:
        yield test_client


@pytest.fixture
def run_code(client: TestClient) -> Callable[..., dict[str, Any]]:
    """POST /execute through `client`; the body is `node_id`, `code` and any other fields."""

    return functools.partial(execute, client)
