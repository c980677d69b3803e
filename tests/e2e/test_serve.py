"""`kernel-runtime serve` for real: a supervisor process, its kernel child, free ports."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import psutil
import pytest

pytestmark = pytest.mark.e2e

SERVE = Path(sys.executable).parent / "kernel-runtime"
START_DEADLINE_S = 60.0


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@dataclass
class Served:
    proc: subprocess.Popen[bytes]
    http: httpx.Client
    log: Path

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def execute(self, code: str, **fields: Any) -> dict[str, Any]:
        response = self.http.post("/execute", json={"node_id": "n1", "code": code, **fields})
        assert response.status_code == 200, response.text
        body: dict[str, Any] = response.json()
        return body

    def healthy(self) -> dict[str, Any]:
        """Poll /health until it answers 200; fail when the deadline passes first."""
        deadline = time.monotonic() + START_DEADLINE_S
        while True:
            if self.proc.poll() is not None:
                pytest.fail(f"serve exited with {self.proc.returncode}:\n{self.output()}")
            try:
                response = self.http.get("/health")
                if response.status_code == 200:
                    body: dict[str, Any] = response.json()
                    return body
            except httpx.TransportError:
                pass  # not listening yet
            if time.monotonic() > deadline:
                pytest.fail(f"/health not healthy within {START_DEADLINE_S:g} s:\n{self.output()}")
            time.sleep(0.05)  # a polling interval


@pytest.fixture
def served(tmp_path: Path) -> Iterator[Served]:
    http_port, flight_port = _free_port(), _free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("KERNEL_")}
    env.update(
        KERNEL_HOST="127.0.0.1",
        KERNEL_HTTP_PORT=str(http_port),
        KERNEL_FLIGHT_PORT=str(flight_port),
    )
    log = tmp_path / "serve.log"
    with log.open("wb") as sink:
        proc = subprocess.Popen(
            [str(SERVE), "serve"], env=env, stdout=sink, stderr=subprocess.STDOUT
        )
    http = httpx.Client(base_url=f"http://127.0.0.1:{http_port}", timeout=60.0)
    try:
        yield Served(proc, http, log)
    finally:
        http.close()
        if proc.poll() is None:  # the test failed before its own SIGTERM
            kernels = psutil.Process(proc.pid).children(recursive=True)
            proc.kill()
            proc.wait()
            for child in kernels:
                child.kill()


def test_serve_survives_a_dying_kernel_and_stops_cleanly(served):
    first = served.healthy()
    assert first["status"] == "healthy"
    assert first["restarts"] == 0

    ok = served.execute("flowfile.publish_artifact('a', 1)\nprint('hello')", flow_id=1)
    assert ok["success"] is True
    assert ok["stdout"] == "hello\n"
    assert served.healthy()["artifact_count"] == 1

    died = served.execute("import os\nos._exit(3)", flow_id=1)

    assert died["success"] is False
    assert died["kernel_restarted"] is True
    assert died["error"].startswith("KernelDied: ")
    assert "3" in died["error"]
    assert set(died["lost_state"]) >= {"artifacts"}

    again = served.healthy()
    assert again["status"] == "healthy"
    assert again["restarts"] == 1
    assert again["kernel_pid"] != first["kernel_pid"]
    assert again["artifact_count"] == 0
    after = served.execute("print(6 * 7)")
    assert after["success"] is True
    assert after["stdout"] == "42\n"

    children = psutil.Process(served.proc.pid).children(recursive=True)
    assert [c.pid for c in children] == [again["kernel_pid"]]
    served.proc.send_signal(signal.SIGTERM)

    assert served.proc.wait(timeout=30) == 0, served.output()
    _, alive = psutil.wait_procs(children, timeout=10)
    assert alive == []
