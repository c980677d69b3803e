"""The real `kernel-runtime serve` and its store: tables, outputs and persisted artifacts that
outlive a killed, stopped or crashing kernel, a service restarted on the same directory, a
second service on it, a full store, and `/clear`.

The tests read the store through the public planes (HTTP, and a Flight client on the service's
port) and look at its directory (`/health` store.dir) only for what must not be there.
Nothing depends on how long anything takes: every wait is a poll or a latch with a deadline.
"""

from __future__ import annotations

import contextlib
import os
import pickle
import re
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import polars as pl
import psutil
import pyarrow as pa
import pyarrow.flight as flight
import pytest

from tests.e2e.service import SERVE, Service, wait_persisted
from tests.helpers import free_port, poll, post_json

pytestmark = pytest.mark.e2e

RESULT_DEADLINE_S = 120.0
FLOW = 1
TABLE = pa.table({"id": [1, 2, 3], "city": ["Oslo", "Lima", "Pune"]})
OUTPUT = {"x": [10, 20, 30], "y": ["p", "q", "r"]}
CONFIG = {"threshold": 0.5, "columns": ["a", "b"], "nested": {"k": (1, 2)}}
FRAME = {"a": [1, 2, 3], "b": ["u", "v", "w"]}
PRODUCE = f"""\
import polars as pl
flowfile.publish_output(pl.DataFrame({OUTPUT!r}), name='summary')
flowfile.publish_artifact('config', {CONFIG!r})
flowfile.publish_artifact('frame', pl.DataFrame({FRAME!r}))
"""
OUTPUT_PATH = f"outputs/{FLOW}/producer/summary"
READ_ARTIFACTS = (
    "print(flowfile.read_artifact('config'))\n"
    "print(flowfile.read_artifact('frame').to_dict(as_series=False))\n"
)
STORED = ["tables/sales", OUTPUT_PATH, f"artifacts/{FLOW}/config", f"artifacts/{FLOW}/frame"]


@contextlib.contextmanager
def _flight(service: Service) -> Iterator[flight.FlightClient]:
    with flight.connect(service.flight_url) as client:
        yield client


def _put(client: flight.FlightClient, name: str, table: pa.Table) -> None:
    writer, _ = client.do_put(flight.FlightDescriptor.for_path("tables", name), table.schema)
    writer.write_table(table)
    writer.close()


def _get(client: flight.FlightClient, path: str) -> pa.Table:
    return client.do_get(flight.Ticket(path.encode())).read_all()


def _listed(client: flight.FlightClient, prefix: str = "") -> list[str]:
    infos = client.list_flights(prefix.encode())
    return sorted("/".join(p.decode() for p in info.descriptor.path) for info in infos)


def _info(client: flight.FlightClient, path: str) -> flight.FlightInfo:
    return client.get_flight_info(flight.FlightDescriptor.for_path(*path.split("/")))


def _unpickled(table: pa.Table) -> Any:
    """A non-table artifact as it travels: one row of serialized bytes."""
    assert table.num_rows == 1 and table.num_columns == 1, table.schema
    return pickle.loads(table.column(0)[0].as_py())


def _fill(service: Service, client: flight.FlightClient) -> dict[str, dict[str, Any]]:
    """A table, an output and two artifacts (both persisted); their /artifacts records."""
    _put(client, "sales", TABLE)
    produced = service.execute(PRODUCE, node_id="producer", flow_id=FLOW)
    assert produced["success"], produced
    assert produced["output_paths"] == [f"flight:///{OUTPUT_PATH}"]
    return {name: wait_persisted(service, name, FLOW) for name in ("config", "frame")}


def _assert_served(client: flight.FlightClient) -> None:
    """Every stored thing reads back over Flight with the values it was stored with."""
    assert _get(client, "tables/sales").equals(TABLE)
    assert _get(client, OUTPUT_PATH).to_pydict() == OUTPUT
    assert _unpickled(_get(client, f"artifacts/{FLOW}/config")) == CONFIG
    frame = pl.from_arrow(_get(client, f"artifacts/{FLOW}/frame"))
    assert isinstance(frame, pl.DataFrame)
    assert frame.to_dict(as_series=False) == FRAME


