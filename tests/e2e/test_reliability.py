"""The real `kernel-runtime serve`: kernel deaths, hangs, interrupts, auth and shutdown."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import psutil
import pyarrow as pa
import pyarrow.flight as flight
import pytest

pytestmark = pytest.mark.e2e

SERVE = str(Path(sys.executable).parent / "kernel-runtime")
TOKEN = "e2e-t0ken-not-for-logs"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_for(predicate: Callable[[], Any], timeout: float = 60.0) -> Any:
    """Poll until `predicate` returns something truthy; fail after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            value = predicate()
        except (httpx.HTTPError, OSError):
            value = None
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"condition not met within {timeout} s")


@dataclass
class Service:
    proc: subprocess.Popen[str]
    http: httpx.Client
    flight_port: int
    log_path: Path

    def health(self) -> httpx.Response:
        return self.http.get("/health")

    def healthy(self) -> dict[str, Any] | None:
        r = self.health()
        return r.json() if r.status_code == 200 else None

    def execute(self, code: str, **fields: Any) -> dict[str, Any]:
        body = {"node_id": "n1", "code": code, **fields}
        r = self.http.post("/execute", json=body)
        assert r.status_code == 200, r.text
        result: dict[str, Any] = r.json()
        return result

    def log(self) -> str:
        return self.log_path.read_text()


def start_service(tmp_path: Path, **env: str) -> Service:
    http_port, flight_port = free_port(), free_port()
    log_path = tmp_path / "serve.log"
    full_env = {
        **os.environ,
        "KERNEL_HTTP_PORT": str(http_port),
        "KERNEL_FLIGHT_PORT": str(flight_port),
        "KERNEL_INTERRUPT_GRACE_S": "1",
        **env,
    }
    with log_path.open("w") as log:
        proc = subprocess.Popen(
            [SERVE, "serve"], env=full_env, stdout=log, stderr=subprocess.STDOUT, text=True
        )
    headers = (
        {"Authorization": f"Bearer {env['KERNEL_AUTH_TOKEN']}"}
        if "KERNEL_AUTH_TOKEN" in env
        else {}
    )
    http = httpx.Client(base_url=f"http://127.0.0.1:{http_port}", headers=headers, timeout=60)
    service = Service(proc, http, flight_port, log_path)
    wait_for(service.healthy)
    return service


def stop_service(service: Service) -> int:
    service.http.close()
    if service.proc.poll() is None:
        service.proc.send_signal(signal.SIGTERM)
    return service.proc.wait(timeout=60)


@pytest.fixture
def service(tmp_path: Path) -> Iterator[Service]:
    svc = start_service(tmp_path)
    yield svc
    stop_service(svc)


@pytest.mark.parametrize(
    ("code", "how"),
    [
        pytest.param("import os\nos._exit(7)", "exited with code 7", id="os-exit"),
        pytest.param("import ctypes\nctypes.string_at(0)", "SIGSEGV", id="segfault"),
        pytest.param(
            "import os, signal\nos.kill(os.getpid(), signal.SIGKILL)",
            "likely out of memory",
            id="sigkill",
        ),
    ],
)
def test_kernel_death_is_answered_and_survived(service: Service, code: str, how: str) -> None:
    service.execute("flowfile.publish_artifact('a', 1)", node_id="keep", flow_id=1)
    before = wait_for(service.healthy)

    result = service.execute(code, flow_id=1)

    assert result["success"] is False
    assert result["kernel_restarted"] is True
    assert result["error"].startswith("KernelDied: ")
    assert how in result["error"]
    assert set(result["lost_state"]) >= {"artifacts"}
    after = wait_for(service.healthy)
    assert after["restarts"] == before["restarts"] + 1
    assert after["kernel_pid"] != before["kernel_pid"]
    assert after["artifact_count"] == 0  # died with the kernel, as the response said
    assert service.execute("print(6 * 7)")["stdout"] == "42\n"


def test_kernel_death_between_requests_is_survived(service: Service) -> None:
    pid = wait_for(service.healthy)["kernel_pid"]

    os.kill(pid, signal.SIGKILL)
    result = service.execute("print('after')")  # waits for the restart instead of failing

    assert result["success"] is True
    assert result["stdout"] == "after\n"
    health = wait_for(service.healthy)
    assert health["restarts"] == 1
    assert health["kernel_pid"] != pid


def test_health_says_starting_while_the_kernel_restarts(service: Service) -> None:
    pid = wait_for(service.healthy)["kernel_pid"]
    os.kill(pid, signal.SIGKILL)

    starting = wait_for(lambda: (r := service.health()).status_code == 503 and r.json(), 30)

    assert starting["status"] == "starting"
    assert wait_for(service.healthy)["status"] == "healthy"


def test_timeout_stops_code_and_keeps_its_output(service: Service) -> None:
    result = service.execute("print('before')\nwhile True:\n    pass", timeout_s=0.5)

    assert result["success"] is False
    assert result["error"].startswith("Timeout")
    assert result["stdout"] == "before\n"
    assert result.get("kernel_restarted", False) is False
    assert service.execute("x = 1")["success"] is True


