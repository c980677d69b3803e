"""Inputs from Flight URIs and outputs to the Flight store, through executions."""

from __future__ import annotations

import gc
import json
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.flight as flight
import pytest
from fastapi.testclient import TestClient
from polars.testing import assert_frame_equal

from flight_kernel.kernel import Kernel
from flight_kernel.server import KernelFlightServer
from flight_kernel.settings import Settings


def put(client: flight.FlightClient, path: str, table: pa.Table) -> None:
    writer, _ = client.do_put(flight.FlightDescriptor.for_path(*path.split("/")), table.schema)
    with writer:
        writer.write_table(table)


def get(client: flight.FlightClient, path: str) -> pa.Table:
    return client.do_get(flight.Ticket(path.encode())).read_all()


def execute(client: flight.FlightClient, node_id: str, code: str, **fields: Any) -> Any:
    """Run code through the `execute` action; returns the response body."""
    body = json.dumps({"node_id": node_id, "code": code, **fields}).encode()
    [result] = client.do_action(flight.Action("execute", body))
    return json.loads(result.body.to_pybytes())


def http_execute(client: TestClient, node_id: str | int, code: str, **fields: Any) -> Any:
    response = client.post("/execute", json={"node_id": node_id, "code": code, **fields})
    assert response.status_code == 200, response.text
    return response.json()


def local_path(uri: str) -> str:
    assert uri.startswith("flight:///"), uri
    return uri.removeprefix("flight:///")


@pytest.fixture
def other_kernel() -> Iterator[tuple[KernelFlightServer, flight.FlightClient]]:
    """A second kernel on its own port, holding tables the first one fetches."""
    with (
        KernelFlightServer(Kernel(Settings(flight_port=0))) as server,
        flight.connect(f"grpc://127.0.0.1:{server.port}") as client,
    ):
        yield server, client


SALES = pa.table(
    {
        "id": [1, 2, 3, 4],
        "region": ["north", "south", None, "north"],
        "amount": [10.0, 20.5, 3.25, None],
    }
)


# -- inputs ---------------------------------------------------------------------------------


def test_input_from_the_kernels_own_store(flight_client: flight.FlightClient) -> None:
    put(flight_client, "tables/sales", SALES)
    result = execute(
        flight_client,
        "n1",
        (
            "import polars as pl\n"
            "df = flowfile.read_input().filter(pl.col('region') == 'north').collect()\n"
            "print(df['id'].to_list(), df['region'].to_list())\n"
        ),
        input_paths={"main": ["flight:///tables/sales"]},
    )
    assert result["success"], result["error"]
    assert result["stdout"] == "[1, 4] ['north', 'north']\n"


def test_input_from_another_kernel(
    flight_client: flight.FlightClient, other_kernel: tuple[KernelFlightServer, flight.FlightClient]
) -> None:
    server, other = other_kernel
    put(other, "tables/sales", SALES)
    uri = f"flight://127.0.0.1:{server.port}/tables/sales"
    result = execute(
        flight_client,
        "n1",
        ("df = flowfile.read_input().collect()\nflowfile.publish_output(df, 'copy')\n"),
        input_paths={"main": [uri]},
    )
    assert result["success"], result["error"]
    assert result["output_paths"] == ["flight:///outputs/0/n1/copy"]
    copied = pl.from_arrow(get(flight_client, "outputs/0/n1/copy"))
    assert_frame_equal(copied, pl.from_arrow(SALES))  # type: ignore[arg-type]
    assert list(flight_client.list_flights(b"tables/")) == []  # not copied into our store


