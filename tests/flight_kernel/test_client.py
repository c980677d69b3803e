"""KernelClient against the real app: uvicorn in a thread, attached to an in-process kernel."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator

import numpy as np
import pandas as pd
import polars as pl
import pyarrow as pa
import pyarrow.flight as flight
import pytest
from polars.testing import assert_frame_equal

from control.app import create_app
from flight_kernel.client import KernelClient
from flight_kernel.kernel import Kernel
from flight_kernel.results import ExecutionResult
from flight_kernel.server import KernelFlightServer
from flight_kernel.settings import Settings
from tests.conftest import attached
from tests.helpers import serving


@pytest.fixture
def kc(
    settings: Settings, kernel_server: KernelFlightServer, kernel_location: str
) -> Iterator[KernelClient]:
    """A client of the service: uvicorn on a free port in a background thread, its data
    plane on another, attached to an in-process kernel."""
    app_settings = dataclasses.replace(settings, http_port=0)
    app = create_app(app_settings, kernels=attached(app_settings, kernel_location))
    with serving(app) as url:
        flight_url = app.state.service.flight_location
        with KernelClient(url, flight_url, timeout=30) as client:
            yield client


SALES = pl.DataFrame(
    {
        "status": ["active", "inactive", "active", "active", None],
        "category": ["a", "b", "a", "c", "a"],
        "amount": [10.0, 5.0, 2.5, 7.0, 1.0],
    }
)

README_NODE = """
import polars as pl

