"""What hostile user code must not break: the kernel's builtins, `flowfile`, error reporting."""

from __future__ import annotations

from typing import Any

import pytest

from flight_kernel.kernel import Kernel
from flight_kernel.requests import ExecuteRequest


@pytest.fixture
def kernel() -> Kernel:
    return Kernel()


def run(kernel: Kernel, code: str, node_id: str = "n1") -> dict[str, Any]:
    return kernel.execute(ExecuteRequest(node_id=node_id, code=code)).to_json()


@pytest.mark.parametrize(
    "rebind",
    [
        pytest.param("__builtins__['len'] = lambda x: -1", id="builtins-dict"),
        pytest.param("import builtins\nbuiltins.len = lambda x: -1", id="import-builtins"),
        pytest.param("import builtins\nbuiltins.__import__ = None", id="import-itself"),
    ],
)
def test_rebinding_a_builtin_changes_nothing_outside_the_execution(run_code, rebind):
    rebound = run_code(rebind + "\nprint('rebound')")
    assert rebound["success"] is True, rebound["error"]

    after = run_code("import json\nprint(len([1, 2, 3]), json.dumps({'a': 1}))")

    assert after["success"] is True, after["error"]
    assert after["stdout"] == '3 {"a": 1}\n'
    assert len([1]) == 1  # the test process is untouched too (the kernel runs in it)


def test_a_rebound_builtin_holds_within_its_own_execution(kernel):
    result = run(kernel, "import builtins\nbuiltins.len = lambda x: -1\nprint(builtins.len([1]))")
    assert result["stdout"] == "-1\n"


def test_deleting_flowfile_from_sys_modules_does_not_break_later_executions(kernel):
    gone = run(kernel, "import sys\ndel sys.modules['flowfile']\nsys.modules.pop('flowfile', None)")
    assert gone["success"] is True, gone["error"]

    after = run(kernel, "import flowfile as ff\nff.publish_artifact('a', 1)\nprint(ff is flowfile)")

    assert after["success"] is True, after["error"]
    assert after["stdout"] == "True\n"
    assert after["published_artifacts"] == ["a"]


def test_replacing_flowfile_in_sys_modules_does_not_break_later_executions(kernel):
    run(kernel, "import sys\nsys.modules['flowfile'] = 'not a module'")
    after = run(kernel, "import flowfile\nflowfile.log_info('still here')")
    assert after["success"] is True, after["error"]
    assert [r["message"] for r in after["logs"]] == ["still here"]


def test_an_exception_that_cannot_be_printed_is_a_prompt_failed_result(run_code):
    code = (
        "class E(Exception):\n"
        "    def __str__(self):\n"
        "        raise RuntimeError('no str for you')\n"
        "raise E()\n"
    )
    result = run_code(code)

    assert result["success"] is False
    assert result["error"] == "E: <unprintable>"
    assert result["error_kind"] == "exception"
    assert "raise E()" in result["traceback"]


def test_the_kernel_still_answers_after_an_unprintable_exception(client, run_code):
    run_code("class E(Exception):\n    def __str__(self):\n        raise ValueError\nraise E()")
    assert client.get("/health").json()["status"] == "healthy"
    assert run_code("print('next')")["stdout"] == "next\n"
