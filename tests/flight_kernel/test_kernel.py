"""Kernel: clearing, deleting and listing over its table and artifact stores."""

from __future__ import annotations

import logging
import re

import polars as pl
import pyarrow as pa
import pytest

from flight_kernel.errors import InvalidRequest, NotFound
from flight_kernel.kernel import Cleared, Kernel
from flight_kernel.paths import ArtifactPath, FlightPath, OutputPath, TablePath
from flight_kernel.requests import ExecuteRequest
from flight_kernel.serialization import pickle_schema
from flight_kernel.settings import Settings
from flight_kernel.store import TableInfo
from tests.flight_kernel.test_store import put_table


@pytest.fixture
def kernel(tmp_path) -> Kernel:
    return Kernel(Settings(store_dir=str(tmp_path / "store")))


def _paths(kernel: Kernel, prefix: str = "") -> list[str]:
    return sorted(str(e.path) for e in kernel.entries(prefix))


def _counts(kernel: Kernel) -> dict[str, int]:
    health = kernel.health()
    return {
        "artifact_count": health.artifact_count,
        "table_count": kernel.store.count("tables"),
        "output_count": kernel.store.count("outputs"),
    }


def _fill(kernel: Kernel) -> None:
    """A table, an output of flow 1 and artifacts of flows 1 and 2."""
    put_table(kernel.store, TablePath("t"), pa.table({"x": [1]}))
    put_table(kernel.store, OutputPath(1, "n", "o"), pa.table({"x": [1]}))
    kernel.artifacts.publish(1, "n", "a", 1)
    kernel.artifacts.publish(2, "n", "b", 2)


# -- clearing ----------------------------------------------------------------------------


def test_clear_everything(kernel):
    _fill(kernel)
    assert _counts(kernel) == {"artifact_count": 2, "table_count": 1, "output_count": 1}

    cleared = kernel.clear()

    assert sorted(cleared.artifacts) == [(1, "a"), (2, "b")]
    assert cleared.outputs == ("outputs/1/n/o",)
    assert cleared.tables == ("t",)
    assert _paths(kernel) == []
    assert _counts(kernel) == {"artifact_count": 0, "table_count": 0, "output_count": 0}


def test_clear_one_flow_keeps_other_flows_and_tables(kernel):
    put_table(kernel.store, TablePath("t"), pa.table({"x": [1]}))
    put_table(kernel.store, OutputPath(1, "n", "o"), pa.table({"x": [1]}))
    put_table(kernel.store, OutputPath(2, "n", "o"), pa.table({"x": [2]}))
    kernel.artifacts.publish(1, "n", "a", 1)
    kernel.artifacts.publish(2, "n", "b", 2)

    cleared = kernel.clear(flow_id=1)

    assert cleared == Cleared(artifacts=((1, "a"),), outputs=("outputs/1/n/o",), tables=())
    assert _paths(kernel) == ["artifacts/2/b", "outputs/2/n/o", "tables/t"]


def test_clear_one_flow_leaves_flows_whose_id_it_prefixes(kernel):
    put_table(kernel.store, OutputPath(1, "n", "o"), pa.table({"x": [1]}))
    put_table(kernel.store, OutputPath(12, "n", "o"), pa.table({"x": [1]}))

    cleared = kernel.clear(flow_id=1)

    assert cleared.outputs == ("outputs/1/n/o",)
    assert _paths(kernel) == ["outputs/12/n/o"]


def test_clear_node_artifacts_reports_what_it_removed(kernel):
    kernel.artifacts.publish(1, "n1", "a", 1)
    kernel.artifacts.publish(1, 2, "b", 2)
    kernel.artifacts.publish(1, "n3", "c", 3)
    kernel.artifacts.publish(2, "n1", "d", 4)

    cleared = kernel.clear_node_artifacts(["n1", "2"], flow_id=1)

    assert sorted(cleared.artifacts) == [(1, "a"), (1, "b")]
    assert (cleared.outputs, cleared.tables) == ((), ())
    assert sorted(r.name for r in kernel.list_artifacts()) == ["c", "d"]


def test_reexecution_drops_only_that_nodes_outputs_and_artifacts(kernel):
    for i, path in enumerate(
        [
            OutputPath(1, "a", "output_0"),
            OutputPath(1, "a", "named"),
            OutputPath(1, "ab", "output_0"),
            OutputPath(1, "b", "output_0"),
            OutputPath(2, "a", "output_0"),
        ]
    ):
        put_table(kernel.store, path, pa.table({"x": [i]}))
    kernel.artifacts.publish(1, "a", "mine", 1)
    kernel.artifacts.publish(1, "b", "theirs", 2)
    kernel.artifacts.publish(2, "a", "other_flow", 3)

    result = kernel.execute(ExecuteRequest(node_id="a", flow_id=1, code="x = 1"))

    assert result.success is True
    assert _paths(kernel, "outputs/") == [
        "outputs/1/ab/output_0",
        "outputs/1/b/output_0",
        "outputs/2/a/output_0",
    ]
    assert _paths(kernel, "artifacts/") == ["artifacts/1/theirs", "artifacts/2/other_flow"]


