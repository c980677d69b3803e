"""Executor: one execution of user code, its result, and cancelling it."""

from __future__ import annotations

import dataclasses
import json
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import polars as pl
import pytest

import flight_kernel
from flight_kernel.errors import InvalidRequest
from flight_kernel.kernel import Kernel
from flight_kernel.paths import OutputPath
from flight_kernel.requests import ExecuteRequest, InterruptRequest, parse
from flight_kernel.settings import Settings
from tests.helpers import poll

KERNEL_DIR = str(Path(flight_kernel.__file__).resolve().parent)
# An interrupt that never arrives must fail the test (as a Timeout), not hang it.
SAFETY_TIMEOUT_S = 30


@pytest.fixture
def kernel() -> Kernel:
    return Kernel()


def request(node_id: str | int, code: str, **fields) -> ExecuteRequest:
    return ExecuteRequest(node_id=node_id, code=code, **fields)


def execute(kernel: Kernel, req: ExecuteRequest) -> dict:
    """Run through the kernel; the response body, as the transports send it."""
    return kernel.execute(req).to_json()


def running(kernel: Kernel) -> list[dict]:
    return [dataclasses.asdict(r) for r in kernel.executor.running()]


def interrupt(kernel: Kernel, **fields) -> list[dict]:
    return [dataclasses.asdict(r) for r in kernel.interrupt(InterruptRequest(**fields))]


def test_success_reports_stdout_and_stderr(kernel):
    code = "import sys\nprint('to out')\nprint('to err', file=sys.stderr)\nx = 1 + 1\n"
    result = execute(kernel, request("n1", code, flow_id=1))
    assert result["success"] is True
    assert result["stdout"] == "to out\n"
    assert result["stderr"] == "to err\n"
    assert result["error"] is None
    assert result["traceback"] is None
    assert result["output_paths"] == []
    assert result["published_artifacts"] == []
    assert result["deleted_artifacts"] == []
    assert isinstance(result["execution_time_ms"], float)


def _parquet(tmp_path: Path) -> str:
    path = tmp_path / "in.parquet"
    pl.DataFrame({"x": [1, 2]}).write_parquet(path)
    return str(path)


def _blocked_dir(tmp_path: Path) -> str:
    # CI runs as root, which may write anywhere: a path under a regular file is unwritable
    # for everyone.
    (tmp_path / "a_file").write_text("not a directory")
    return str(tmp_path / "a_file" / "out")


# (code, request fields built from tmp_path, error prefix, texts the error must contain,
#  a user line the traceback must show)
FAILURES = [
    pytest.param(
        "def f():\n    raise ValueError('boom')\nf()\n",
        lambda tmp: {},
        "ValueError: boom",
        [],
        "raise ValueError('boom')",
        id="exception",
    ),
    pytest.param(
        "x = 1\ny = (\n", lambda tmp: {}, "SyntaxError: ", ["line 2"], "y = (", id="syntax-error"
    ),
    pytest.param(
        "import sys\nsys.exit(3)\n",
        lambda tmp: {},
        "SystemExit: ",
        ["3"],
        "sys.exit(3)",
        id="system-exit",
    ),
    pytest.param(
        "raise KeyboardInterrupt('stop')\n",
        lambda tmp: {},
        "KeyboardInterrupt: stop",
        [],
        "raise KeyboardInterrupt('stop')",
        id="keyboard-interrupt",
    ),
    pytest.param(
        "df = flowfile.read_input('other')\n",
        lambda tmp: {"input_paths": {"main": [_parquet(tmp)], "extra": [_parquet(tmp)]}},
        "KeyError: ",
        ["'other'", "available: extra, main"],
        "df = flowfile.read_input('other')",
        id="missing-input-name",
    ),
    pytest.param(
        "df = flowfile.read_input()\n",
        lambda tmp: {"input_paths": {"main": [str(tmp / "missing.parquet")]}},
        "FileNotFoundError: ",
        ["missing.parquet"],
        "df = flowfile.read_input()",
        id="missing-input-file",
    ),
    pytest.param(
        "df = flowfile.read_input()\n",
        lambda tmp: {},
        "KeyError: ",
        ["no inputs"],
        "df = flowfile.read_input()",
        id="no-inputs-at-all",
    ),
    pytest.param(
        "frames = flowfile.read_inputs()\n",
        lambda tmp: {},
        "KeyError: ",
        ["no inputs"],
        "frames = flowfile.read_inputs()",
        id="no-inputs-at-all-read-inputs",
    ),
    pytest.param(
        "import polars as pl\nflowfile.publish_output(pl.DataFrame({'x': [1]}))\n",
        lambda tmp: {"output_dir": _blocked_dir(tmp)},
        "",
        ["output_dir", "a_file"],
        "flowfile.publish_output(pl.DataFrame({'x': [1]}))",
        id="output-dir-under-a-file",
    ),
    pytest.param(
        "import polars as pl\nflowfile.publish_output(pl.DataFrame({'x': [1]}))\n",
        lambda tmp: {"output_dir": _blocked_dir(tmp).removesuffix("/out")},
        "",
        ["output_dir", "a_file"],
        "flowfile.publish_output(pl.DataFrame({'x': [1]}))",
        id="output-dir-is-a-file",
    ),
]