def _store_files(directory: str, top: str) -> list[str]:
    """The names of the files under `top` of the store directory."""
    return [name for _, _, files in os.walk(Path(directory) / top) for name in files]


def _gone(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def test_a_killed_kernel_loses_no_table_output_or_persisted_artifact(service: Service) -> None:
    with _flight(service) as client:
        _fill(service, client)
        pid = service.kernel_pid(FLOW)

        os.kill(pid, signal.SIGKILL)
        poll(lambda: _gone(pid), RESULT_DEADLINE_S, f"the killed kernel (pid {pid}) to be gone")
        _assert_served(client)  # from the store, whether the next kernel is up yet or not
        first = service.execute(READ_ARTIFACTS, node_id="reader", flow_id=FLOW)

    assert first["success"], first
    assert first["stdout"] == f"{CONFIG!r}\n{FRAME!r}\n"
    assert first["kernel_restarted"] is True
    assert first["lost_state"] == []
    assert first["lost_artifacts"] == []
    assert service.kernel_pid(FLOW) != pid


def test_the_data_plane_serves_the_store_while_the_kernel_is_stopped(service: Service) -> None:
    with _flight(service) as client:
        _fill(service, client)
        pid = service.kernel_pid(FLOW)

        os.kill(pid, signal.SIGSTOP)
        try:
            _assert_served(client)
            listed = _listed(client)
            records = {path: _info(client, path).total_records for path in STORED}
            health = service.http.get("/health")
        finally:
            os.kill(pid, signal.SIGCONT)

    assert listed == sorted(STORED)
    assert records == {
        "tables/sales": 3,
        OUTPUT_PATH: 3,
        f"artifacts/{FLOW}/config": 1,
        f"artifacts/{FLOW}/frame": 3,
    }
    assert health.status_code == 200, health.text
    kernels = health.json()["kernels"]
    assert [k["state"] for k in kernels if k["pid"] == pid] == ["busy"]
    assert service.execute("print('resumed')")["stdout"] == "resumed\n"


# In a thread, publish a big output; on the first Python-level call the writing thread makes
# once a `.tmp-*` file with data is in the node's output directory, that thread blocks (so the
# write cannot finish) and the main thread kills the kernel. A write that never shows such a
# file finishes, and the code says so instead of dying. Before the kill the code names the
# partial file in `seen` (a file: what the code printed dies with the kernel).
CRASH_WHILE_WRITING = """\
import os, signal, sys, threading
import polars as pl

out_dir = {out_dir!r}
writing, done, partial = threading.Event(), threading.Event(), []

def mid_write(frame, event, arg):
    if writing.is_set() or event not in ('call', 'c_call'):
        return
    with __import__('contextlib').suppress(FileNotFoundError):
        for name in os.listdir(out_dir):
            path = os.path.join(out_dir, name)
            if name.startswith('.tmp-') and os.path.getsize(path) > 0:
                partial.append(name)
                writing.set()
                threading.Event().wait()  # never returns: the write cannot go on

def publish():
    sys.setprofile(mid_write)
    try:
        big = pl.LazyFrame({{'x': range(3_000_000)}}).with_columns(y=pl.col('x') * 2)
        flowfile.publish_output(big, name='big')
    finally:
        sys.setprofile(None)
        done.set()

threading.Thread(target=publish, daemon=True).start()
while not writing.wait(0.01):
    if done.is_set():
        break
if writing.is_set():
    with open({seen!r}, 'w') as seen:
        seen.write(partial[0])
    os.kill(os.getpid(), signal.SIGKILL)
print('the write finished before it was seen')
"""


def test_a_kernel_killed_while_writing_an_output_leaves_no_partial_file(
    service: Service, tmp_path: Path
) -> None:
    store_dir = service.healthy()["store"]["dir"]
    flow = 3
    earlier = service.execute(
        "import polars as pl\nflowfile.publish_output(pl.DataFrame({'x': [1]}), name='big')",
        node_id="writer",
        flow_id=flow,
    )
    kept = service.execute(
        "import polars as pl\nflowfile.publish_output(pl.DataFrame({'k': [7, 8]}), name='kept')",
        node_id="other",
        flow_id=flow,
    )
    assert earlier["success"] and kept["success"], (earlier, kept)
    out_dir = str(Path(store_dir) / "outputs" / str(flow) / "writer")

    seen = tmp_path / "partial-file-seen"  # says which `.tmp-*` file existed at the kill

    crashed = service.execute(
        CRASH_WHILE_WRITING.format(out_dir=out_dir, seen=str(seen)), node_id="writer", flow_id=flow
    )

    assert seen.exists(), crashed  # else the write finished before it was seen
    assert seen.read_text().startswith(".tmp-")
    assert crashed["success"] is False
    assert crashed["error"].startswith("KernelDied: ")
    assert crashed["kernel_restarted"] is True
    # The earlier `big` is gone too, and consistently so: a node's re-execution drops the
    # outputs it published before its code runs, so neither the old one nor a partial new one
    # may be visible after the crash; the other node's output is untouched.
    assert not [n for n in _store_files(store_dir, "outputs") if n.startswith(".tmp-")]
    with _flight(service) as client:
        assert _listed(client, f"outputs/{flow}/") == [f"outputs/{flow}/other/kept"]
        with pytest.raises(KeyError, match=f"outputs/{flow}/writer/big"):
            _get(client, f"outputs/{flow}/writer/big")
        assert _get(client, f"outputs/{flow}/other/kept").to_pydict() == {"k": [7, 8]}
    assert service.execute("print('next')", flow_id=flow)["stdout"] == "next\n"


def test_a_service_restarted_on_its_store_dir_recovers_what_it_held(
    start_service, tmp_path: Path
) -> None:
    store_dir = tmp_path / "store"
    first = start_service(KERNEL_STORE_DIR=str(store_dir))
    with _flight(first) as client:
        records = _fill(first, client)
    assert first.stop() == 0, first.log()

    second = start_service(KERNEL_STORE_DIR=str(store_dir))
    health = second.healthy()
    with _flight(second) as client:
        _assert_served(client)
    listed = {r["name"]: r for r in second.http.get("/artifacts", params={"flow_id": FLOW}).json()}
    read = second.execute(READ_ARTIFACTS, node_id="reader", flow_id=FLOW)

    assert health["store"]["durable"] is True
    assert health["store"]["dir"] == str(store_dir)
    assert sorted(listed) == ["config", "frame"]
    for name, before in records.items():
        after = listed[name]
        assert (after["created_at"], after["node_id"]) == (before["created_at"], "producer")
        assert after["persisted"] is True
    assert read["success"], read
    assert read["stdout"] == f"{CONFIG!r}\n{FRAME!r}\n"


def test_a_second_service_on_the_same_store_dir_refuses_to_start_naming_it(
    start_service, tmp_path: Path
) -> None:
    store_dir = tmp_path / "store"
    first = start_service(KERNEL_STORE_DIR=str(store_dir))
    with _flight(first) as client:
        _put(client, "sales", TABLE)
    env = {k: v for k, v in os.environ.items() if not k.startswith("KERNEL_")}
    env.update(
        KERNEL_HOST="127.0.0.1",
        KERNEL_HTTP_PORT=str(free_port()),
        KERNEL_FLIGHT_PORT=str(free_port()),
        KERNEL_STORE_DIR=str(store_dir),
        KERNEL_START_TIMEOUT_S="60",
    )

    second = subprocess.run(
        [SERVE, "serve"], env=env, capture_output=True, text=True, timeout=RESULT_DEADLINE_S
    )

    assert second.returncode != 0
    assert str(store_dir) in second.stdout + second.stderr
    with _flight(first) as client:  # the refused one took nothing from the first
        assert _get(client, "tables/sales").equals(TABLE)
    assert first.execute("print('first still serves')")["stdout"] == "first still serves\n"


def test_a_full_store_refuses_what_does_not_fit_and_keeps_serving(start_service) -> None:
    service = start_service(KERNEL_STORE_MAX_BYTES="2000000")
    store_dir = service.healthy()["store"]["dir"]
    big = pa.table({"x": pa.array(range(500_000), pa.int64())})  # 4 MB
    space_left = r"\d+(\.\d+)? (bytes|KiB|MiB) left"

    with _flight(service) as client:
        with pytest.raises(flight.FlightError) as refused:
            _put(client, "big", big)
        listed = _listed(client, "tables/")
        _put(client, "small", TABLE)
        small = _get(client, "tables/small")
    published = service.execute(
        "import polars as pl\nflowfile.publish_output(pl.DataFrame({'x': range(1_000_000)}))"
    )

    assert store_dir in str(refused.value)
    assert re.search(space_left, str(refused.value)), str(refused.value)
    assert listed == []
    assert small.equals(TABLE)
    assert published["success"] is False
    assert store_dir in published["error"]
    assert re.search(space_left, published["error"]), published["error"]
    assert published["output_paths"] == []
    assert not [n for n in _store_files(store_dir, "") if n.startswith(".tmp-")]
    with _flight(service) as client:
        assert _listed(client) == ["tables/small"]


def test_clear_removes_the_stores_files(service: Service) -> None:
    store_dir = service.healthy()["store"]["dir"]
    with _flight(service) as client:
        _fill(service, client)
        assert [n for n in _store_files(store_dir, "tables") if n.endswith(".arrow")]
        assert [n for n in _store_files(store_dir, "outputs") if n.endswith(".arrow")]

        cleared = post_json(service.http, "/clear", None)
        listed = _listed(client)

    assert not [n for n in _store_files(store_dir, "tables") if n.endswith(".arrow")], cleared
    assert not [n for n in _store_files(store_dir, "outputs") if n.endswith(".arrow")], cleared
    assert listed == []
    assert cleared["removed_tables"] == ["sales"]
    assert cleared["removed_outputs"] == [OUTPUT_PATH]
    assert sorted(a["name"] for a in cleared["removed_artifacts"]) == ["config", "frame"]
    assert not _store_files(store_dir, f"artifacts/{FLOW}")  # persisted forms went too
    assert service.healthy()["artifact_count"] == 0


def test_the_default_store_is_private_and_removed_on_a_clean_shutdown(service: Service) -> None:
    store = service.healthy()["store"]
    with _flight(service) as client:
        _put(client, "sales", TABLE)
    assert store["durable"] is False
    assert Path(store["dir"]).is_dir()
    assert [n for n in _store_files(store["dir"], "tables") if n.endswith(".arrow")]

    assert service.stop() == 0, service.log()

    assert not Path(store["dir"]).exists()


@pytest.mark.parametrize(
    ("death", "how"),
    [
        pytest.param("os._exit(9)", "exited with code 9", id="exit"),
        pytest.param("os.kill(os.getpid(), 9)", "killed by SIGKILL", id="sigkill"),
        pytest.param("import ctypes\nctypes.string_at(0)", "SIGSEGV", id="segfault"),
    ],
)
def test_what_the_code_printed_before_its_kernel_died_is_in_the_answer(
    service: Service, death: str, how: str
) -> None:
    code = f"import os, sys\nprint('published, then died')\nprint('oops', file=sys.stderr)\n{death}"

    died = service.execute(code)

    assert died["error"].startswith("KernelDied: the kernel process")
    assert how in died["error"]
    assert died["stdout"] == "published, then died\n"
    assert died["stderr"] == "oops\n"
