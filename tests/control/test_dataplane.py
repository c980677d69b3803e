"""The data plane: the service's public Flight port, through a real pyarrow Flight client.

Tables, outputs and persisted artifacts come from the store; live artifacts and artifact
uploads go to the flow's kernel; actions are the service's, with the HTTP plane's JSON.
"""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
import urllib.parse
import urllib.request
from collections.abc import Iterator
from typing import Any

import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.flight as flight
import pyarrow.ipc as ipc
import pytest
from fastapi.testclient import TestClient
from polars.testing import assert_frame_equal

from control.app import create_app
from flight_kernel.auth import call_options
from flight_kernel.kernel import Kernel
from flight_kernel.serialization import PICKLE, SERIALIZER_KEY, from_arrow, to_arrow
from flight_kernel.server import REUSE_CONNECTION, KernelFlightServer
from flight_kernel.settings import Settings
from tests.conftest import attached
from tests.helpers import Latch, execute, flight_action, poll

TOKEN = "s3cret-token"


@pytest.fixture
def public(client: TestClient) -> Iterator[flight.FlightClient]:
    """A Flight client of the service's public port (the data plane)."""
    with flight.connect(location_of(client)) as fc:
        yield fc


def location_of(client: TestClient) -> str:
    """The data plane's address (the app's lifespan started it)."""
    app: Any = client.app
    location: str = app.state.service.flight_location
    return location


def put(
    fc: flight.FlightClient,
    path: str,
    table: pa.Table,
    options: flight.FlightCallOptions | None = None,
) -> None:
    descriptor = flight.FlightDescriptor.for_path(*path.split("/"))
    writer, _ = fc.do_put(descriptor, table.schema, options)
    with writer:
        writer.write_table(table)


def get(
    fc: flight.FlightClient, path: str, options: flight.FlightCallOptions | None = None
) -> pa.Table:
    return fc.do_get(flight.Ticket(path.encode()), options).read_all()


def info_of(fc: flight.FlightClient, path: str) -> flight.FlightInfo:
    return fc.get_flight_info(flight.FlightDescriptor.for_path(*path.split("/")))


def listed(fc: flight.FlightClient, prefix: str) -> dict[str, flight.FlightInfo]:
    return {
        "/".join(p.decode() for p in i.descriptor.path): i for i in fc.list_flights(prefix.encode())
    }


def locations(info: flight.FlightInfo) -> list[str]:
    (endpoint,) = info.endpoints
    return [loc.uri.decode() for loc in endpoint.locations]


def file_of(uri: str) -> str:
    """The local path a `file://` location names."""
    parts = urllib.parse.urlsplit(uri)
    assert parts.scheme == "file", uri
    return urllib.request.url2pathname(parts.path)


def records(client: TestClient, flow_id: int) -> dict[str, dict[str, Any]]:
    response = client.get("/artifacts", params={"flow_id": flow_id})
    assert response.status_code == 200, response.text
    return {r["name"]: r for r in response.json()}


def run(client: TestClient, code: str, *, flow_id: int = 1, node_id: str = "n1") -> dict:
    result = execute(client, code, node_id=node_id, flow_id=flow_id)
    assert result["success"] is True, result
    return result


TABLE = pa.table(
    {
        "id": pa.array([1, 2, None], pa.int64()),
        "name": pa.array(["a", None, "caf\u00e9"]),
        "tags": pa.array([["x"], [], None], pa.list_(pa.string())),
        "d": pa.array(["red", "blue", "red"]).dictionary_encode(),
    }
)


# -- tables ----------------------------------------------------------------------------------


def test_a_put_table_is_got_back_unchanged(public):
    put(public, "tables/people", TABLE)

    served = get(public, "tables/people")

    assert served.schema.equals(TABLE.schema, check_metadata=True)
    assert served.equals(TABLE)


def test_a_put_replaces_the_table_at_that_path(public):
    put(public, "tables/t", pa.table({"x": [1]}))
    put(public, "tables/t", pa.table({"y": ["new", "rows"]}))
    assert get(public, "tables/t").to_pydict() == {"y": ["new", "rows"]}


