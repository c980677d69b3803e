"""Shared fixtures: an in-process Flight kernel, a Flight client, and the app over them."""

from __future__ import annotations

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
from control.router import KernelRouter, SharedRouter
from flight_kernel.kernel import Kernel
from flight_kernel.server import KernelFlightServer
from flight_kernel.settings import Settings
from tests.helpers import execute


def attached(settings: Settings, location: str) -> KernelRouter:
    """Kernels for `create_app`: the one kernel that listens at `location`."""
    conn = KernelConnection(location, settings.auth_token)
    return SharedRouter(KernelHandle(AttachedKernel(conn), settings))


@pytest.fixture
def settings(tmp_path_factory: pytest.TempPathFactory) -> Settings:
    """Both planes on free ports, over a store of the test's own (beside `tmp_path`)."""
    return Settings(flight_port=0, store_dir=str(tmp_path_factory.mktemp("store")))


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
    app = create_app(settings, kernels=attached(settings, kernel_location))
    with TestClient(app) as test_client:
        yield test_client


@pytest.fixture
def run_code(client: TestClient) -> Callable[..., dict[str, Any]]:
    """POST /execute through `client`; the body is `node_id`, `code` and any other fields."""

    return functools.partial(execute, client)
