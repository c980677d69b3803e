"""Named namespaces (SPEC §10): executions of one flow that name the same namespace share
their variables, one at a time; other names and other flows never see them."""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from flight_kernel import namespaces
from flight_kernel.kernel import Kernel
from flight_kernel.namespaces import Namespaces
from flight_kernel.requests import ExecuteRequest
from flight_kernel.settings import Settings
from tests.helpers import Latch, poll

Run = Callable[..., dict[str, Any]]


def _ok(result: dict[str, Any]) -> dict[str, Any]:
    assert result["success"], result
    return result


def test_executions_naming_a_namespace_share_variables_imports_and_functions(
    run_code: Run,
) -> None:
    _ok(run_code("import math\nx = 41\ndef inc(v):\n    return v + 1", namespace="main"))

    result = _ok(run_code("print(inc(x), math.pi > 3)", node_id="n2", namespace="main"))

    assert result["stdout"] == "42 True\n"


def test_without_a_namespace_every_execution_starts_afresh(run_code: Run) -> None:
    _ok(run_code("x = 1"))
    _ok(run_code("y = 2", namespace="main"))

    result = run_code("print(x)")
    fresh = run_code("print(y)")  # a named namespace is not the default one either

    assert result["error"] == "NameError: name 'x' is not defined"
    assert fresh["error"] == "NameError: name 'y' is not defined"


def test_other_names_and_other_flows_never_see_a_namespace(run_code: Run) -> None:
    _ok(run_code("secret = 7", namespace="main", flow_id=1))

    other_name = run_code("print(secret)", namespace="scratch", flow_id=1)
    other_flow = run_code("print(secret)", namespace="main", flow_id=2)

    assert other_name["error"] == "NameError: name 'secret' is not defined"
    assert other_flow["error"] == "NameError: name 'secret' is not defined"


def test_a_traceback_into_a_function_of_an_earlier_execution_shows_its_lines(
    run_code: Run,
) -> None:
    _ok(run_code("def broken(v):\n    return v / 0  # divides\n", node_id="defs", namespace="nb"))

    result = run_code("broken(1)", node_id="use", namespace="nb")

    assert result["error"] == "ZeroDivisionError: division by zero"
    trace = result["traceback"]
    assert '<node defs, cell 1>", line 2, in broken' in trace
    assert "return v / 0  # divides" in trace
    assert '<node use, cell 2>", line 1' in trace
    assert "broken(1)" in trace


def test_a_failed_execution_keeps_what_it_defined_before_failing(run_code: Run) -> None:
    run_code("a = 1\nraise ValueError('half way')\nb = 2", namespace="main")

    result = _ok(run_code("print(a, 'b' in globals())", namespace="main"))

    assert result["stdout"] == "1 False\n"


def _running(client: TestClient) -> set[str]:
    return {r["execution_id"] for r in client.get("/health").json()["running"]}


def test_two_executions_of_one_namespace_run_one_at_a_time(
    client: TestClient, run_code: Run, tmp_path: Path
) -> None:
    started, release = Latch(tmp_path / "started"), Latch(tmp_path / "release")
    _ok(run_code("events = []", namespace="q"))
    slow = f"events.append('a-start')\n{started.set_code()}\n{release.wait_code()}"
    slow += "events.append('a-end')"

    with ThreadPoolExecutor(2) as pool:
        first = pool.submit(run_code, slow, node_id="a", namespace="q", execution_id="a")
        started.wait(60, "the first execution to hold the namespace")
        second = pool.submit(run_code, "events.append('b')", namespace="q", execution_id="b")
        poll(lambda: _running(client) == {"a", "b"}, 60, "the second execution to wait")
        release.set()
        _ok(first.result())
        _ok(second.result())

    result = _ok(run_code("print(events)", namespace="q"))
    assert result["stdout"] == "['a-start', 'a-end', 'b']\n"


def test_two_namespaces_of_one_flow_run_side_by_side(run_code: Run) -> None:
    # Two events in a module both can import; each execution sets one and waits for the
    # other's: both succeed only if they run at the same time.
    setup = (
        "import sys, threading\nsys.modules['_handoff'] = [threading.Event(), threading.Event()]"
    )
    _ok(run_code(setup))
    wait = (
        "import sys\nmine, theirs = sys.modules['_handoff'][{0}], sys.modules['_handoff'][{1}]\n"
        "mine.set()\nassert theirs.wait(5), 'the other never ran'"
    )

    with ThreadPoolExecutor(2) as pool:
        a = pool.submit(run_code, wait.format(0, 1), node_id="a", namespace="x")
        b = pool.submit(run_code, wait.format(1, 0), node_id="b", namespace="y")
        results = [a.result(), b.result()]

    assert [r["success"] for r in results] == [True, True], results


def test_an_execution_waiting_for_its_namespace_can_be_interrupted(
    client: TestClient, run_code: Run, tmp_path: Path
) -> None:
    started, release = Latch(tmp_path / "started"), Latch(tmp_path / "release")
    holding = f"{started.set_code()}\n{release.wait_code()}"
    with ThreadPoolExecutor(2) as pool:
        holder = pool.submit(run_code, holding, node_id="holder", namespace="busy")
        started.wait(60, "the holder to run")
        waiter = pool.submit(
            run_code, "print('ran')", node_id="waiter", namespace="busy", execution_id="w-1"
        )
        poll(lambda: "w-1" in _running(client), 60, "the waiter to wait")
        answer = client.post("/interrupt", json={"execution_id": "w-1"}).json()
        waited = waiter.result()
        release.set()
        _ok(holder.result())

    assert [e["execution_id"] for e in answer["interrupted"]] == ["w-1"]
    assert waited["error"].startswith("Interrupted"), waited
    assert waited["stdout"] == ""