def test_flight_info_gives_schema_rows_and_locations_ending_with_the_file(public):
    put(public, "tables/people", TABLE)

    info = info_of(public, "tables/people")

    assert info.schema.equals(TABLE.schema)
    assert info.total_records == 3
    assert info.total_bytes > 0
    (endpoint,) = info.endpoints
    assert endpoint.ticket.ticket == b"tables/people"
    found = locations(info)
    assert found[0] == REUSE_CONNECTION
    assert found[-1].startswith("file://")
    assert len(found) == 2
    path = file_of(found[-1])
    assert os.path.isfile(path)
    mapped = ipc.open_file(pa.memory_map(path)).read_all()
    assert mapped.equals(TABLE)


def test_list_flights_gives_the_same_as_flight_info(public):
    put(public, "tables/a", pa.table({"x": [1, 2]}))
    put(public, "tables/b", TABLE)

    found = listed(public, "tables/")

    assert sorted(found) == ["tables/a", "tables/b"]
    info = found["tables/b"]
    assert info.schema.equals(TABLE.schema)
    assert info.total_records == 3
    assert locations(info) == locations(info_of(public, "tables/b"))
    assert ipc.open_file(pa.memory_map(file_of(locations(info)[-1]))).read_all().equals(TABLE)
    assert found["tables/a"].total_records == 2


def test_a_name_with_odd_characters_has_a_file_location_that_maps(public):
    name = "sales 100% caf\u00e9 #1?"
    table = pa.table({"x": [1, 2, 3]})
    put(public, f"tables/{name}", table)

    info = info_of(public, f"tables/{name}")

    assert get(public, f"tables/{name}").equals(table)
    assert ipc.open_file(pa.memory_map(file_of(locations(info)[-1]))).read_all().equals(table)


def test_a_big_table_is_served_in_bounded_batches(public):
    rows = (1 << 20) + 3
    table = pa.table({"x": pa.array(np.arange(rows, dtype=np.int8))})
    put(public, "tables/big", table)

    reader = public.do_get(flight.Ticket(b"tables/big"))
    batches = [chunk.data for chunk in reader]

    assert [b.num_rows for b in batches] == [1 << 20, 3]
    assert pa.Table.from_batches(batches).equals(table)


# -- outputs ---------------------------------------------------------------------------------


def test_an_output_published_by_execute_is_served(client, public):
    result = run(
        client,
        "import polars as pl\n"
        "flowfile.publish_output(pl.DataFrame({'x': [1, 2], 's': ['a', None]}), 'o')",
    )
    assert result["output_paths"] == ["flight:///outputs/1/n1/o"]

    served = get(public, "outputs/1/n1/o")
    info = info_of(public, "outputs/1/n1/o")

    assert served.to_pydict() == {"x": [1, 2], "s": ["a", None]}
    assert info.total_records == 2
    assert info.schema.equals(served.schema)
    assert locations(info)[0] == REUSE_CONNECTION
    assert os.path.isfile(file_of(locations(info)[-1]))
    assert sorted(listed(public, "outputs/1/")) == ["outputs/1/n1/o"]


def test_a_put_to_an_output_is_refused_naming_the_path(public):
    with pytest.raises(flight.FlightServerError, match="outputs/1/n/o"):
        put(public, "outputs/1/n/o", pa.table({"x": [1]}))
    with pytest.raises(KeyError, match="outputs/1/n/o"):
        get(public, "outputs/1/n/o")


@pytest.mark.parametrize(
    "path",
    ["tables/nope", "outputs/1/n1/nope", "artifacts/1/nope"],
)
def test_get_of_a_missing_path_is_a_key_error_naming_it(public, path):
    with pytest.raises(KeyError, match=path):
        get(public, path)
    with pytest.raises(KeyError, match=path):
        info_of(public, path)


@pytest.mark.parametrize(
    "ticket",
    [b"", b"nothing/x", b"tables/a/b", b"artifacts/one/x", b"tables/..", b"\xff\xfe"],
)
def test_a_malformed_ticket_is_a_server_error_and_the_port_goes_on(public, ticket):
    with pytest.raises(flight.FlightServerError):
        public.do_get(flight.Ticket(ticket)).read_all()
    put(public, "tables/after", pa.table({"ok": [1]}))
    assert get(public, "tables/after").to_pydict() == {"ok": [1]}


