"""Store: uploaded tables and published outputs, as Arrow IPC files in one directory."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest

from flight_kernel.errors import NotFound
from flight_kernel.paths import OutputPath, TablePath
from flight_kernel.store import Store, StoredPath, TableInfo
from flight_kernel.tables import MAX_BATCH_ROWS


@pytest.fixture
def tables(tmp_path) -> Store:
    return Store(str(tmp_path / "store"))


def put_table(store: Store, path: StoredPath, table: pa.Table) -> TableInfo:
    """Store a whole table, streamed as its batches (the path decides upload or output)."""
    return store.put(path, pa.RecordBatchReader.from_batches(table.schema, table.to_batches()))


def _served(store: Store, path: StoredPath) -> pa.Table:
    """The table as the Flight server hands it to clients."""
    return store.get(path)


def _put_outputs(store: Store, *paths: OutputPath) -> None:
    for i, path in enumerate(paths):
        put_table(store, path, pa.table({"x": [i]}))


def test_an_uploaded_table_is_served_back_unchanged(tables):
    table = pa.table({"id": [1, 2, 3], "name": ["a", "b", None]})
    put_table(tables, TablePath("people"), table)
    served = _served(tables, TablePath("people"))
    assert served.schema == table.schema
    assert served.equals(table)


def test_put_reports_the_schema_rows_and_bytes_it_stored(tables):
    table = pa.table({"id": [1, 2, 3], "name": ["a", "b", None]})
    info = put_table(tables, TablePath("people"), table)
    assert info == TableInfo(table.schema, 3, _served(tables, TablePath("people")).nbytes)


def test_put_replaces_the_table_at_that_path(tables):
    put_table(tables, TablePath("t"), pa.table({"x": [1]}))
    put_table(tables, TablePath("t"), pa.table({"y": ["new"]}))
    assert _served(tables, TablePath("t")).to_pydict() == {"y": ["new"]}


def test_put_replaces_the_output_at_that_path(tables):
    put_table(tables, OutputPath(1, "n", "o"), pa.table({"x": [1]}))
    put_table(tables, OutputPath(1, "n", "o"), pa.table({"x": [2, 3]}))
    assert _served(tables, OutputPath(1, "n", "o")).to_pydict() == {"x": [2, 3]}


def test_an_outputs_string_views_are_served_as_large_strings(tables):
    published = pa.table({"s": pa.array(["a", None], pa.string_view())})
    info = put_table(tables, OutputPath(1, "n", "o"), published)
    served = _served(tables, OutputPath(1, "n", "o"))
    assert served.schema == pa.schema([("s", pa.large_string())])
    assert info.schema == served.schema
    assert served.to_pydict() == {"s": ["a", None]}


def test_outputs_and_tables_are_separate(tables):
    put_table(tables, OutputPath(1, "n", "t"), pa.table({"x": [1]}))
    with pytest.raises(NotFound, match="tables/t"):
        tables.get(TablePath("t"))


@pytest.mark.parametrize(
    "path",
    [
        pytest.param(TablePath("nope"), id="table"),
        pytest.param(OutputPath(1, "n", "nope"), id="output"),
    ],
)
def test_missing_table_is_not_found_naming_the_path(tables, path):
    with pytest.raises(NotFound, match=f"nothing stored at {path}"):
        tables.get(path)


def test_missing_table_message_names_the_tables_beside_it(tables):
    put_table(tables, TablePath("b"), pa.table({"x": [1]}))
    put_table(tables, TablePath("a"), pa.table({"x": [1]}))
    put_table(tables, OutputPath(1, "n", "o"), pa.table({"x": [1]}))
    with pytest.raises(NotFound) as info:
        tables.get(TablePath("nope"))
    assert str(info.value) == "nothing stored at tables/nope (tables: a, b)"


def test_missing_output_message_names_that_nodes_outputs(tables):
    _put_outputs(tables, OutputPath(1, "n", "o"), OutputPath(1, "m", "p"), OutputPath(2, "n", "q"))
    with pytest.raises(NotFound) as info:
        tables.get(OutputPath(1, "n", "nope"))
    assert str(info.value) == (
        "nothing stored at outputs/1/n/nope (outputs of node 'n' in flow 1: outputs/1/n/o)"
    )


def test_big_batches_are_split_to_max_batch_rows(tables):
    rows = 2 * MAX_BATCH_ROWS + 5
    table = pa.table({"x": pa.array(np.arange(rows, dtype=np.int32))})
    assert table.column("x").num_chunks == 1

    put_table(tables, TablePath("big"), table)

    served = _served(tables, TablePath("big"))
    assert [len(b) for b in served.to_batches()] == [MAX_BATCH_ROWS, MAX_BATCH_ROWS, 5]
    assert served.equals(table)


def test_big_outputs_are_split_to_max_batch_rows(tables):
    rows = MAX_BATCH_ROWS + 1
    put_table(
        tables, OutputPath(1, "n", "o"), pa.table({"x": pa.array(np.ones(rows, dtype=np.int8))})
    )
    served = _served(tables, OutputPath(1, "n", "o"))
    assert [len(b) for b in served.to_batches()] == [MAX_BATCH_ROWS, 1]


def test_list_filters_by_prefix(tables):
    put_table(tables, TablePath("t"), pa.table({"x": [1]}))
    _put_outputs(
        tables,
        OutputPath(1, "a", "output_0"),
        OutputPath(1, "a", "named"),
        OutputPath(1, "ab", "output_0"),
        OutputPath(1, "b", "output_0"),
        OutputPath(12, "a", "output_0"),
    )

    assert sorted(map(str, tables.paths("outputs/1/a/"))) == [
        "outputs/1/a/named",
        "outputs/1/a/output_0",
    ]
    assert sorted(map(str, tables.paths("outputs/1/"))) == [
        "outputs/1/a/named",
        "outputs/1/a/output_0",
        "outputs/1/ab/output_0",
        "outputs/1/b/output_0",
    ]
    assert tables.paths("tables/") == [TablePath("t")]
    assert len(tables.paths()) == 6


@pytest.mark.parametrize(
    "path",
    [
        pytest.param(TablePath("t"), id="table"),
        pytest.param(OutputPath(1, "n", "o"), id="output"),
    ],
)
def test_delete_removes_what_is_at_a_path(tables, path):
    put_table(tables, TablePath("t"), pa.table({"x": [1]}))
    put_table(tables, OutputPath(1, "n", "o"), pa.table({"x": [1]}))

    tables.delete(path)

    assert path not in tables.paths()
    assert len(tables.paths()) == 1
    with pytest.raises(NotFound, match=f"nothing stored at {path}"):
        tables.delete(path)