def test_clear_namespace_drops_one_or_all_of_a_flows_namespaces(
    client: TestClient, run_code: Run
) -> None:
    for name in ("a", "b"):
        _ok(run_code(f"v = '{name}'", namespace=name, flow_id=3))
    _ok(run_code("v = 'other flow'", namespace="a", flow_id=4))

    one = client.post("/clear_namespace", json={"flow_id": 3, "namespace": "a"}).json()
    assert one["removed_namespaces"] == [{"flow_id": 3, "namespace": "a"}]
    assert run_code("print(v)", namespace="a", flow_id=3)["error"].startswith("NameError")
    assert _ok(run_code("print(v)", namespace="b", flow_id=3))["stdout"] == "b\n"

    rest = client.post("/clear_namespace", json={"flow_id": 3}).json()
    assert rest["removed_namespaces"] == [
        {"flow_id": 3, "namespace": "a"},  # made again by the NameError execution above
        {"flow_id": 3, "namespace": "b"},
    ]
    assert _ok(run_code("print(v)", namespace="a", flow_id=4))["stdout"] == "other flow\n"


def test_clear_of_a_flow_drops_its_namespaces_only(client: TestClient, run_code: Run) -> None:
    _ok(run_code("v = 1", namespace="main", flow_id=5))
    _ok(run_code("v = 2", namespace="main", flow_id=6))

    cleared = client.post("/clear", params={"flow_id": 5}).json()

    assert cleared["removed_namespaces"] == [{"flow_id": 5, "namespace": "main"}]
    assert run_code("print(v)", namespace="main", flow_id=5)["error"].startswith("NameError")
    assert _ok(run_code("print(v)", namespace="main", flow_id=6))["stdout"] == "2\n"


def test_health_counts_the_namespaces(client: TestClient, run_code: Run) -> None:
    _ok(run_code("v = 1", namespace="one"))
    _ok(run_code("v = 1", namespace="two"))

    assert client.get("/health").json()["namespace_count"] == 2


@pytest.mark.parametrize(
    "body",
    [
        {"node_id": "n", "code": "x", "namespace": ""},
        {"node_id": "n", "code": "x", "namespace": 3},
    ],
)
def test_a_namespace_must_be_a_nonempty_string(client: TestClient, body: dict[str, Any]) -> None:
    response = client.post("/execute", json=body)

    assert response.status_code == 422
    assert response.json()["detail"][0]["loc"] == ["body", "namespace"]


def test_a_clear_namespace_body_with_wrong_types_is_a_422(client: TestClient) -> None:
    response = client.post("/clear_namespace", json={"flow_id": "one"})

    assert response.status_code == 422
    assert response.json()["detail"][0]["loc"] == ["body", "flow_id"]


# -- the registry ----------------------------------------------------------------------------


def _fresh() -> dict[str, Any]:
    return {}


def test_beyond_the_limit_the_least_recently_used_namespace_is_dropped() -> None:
    spaces = Namespaces(limit=2)
    for name in ("a", "b"):
        with spaces.entered(0, name, _fresh) as space:
            space.globals["v"] = name
    with spaces.entered(0, "a", _fresh):  # "a" is now the most recently used
        pass

    with spaces.entered(0, "c", _fresh):
        pass

    assert spaces.names() == [(0, "a"), (0, "c")]


def test_a_namespace_in_use_is_not_dropped_for_the_limit() -> None:
    spaces = Namespaces(limit=1)
    with spaces.entered(0, "busy", _fresh), spaces.entered(0, "next", _fresh):
        assert spaces.names() == [(0, "busy"), (0, "next")]
    with spaces.entered(0, "last", _fresh):
        pass

    assert spaces.names() == [(0, "last")]


def test_the_limit_comes_from_the_settings(tmp_path: Any) -> None:
    kernel = Kernel(Settings(store_dir=str(tmp_path), max_namespaces=1))
    for name in ("a", "b"):
        kernel.execute(ExecuteRequest(node_id="n", code=f"v = '{name}'", namespace=name))

    gone = kernel.execute(ExecuteRequest(node_id="n", code="print(v)", namespace="a"))
    kept = kernel.execute(ExecuteRequest(node_id="n", code="print(v)", namespace="a"))

    assert gone.error == "NameError: name 'v' is not defined"
    assert kept.error == "NameError: name 'v' is not defined"  # made afresh by `gone`


def test_markers_name_the_namespaces_a_kernel_holds(tmp_path: Any) -> None:
    spaces = Namespaces(limit=5)
    spaces.marker_dir = str(tmp_path)
    for flow_id, name in [(1, "main"), (2, "a name / with spaces")]:
        with spaces.entered(flow_id, name, _fresh):
            pass
    assert namespaces.marked(str(tmp_path)) == [(1, "main"), (2, "a name / with spaces")]

    spaces.drop(1)

    assert namespaces.marked(str(tmp_path)) == [(2, "a name / with spaces")]


def test_an_executor_marks_namespaces_in_its_spool_directory(
    tmp_path: Any, settings: Settings
) -> None:
    kernel = Kernel(settings)
    kernel.executor.spool_dir = str(tmp_path)

    kernel.execute(ExecuteRequest(node_id="n", code="x = 1", namespace="main", flow_id=9))

    assert namespaces.marked(str(tmp_path)) == [(9, "main")]