# -- artifacts -------------------------------------------------------------------------------


def test_a_frame_artifact_is_served_once_persisted(client, public):
    run(client, "import polars as pl\nflowfile.publish_artifact('df', pl.DataFrame({'x': [1, 2]}))")
    poll(lambda: records(client, 1)["df"]["persisted"], 10, "artifact df to be persisted")

    served = get(public, "artifacts/1/df")
    info = info_of(public, "artifacts/1/df")

    assert_frame_equal(from_arrow(served), pl.DataFrame({"x": [1, 2]}))
    assert info.total_records == 2
    assert locations(info)[-1].startswith("file://")
    assert "artifacts/1/df" in listed(public, "artifacts/")


def _held_code(entered: Latch, go: Latch) -> str:
    """User code publishing an object whose first pickling (the store's background writer,
    which is the first to pickle it) waits for `go`; any later one (a read) does not."""
    return f"""
import os as _os, time as _time

class Held:
    def __reduce__(self):
        if not _os.path.exists({str(entered.path)!r}):
            open({str(entered.path)!r}, 'w').close()
            deadline = _time.monotonic() + 30
            while not _os.path.exists({str(go.path)!r}) and _time.monotonic() < deadline:
                _time.sleep(0.01)
        return (dict, ([('v', 1)],))

flowfile.publish_artifact('held', Held())
"""


def test_an_artifact_is_served_before_and_after_it_is_persisted(client, public, tmp_path):
    entered, go = Latch(tmp_path / "entered"), Latch(tmp_path / "go")
    try:
        run(client, _held_code(entered, go))
        entered.wait(10, "the store's writer to start pickling the artifact")

        assert records(client, 1)["held"]["persisted"] is False
        live = get(public, "artifacts/1/held")  # from the kernel: not in the store yet
        live_info = info_of(public, "artifacts/1/held")
        assert from_arrow(live) == {"v": 1}
        assert live.schema.metadata[SERIALIZER_KEY] == PICKLE
        assert live_info.total_records == 1
        assert live_info.total_bytes == -1
        assert locations(live_info) == [REUSE_CONNECTION]
        assert "artifacts/1/held" in listed(public, "artifacts/1/")
    finally:
        go.set()

    poll(lambda: records(client, 1)["held"]["persisted"], 10, "artifact held to be persisted")
    stored = get(public, "artifacts/1/held")  # from the store's file
    assert from_arrow(stored) == {"v": 1}
    assert stored.schema.metadata[SERIALIZER_KEY] == PICKLE
    stored_info = info_of(public, "artifacts/1/held")
    assert stored_info.total_records == 1
    assert stored_info.total_bytes == -1


def test_a_put_artifact_is_readable_by_read_artifact_in_its_flow(client, public):
    obj = {"weights": [1.5, 2.5], "name": "model"}
    put(public, "artifacts/1/x", to_arrow(obj, "x"))

    result = run(
        client,
        "import polars as pl\n"
        f"assert flowfile.read_artifact('x') == {obj!r}, flowfile.read_artifact('x')\n"
        "flowfile.publish_output(pl.DataFrame({'w': flowfile.read_artifact('x')['weights']}))\n",
    )

    assert result["output_paths"] == ["flight:///outputs/1/n1/output_0"]
    assert get(public, "outputs/1/n1/output_0").to_pydict() == {"w": [1.5, 2.5]}
    assert from_arrow(get(public, "artifacts/1/x")) == obj
    other = execute(client, "flowfile.read_artifact('x')", node_id="n2", flow_id=2)
    assert other["success"] is False
    assert "'x'" in other["error"]


def test_a_put_table_artifact_is_readable_in_its_flow(client, public):
    frame = pl.DataFrame({"a": [1, 2, 3]})
    put(public, "artifacts/1/frame", to_arrow(frame, "frame"))

    run(client, "assert flowfile.read_artifact('frame')['a'].to_list() == [1, 2, 3]")

    assert_frame_equal(from_arrow(get(public, "artifacts/1/frame")), frame)


# -- actions ---------------------------------------------------------------------------------


