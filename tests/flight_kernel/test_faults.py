"""What hostile user code must not break: the kernel's builtins, `flowfile`, error reporting."""

from __future__ import annotations

import subprocess
import sys
from typing import Any

import pyarrow as pa
import pyarrow.flight as flight
import pytest

from flight_kernel.kernel import Kernel
from flight_kernel.requests import ExecuteRequest
from flight_kernel.settings import Settings


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


BROKEN_UPLOAD = """
import os, sys
import pyarrow as pa, pyarrow.flight as flight
client = flight.connect(sys.argv[1])
batch = pa.record_batch({"x": pa.array(range(1000))})
writer, _ = client.do_put(flight.FlightDescriptor.for_path("tables", "t"), batch.schema)
for _ in range(7):
    writer.write_batch(batch)
os._exit(0)  # dies before done_writing/close: the stream breaks off
"""


def test_an_upload_that_breaks_off_stores_nothing_and_keeps_what_was_there(
    kernel_location, flight_client
):
    old = pa.table({"x": [1, 2, 3]})
    writer, _ = flight_client.do_put(flight.FlightDescriptor.for_path("tables", "t"), old.schema)
    writer.write_table(old)
    writer.close()

    subprocess.run([sys.executable, "-c", BROKEN_UPLOAD, kernel_location], check=True)

    assert flight_client.do_get(flight.Ticket(b"tables/t")).read_all().equals(old)


def test_an_upload_that_breaks_off_leaves_no_new_table(kernel_location, flight_client):
    subprocess.run([sys.executable, "-c", BROKEN_UPLOAD, kernel_location], check=True)
    with pytest.raises(KeyError, match="tables/t"):
        flight_client.do_get(flight.Ticket(b"tables/t")).read_all()


def test_a_remote_non_table_artifact_fails_as_a_local_one_does(kernel_location, kernel_server):
    kernel_server.kernel.artifacts.publish(1, None, "model", {"w": 1})
    host_port = kernel_location.removeprefix("grpc://")
    local, remote = kernel_server.kernel, Kernel()  # the remote read goes over Flight
    errors = []
    for kernel, uri in (
        (local, "flight:///artifacts/1/model"),
        (remote, f"flight://{host_port}/artifacts/1/model"),
    ):
        request = ExecuteRequest(
            node_id="n", code="flowfile.read_input()", input_paths={"main": [uri]}
        )
        errors.append(kernel.execute(request).error)

    for error in errors:
        assert error is not None
        assert error.startswith("TypeError: artifact ")
        assert error.endswith(" is a dict, not a table")


# -- what an execution's threads, logging and limits do -----------------------------------


def test_a_thread_started_by_the_execution_belongs_to_it(kernel):
    code = (
        "import threading\n"
        "def work():\n"
        "    print('from the thread')\n"
        "    flowfile.log_info('logged from the thread')\n"
        "    flowfile.publish_artifact('made_in_thread', 1)\n"
        "t = threading.Thread(target=work)\n"
        "t.start()\n"
        "t.join()\n"
    )
    result = run(kernel, code)

    assert result["success"] is True, result["error"]
    assert result["stdout"] == "from the thread\n"
    assert [r["message"] for r in result["logs"]] == ["logged from the thread"]
    assert result["published_artifacts"] == ["made_in_thread"]


def test_a_thread_that_outlives_its_execution_is_told_so_by_flowfile(kernel):
    code = (
        "import threading\n"
        "go, done, seen = threading.Event(), threading.Event(), []\n"
        "def late():\n"
        "    go.wait(10)\n"
        "    try:\n"
        "        flowfile.log_info('too late')\n"
        "    except RuntimeError as exc:\n"
        "        seen.append(str(exc))\n"
        "    done.set()\n"
        "threading.Thread(target=late, daemon=True).start()\n"
        "flowfile.publish_artifact('probe', (go, done, seen))\n"
    )
    first = run(kernel, code)
    go, done, seen = kernel.artifacts.get(0, "probe").obj
    go.set()
    assert done.wait(10)

    assert first["success"] is True, first["error"]
    assert first["logs"] == []
    assert len(seen) == 1
    assert "has ended" in seen[0]


def test_logging_records_go_to_the_executions_stderr(kernel):
    result = run(kernel, "import logging\nlogging.getLogger('mine').warning('careful: %s', 42)")
    assert result["stderr"] == "WARNING:mine:careful: 42\n"


def test_error_traceback_and_logs_are_capped_with_a_marker():
    kernel = Kernel(Settings(max_stream_bytes=100))
    code = "for i in range(50):\n    flowfile.log_info('x' * 10)\nraise ValueError('e' * 500)\n"
    result = run(kernel, code)

    assert result["error"].startswith("ValueError: eee")
    assert "[truncated: " in result["error"]
    assert len(result["error"].encode()) < 200
    assert "[truncated: " in result["traceback"]
    assert [r["message"] for r in result["logs"][:-1]] == ["x" * 10] * 10
    last = result["logs"][-1]
    assert last["level"] == "WARNING"
    assert last["message"] == "40 log records (400 bytes) dropped beyond the 100-byte limit"