def test_parquet_own_store_and_another_kernel_in_one_execution(
    tmp_path: Path,
    client: TestClient,
    flight_client: flight.FlightClient,
    other_kernel: tuple[KernelFlightServer, flight.FlightClient],
) -> None:
    server, other = other_kernel
    parquet = tmp_path / "part0.parquet"
    pl.DataFrame({"id": [1, 2], "name": ["a", "b"]}).write_parquet(parquet)
    put(flight_client, "tables/part1", pa.table({"id": [3], "name": ["c"]}))
    put(other, "tables/part2", pa.table({"id": [4, 5], "name": [None, "e"]}))
    put(other, "tables/lookup", pa.table({"id": [1, 5], "score": [0.5, 0.9]}))
    result = http_execute(
        client,
        "mix",
        (
            "import polars as pl\n"
            "rows = flowfile.read_input().sort('id').collect()\n"
            "scores = flowfile.read_input('lookup').collect()\n"
            "print(rows['id'].to_list(), rows['name'].to_list())\n"
            "flowfile.publish_output(rows.join(scores, on='id'), 'joined')\n"
        ),
        input_paths={
            "main": [
                str(parquet),
                "flight:///tables/part1",
                f"flight://127.0.0.1:{server.port}/tables/part2",
            ],
            "lookup": [f"flight://127.0.0.1:{server.port}/tables/lookup"],
        },
        flow_id=4,
    )
    assert result["success"], result["error"]
    assert result["stdout"] == "[1, 2, 3, 4, 5] ['a', 'b', 'c', None, 'e']\n"
    assert result["output_paths"] == ["flight:///outputs/4/mix/joined"]
    joined = get(flight_client, "outputs/4/mix/joined")
    assert joined.to_pydict() == {"id": [1, 5], "name": ["a", "e"], "score": [0.5, 0.9]}


def test_table_artifact_is_readable_as_an_input(flight_client: flight.FlightClient) -> None:
    produced = execute(
        flight_client,
        "producer",
        ("import polars as pl\nflowfile.publish_artifact('ref', pl.DataFrame({'k': [1, 2, 3]}))\n"),
        flow_id=6,
    )
    assert produced["success"], produced["error"]
    result = execute(
        flight_client,
        "consumer",
        "print(flowfile.read_input().collect()['k'].sum())",
        flow_id=6,
        input_paths={"main": ["flight:///artifacts/6/ref"]},
    )
    assert result["success"], result["error"]
    assert result["stdout"] == "6\n"


@pytest.mark.parametrize(
    ("entry", "says"),
    [
        pytest.param(
            "flight:///tables/absent", "KeyError: nothing stored at tables/absent", id="own-store"
        ),
        pytest.param("flight:///tables/a/b", "has 3 segments", id="malformed"),
    ],
)
def test_missing_or_malformed_flight_input_fails_the_execution_clearly(
    flight_client: flight.FlightClient, entry: str, says: str
) -> None:
    result = execute(
        flight_client, "n1", "flowfile.read_input().collect()", input_paths={"main": [entry]}
    )
    assert result["success"] is False
    assert says in result["error"]
    assert execute(flight_client, "n1", "print('fine')")["stdout"] == "fine\n"


def test_missing_table_on_another_kernel_fails_naming_the_uri(
    flight_client: flight.FlightClient, other_kernel: tuple[KernelFlightServer, flight.FlightClient]
) -> None:
    uri = f"flight://127.0.0.1:{other_kernel[0].port}/tables/absent"
    result = execute(
        flight_client, "n1", "flowfile.read_input().collect()", input_paths={"main": [uri]}
    )
    assert result["success"] is False
    assert result["error"].startswith("KeyError: ")
    assert uri in result["error"]


# -- outputs --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "output_dir", [pytest.param("", id="empty"), pytest.param("flight:///", id="flight-uri")]
)
def test_outputs_go_to_the_flight_store(
    flight_client: flight.FlightClient, output_dir: str
) -> None:
    result = execute(
        flight_client,
        "node_7",
        (
            "import polars as pl\n"
            "flowfile.publish_output(pl.DataFrame({'a': [1, 2]}))\n"
            "flowfile.publish_output(pl.DataFrame({'b': ['x']}).lazy(), name='named')\n"
            "flowfile.publish_output(pl.DataFrame({'c': [True]}))\n"
        ),
        flow_id=3,
        output_dir=output_dir,
    )
    assert result["success"], result["error"]
    assert result["output_paths"] == [
        "flight:///outputs/3/node_7/output_0",
        "flight:///outputs/3/node_7/named",
        "flight:///outputs/3/node_7/output_1",
    ]
    tables = [get(flight_client, local_path(uri)) for uri in result["output_paths"]]
    assert [t.to_pydict() for t in tables] == [{"a": [1, 2]}, {"b": ["x"]}, {"c": [True]}]
    listed = {b"/".join(i.descriptor.path) for i in flight_client.list_flights(b"outputs/")}
    assert listed == {
        b"outputs/3/node_7/output_0",
        b"outputs/3/node_7/named",
        b"outputs/3/node_7/output_1",
    }


