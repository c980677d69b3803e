"""`kernel-runtime serve` bound beyond loopback without a token warns that anyone can run code."""

from __future__ import annotations

import logging
import signal
from collections.abc import Iterator
from typing import Any

import pytest

import control.cli

TOKEN = "s3cret-token-value"


@pytest.fixture
def serve(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> Iterator[list[dict[str, Any]]]:
    """What `main` calls `uvicorn.run` with (nothing starts), and the warnings logged by then.

    `main` installs signal handlers and configures logging: both are undone afterwards.
    """
    handlers = {signum: signal.getsignal(signum) for signum in (signal.SIGTERM, signal.SIGINT)}
    root = logging.getLogger()
    level, root_handlers = root.level, list(root.handlers)
    calls: list[dict[str, Any]] = []

    def run(app: Any, **kwargs: Any) -> None:
        calls.append({"app": app, "warned": _warnings(caplog), **kwargs})

    monkeypatch.setattr("control.cli.serve_app", run)
    for key in ("KERNEL_HOST", "KERNEL_AUTH_TOKEN", "KERNEL_HTTP_PORT", "KERNEL_FLIGHT_PORT"):
        monkeypatch.delenv(key, raising=False)
    try:
        yield calls
    finally:
        for signum, handler in handlers.items():
            signal.signal(signum, handler)
        root.setLevel(level)
        root.handlers[:] = root_handlers


def _warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    """What `serve` warned (not a late timer of an earlier test's kernel handle)."""
    return [
        r.getMessage()
        for r in caplog.records
        if r.levelno >= logging.WARNING and r.name == "control.cli"
    ]


@pytest.mark.parametrize(
    "host",
    [
        pytest.param("0.0.0.0", id="ipv4-any"),
        pytest.param("::", id="ipv6-any"),
        pytest.param("192.168.1.20", id="lan-address"),
        pytest.param("kernel.example", id="host-name"),
    ],
)
def test_beyond_loopback_without_a_token_warns_before_serving(
    serve: list[dict[str, Any]], caplog: pytest.LogCaptureFixture, host: str
) -> None:
    control.cli.main(["serve", "--host", host, "--port", "19999", "--flight-port", "18815"])
    [call] = serve
    assert call["host"] == host
    [warning] = call["warned"]  # logged before uvicorn started
    assert _warnings(caplog) == [warning]
    assert host in warning
    assert "without KERNEL_AUTH_TOKEN" in warning
    assert "anyone who reaches ports 19999 (HTTP) and 18815 (Flight) can run code" in warning
    assert "set KERNEL_AUTH_TOKEN" in warning


def test_the_image_default_from_the_environment_warns_too(
    serve: list[dict[str, Any]], caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("KERNEL_HOST", "0.0.0.0")  # what the Dockerfile sets
    control.cli.main(["serve", "--port", "0", "--flight-port", "0"])
    [warning] = _warnings(caplog)
    assert "0.0.0.0 without KERNEL_AUTH_TOKEN" in warning


@pytest.mark.parametrize("host", ["127.0.0.1", "localhost", "::1", "127.0.0.2", "LocalHost"])
def test_loopback_without_a_token_does_not_warn(
    serve: list[dict[str, Any]], caplog: pytest.LogCaptureFixture, host: str
) -> None:
    control.cli.main(["serve", "--host", host, "--port", "0", "--flight-port", "0"])
    [call] = serve
    assert call["host"] == host
    assert _warnings(caplog) == []


def test_the_default_host_does_not_warn(
    serve: list[dict[str, Any]], caplog: pytest.LogCaptureFixture
) -> None:
    control.cli.main(["serve", "--port", "0", "--flight-port", "0"])
    assert _warnings(caplog) == []


def test_beyond_loopback_with_a_token_does_not_warn_nor_log_the_token(
    serve: list[dict[str, Any]], caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("KERNEL_AUTH_TOKEN", TOKEN)
    with caplog.at_level(logging.DEBUG):
        control.cli.main(["serve", "--host", "0.0.0.0", "--port", "0", "--flight-port", "0"])
    [call] = serve
    assert call["app"].state.settings.auth_token == TOKEN  # the token was taken up
    assert _warnings(caplog) == []
    assert all(TOKEN not in r.getMessage() for r in caplog.records)