# -- deleting and listing ----------------------------------------------------------------


@pytest.mark.parametrize(
    "path",
    [
        pytest.param(TablePath("t"), id="table"),
        pytest.param(OutputPath(1, "n", "o"), id="output"),
        pytest.param(ArtifactPath(1, "a"), id="artifact"),
    ],
)
def test_delete_removes_what_is_at_a_path(kernel, path: FlightPath):
    put_table(kernel.store, TablePath("t"), pa.table({"x": [1]}))
    put_table(kernel.store, OutputPath(1, "n", "o"), pa.table({"x": [1]}))
    kernel.artifacts.publish(1, "n", "a", 1)

    kernel.delete(path)

    assert str(path) not in _paths(kernel)
    assert len(_paths(kernel)) == 2
    with pytest.raises(NotFound):
        kernel.delete(path)


def test_entries_filter_by_prefix(kernel):
    put_table(kernel.store, TablePath("t"), pa.table({"x": [1]}))
    kernel.artifacts.publish(1, "n", "a", 1)
    kernel.artifacts.publish(12, "n", "b", 1)
    assert _paths(kernel, "artifacts/1") == ["artifacts/1/a", "artifacts/12/b"]
    assert _paths(kernel, "tables/") == ["tables/t"]


def test_entries_give_each_paths_info(kernel):
    table = pa.table({"x": [1, 2]})
    put_table(kernel.store, TablePath("t"), table)
    kernel.artifacts.publish(1, "n", "obj", {"k": 1})

    infos = {str(e.path): e.info for e in kernel.entries()}

    assert infos == {
        "tables/t": TableInfo(table.schema, 2, table.nbytes),
        "artifacts/1/obj": TableInfo(pickle_schema({"k": 1}), 1, -1),
    }
    assert kernel.info(TablePath("t")) == infos["tables/t"]


def test_list_artifacts_gives_the_records_by_flow_and_node(kernel):
    art = kernel.artifacts.publish(1, 7, "a", 1)
    kernel.artifacts.publish(1, "8", "b", 2)
    kernel.artifacts.publish(2, "7", "c", 3)

    assert kernel.list_artifacts(flow_id=1, node_id="7") == [art.record()]
    assert sorted(r.name for r in kernel.list_artifacts(node_id=7)) == ["a", "c"]
    assert sorted(r.ticket for r in kernel.list_artifacts(flow_id=1)) == [
        "artifacts/1/a",
        "artifacts/1/b",
    ]
    assert kernel.list_artifacts(flow_id=3) == []


# -- LazyFrame artifacts are never evaluated by a listing --------------------------------


def _failing_on_collect() -> pl.LazyFrame:
    """A query whose schema is known but whose evaluation raises."""
    return pl.LazyFrame({"a": [1]}).select(
        pl.col("a").map_batches(lambda s: 1 / 0, return_dtype=pl.Int64)
    )


def _without_schema() -> pl.LazyFrame:
    """A query whose schema cannot be had: it selects a missing column."""
    return pl.LazyFrame({"a": [1]}).select("missing")


def test_a_lazyframe_is_listed_with_its_schema_without_being_collected(kernel):
    lazy = _failing_on_collect()
    with pytest.raises(ZeroDivisionError):
        lazy.collect()
    kernel.artifacts.publish(1, "n", "lazy", lazy)

    [entry] = kernel.entries()

    assert entry.path == ArtifactPath(1, "lazy")
    assert entry.info.schema.remove_metadata() == pa.schema([("a", pa.int64())])
    assert (entry.info.num_rows, entry.info.nbytes) == (-1, -1)
    assert kernel.info(ArtifactPath(1, "lazy")) == entry.info


def test_an_artifact_without_a_schema_is_left_out_of_the_listing(kernel, caplog):
    bad = _without_schema()
    with pytest.raises(pl.exceptions.ColumnNotFoundError):
        bad.collect_schema()
    put_table(kernel.store, TablePath("t"), pa.table({"x": [1]}))
    kernel.artifacts.publish(1, "n", "good", pl.DataFrame({"a": [1, 2]}))
    kernel.artifacts.publish(1, "n", "bad", bad)
    kernel.artifacts.publish(1, "n", "lazy", _failing_on_collect())

    with caplog.at_level(logging.WARNING, logger="flight_kernel.kernel"):
        infos = {str(e.path): e.info for e in kernel.entries()}

    assert sorted(infos) == ["artifacts/1/good", "artifacts/1/lazy", "tables/t"]
    assert infos["artifacts/1/good"].num_rows == 2
    [warning] = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert "artifacts/1/bad" in warning


def test_info_on_an_artifact_without_a_schema_is_invalid_naming_its_path(kernel):
    kernel.artifacts.publish(1, "n", "bad", _without_schema())
    with pytest.raises(InvalidRequest, match=re.escape("artifacts/1/bad")) as info:
        kernel.info(ArtifactPath(1, "bad"))
    assert "ColumnNotFoundError" in str(info.value)