def test_flight_outputs_are_also_reachable_by_http_execute(
    client: TestClient, flight_client: flight.FlightClient
) -> None:
    result = http_execute(
        client,
        12,
        ("import polars as pl\nflowfile.publish_output(pl.DataFrame({'v': [1.5]}), 'r')"),
        flow_id=2,
    )
    assert result["success"], result["error"]
    assert result["output_paths"] == ["flight:///outputs/2/12/r"]
    assert get(flight_client, "outputs/2/12/r").to_pydict() == {"v": [1.5]}


def test_re_execution_replaces_the_nodes_outputs(flight_client: flight.FlightClient) -> None:
    first = execute(
        flight_client,
        "n",
        (
            "import polars as pl\nflowfile.publish_output(pl.DataFrame({'a': [1]}), 'old')\n"
            "flowfile.publish_output(pl.DataFrame({'a': [1]}), 'kept_name')"
        ),
        flow_id=1,
    )
    other_node = execute(
        flight_client,
        "m",
        ("import polars as pl\nflowfile.publish_output(pl.DataFrame({'z': [0]}), 'old')"),
        flow_id=1,
    )
    assert first["success"] and other_node["success"]
    second = execute(
        flight_client,
        "n",
        (
            "import polars as pl\nflowfile.publish_output(pl.DataFrame({'a': [2]}), 'kept_name')\n"
            "flowfile.publish_output(pl.DataFrame({'b': [3]}), 'new')"
        ),
        flow_id=1,
    )
    assert second["success"], second["error"]
    assert second["output_paths"] == [
        "flight:///outputs/1/n/kept_name",
        "flight:///outputs/1/n/new",
    ]
    with pytest.raises(KeyError, match="outputs/1/n/old"):
        get(flight_client, "outputs/1/n/old")
    assert get(flight_client, "outputs/1/n/kept_name").to_pydict() == {"a": [2]}
    listed = {b"/".join(i.descriptor.path) for i in flight_client.list_flights(b"outputs/1/")}
    assert listed == {b"outputs/1/n/kept_name", b"outputs/1/n/new", b"outputs/1/m/old"}


def test_strings_published_from_polars_come_back_as_large_strings_with_their_values(
    flight_client: flight.FlightClient,
) -> None:
    values = ["", "short", None, "caf\u00e9 \u2603", "a string longer than twelve bytes" * 3]
    result = execute(
        flight_client,
        "s",
        (
            "import polars as pl\n"
            f"df = pl.DataFrame({{'s': {values!r}, 'n': [1, 2, 3, 4, 5]}})\n"
            "flowfile.publish_output(df, 'strings')\n"
        ),
    )
    assert result["success"], result["error"]
    info = flight_client.get_flight_info(
        flight.FlightDescriptor.for_path("outputs", "0", "s", "strings")
    )
    table = get(flight_client, "outputs/0/s/strings")
    assert table.schema.field("s").type == pa.large_string()
    assert info.schema.equals(table.schema)
    assert table.column("s").to_pylist() == values
    assert table.column("n").to_pylist() == [1, 2, 3, 4, 5]


# -- chaining -------------------------------------------------------------------------------

PRODUCER = (
    "import polars as pl\n"
    "df = flowfile.read_input().with_columns(double=pl.col('amount') * 2)\n"
    "flowfile.publish_output(df.collect(), 'doubled')\n"
    "flowfile.publish_output(df.filter(pl.col('region') == 'north'))\n"
)
CONSUMER = (
    "import polars as pl\n"
    "rows = flowfile.read_input().collect()\n"
    "north = flowfile.read_input('north').collect()\n"
    "print(rows.height, north['id'].to_list(), rows['double'].to_list())\n"
    "flowfile.publish_output(rows.select(pl.col('double').sum()), 'total')\n"
)


