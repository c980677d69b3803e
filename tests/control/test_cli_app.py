"""`control.app:app` is built once and lazily; `kernel-runtime serve` honours its ports."""

from __future__ import annotations

import dataclasses
import logging
import signal
from collections.abc import Iterator
from typing import Any

import pytest
from fastapi import FastAPI

import control.app
import control.cli
from flight_kernel.settings import Settings


@pytest.fixture
def process_state() -> Iterator[None]:
    """`main` installs signal handlers and configures logging: undo both afterwards."""
    handlers = {signum: signal.getsignal(signum) for signum in (signal.SIGTERM, signal.SIGINT)}
    root = logging.getLogger()
    level, root_handlers = root.level, list(root.handlers)
    try:
        yield
    finally:
        for signum, handler in handlers.items():
            signal.signal(signum, handler)
        root.setLevel(level)
        root.handlers[:] = root_handlers


@pytest.fixture
def uvicorn_runs(monkeypatch: pytest.MonkeyPatch, process_state: None) -> list[dict[str, Any]]:
    """What `uvicorn.run` is called with by `control.cli` (nothing is started)."""
    calls: list[dict[str, Any]] = []

    def run(app: FastAPI, **kwargs: Any) -> None:
        calls.append({"app": app, **kwargs})

    monkeypatch.setattr("control.cli.serve_app", run)
    return calls


def test_the_module_app_is_one_object():
    assert control.app.app is control.app.app


def test_the_module_app_is_built_from_the_environment_without_starting_its_kernel():
    app = control.app.app
    assert isinstance(app, FastAPI)
    # the settings of the environment, and the store opened for them
    store = app.state.service.store
    assert app.state.settings == dataclasses.replace(
        Settings.from_env(), store_dir=store.directory, store_max_bytes=store.max_bytes
    )
    # the lifespan (which starts the first spare kernel) has not run
    assert app.state.kernels.kernels() == []


def test_other_module_attributes_are_missing():
    with pytest.raises(AttributeError):
        _ = control.app.no_such_attribute


def test_serve_on_port_0_is_honoured(uvicorn_runs, monkeypatch):
    for key in ("KERNEL_HTTP_PORT", "KERNEL_FLIGHT_PORT"):
        monkeypatch.delenv(key, raising=False)
    control.cli.main(["serve", "--port", "0", "--flight-port", "0"])
    [call] = uvicorn_runs
    assert call["port"] == 0
    settings = call["app"].state.settings
    assert (settings.http_port, settings.flight_port) == (0, 0)
    assert call["app"].state.kernels.kernels() == []  # built, no kernel started


def test_serve_without_ports_takes_them_from_the_environment(uvicorn_runs, monkeypatch):
    monkeypatch.setenv("KERNEL_HTTP_PORT", "19999")
    monkeypatch.setenv("KERNEL_FLIGHT_PORT", "18815")
    control.cli.main(["serve", "--host", "127.0.0.2"])
    [call] = uvicorn_runs
    assert (call["host"], call["port"]) == ("127.0.0.2", 19999)
    settings = call["app"].state.settings
    assert (settings.host, settings.http_port, settings.flight_port) == (
        "127.0.0.2",
        19999,
        18815,
    )