@pytest.mark.parametrize(("code", "fields", "prefix", "parts", "user_line"), FAILURES)
def test_failure_is_a_result(kernel, tmp_path, code, fields, prefix, parts, user_line):
    result = execute(kernel, request("n1", code, **fields(tmp_path)))

    assert result["success"] is False
    error = result["error"]
    assert error.startswith(prefix)
    assert ": " in error
    assert error.split(": ", 1)[0].isidentifier()  # "<ExceptionType>: <message>"
    for part in parts:
        assert part in error
    assert user_line in result["traceback"]
    assert "<node n1>" in result["traceback"]
    assert KERNEL_DIR not in result["traceback"]
    # the service stays usable
    assert execute(kernel, request("n2", "print('ok')"))["stdout"] == "ok\n"


def test_exception_traceback_shows_every_user_frame(kernel):
    code = "def inner():\n    1 / 0\n\ndef outer():\n    inner()\n\nouter()\n"
    result = execute(kernel, request("n1", code))
    assert result["error"] == "ZeroDivisionError: division by zero"
    tb = result["traceback"]
    assert tb.startswith("Traceback (most recent call last):\n")
    assert [line.strip() for line in tb.splitlines() if line.startswith("    ")] == [
        "outer()",
        "inner()",
        "1 / 0",
    ]
    assert tb.endswith("ZeroDivisionError: division by zero\n")


def test_timeout_interrupts_the_execution(kernel):
    result = execute(kernel, request("n1", "while True:\n    pass\n", timeout_s=0.2))
    assert result["success"] is False
    assert result["error"].startswith("Timeout")
    assert "0.2" in result["error"]


def test_default_timeout_applies_when_the_request_has_none():
    kernel = Kernel(Settings(exec_timeout_s=0.2))
    result = execute(kernel, request("n1", "while True:\n    pass\n"))
    assert result["error"].startswith("Timeout")


def test_the_next_execution_after_a_cancelled_one_works(kernel):
    execute(kernel, request("n1", "while True:\n    pass\n", timeout_s=0.2))
    # same thread: no interrupt of the cancelled execution may be left pending
    code = "total = 0\nfor i in range(200_000):\n    total += i\nprint(total)\n"
    result = execute(kernel, request("n1", code))
    assert result["success"] is True
    assert result["stdout"] == f"{sum(range(200_000))}\n"


def test_a_finished_execution_is_not_cut_by_its_timeout(kernel):
    result = execute(kernel, request("n1", "print('quick')", timeout_s=30))
    assert result["success"] is True
    assert running(kernel) == []


def test_interrupt_stops_one_flow_and_others_continue(kernel):
    release = threading.Event()
    kernel.artifacts.publish(2, None, "release", release)
    waiting = "ok = flowfile.read_artifact('release').wait(10)\nprint('released', ok)\n"

    with ThreadPoolExecutor(2) as pool:
        looping = pool.submit(
            execute,
            kernel,
            request("loop", "while True:\n    pass\n", flow_id=1, timeout_s=SAFETY_TIMEOUT_S),
        )
        other = pool.submit(execute, kernel, request("wait", waiting, flow_id=2))
        poll(lambda: len(running(kernel)) == 2, timeout=10, what="both executions to run")

        interrupted = interrupt(kernel, flow_id=1)

        assert [(i["flow_id"], i["node_id"]) for i in interrupted] == [(1, "loop")]
        result = looping.result(timeout=10)
        assert result["success"] is False
        assert result["error"].startswith("Interrupted")
        assert [r["flow_id"] for r in running(kernel)] == [2]
        release.set()
        other_result = other.result(timeout=10)

    assert other_result["success"] is True
    assert other_result["stdout"] == "released True\n"


