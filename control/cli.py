"""`kernel-runtime serve`: the control plane and its kernel, on one command."""

from __future__ import annotations

import argparse
import dataclasses
import ipaddress
import logging
import signal
import threading
from collections.abc import Callable
from types import FrameType
from typing import Any

import uvicorn
from fastapi import FastAPI

from control.app import create_app
from flight_kernel.settings import Settings

logger = logging.getLogger(__name__)

ANSWER_TIME_S = 2  # after the kernels are stopped at the grace, for their answers to go out


def _is_loopback(host: str) -> bool:
    """Whether `host` is reachable only from this machine (`localhost`, 127.0.0.0/8, `::1`)."""
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False  # another host name: it may resolve to any interface


def _warn_if_open(settings: Settings) -> None:
    """Warn when both planes listen beyond loopback and no token guards them."""
    if settings.auth_token is None and not _is_loopback(settings.host):
        logger.warning(
            "listening on %s without KERNEL_AUTH_TOKEN: anyone who reaches ports %s (HTTP) "
            "and %s (Flight) can run code in this service; set KERNEL_AUTH_TOKEN to require "
            "a bearer token",
            settings.host,
            settings.http_port,
            settings.flight_port,
        )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="kernel-runtime")
    sub = parser.add_subparsers(dest="command", required=True)
    serve = sub.add_parser("serve", help="start the HTTP control plane and the Flight kernel")
    serve.add_argument("--host", help="bind address of both planes (KERNEL_HOST)")
    serve.add_argument("--port", type=int, help="HTTP port (KERNEL_HTTP_PORT)")
    serve.add_argument("--flight-port", type=int, help="Flight port (KERNEL_FLIGHT_PORT)")
    args = parser.parse_args(argv)

    settings = Settings.from_env()
    overrides = {"host": args.host, "http_port": args.port, "flight_port": args.flight_port}
    settings = dataclasses.replace(
        settings, **{k: v for k, v in overrides.items() if v is not None}
    )
    logging.basicConfig(
        level=settings.log_level, format="%(asctime)s control %(levelname)s %(name)s: %(message)s"
    )
    _warn_if_open(settings)
    # uvicorn handles SIGTERM/SIGINT gracefully while it runs, then re-raises the signal
    # under the handler found before it started: make that one a no-op, so a clean
    # shutdown exits 0.
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: None)
    serve_app(
        create_app(settings),
        host=settings.host,
        port=settings.http_port,
        log_level=settings.log_level.lower(),
        access_log=False,
        shutdown_grace_s=settings.shutdown_grace_s,
    )


class _Server(uvicorn.Server):
    """uvicorn's server, which also ends the kernels when the shutdown's grace is over: the
    executions still running then answer `KernelDied` before uvicorn cuts their requests."""

    def __init__(self, config: uvicorn.Config, stop_kernels: Callable[[], None], grace: float):
        super().__init__(config)
        self._stop_kernels = stop_kernels
        self._grace = grace
        self._timer: threading.Timer | None = None

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        if self._timer is None:
            self._timer = threading.Timer(self._grace, self._stop_kernels)
            self._timer.daemon = True
            self._timer.start()
        super().handle_exit(sig, frame)


def serve_app(app: FastAPI, *, shutdown_grace_s: float, **options: Any) -> None:
    """Run the app until SIGTERM or SIGINT, then shut down within the grace (plus the time
    the last answers take to leave)."""
    config = uvicorn.Config(
        app, timeout_graceful_shutdown=int(shutdown_grace_s) + ANSWER_TIME_S, **options
    )
    _Server(config, app.state.kernels.stop, shutdown_grace_s).run()


if __name__ == "__main__":
    main()