def test_the_execute_action_runs_code(client, public):
    result = flight_action(
        public,
        "execute",
        {
            "node_id": "n1",
            "flow_id": 3,
            "code": "import polars as pl\nprint('hi')\n"
            "flowfile.publish_output(pl.DataFrame({'x': [7]}), 'o')",
        },
    )

    assert result["success"] is True, result
    assert result["stdout"] == "hi\n"
    assert result["output_paths"] == ["flight:///outputs/3/n1/o"]
    assert get(public, "outputs/3/n1/o").to_pydict() == {"x": [7]}


def test_the_health_action_reports_the_store(client, public, settings):
    put(public, "tables/t", pa.table({"x": [1]}))

    health = flight_action(public, "health")

    assert health["status"] == "healthy"
    assert health["table_count"] == 1
    store = health["store"]
    assert store["dir"] == os.path.abspath(settings.store_dir)
    assert store["bytes"] > 0
    assert isinstance(store["max_bytes"], int) and store["max_bytes"] > store["bytes"]
    assert store["durable"] is True
    assert health["flight_location"] == location_of(client)


def test_the_list_artifacts_action_gives_the_records(client, public):
    run(client, "flowfile.publish_artifact('m', {'a': 1})", flow_id=4)

    found = flight_action(public, "list_artifacts", {"flow_id": 4})

    assert [(r["name"], r["flow_id"], r["node_id"]) for r in found] == [("m", 4, "n1")]
    assert found == list(records(client, 4).values())


def test_the_delete_action_removes_a_table(public):
    put(public, "tables/t", pa.table({"x": [1]}))
    file = file_of(locations(info_of(public, "tables/t"))[-1])

    assert flight_action(public, "delete", {"path": "tables/t"}) == {"deleted": "tables/t"}

    assert not os.path.exists(file)
    with pytest.raises(KeyError, match="tables/t"):
        get(public, "tables/t")
    assert "tables/t" not in listed(public, "tables/")


def test_the_delete_action_removes_an_artifact(client, public):
    run(client, "flowfile.publish_artifact('m', [1, 2])", flow_id=5)
    poll(lambda: records(client, 5)["m"]["persisted"], 10, "artifact m to be persisted")

    flight_action(public, "delete", {"path": "artifacts/5/m"})

    assert records(client, 5) == {}
    with pytest.raises(KeyError, match="artifacts/5/m"):
        get(public, "artifacts/5/m")


def test_delete_of_a_missing_path_is_a_key_error_naming_it(public):
    with pytest.raises(KeyError, match="tables/nope"):
        flight_action(public, "delete", {"path": "tables/nope"})


def test_an_unknown_action_is_refused_naming_it(public):
    with pytest.raises(flight.FlightServerError, match="'no_such_action'"):
        flight_action(public, "no_such_action", {})
    assert flight_action(public, "health")["status"] == "healthy"


def test_an_action_with_a_bad_body_is_refused(public):
    with pytest.raises(flight.FlightServerError, match="execute"):
        list(public.do_action(flight.Action("execute", b"{not json")))
    with pytest.raises(flight.FlightServerError):
        flight_action(public, "delete", {"nope": 1})


def test_list_actions_names_every_action(public):
    names = {a.type for a in public.list_actions()}
    assert {"execute", "health", "list_artifacts", "delete", "clear", "restart"} <= names


# -- HTTP ------------------------------------------------------------------------------------


def test_http_health_reports_the_store_and_table_count(client, public, settings):
    put(public, "tables/a", pa.table({"x": [1]}))
    put(public, "tables/b", pa.table({"x": [2]}))

    response = client.get("/health")

    assert response.status_code == 200
    body = response.json()
    assert body["table_count"] == 2
    assert body["store"]["dir"] == os.path.abspath(settings.store_dir)
    assert body["store"]["durable"] is True
    assert set(body["store"]) >= {"dir", "bytes", "max_bytes", "durable"}
    assert body["store"]["bytes"] > 0


# -- auth ------------------------------------------------------------------------------------