def test_interrupt_by_node_id_compares_string_forms(kernel):
    with ThreadPoolExecutor(1) as pool:
        looping = pool.submit(
            execute,
            kernel,
            request(7, "while True:\n    pass\n", flow_id=1, timeout_s=SAFETY_TIMEOUT_S),
        )
        poll(lambda: running(kernel) != [], timeout=10, what="the execution to run")
        assert interrupt(kernel, node_id="8") == []
        interrupted = interrupt(kernel, node_id="7")
        result = looping.result(timeout=10)
    assert [i["node_id"] for i in interrupted] == [7]
    assert result["error"].startswith("Interrupted")


def test_interrupts_racing_the_start_of_executions_never_hang_them(kernel):
    # An interrupt sent while the execution thread starts its timeout timer also hit the
    # newborn timer thread, which died unstarted: the execution then waited forever.
    for _ in range(200):
        results: list[dict] = []
        req = request("n1", "while True:\n    pass\n", timeout_s=SAFETY_TIMEOUT_S)
        thread = threading.Thread(  # daemon: a hung one must not hang pytest
            target=lambda k, r, out: out.append(execute(k, r)),
            args=(kernel, req, results),
            daemon=True,
        )
        thread.start()
        deadline = time.monotonic() + 10
        while not running(kernel):
            assert time.monotonic() < deadline, "the execution never started"
        interrupt(kernel)
        thread.join(timeout=10)
        assert not thread.is_alive(), "the interrupted execution hung"
        assert results[0]["error"].startswith("Interrupted")


@pytest.mark.xfail(
    sys.version_info < (3, 12),
    strict=True,
    reason=(
        "CPython 3.11: a thread being created briefly carries its creator's ident, so the "
        "KeyboardInterrupt that PyThreadState_SetAsyncExc aims at an execution starting a thread "
        "can also hit the newborn, which dies unstarted while user code waits in Thread.start() "
        "forever (reverting on a count > 1 does not help: the newborn takes its own ident without "
        "the GIL). Fixed in CPython 3.12; the supervisor restarts such a kernel after the grace."
    ),
)
# the newborn thread's KeyboardInterrupt is reported as "Exception ignored in thread started by"
@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
def test_a_timeout_while_user_code_starts_threads_never_hangs_it(kernel):
    code = (
        "import threading\nwhile True:\n"
        "    t = threading.Thread(target=int)\n    t.start()\n    t.join()\n"
    )
    # Eight at once: the contention widens the window, so the bug shows in a round or two.
    for _ in range(40):
        threads = [
            threading.Thread(  # daemon: a hung one must not hang pytest
                target=execute,
                args=(kernel, request(f"n{k}", code, timeout_s=0.05)),
                daemon=True,
            )
            for k in range(8)
        ]
        for thread in threads:
            thread.start()
        deadline = time.monotonic() + 3
        for thread in threads:
            thread.join(timeout=max(0.0, deadline - time.monotonic()))
        assert not any(t.is_alive() for t in threads), "a timed-out execution hung"


def test_interrupt_with_nothing_running_interrupts_nothing(kernel):
    assert interrupt(kernel) == []


def test_output_is_capped_with_a_truncation_marker():
    kernel = Kernel(Settings(max_stream_bytes=100))
    code = "import sys\nprint('x' * 1000)\nprint('y' * 300, file=sys.stderr)\n"
    result = execute(kernel, request("n1", code))

    assert result["success"] is True
    out, marker = result["stdout"][:100], result["stdout"][100:]
    assert out == "x" * 100
    assert "x" not in marker
    assert "truncated" in marker
    assert "901 bytes" in marker  # 1000 x's and a newline, minus the 100 kept
    assert result["stderr"].startswith("y" * 100)
    assert "y" * 101 not in result["stderr"]
    assert "201 bytes" in result["stderr"]


