"""Fixtures of the e2e tests: `kernel-runtime serve` started on free ports, stopped afterwards."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.e2e import service as serve
from tests.e2e.service import Service


@pytest.fixture
def start_service(tmp_path: Path) -> Iterator[Callable[..., Service]]:
    """Start a service with the given KERNEL_* (or other) variables; each is stopped at the end."""
    started: list[Service] = []

    def start(**env: str) -> Service:
        service = serve.start(tmp_path, env)
        started.append(service)
        return service

    yield start
    for service in started:
        service.stop()  # a no-op for a service the test stopped itself


@pytest.fixture
def service(start_service: Callable[..., Service]) -> Service:
    """A service with the default settings (and a patient interrupt grace)."""
    return start_service()