def test_timeout_of_code_stuck_in_c_restarts_the_kernel(service: Service) -> None:
    result = service.execute("import time\ntime.sleep(120)", timeout_s=0.5)

    assert result["success"] is False
    assert result["error"].startswith("Timeout")
    assert result["kernel_restarted"] is True
    assert service.execute("x = 1")["success"] is True


def test_default_timeout_comes_from_the_environment(tmp_path: Path) -> None:
    svc = start_service(tmp_path, KERNEL_EXEC_TIMEOUT_S="0.5")
    try:
        result = svc.execute("while True:\n    pass")
        assert result["error"].startswith("Timeout")
    finally:
        stop_service(svc)


def _run_in_thread(
    service: Service, code: str, **fields: Any
) -> tuple[threading.Thread, dict[str, Any]]:
    out: dict[str, Any] = {}

    def run() -> None:
        out.update(service.execute(code, **fields))

    thread = threading.Thread(target=run)
    thread.start()
    return thread, out


def _wait_running(service: Service, count: int) -> None:
    wait_for(lambda: len(service.healthy()["running"]) >= count)  # type: ignore[index]


def test_interrupt_stops_only_the_matching_flow(service: Service) -> None:
    loop = "import time\nprint('started')\nwhile True:\n    time.sleep(0.01)"
    victim, victim_out = _run_in_thread(service, loop, flow_id=1, node_id="a")
    other, other_out = _run_in_thread(
        service,
        "import time\nfor _ in range(100):\n    time.sleep(0.01)\nprint('finished')",
        flow_id=2,
        node_id="b",
    )
    _wait_running(service, 2)

    answer = service.http.post("/interrupt", json={"flow_id": 1}).json()
    victim.join(30)
    other.join(30)

    assert [(i["flow_id"], i["node_id"]) for i in answer["interrupted"]] == [(1, "a")]
    assert victim_out["success"] is False
    assert victim_out["error"].startswith("Interrupted")
    assert victim_out["stdout"] == "started\n"
    assert other_out["success"] is True
    assert other_out["stdout"] == "finished\n"


def test_interrupt_with_nothing_running_matches_nothing(service: Service) -> None:
    assert service.http.post("/interrupt", json={}).json() == {"interrupted": []}


def test_code_ignoring_the_interrupt_is_ended_by_a_restart(service: Service) -> None:
    stubborn = (
        "import time\nwhile True:\n    try:\n        time.sleep(0.01)\n"
        "    except KeyboardInterrupt:\n        pass"
    )
    thread, out = _run_in_thread(service, stubborn, flow_id=3)
    _wait_running(service, 1)

    service.http.post("/interrupt", json={"flow_id": 3})
    thread.join(60)

    assert out["success"] is False
    assert out["error"].startswith("Interrupted")
    assert out["kernel_restarted"] is True
    assert service.execute("x = 1")["success"] is True


def test_auth_token_guards_both_planes_and_stays_out_of_logs(tmp_path: Path) -> None:
    svc = start_service(tmp_path, KERNEL_AUTH_TOKEN=TOKEN)
    try:
        base = str(svc.http.base_url)
        assert httpx.get(f"{base}/health").status_code == 200
        assert httpx.post(f"{base}/execute", json={"node_id": 1, "code": "x=1"}).status_code == 401
        wrong = {"Authorization": "Bearer nope"}
        assert httpx.get(f"{base}/artifacts", headers=wrong).status_code == 401
        assert svc.execute("x = 1")["success"] is True

        table = pa.table({"x": [1, 2]})
        with flight.connect(f"grpc://127.0.0.1:{svc.flight_port}") as client:
            with pytest.raises(flight.FlightUnauthenticatedError):
                client.do_get(flight.Ticket(b"tables/t")).read_all()
            good = flight.FlightCallOptions(
                headers=[(b"authorization", f"Bearer {TOKEN}".encode())]
            )
            writer, _ = client.do_put(
                flight.FlightDescriptor.for_path("tables", "t"), table.schema, good
            )
            writer.write_table(table)
            writer.close()
            assert client.do_get(flight.Ticket(b"tables/t"), good).read_all().equals(table)
    finally:
        stop_service(svc)
    assert TOKEN not in svc.log()


def test_sigterm_lets_running_work_finish_and_leaves_no_process(service: Service) -> None:
    kernel_pid = wait_for(service.healthy)["kernel_pid"]
    thread, out = _run_in_thread(service, "import time\ntime.sleep(1)\nprint('done')")
    _wait_running(service, 1)

    service.proc.send_signal(signal.SIGTERM)
    thread.join(60)
    code = service.proc.wait(timeout=60)

    assert out["stdout"] == "done\n"
    assert code == 0
    assert (
        not psutil.pid_exists(kernel_pid)
        or psutil.Process(kernel_pid).status() == psutil.STATUS_ZOMBIE
    )
