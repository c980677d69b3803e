"""Notebook mode on the real `kernel-runtime serve` (§10): named namespaces through a kernel's
death, a `/restart` and another flow's death; streaming executions through a flow's kernel,
its death mid-stream, and a client that leaves."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.service import Service
from tests.helpers import Latch, poll, post_json

pytestmark = pytest.mark.e2e


def _defined(service: Service, flow_id: int, name: str = "main") -> None:
    result = service.execute("x = 41", flow_id=flow_id, node_id="def", namespace=name)
    assert result["success"], result


def test_a_death_inside_a_namespace_reports_it_lost_and_the_next_cell_starts_afresh(
    service: Service,
) -> None:
    _defined(service, 1)

    died = service.execute("import os\nos._exit(3)", flow_id=1, node_id="die", namespace="main")
    after = service.execute("print(x)", flow_id=1, node_id="use", namespace="main")

    assert died["error"].startswith("KernelDied: "), died
    assert died["lost_state"] == ["namespace"]
    assert died["lost_namespaces"] == ["main"]
    assert after["error"] == "NameError: name 'x' is not defined"
    assert after["kernel_restarted"] is False  # told once, by the execution that died


def test_a_restart_drops_the_flows_namespaces_and_its_next_answer_says_so(
    service: Service,
) -> None:
    _defined(service, 1, "a")
    _defined(service, 1, "b")

    restarted = post_json(service.http, "/restart", {"flow_id": 1})["restarted"]
    after = service.execute("print(x)", flow_id=1, node_id="use", namespace="a")

    assert [
        (r["flow_id"], sorted(n["namespace"] for n in r["lost_namespaces"])) for r in restarted
    ] == [(1, ["a", "b"])]
    assert after["kernel_restarted"] is True
    assert after["lost_state"] == ["namespace"]
    assert sorted(after["lost_namespaces"]) == ["a", "b"]
    assert after["error"] == "NameError: name 'x' is not defined"


def test_another_flows_death_leaves_a_namespace_alone(service: Service) -> None:
    _defined(service, 2)

    died = service.execute("import os\nos._exit(3)", flow_id=1, node_id="die")
    kept = service.execute("print(x + 1)", flow_id=2, node_id="use", namespace="main")

    assert died["kernel_restarted"] is True
    assert died["lost_state"] == []  # flow 1 had no namespace and no artifact
    assert kept["success"] is True, kept
    assert kept["stdout"] == "42\n"
    assert kept["kernel_restarted"] is False


# -- streaming through a flow's kernel (its private channel) --------------------------------


def _streamed(service: Service, code: str, **fields: Any) -> list[dict[str, Any]]:
    body = {"node_id": "s", "code": code, "stream": True, **fields}
    with service.http.stream("POST", "/execute", json=body) as response:
        assert response.headers["content-type"] == "application/x-ndjson"
        return [json.loads(line) for line in response.iter_lines() if line]


def test_a_stream_from_a_flow_kernel_has_its_events_then_the_result(
    service: Service, tmp_path: Path
) -> None:
    latch = Latch(tmp_path / "seen")
    code = (
        "import os, time\nprint('first')\nflowfile.display('shown')\n"
        "deadline = time.monotonic() + 60\n"
        f"while not os.path.exists({str(latch.path)!r}) and time.monotonic() < deadline:\n"
        "    time.sleep(0.01)\n"
        f"print(os.path.exists({str(latch.path)!r}))\n"
    )
    body = {"node_id": "s", "code": code, "stream": True, "flow_id": 3, "namespace": "nb"}
    events = []
    with service.http.stream("POST", "/execute", json=body) as response:
        for line in response.iter_lines():
            events.append(json.loads(line))
            if events[-1]["event"] == "display":
                latch.set()  # received while the code still waits for it

    kinds = [e["event"] for e in events]
    assert [k for i, k in enumerate(kinds) if i == 0 or k != kinds[i - 1]] == [
        "stdout",
        "display",
        "stdout",
        "result",
    ]
    assert "".join(e["text"] for e in events if e["event"] == "stdout") == "first\nTrue\n"
    assert events[-1]["result"]["stdout"] == "first\nTrue\n"


def test_a_kernel_death_mid_stream_ends_it_with_the_kernel_died_result(service: Service) -> None:
    _defined(service, 4)

    events = _streamed(
        service, "print('before', flush=True)\nimport os\nos._exit(5)", flow_id=4, namespace="main"
    )

    # an event still in the kernel when it died is lost with it; the result has the text
    assert "".join(e.get("text", "") for e in events[:-1]) in ("", "before", "before\n")
    result = events[-1]["result"]
    assert events[-1]["event"] == "result"
    assert result["error"].startswith("KernelDied: "), result
    assert result["stdout"] == "before\n"
    assert result["lost_state"] == ["namespace"]


def test_a_client_leaving_a_stream_interrupts_the_execution_in_its_kernel(
    service: Service,
) -> None:
    code = "import time\nwhile True:\n    print('tick')\n    time.sleep(0.02)\n"
    body = {"node_id": "s", "code": code, "stream": True, "flow_id": 5, "execution_id": "left"}
    with service.http.stream("POST", "/execute", json=body) as response:
        lines = response.iter_lines()
        first = json.loads(next(lines))
        assert (first["event"], first["text"][:4]) == ("stdout", "tick")
    # closed mid-stream

    poll(lambda: service.healthy()["running"] == [], 60, "the execution to be interrupted")
    after = service.execute("print('next')", flow_id=5)
    assert after["stdout"] == "next\n"
    assert after["kernel_restarted"] is False  # interrupted, not killed
