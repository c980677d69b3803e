"""The real `kernel-runtime serve`: kernel deaths, hangs, interrupts, auth and shutdown.

Nothing here depends on how long anything takes: the tests and the user code they run meet
at file latches, and every wait is a poll with a generous deadline.
"""

from __future__ import annotations

import os
import signal
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import psutil
import pyarrow as pa
import pyarrow.flight as flight
import pytest

from tests.e2e.service import START_DEADLINE_S, KernelStartGate, Service, threads, wait_persisted
from tests.helpers import Latch, flight_action, poll, post_json

pytestmark = pytest.mark.e2e

TOKEN = "e2e-t0ken-not-for-logs"
IMPATIENT_GRACE_S = "1"  # for tests of the restart: code that ignores the interrupt never stops
LATCH_DEADLINE_S = 60.0
RESULT_DEADLINE_S = 120.0
# The timeout's timer starts before the user code does. An attempt in which it fired before
# the code reached its latch tested nothing, so it runs again with a longer timeout.
TIMEOUTS_S = (0.5, 2.0, 8.0, 32.0)
STUCK_IN_C = """\
import os
r, w = os.pipe()
try:
    {reached}
    os.read(r, 1)  # blocked in C, where KeyboardInterrupt cannot reach
except KeyboardInterrupt:  # it landed just before the read: block all the same
    os.read(r, 1)
"""


def _timed_out_past(
    service: Service, tmp_path: Path, code: Callable[[Latch], str], **fields: Any
) -> dict[str, Any]:
    """The answer to `code(latch)` run with a timeout that fired after the code set the latch."""
    for attempt, timeout in enumerate(TIMEOUTS_S):
        reached = Latch(tmp_path / f"reached-{attempt}")
        result = service.execute(code(reached), timeout_s=timeout, **fields)
        if reached.is_set():
            return result
    pytest.fail(f"the code never reached its latch within timeout_s={TIMEOUTS_S[-1]:g}")


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
    kept = service.execute(
        "import threading\n"
        "flowfile.publish_artifact('a', 1)\n"
        "flowfile.publish_artifact('live', threading.Lock())",  # cannot be pickled
        node_id="keep",
        flow_id=1,
    )
    assert kept["success"], kept
    wait_persisted(service, "a")
    before = service.healthy()
    assert before["artifact_count"] == 2
    pid = service.kernel_pid(1)

    result = service.execute(code, flow_id=1)

    assert result["success"] is False
    assert result["kernel_restarted"] is True
    assert result["error"].startswith("KernelDied: ")
    assert how in result["error"]
    assert result["lost_state"] == ["artifacts"]
    assert result["lost_artifacts"] == ["live"]  # the persisted one is kept
    service.kernel_pid(1, other_than=pid)
    after = service.healthy()
    assert after["restarts"] == before["restarts"] + 1
    assert after["artifact_count"] == 1
    again = service.execute("print(flowfile.read_artifact('a') * 42)", flow_id=1)
    assert again["stdout"] == "42\n", again


def test_kernel_death_between_requests_is_survived(service: Service) -> None:
    pid = service.flow_kernel()

    os.kill(pid, signal.SIGKILL)
    result = service.execute("print('after')")  # waits for the restart instead of failing

    assert result["success"] is True
    assert result["stdout"] == "after\n"
    assert service.kernel_pid(other_than=pid)
    assert service.healthy()["restarts"] == 1


def test_health_says_starting_while_the_kernel_restarts(start_service, tmp_path: Path) -> None:
    gate = KernelStartGate(tmp_path / "gate")
    service = start_service(KERNEL_ISOLATION="shared", **gate.env())
    pid = service.kernel_pid(None)  # the one kernel: no flow of its own
    gate.close()
    os.kill(pid, signal.SIGKILL)
    gate.held.wait(START_DEADLINE_S, "the next kernel to start", detail=service.log)

    starting = service.http.get("/health")
    gate.open()

    assert starting.status_code == 503, starting.text
    assert starting.json()["status"] == "starting"
    after = service.healthy()
    assert after["restarts"] == 1
    assert service.kernel_pid(None, other_than=pid)


def test_timeout_stops_code_and_keeps_its_output(service: Service, tmp_path: Path) -> None:
    result = _timed_out_past(
        service,
        tmp_path,
        lambda reached: f"print('before')\n{reached.set_code()}\nwhile True: pass",
    )

    assert result["success"] is False
    assert result["error"].startswith("Timeout")
    assert result["stdout"] == "before\n"
    assert result.get("kernel_restarted", False) is False
    assert service.execute("x = 1")["success"] is True


def test_timeout_of_code_stuck_in_c_restarts_the_kernel(start_service, tmp_path: Path) -> None:
    service = start_service(KERNEL_INTERRUPT_GRACE_S=IMPATIENT_GRACE_S)
    pid = service.flow_kernel()

    result = _timed_out_past(
        service, tmp_path, lambda reached: STUCK_IN_C.format(reached=reached.set_code())
    )

    assert result["success"] is False
    assert result["error"].startswith("Timeout")
    assert result["kernel_restarted"] is True
    assert service.kernel_pid(other_than=pid)
    assert service.execute("x = 1")["success"] is True


def test_default_timeout_comes_from_the_environment(start_service) -> None:
    service = start_service(KERNEL_EXEC_TIMEOUT_S="0.5")

    result = service.execute("while True:\n    pass")

    assert result["success"] is False
    assert result["error"].startswith("Timeout: execution exceeded timeout_s=0.5")