df = flowfile.read_input()
result = (
    df.filter(pl.col("status") == "active")
    .group_by("category")
    .agg(pl.col("amount").sum().alias("total"))
    .sort("category")
    .collect()
)
flowfile.log_info(f"Processed {result.height} categories")
flowfile.publish_artifact("category_totals", result)
flowfile.publish_output(result)
"""


def test_health(kc: KernelClient) -> None:
    health = kc.health()
    assert health["status"] == "healthy"
    assert health["artifact_count"] == 0


def test_put_table_execute_get_table(kc: KernelClient) -> None:
    uri = kc.put_table("sales", SALES)
    assert uri == "flight:///tables/sales"
    result = kc.execute(
        "double",
        (
            "import polars as pl\n"
            "flowfile.publish_output(flowfile.read_input().with_columns(pl.col('amount') * 2),"
            " 'doubled')\n"
        ),
        input_paths={"main": [uri]},
        flow_id=1,
    )
    assert isinstance(result, ExecutionResult)
    assert result.success, result.error
    assert result.output_paths == ["flight:///outputs/1/double/doubled"]
    table = kc.get_table(result.output_paths[0])
    assert isinstance(table, pa.Table)
    assert_frame_equal(
        pl.from_arrow(table),  # type: ignore[arg-type]
        SALES.with_columns(pl.col("amount") * 2),
    )
    assert kc.get_table("tables/sales").to_pydict() == SALES.to_dict(as_series=False)


def test_put_table_takes_pandas_and_pyarrow(kc: KernelClient) -> None:
    kc.put_table("pd", pd.DataFrame({"a": [1, 2]}))
    kc.put_table("pa", pa.table({"a": [3]}))
    result = kc.execute(
        "n",
        "print(flowfile.read_input().collect()['a'].to_list())",
        input_paths={"main": ["flight:///tables/pd", "flight:///tables/pa"]},
    )
    assert result.stdout == "[1, 2, 3]\n"
    with pytest.raises(TypeError):
        kc.put_table("bad", {"a": [1]})


def test_failed_code_is_a_result_not_an_exception(kc: KernelClient) -> None:
    result = kc.execute("n", "1 / 0")
    assert result.success is False
    assert result.error is not None
    assert result.error.startswith("ZeroDivisionError")


def test_put_and_get_artifact_of_a_dict(kc: KernelClient) -> None:
    obj = {"threshold": 0.5, "weights": np.arange(3.0)}
    kc.put_artifact(2, "cfg", obj)
    back = kc.get_artifact(2, "cfg")
    assert back["threshold"] == 0.5
    np.testing.assert_array_equal(back["weights"], np.arange(3.0))
    result = kc.execute("n", "print(flowfile.read_artifact('cfg')['threshold'])", flow_id=2)
    assert result.stdout == "0.5\n"


def test_put_and_get_artifact_of_a_polars_frame(kc: KernelClient) -> None:
    kc.put_artifact(2, "frame", SALES)
    back = kc.get_artifact(2, "frame")
    assert isinstance(back, pl.DataFrame)
    assert_frame_equal(back, SALES)


def test_get_artifact_published_by_user_code(kc: KernelClient) -> None:
    result = kc.execute("train", "flowfile.publish_artifact('model', {'w': [1, 2]})", flow_id=3)
    assert result.published_artifacts == ["model"]
    assert kc.get_artifact(3, "model") == {"w": [1, 2]}


def test_list_artifacts(kc: KernelClient) -> None:
    kc.put_artifact(1, "a", [1, 2, 3])
    kc.put_artifact(2, "b", SALES)
    kc.execute("n7", "flowfile.publish_artifact('c', 'text')", flow_id=1)
    every = kc.list_artifacts()
    assert {(r["flow_id"], r["name"]) for r in every} == {(1, "a"), (2, "b"), (1, "c")}
    flow_1 = kc.list_artifacts(flow_id=1)
    assert sorted(r["name"] for r in flow_1) == ["a", "c"]
    by_node = kc.list_artifacts(flow_id=1, node_id="n7")
    assert [(r["name"], r["ticket"], r["type_name"]) for r in by_node] == [
        ("c", "artifacts/1/c", "str")
    ]
    [frame] = kc.list_artifacts(flow_id=2)
    assert frame["size_bytes"] >= SALES.estimated_size()


def test_clear(kc: KernelClient) -> None:
    kc.put_table("t", SALES)
    kc.put_artifact(1, "a", 1)
    kc.put_artifact(2, "b", 2)
    cleared = kc.clear(flow_id=1)
    assert cleared["removed"] == ["a"]
    assert [r["name"] for r in kc.list_artifacts()] == ["b"]
    everything = kc.clear()
    assert everything["removed"] == ["b"]
    assert kc.list_artifacts() == []
    assert kc.health()["artifact_count"] == 0
    with pytest.raises(KeyError, match="tables/t"):
        kc.get_table("tables/t")


def test_delete(kc: KernelClient) -> None:
    kc.put_table("t", SALES)
    kc.delete("tables/t")
    with pytest.raises(KeyError, match="tables/t"):
        kc.get_table("flight:///tables/t")


def test_get_table_from_another_kernel(kc: KernelClient) -> None:
    with (
        KernelFlightServer(Kernel(Settings(flight_port=0))) as other,
        KernelClient("http://127.0.0.1:1", f"grpc://127.0.0.1:{other.port}") as direct,
    ):
        direct.put_table("remote", SALES)
        table = kc.get_table(f"flight://127.0.0.1:{other.port}/tables/remote")
    assert table.to_pydict() == SALES.to_dict(as_series=False)


def test_readme_example_flow(kc: KernelClient) -> None:
    uri = kc.put_table("sales", SALES)
    result = kc.execute("node_1", README_NODE, input_paths={"main": [uri]}, flow_id=1)
    assert result.success, result.error
    assert [log.message for log in result.logs] == ["Processed 2 categories"]
    assert result.published_artifacts == ["category_totals"]
    out = pl.from_arrow(kc.get_table(result.output_paths[0]))
    expected = pl.DataFrame({"category": ["a", "c"], "total": [12.5, 7.0]})
    assert_frame_equal(out, expected)  # type: ignore[arg-type]
    assert_frame_equal(kc.get_artifact(1, "category_totals"), expected)


def test_delete_of_a_name_with_quotes(kc: KernelClient) -> None:
    kc.put_table('say "hi"', SALES)
    kc.delete('tables/say "hi"')
    with pytest.raises(KeyError):
        kc.get_table('tables/say "hi"')


def _mapped_files(address: int) -> list[str]:
    """The files this process has mapped over `address` (from /proc/self/maps)."""
    found = []
    with open("/proc/self/maps") as maps:
        for line in maps:
            fields = line.split(maxsplit=5)
            low, high = (int(x, 16) for x in fields[0].split("-"))
            if low <= address < high and len(fields) == 6:
                found.append(fields[5].strip())
    return found


def test_get_table_maps_the_stores_file_on_the_same_host(kc: KernelClient) -> None:
    table = pa.table({"x": np.arange(1_000_000, dtype=np.int64)})
    kc.put_table("big", table)
    got = kc.get_table("tables/big")
    assert got.equals(table)
    store = kc.health()["store"]["dir"]
    address = got.column("x").chunk(0).buffers()[1].address
    assert _mapped_files(address) == [f"{store}/tables/big.arrow"]  # the file, not a copy


class _FileElsewhere(flight.FlightServerBase):  # type: ignore[misc]
    """A server whose endpoints name a file this process cannot open (another host's)."""

    def __init__(self, table: pa.Table) -> None:
        super().__init__("grpc://127.0.0.1:0")
        self.table = table

    def get_flight_info(self, context, descriptor):
        endpoint = flight.FlightEndpoint(
            b"tables/t", ["arrow-flight-reuse-connection://?", "file:///no/such/store/t.arrow"]
        )
        return flight.FlightInfo(self.table.schema, descriptor, [endpoint], -1, -1)

    def do_get(self, context, ticket):
        return flight.RecordBatchStream(self.table)


def test_get_table_streams_when_the_stores_file_cannot_be_opened() -> None:
    table = pa.table({"x": [1, 2, 3]})
    with (
        _FileElsewhere(table) as server,
        KernelClient("http://127.0.0.1:1", f"grpc://127.0.0.1:{server.port}") as client,
    ):
        assert client.get_table("tables/t").equals(table)