@pytest.fixture
def guarded(settings: Settings) -> Iterator[str]:
    """A service whose token is `TOKEN`: its data plane's location."""
    secured = dataclasses.replace(settings, auth_token=TOKEN)
    with KernelFlightServer(Kernel(secured)) as server:
        location = f"grpc://127.0.0.1:{server.port}"
        app = create_app(secured, kernels=attached(secured, location))
        with TestClient(app):
            yield app.state.service.flight_location


def test_with_a_token_a_client_without_it_is_refused(guarded):
    with flight.connect(guarded) as fc:
        with pytest.raises(flight.FlightUnauthenticatedError):
            list(fc.list_flights())
        with pytest.raises(flight.FlightUnauthenticatedError):
            fc.do_get(flight.Ticket(b"tables/t")).read_all()
        with pytest.raises(flight.FlightUnauthenticatedError):
            flight_action(fc, "health")
        wrong = call_options("not-the-token")
        with pytest.raises(flight.FlightUnauthenticatedError):
            list(fc.list_flights(b"", wrong))


def test_with_a_token_a_client_with_it_is_served(guarded):
    options = call_options(TOKEN)
    with flight.connect(guarded) as fc:
        put(fc, "tables/t", pa.table({"x": [1, 2]}), options)
        assert get(fc, "tables/t", options).to_pydict() == {"x": [1, 2]}
        assert flight_action(fc, "health", options=options)["status"] == "healthy"
        result = flight_action(
            fc,
            "execute",
            {"node_id": "n", "flow_id": 1, "code": "flowfile.publish_artifact('a', 1)"},
            options,
        )
        assert result["success"] is True, result
        assert from_arrow(get(fc, "artifacts/1/a", options)) == 1


def test_action_bodies_are_json_like_the_http_answers(client, public):
    run(client, "flowfile.publish_artifact('m', 1)", flow_id=6)
    poll(  # persisted behind the execution: the two listings must not straddle that
        lambda: client.get("/artifacts", params={"flow_id": 6}).json()[0]["persisted"],
        10.0,
        "artifact m to be persisted",
    )
    raw = list(public.do_action(flight.Action("list_artifacts", b'{"flow_id": 6}')))
    assert len(raw) == 1
    assert (
        json.loads(raw[0].body.to_pybytes())
        == client.get("/artifacts", params={"flow_id": 6}).json()
    )


def test_display_outputs_and_memory_are_actions_too(client, public):
    run(client, "flowfile.display('shown')", flow_id=6, node_id="d")

    shown = flight_action(public, "display_outputs", {"flow_id": 6, "node_id": "d"})
    memory = flight_action(public, "memory", {})

    assert shown == client.get("/display_outputs", params={"flow_id": 6, "node_id": "d"}).json()
    assert [d["data"]["text/plain"] for d in shown] == ["shown"]
    assert set(memory) == {"used_bytes", "limit_bytes", "usage_percent", "store_bytes", "kernels"}


# -- what the store serves without a kernel, and what only a kernel can --------------------


def test_the_store_is_served_while_the_kernel_is_gone(client, public, kernel_server):
    run(
        client,
        "import polars as pl\n"
        "flowfile.publish_artifact('obj', {'a': 1})\n"
        "flowfile.publish_artifact('df', pl.DataFrame({'x': [1, 2]}))\n"
        "flowfile.publish_output(pl.DataFrame({'y': [3]}), 'out')",
    )
    put(public, "tables/t", pa.table({"z": [4]}))
    poll(
        lambda: all(r["persisted"] for r in records(client, 1).values()),
        10,
        "the artifacts to be persisted",
    )

    kernel_server.shutdown()

    assert get(public, "tables/t").to_pydict() == {"z": [4]}
    assert get(public, "outputs/1/n1/out").to_pydict() == {"y": [3]}
    assert from_arrow(get(public, "artifacts/1/obj")) == {"a": 1}
    assert_frame_equal(from_arrow(get(public, "artifacts/1/df")), pl.DataFrame({"x": [1, 2]}))
    assert info_of(public, "artifacts/1/df").total_records == 2
    assert sorted(listed(public, "")) == [
        "artifacts/1/df",
        "artifacts/1/obj",
        "outputs/1/n1/out",
        "tables/t",
    ]
    put(public, "tables/u", pa.table({"w": [5]}))
    assert get(public, "tables/u").to_pydict() == {"w": [5]}