@pytest.mark.parametrize("mode", ["parquet", "flight"])
def test_chaining_outputs_of_one_node_into_the_next(
    tmp_path: Path, flight_client: flight.FlightClient, mode: str
) -> None:
    put(flight_client, "tables/sales", SALES)
    out_a = str(tmp_path / "a") if mode == "parquet" else ""
    out_b = str(tmp_path / "b") if mode == "parquet" else ""
    a = execute(
        flight_client,
        "A",
        PRODUCER,
        flow_id=1,
        output_dir=out_a,
        input_paths={"main": ["flight:///tables/sales"]},
    )
    assert a["success"], a["error"]
    doubled, north = a["output_paths"]
    if mode == "parquet":
        assert (doubled, north) == (f"{out_a}/doubled.parquet", f"{out_a}/output_0.parquet")
    else:
        assert (doubled, north) == (
            "flight:///outputs/1/A/doubled",
            "flight:///outputs/1/A/output_0",
        )
    b = execute(
        flight_client,
        "B",
        CONSUMER,
        flow_id=1,
        output_dir=out_b,
        input_paths={"main": [doubled], "north": [north]},
    )
    assert b["success"], b["error"]
    assert b["stdout"] == "4 [1, 4] [20.0, 41.0, 6.5, None]\n"
    [total] = b["output_paths"]
    if mode == "parquet":
        assert pl.read_parquet(total).to_dict(as_series=False) == {"double": [67.5]}
    else:
        assert get(flight_client, local_path(total)).to_pydict() == {"double": [67.5]}


def test_flight_mode_touches_no_disk(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, flight_client: flight.FlightClient
) -> None:
    cwd, tmp = tmp_path / "cwd", tmp_path / "tmp"
    cwd.mkdir()
    tmp.mkdir()
    monkeypatch.chdir(cwd)
    monkeypatch.setenv("TMPDIR", str(tmp))
    monkeypatch.setattr(tempfile, "tempdir", str(tmp))
    put(flight_client, "tables/sales", SALES)
    a = execute(flight_client, "A", PRODUCER, input_paths={"main": ["flight:///tables/sales"]})
    assert a["success"], a["error"]
    doubled, north = a["output_paths"]
    b = execute(flight_client, "B", CONSUMER, input_paths={"main": [doubled], "north": [north]})
    assert b["success"], b["error"]
    assert all(p.startswith("flight:///") for p in a["output_paths"] + b["output_paths"])
    assert get(flight_client, local_path(b["output_paths"][0])).to_pydict() == {"double": [67.5]}
    assert os.listdir(cwd) == []
    assert os.listdir(tmp) == []


# -- zero copy ------------------------------------------------------------------------------

ROWS = 25_000_000  # 200 MB of float64


def private_bytes() -> int:
    """This process's private resident memory (RssAnon): mapped files' pages do not count."""
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("RssAnon:"):
                return int(line.split()[1]) * 1024
    raise AssertionError("no RssAnon in /proc/self/status")


def test_reading_a_stored_table_adds_no_copy_of_it(flight_client: flight.FlightClient) -> None:
    values = np.zeros(ROWS, dtype=np.float64)
    values[:: ROWS // 5] = 3.0  # five rows pass the filter
    table = pa.Table.from_batches(pa.table({"x": values}).to_batches(max_chunksize=1 << 20))
    table_bytes = table.nbytes
    assert table_bytes == ROWS * 8
    put(flight_client, "tables/big", table)
    put(flight_client, "tables/small", table.slice(0, 1 << 16))
    del table, values
    code = (
        "import polars as pl\n"
        "from tests.flight_kernel.test_flight_io import private_bytes\n"
        "lf = flowfile.read_input()\n"
        "df = lf.filter(pl.col('x') > 2.0).collect()\n"
        "print(df.height, private_bytes())\n"
    )
    # The warm-up reads a small table: memory freed after a copy of the big one would be
    # reused by the next copy and hide it.
    warm = execute(flight_client, "scan", code, input_paths={"main": ["flight:///tables/small"]})
    assert warm["success"], warm["error"]
    gc.collect()
    before = private_bytes()
    result = execute(flight_client, "scan", code, input_paths={"main": ["flight:///tables/big"]})
    gc.collect()
    after = private_bytes()
    assert result["success"], result["error"]
    height, rss_while_reading = map(int, result["stdout"].split())
    assert height == 5
    # The table is a mapped file: its pages are shared, never private memory of the reader.
    assert rss_while_reading - before < table_bytes * 0.05
    assert after - before < table_bytes * 0.05
