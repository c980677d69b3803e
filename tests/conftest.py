"""Shared fixtures: an in-process Flight kernel, a Flight client, and the app over them."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator

import pyarrow.flight as flight
import pytest
from fastapi.testclient import TestClient

from control.app import create_app
from control.supervisor import AttachedKernel
from flight_kernel.server import KernelFlightServer
from flight_kernel.settings import Settings


@pytest.fixture
def settings() -> Settings:
    return Settings(flight_port=0)


@pytest.fixture
def kernel_server(settings: Settings) -> Iterator[KernelFlightServer]:
    with KernelFlightServer(settings) as server:
        yield server


@pytest.fixture
def kernel_location(kernel_server: KernelFlightServer) -> str:
    return f"grpc://127.0.0.1:{kernel_server.port}"


@pytest.fixture
def flight_client(kernel_location: str) -> Iterator[flight.FlightClient]:
    with flight.connect(kernel_location) as client:
        yield client


@pytest.fixture
def client(settings: Settings, kernel_server: KernelFlightServer,
           kernel_location: str) -> Iterator[TestClient]:
    app_settings = dataclasses.replace(settings, flight_port=kernel_server.port)
    app = create_app(app_settings, kernel=AttachedKernel(app_settings, kernel_location))
    with TestClient(app) as test_client:
        yield test_client