def test_a_lazy_frame_artifact_is_listed_unevaluated_and_served_collected(client, public):
    run(
        client,
        "import polars as pl\n"
        "flowfile.publish_artifact('lazy', pl.LazyFrame({'x': [1, 2, 3]}).filter(pl.col('x') > 1))",
    )
    poll(lambda: records(client, 1)["lazy"]["persisted"], 10, "artifact lazy to be persisted")

    info = info_of(public, "artifacts/1/lazy")
    listing = listed(public, "artifacts/1/")

    assert info.schema.names == ["x"]
    assert (info.total_records, info.total_bytes) == (-1, -1)
    assert "artifacts/1/lazy" in listing
    assert listing["artifacts/1/lazy"].total_records == -1
    served = from_arrow(get(public, "artifacts/1/lazy"))
    assert_frame_equal(served.collect(), pl.DataFrame({"x": [2, 3]}))


def test_an_unpicklable_artifact_is_a_clear_flight_error(client, public):
    run(client, "import threading\nflowfile.publish_artifact('lock', threading.Lock())")

    with pytest.raises(flight.FlightServerError, match="artifacts/1/lock") as info:
        get(public, "artifacts/1/lock")

    assert "cannot be serialized" in str(info.value)
    assert "Traceback" not in str(info.value)
    assert info_of(public, "artifacts/1/lock").total_records == 1
    assert flight_action(public, "health")["status"] == "healthy"


def test_a_put_of_a_broken_pickle_is_refused_and_keeps_the_old_artifact(client, public):
    put(public, "artifacts/1/x", to_arrow({"old": True}, "x"))
    broken = pa.table({"object": pa.array([b"not a pickle"], pa.large_binary())})
    broken = broken.replace_schema_metadata(
        {SERIALIZER_KEY: PICKLE, b"kernel.python_type": b"builtins.dict"}
    )

    with pytest.raises(flight.FlightServerError, match="cannot restore") as info:
        put(public, "artifacts/1/x", broken)

    assert "Traceback" not in str(info.value)
    assert from_arrow(get(public, "artifacts/1/x")) == {"old": True}


def test_not_found_says_only_the_path_and_what_is_beside_it(client, public):
    run(client, "flowfile.publish_artifact('o', 1)")
    put(public, "tables/a", pa.table({"x": [1]}))

    for path, expected in [
        ("tables/nope", "nothing stored at tables/nope (tables: a)"),
        ("artifacts/1/nope", "nothing stored at artifacts/1/nope: no artifact 'nope' in flow 1"),
    ]:
        with pytest.raises(KeyError) as info:
            get(public, path)
        message = str(info.value)
        # pyarrow appends the data plane's own frames after ". Detail:" to any KeyError;
        # what the server said is the part before, and no kernel frame follows.
        assert message.split(". Detail:")[0].strip("'\"").startswith(expected)
        assert "flight_kernel/kernel.py" not in message
        assert "flight_kernel/executor.py" not in message


BROKEN_UPLOAD = """
import os, sys
import pyarrow as pa, pyarrow.flight as flight
client = flight.connect(sys.argv[1])
batch = pa.record_batch({"x": pa.array(range(1000))})
writer, _ = client.do_put(flight.FlightDescriptor.for_path(*sys.argv[2].split("/")), batch.schema)
for _ in range(7):
    writer.write_batch(batch)
os._exit(0)  # dies before done_writing/close: the stream breaks off
"""


def _staging(directory: str) -> list[str]:
    return [
        os.path.join(root, name)
        for root, _, files in os.walk(directory)
        for name in files
        if name.startswith(".tmp-")
    ]


@pytest.mark.parametrize("path", ["tables/t", "artifacts/1/t"])
def test_an_upload_that_breaks_off_keeps_what_was_there(client, public, settings, path):
    old = pa.table({"x": [1, 2, 3]})
    put(public, path, old)
    location = location_of(client)

    subprocess.run([sys.executable, "-c", BROKEN_UPLOAD, location, path], check=True, timeout=60)
    poll(lambda: not _staging(settings.store_dir), 10, "the broken upload to be dropped")

    assert get(public, path).equals(old)
    assert info_of(public, path).total_records == 3