def test_output_under_the_cap_has_no_marker():
    kernel = Kernel(Settings(max_stream_bytes=100))
    result = execute(kernel, request("n1", "print('x' * 98)"))
    assert result["stdout"] == "x" * 98 + "\n"


def test_reexecution_clears_the_nodes_previous_artifacts(kernel):
    first = "flowfile.publish_artifact('a', 1)\nflowfile.publish_artifact('b', 2)\n"
    execute(kernel, request("n1", first, flow_id=1))
    execute(kernel, request("n1", first, flow_id=2))
    execute(kernel, request("other", "flowfile.publish_artifact('c', 3)", flow_id=1))

    result = execute(kernel, request("n1", "flowfile.publish_artifact('d', 4)", flow_id=1))

    assert result["published_artifacts"] == ["d"]
    assert result["deleted_artifacts"] == []
    assert sorted(a.name for a in kernel.artifacts.find(flow_id=1)) == ["c", "d"]
    assert sorted(a.name for a in kernel.artifacts.find(flow_id=2)) == ["a", "b"]


def test_reexecution_clears_the_nodes_previous_flight_outputs(kernel):
    two = (
        "import polars as pl\nflowfile.publish_output(pl.DataFrame({'x': [1]}))\n"
        "flowfile.publish_output(pl.DataFrame({'x': [2]}), name='extra')\n"
    )
    execute(kernel, request("n1", two, flow_id=1))

    result = execute(
        kernel,
        request(
            "n1",
            "import polars as pl\nflowfile.publish_output(pl.DataFrame({'x': [3]}))\n",
            flow_id=1,
        ),
    )

    assert result["output_paths"] == ["flight:///outputs/1/n1/output_0"]
    assert [str(p) for p in kernel.store.paths("outputs/")] == ["outputs/1/n1/output_0"]
    assert kernel.store.get(OutputPath(1, "n1", "output_0")).to_pydict() == {"x": [3]}


def test_partial_failure_keeps_what_was_published(kernel):
    code = (
        "import polars as pl\n"
        "flowfile.publish_artifact('kept', {'k': 1})\n"
        "flowfile.publish_output(pl.DataFrame({'x': [1, 2]}))\n"
        "print('before')\n"
        "raise RuntimeError('late failure')\n"
    )
    result = execute(kernel, request("n1", code, flow_id=1))

    assert result["success"] is False
    assert result["error"] == "RuntimeError: late failure"
    assert result["stdout"] == "before\n"
    assert result["published_artifacts"] == ["kept"]
    assert result["output_paths"] == ["flight:///outputs/1/n1/output_0"]
    assert kernel.artifacts.get(1, "kept").obj == {"k": 1}
    assert kernel.store.get(OutputPath(1, "n1", "output_0")).num_rows == 2


def test_user_code_runs_as_main_with_flowfile_injected(kernel):
    result = execute(kernel, request("n1", "print(__name__, flowfile.__name__)"))
    assert result["stdout"] == "__main__ flight_kernel.flowfile\n"


@pytest.mark.parametrize(
    ("body", "field"),
    [
        pytest.param({"code": "x"}, "node_id", id="missing-node-id"),
        pytest.param({"node_id": True, "code": "x"}, "node_id", id="bool-node-id"),
        pytest.param({"node_id": "n"}, "code", id="missing-code"),
        pytest.param({"node_id": "n", "code": "x", "flow_id": "1"}, "flow_id", id="str-flow-id"),
        pytest.param(
            {"node_id": "n", "code": "x", "input_paths": {"main": "a"}},
            "input_paths",
            id="input-paths-not-lists",
        ),
        pytest.param(
            {"node_id": "n", "code": "x", "output_dir": 3}, "output_dir", id="output-dir-not-str"
        ),
        pytest.param({"node_id": "n", "code": "x", "timeout_s": 0}, "timeout_s", id="zero-timeout"),
    ],
)
def test_execute_request_parse_names_the_bad_field(body, field):
    with pytest.raises(InvalidRequest, match=f"'{field}'"):
        parse(ExecuteRequest, json.dumps(body).encode(), "action 'execute'")