def test_interrupt_stops_only_the_matching_flow(service: Service, tmp_path: Path) -> None:
    victim_running = Latch(tmp_path / "victim-running")
    other_running = Latch(tmp_path / "other-running")
    other_may_finish = Latch(tmp_path / "other-may-finish")
    victim_code = (
        f"import time\nprint('started')\n{victim_running.set_code()}\n"
        "while True:\n    time.sleep(0.01)\n"
    )
    other_code = f"{other_running.set_code()}\n{other_may_finish.wait_code()}print('finished')\n"
    with threads() as pool:
        victim = pool.submit(service.execute, victim_code, flow_id=1, node_id="a")
        other = pool.submit(service.execute, other_code, flow_id=2, node_id="b")
        victim_running.wait(LATCH_DEADLINE_S, "flow 1's code to run", detail=service.log)
        other_running.wait(LATCH_DEADLINE_S, "flow 2's code to run", detail=service.log)

        answer = post_json(service.http, "/interrupt", {"flow_id": 1})
        victim_out = victim.result(timeout=RESULT_DEADLINE_S)
        other_may_finish.set()
        other_out = other.result(timeout=RESULT_DEADLINE_S)

    assert [(i["flow_id"], i["node_id"]) for i in answer["interrupted"]] == [(1, "a")]
    assert victim_out["success"] is False
    assert victim_out["error"].startswith("Interrupted")
    assert victim_out["stdout"] == "started\n"
    assert other_out["success"] is True, other_out
    assert other_out["stdout"] == "finished\n"


def test_interrupt_with_nothing_running_matches_nothing(service: Service) -> None:
    assert post_json(service.http, "/interrupt", {}) == {"interrupted": []}


def test_code_ignoring_the_interrupt_is_ended_by_a_restart(start_service, tmp_path: Path) -> None:
    service = start_service(KERNEL_INTERRUPT_GRACE_S=IMPATIENT_GRACE_S)
    running = Latch(tmp_path / "running")
    stubborn = (
        "import time\ntry:\n"
        f"    {running.set_code()}\n"
        "    while True:\n        time.sleep(0.01)\n"
        "except KeyboardInterrupt:\n    pass  # ignored\n"
        "while True:\n    time.sleep(0.01)\n"
    )
    with threads() as pool:
        execution = pool.submit(service.execute, stubborn, flow_id=3)
        running.wait(LATCH_DEADLINE_S, "the stubborn code to run", detail=service.log)

        answer = post_json(service.http, "/interrupt", {"flow_id": 3})
        out = execution.result(timeout=RESULT_DEADLINE_S)

    assert [i["flow_id"] for i in answer["interrupted"]] == [3]
    assert out["success"] is False
    assert out["error"].startswith("Interrupted")
    assert out["kernel_restarted"] is True
    assert service.execute("x = 1")["success"] is True


def test_auth_token_guards_both_planes_and_stays_out_of_logs(start_service) -> None:
    service = start_service(KERNEL_AUTH_TOKEN=TOKEN)
    base = str(service.http.base_url)
    assert httpx.get(f"{base}/health").status_code == 200
    assert httpx.post(f"{base}/execute", json={"node_id": 1, "code": "x=1"}).status_code == 401
    wrong = {"Authorization": "Bearer nope"}
    assert httpx.get(f"{base}/artifacts", headers=wrong).status_code == 401
    assert service.execute("x = 1")["success"] is True

    table = pa.table({"x": [1, 2]})
    good = flight.FlightCallOptions(headers=[(b"authorization", f"Bearer {TOKEN}".encode())])
    with flight.connect(service.flight_url) as client:
        with pytest.raises(flight.FlightUnauthenticatedError):
            client.do_get(flight.Ticket(b"tables/t")).read_all()
        with pytest.raises(flight.FlightUnauthenticatedError):
            flight_action(client, "health")
        writer, _ = client.do_put(
            flight.FlightDescriptor.for_path("tables", "t"), table.schema, good
        )
        writer.write_table(table)
        writer.close()
        assert client.do_get(flight.Ticket(b"tables/t"), good).read_all().equals(table)
        assert flight_action(client, "health", options=good)["status"] == "healthy"

    assert service.stop() == 0
    log = service.log()
    assert "kernel ready" in log  # the log holds what both planes said
    assert TOKEN not in log


def _refuses_connections(url: httpx.URL) -> bool:
    try:
        httpx.get(url, timeout=10.0)
    except httpx.ConnectError:
        return True
    except httpx.RemoteProtocolError:  # accepted just before the listener closed: ask again
        return False
    return False


def _gone(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def test_sigterm_stops_accepting_lets_running_work_finish_and_leaves_no_process(
    start_service, tmp_path: Path
) -> None:
    service = start_service(KERNEL_SHUTDOWN_GRACE_S="120")  # the test says when work finishes
    service.flow_kernel()  # the flow's kernel, and the spare that replaced it
    service.kernel_pid(None)
    kernels = sorted(k["pid"] for k in service.healthy()["kernels"])
    assert sorted(service.kernel_pids()) == kernels
    running, may_finish = Latch(tmp_path / "running"), Latch(tmp_path / "may-finish")
    code = f"{running.set_code()}\n{may_finish.wait_code()}print('done')\n"
    with threads() as pool:
        work = pool.submit(service.execute, code)
        running.wait(LATCH_DEADLINE_S, "the code to run", detail=service.log)

        service.proc.send_signal(signal.SIGTERM)
        poll(
            lambda: _refuses_connections(service.http.base_url.join("/health")),
            30.0,
            "serve to stop accepting connections after SIGTERM",
            detail=service.log,
        )
        may_finish.set()
        result = work.result(timeout=RESULT_DEADLINE_S)

    assert result["success"] is True, result
    assert result["stdout"] == "done\n"
    assert service.stop() == 0, service.log()
    for pid in kernels:
        poll(lambda: _gone(pid), 30.0, f"the kernel (pid {pid}) to be gone")  # noqa: B023
