"""Named namespaces on the real `kernel-runtime serve` (§10): a kernel's death, a `/restart`
and a death of another flow's kernel, as a notebook user meets them."""

from __future__ import annotations

import pytest

from tests.e2e.service import Service
from tests.helpers import post_json

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
