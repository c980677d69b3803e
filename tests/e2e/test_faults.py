"""The real `kernel-runtime serve` against hostile user code: signals it sends itself, children
that outlive it, the GIL held in C, a broken kernel, restarts, and bystanders of a kill.

The tests and the user code meet at file latches; nothing depends on how long anything takes.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
from pathlib import Path
from typing import Any

import psutil
import pytest

from tests.e2e.service import SERVE, Service, threads, wait_persisted
from tests.helpers import Latch, free_port, poll, post_json

pytestmark = pytest.mark.e2e

IMPATIENT_GRACE_S = "1"
LATCH_DEADLINE_S = 60.0
RESULT_DEADLINE_S = 120.0
TOKEN = "e2e-faults-t0ken"
# Holds the GIL in C for `{seconds}`: a PyDLL call does not release it.
HOLD_GIL = "import ctypes\nctypes.PyDLL(None).sleep({seconds})\n"


def test_sigint_to_its_own_process_interrupts_the_execution(service: Service) -> None:
    pid = service.flow_kernel()
    code = (
        "import os, signal\nprint('before')\nos.kill(os.getpid(), signal.SIGINT)\nwhile True: pass"
    )

    result = service.execute(code)

    assert result["success"] is False
    assert result["error"] == "Interrupted: the kernel process received SIGINT"
    assert result["stdout"] == "before\n"
    assert result.get("kernel_restarted", False) is False
    assert service.kernel_pid() == pid


def test_sigterm_to_its_own_process_is_reported_as_a_death(service: Service) -> None:
    code = "import os, signal, time\nos.kill(os.getpid(), signal.SIGTERM)\ntime.sleep(60)"

    result = service.execute(code)

    assert result["success"] is False
    assert result["error"].startswith("KernelDied: the kernel process was killed by SIGTERM")
    assert result["kernel_restarted"] is True
    assert service.execute("print('next')")["stdout"] == "next\n"


def test_a_forked_child_that_outlives_the_kernel_neither_hangs_nor_survives(
    service: Service, tmp_path: Path
) -> None:
    child_pid = tmp_path / "child.pid"
    code = (
        "import os, time\n"
        "pid = os.fork()\n"
        "if pid == 0:\n"
        "    time.sleep(600)\n"
        "    os._exit(0)\n"
        f"open({str(child_pid)!r}, 'w').write(str(pid))\n"
        "os._exit(3)\n"
    )

    result = service.execute(code)

    assert result["error"].startswith("KernelDied: the kernel process exited with code 3")
    assert service.execute("print('next')")["stdout"] == "next\n"
    pid = int(child_pid.read_text())
    poll(
        lambda: not psutil.pid_exists(pid) or psutil.Process(pid).status() == "zombie",
        LATCH_DEADLINE_S,
        "the forked child to be ended with its kernel",
    )


def test_the_token_is_not_visible_to_user_code_or_its_children(start_service) -> None:
    service = start_service(KERNEL_AUTH_TOKEN=TOKEN)
    code = (
        "import os, subprocess, sys\n"
        "print(os.environ.get('KERNEL_AUTH_TOKEN'))\n"
        "print(open('/proc/self/environ', 'rb').read().count(b'KERNEL_AUTH_TOKEN'))\n"
        "child = subprocess.run(['env'], capture_output=True, text=True).stdout\n"
        "print('KERNEL_AUTH_TOKEN' in child)\n"
    )

    result = service.execute(code)

    assert result["success"] is True, result
    assert result["stdout"] == "None\n0\nFalse\n"
    assert TOKEN not in result["stdout"]


def test_health_answers_while_user_code_holds_the_gil(service: Service, tmp_path: Path) -> None:
    holding = Latch(tmp_path / "holding")
    code = f"{holding.set_code()}\n" + HOLD_GIL.format(seconds=20)
    with threads() as pool:
        execution = pool.submit(service.execute, code)
        holding.wait(LATCH_DEADLINE_S, "the code to take the GIL", detail=service.log)

        response = service.http.get("/health")
        execution.result(timeout=RESULT_DEADLINE_S)

    assert response.status_code == 200
    body = response.json()
    assert body["status"] == "healthy"
    states = {k["flow_id"]: k["state"] for k in body["kernels"]}
    assert states[0] == "busy"
    assert states[None] in ("healthy", "starting")  # the next spare


def test_an_interrupt_that_cannot_land_escalates_to_a_restart(
    start_service, tmp_path: Path
) -> None:
    service = start_service(KERNEL_INTERRUPT_GRACE_S=IMPATIENT_GRACE_S)
    holding = Latch(tmp_path / "holding")
    code = f"print('holding')\n{holding.set_code()}\n" + HOLD_GIL.format(seconds=600)
    with threads() as pool:
        execution = pool.submit(service.execute, code, flow_id=4, node_id="re")
        holding.wait(LATCH_DEADLINE_S, "the code to take the GIL", detail=service.log)

        answer = post_json(service.http, "/interrupt", {"flow_id": 4})
        result = execution.result(timeout=RESULT_DEADLINE_S)

    assert [(i["flow_id"], i["node_id"]) for i in answer["interrupted"]] == [(4, "re")]
    assert result["error"].startswith("Interrupted: the execution ignored the interrupt")
    assert result["kernel_restarted"] is True
    assert service.execute("x = 1")["success"] is True


def test_a_bystander_of_a_timeout_restart_is_told_it_died_and_keeps_its_output(
    start_service, tmp_path: Path
) -> None:
    service = start_service(KERNEL_INTERRUPT_GRACE_S=IMPATIENT_GRACE_S)
    bystander_running = Latch(tmp_path / "bystander-running")
    culprit_holding = Latch(tmp_path / "culprit-holding")
    bystander = f"print('working')\n{bystander_running.set_code()}\nwhile True:\n    pass\n"
    culprit = (  # stuck in C, but without the GIL: the kernel can still say what was printed
        f"import os\nr, w = os.pipe()\n{culprit_holding.set_code()}\n"
        "while True:\n    try:\n        os.read(r, 1)\n"
        "    except KeyboardInterrupt:\n        pass\n"
    )
    with threads() as pool:
        waiting = pool.submit(service.execute, bystander, flow_id=1, node_id="b")
        bystander_running.wait(LATCH_DEADLINE_S, "the bystander to run", detail=service.log)
        stuck = pool.submit(service.execute, culprit, flow_id=1, node_id="c", timeout_s=0.5)
        culprit_result = stuck.result(timeout=RESULT_DEADLINE_S)
        bystander_result = waiting.result(timeout=RESULT_DEADLINE_S)

    assert culprit_holding.is_set()
    assert culprit_result["error"].startswith("Timeout: execution exceeded timeout_s=0.5")
    assert bystander_result["success"] is False
    assert bystander_result["error"].startswith("KernelDied: the kernel was restarted during")
    assert "because of another execution" in bystander_result["error"]
    assert bystander_result["error_kind"] == "kernel_died"
    assert bystander_result["stdout"] == "working\n"


def test_restart_ends_running_executions_and_starts_a_new_kernel(
    service: Service, tmp_path: Path
) -> None:
    running = Latch(tmp_path / "running")
    service.execute("flowfile.publish_artifact('kept', 1)", flow_id=1, node_id="a")
    old_pid = service.kernel_pid(1)
    wait_persisted(service, "kept")
    code = f"{running.set_code()}\nwhile True:\n    pass\n"
    with threads() as pool:
        execution = pool.submit(service.execute, code, flow_id=1, node_id="b")
        running.wait(LATCH_DEADLINE_S, "the execution to run", detail=service.log)

        answer = post_json(service.http, "/restart", {"flow_id": 1})
        result = execution.result(timeout=RESULT_DEADLINE_S)

    [restarted] = answer["restarted"]
    assert restarted["pid"] not in (None, old_pid)
    assert restarted["flow_id"] == 1
    assert service.kernel_pid(1) == restarted["pid"]
    assert result["error"].startswith("KernelDied: the kernel was restarted during")
    assert "restart was requested" in result["error"]
    assert result["lost_state"] == []  # the artifact was persisted: the store keeps it
    [kept] = service.http.get("/artifacts").json()
    assert (kept["name"], kept["persisted"]) == ("kept", True)


def test_a_kernel_that_cannot_answer_health_is_restarted(service: Service) -> None:
    old_pid = service.flow_kernel()

    broken = service.http.post(
        "/execute", json={"node_id": "n", "code": "import json\njson.dumps = None"}
    )

    assert broken.status_code in (200, 500)  # its own answer may be the first casualty

    def restarted() -> dict[str, Any] | None:
        kernels = service.healthy()["kernels"]
        return next((k for k in kernels if k["flow_id"] == 0 and k["pid"] != old_pid), None)

    kernel = poll(
        restarted,
        RESULT_DEADLINE_S,
        "the watchdog to restart the broken kernel",
        detail=service.log,
    )
    assert kernel["restarts"] >= 1
    assert service.execute("print('fine')")["stdout"] == "fine\n"


def test_a_flows_first_answer_after_its_kernel_died_between_requests_says_so(
    service: Service,
) -> None:
    code = "import threading\nflowfile.publish_artifact('live', threading.Lock())"
    assert service.execute(code, flow_id=5)["success"] is True
    os.kill(service.kernel_pid(5), signal.SIGKILL)

    first = service.execute("print('after')", flow_id=5)
    second = service.execute("print('again')", flow_id=5)
    other = service.execute("print('new flow')", flow_id=6)

    assert first["success"] is True
    assert first["kernel_restarted"] is True
    assert (first["lost_state"], first["lost_artifacts"]) == (["artifacts"], ["live"])
    assert second["kernel_restarted"] is False
    assert other["kernel_restarted"] is False  # it never had anything to lose


def test_output_written_to_file_descriptors_is_captured(service: Service) -> None:
    code = (
        "import os, subprocess, sys\n"
        "print('python')\n"
        "sys.stdout.flush()\n"
        "subprocess.run(['echo', 'from a child'], check=True)\n"
        "os.system('echo from os.system')\n"
        "os.write(1, b'straight to fd 1\\n')\n"
        "os.write(2, b'straight to fd 2\\n')\n"
    )

    result = service.execute(code)

    assert result["success"] is True, result
    assert result["stdout"] == "python\nfrom a child\nfrom os.system\nstraight to fd 1\n"
    assert result["stderr"] == "straight to fd 2\n"
    assert "from a child" not in service.execute("print('next')")["stdout"]


def test_sigterm_answers_an_execution_that_outlives_the_grace_then_exits_cleanly(
    start_service, tmp_path: Path
) -> None:
    service = start_service(KERNEL_SHUTDOWN_GRACE_S="1")
    running = Latch(tmp_path / "running")
    code = f"{running.set_code()}\nwhile True:\n    pass\n"
    with threads() as pool:
        execution = pool.submit(service.execute, code)
        running.wait(LATCH_DEADLINE_S, "the execution to run", detail=service.log)

        service.proc.send_signal(signal.SIGTERM)
        result = execution.result(timeout=RESULT_DEADLINE_S)

    assert result["success"] is False
    assert result["error"] == "KernelDied: the service shut down during this execution"
    assert service.stop() == 0


def test_a_second_service_on_the_same_flight_port_refuses_to_start_naming_it(
    service: Service, tmp_path: Path
) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("KERNEL_")}
    env.update(
        KERNEL_HTTP_PORT=str(free_port()),
        KERNEL_FLIGHT_PORT=str(service.flight_port),
        KERNEL_START_TIMEOUT_S="60",
    )
    second = subprocess.run(
        [SERVE, "serve"], env=env, capture_output=True, text=True, timeout=RESULT_DEADLINE_S
    )

    assert second.returncode != 0
    assert f"Flight port {service.flight_port}" in second.stdout + second.stderr
    assert service.execute("print('first still serves')")["stdout"] == "first still serves\n"


def test_a_child_that_escaped_the_kernels_session_does_not_hang_its_death(
    service: Service, tmp_path: Path
) -> None:
    child_pid = tmp_path / "child.pid"
    escape = (
        "import os, time\n"
        "if os.fork() == 0:\n"
        "    os.setsid()  # out of the kernel's process group: not ended with it\n"
        f"    open({str(child_pid)!r}, 'w').write(str(os.getpid()))\n"
        "    time.sleep(600)\n"
        "    os._exit(0)\n"
    )
    assert service.execute(escape)["success"] is True
    poll(child_pid.exists, LATCH_DEADLINE_S, "the escaped child to start")

    try:
        died = service.execute("import os\nos._exit(5)")  # must not wait for the child
        assert died["error"].startswith("KernelDied: the kernel process exited with code 5")
        assert service.execute("print('next')")["stdout"] == "next\n"
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(int(child_pid.read_text()), signal.SIGKILL)
