"""Helpers the tests share: free ports, polling with a deadline, latches, Flight and HTTP calls."""

from __future__ import annotations

import contextlib
import json
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import httpx
import pyarrow.flight as flight
import pytest
import uvicorn
from fastapi import FastAPI
from fastapi.testclient import TestClient
from pyarrow.util import find_free_port

T = TypeVar("T")

POLL_INTERVAL_S = 0.02


HttpClient = httpx.Client | TestClient  # a real server's client, or the in-process app's


def free_port() -> int:
    """A TCP port nobody listens on right now, for a server started in another process."""
    return int(find_free_port())


def poll(
    predicate: Callable[[], T | None],
    timeout: float,
    what: str,
    *,
    ignoring: tuple[type[Exception], ...] = (),
    detail: Callable[[], str] | None = None,
) -> T:
    """Call `predicate` until it returns something truthy, and return that.

    Fails the test, naming `what`, when `timeout` seconds pass first. Exceptions of the types
    in `ignoring` count as "not yet" (a server that is not listening yet). `detail` is called
    on failure and its text appended to the message (a server's log, say).
    """
    deadline = time.monotonic() + timeout
    while True:
        try:
            value = predicate()
        except ignoring:
            pass
        else:
            if value:
                return value
        if time.monotonic() > deadline:
            message = f"timed out after {timeout:g} s waiting for {what}"
            if detail is not None:
                message += f":\n{detail()}"
            pytest.fail(message, pytrace=False)
        time.sleep(POLL_INTERVAL_S)  # a polling interval, not a wait for something


@dataclass(frozen=True)
class Latch:
    """A file one process creates and another waits for: an event across processes.

    User code sets or waits for it with the snippets from `set_code()` and `wait_code()`.
    """

    path: Path

    def set(self) -> None:
        """Open the latch."""
        self.path.touch()

    def is_set(self) -> bool:
        """Whether the latch has been opened."""
        return self.path.exists()

    def wait(self, timeout: float, what: str, *, detail: Callable[[], str] | None = None) -> None:
        """Poll until the latch is open; fail the test naming `what` after `timeout` seconds."""
        poll(self.is_set, timeout, what, detail=detail)

    def set_code(self) -> str:
        """A Python expression (no imports needed) that opens the latch."""
        return f"open({str(self.path)!r}, 'w').close()"

    def wait_code(self, timeout: float = 120.0) -> str:
        """Top-level Python statements that wait for the latch, or raise TimeoutError."""
        return (
            "import os as _os, time as _time\n"
            f"_deadline = _time.monotonic() + {timeout!r}\n"
            f"while not _os.path.exists({str(self.path)!r}):\n"
            "    if _time.monotonic() > _deadline:\n"
            f"        raise TimeoutError('latch {self.path.name} not set within {timeout:g} s')\n"
            f"    _time.sleep({POLL_INTERVAL_S!r})\n"
        )


def flight_action(
    client: flight.FlightClient,
    name: str,
    body: Any = None,
    options: flight.FlightCallOptions | None = None,
) -> Any:
    """Run action `name` with `body` as JSON (None: an empty body); its one answer, decoded."""
    raw = b"" if body is None else json.dumps(body).encode()
    results = list(client.do_action(flight.Action(name, raw), options))
    assert len(results) == 1, f"action {name!r} answered {len(results)} results, not one"
    return json.loads(results[0].body.to_pybytes())


def post_json(http: HttpClient, path: str, body: Any, *, status: int = 200) -> Any:
    """POST `body` as JSON to `path`; the decoded answer, whose status must be `status`."""
    response = http.post(path, json=body)
    assert response.status_code == status, f"{path}: HTTP {response.status_code}: {response.text}"
    return response.json()


def execute(
    http: HttpClient, code: str, *, node_id: str | int = "node_1", **fields: Any
) -> dict[str, Any]:
    """POST /execute of `code` (and any other request fields); the answer, which must be a 200."""
    result: dict[str, Any] = post_json(
        http, "/execute", {"node_id": node_id, "code": code, **fields}
    )
    return result


def healthy(http: HttpClient) -> dict[str, Any] | None:
    """The /health answer once it is a 200; None while starting or not listening yet."""
    try:
        response = http.get("/health")
    except httpx.TransportError:
        return None
    if response.status_code != 200:
        return None
    body: dict[str, Any] = response.json()
    return body


@contextlib.contextmanager
def serving(app: FastAPI) -> Iterator[str]:
    """`app` served by uvicorn on a free port in a background thread; its base URL."""
    config = uvicorn.Config(
        app, host="127.0.0.1", port=0, log_level="warning", ws="none", lifespan="on"
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, name="uvicorn", daemon=True)
    thread.start()
    poll(lambda: server.started or not thread.is_alive(), 10, "uvicorn to start")
    assert thread.is_alive(), "uvicorn stopped before it started"
    port = server.servers[0].sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)
        assert not thread.is_alive(), "uvicorn did not stop"
