"""Store: uploaded tables, published outputs and persisted artifacts, as Arrow IPC files in
one directory."""

from __future__ import annotations

import os
import pathlib
import re
import threading

import numpy as np
import polars as pl
import pyarrow as pa
import pytest
from polars.testing import assert_frame_equal

from flight_kernel.artifacts import ArtifactStore
from flight_kernel.errors import NotFound, StoreFull, StoreInUse
from flight_kernel.paths import ArtifactPath, OutputPath, TablePath
from flight_kernel.serialization import (
    PICKLE,
    PICKLE_COLUMN,
    SERIALIZER_KEY,
    TYPE_KEY,
    from_arrow,
    to_arrow,
)
from flight_kernel.settings import Settings
from flight_kernel.store import Store, StoredPath, TableInfo
from flight_kernel.tables import MAX_BATCH_BYTES, MAX_BATCH_ROWS, MIN_AVG_BATCH_ROWS
from tests.helpers import poll


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


# -- names -----------------------------------------------------------------------------------

ODD_NAMES = [
    pytest.param("n" * 300, id="300-characters"),
    pytest.param("caf\u00e9 \u2603 \u65e5\u672c", id="unicode"),
    pytest.param("with spaces  in it", id="spaces"),
    pytest.param("100% sure %2F %%", id="percent"),
    pytest.param(".hidden", id="leading-dot"),
    pytest.param(".tmp-not-a-temporary", id="leading-dot-tmp"),
    pytest.param("%%" + "0" * 64, id="looks-hashed"),
]


@pytest.mark.parametrize("name", ODD_NAMES)
def test_any_flight_name_round_trips_as_a_table(tables, name):
    table = pa.table({"name": [name]})
    put_table(tables, TablePath(name), table)

    assert tables.get(TablePath(name)).equals(table)
    assert tables.paths("tables/") == [TablePath(name)]
    assert tables.paths(f"tables/{name}") == [TablePath(name)]
    assert tables.count("tables") == 1


@pytest.mark.parametrize("name", ODD_NAMES)
def test_any_flight_name_round_trips_as_an_output(tables, name):
    path = OutputPath(-3, name, name)
    table = pa.table({"name": [name]})
    put_table(tables, path, table)

    assert tables.get(path).equals(table)
    assert tables.paths("outputs/") == [path]
    assert tables.paths(f"outputs/-3/{name}/") == [path]


def test_names_that_differ_only_in_case_are_different_tables(tables):
    put_table(tables, TablePath("Sales"), pa.table({"x": [1]}))
    put_table(tables, TablePath("sales"), pa.table({"x": [2]}))
    put_table(tables, TablePath("SALES"), pa.table({"x": [3]}))

    assert tables.paths("tables/") == [TablePath("SALES"), TablePath("Sales"), TablePath("sales")]
    assert tables.get(TablePath("Sales")).to_pydict() == {"x": [1]}
    assert tables.get(TablePath("sales")).to_pydict() == {"x": [2]}
    assert tables.get(TablePath("SALES")).to_pydict() == {"x": [3]}


def test_long_names_that_share_a_prefix_stay_apart(tables):
    a, b = "p" * 300 + "a", "p" * 300 + "b"
    put_table(tables, TablePath(a), pa.table({"x": [1]}))
    put_table(tables, TablePath(b), pa.table({"x": [2]}))

    assert tables.paths("tables/") == [TablePath(a), TablePath(b)]
    assert tables.get(TablePath(a)).to_pydict() == {"x": [1]}
    assert tables.get(TablePath(b)).to_pydict() == {"x": [2]}


# -- writes that fail ------------------------------------------------------------------------


def _temporaries(store: Store) -> list[str]:
    """Every half-written file left anywhere in the store."""
    return [
        os.path.join(root, name)
        for root, _, files in os.walk(store.directory)
        for name in files
        if name.startswith(".tmp-")
    ]


def _breaking(schema: pa.Schema, good: list[pa.RecordBatch]) -> pa.RecordBatchReader:
    """A stream that gives `good` batches and then fails."""

    def batches():
        yield from good
        raise ConnectionResetError("the client went away")

    return pa.RecordBatchReader.from_batches(schema, batches())


@pytest.mark.parametrize(
    "path",
    [
        pytest.param(TablePath("t"), id="table"),
        pytest.param(OutputPath(1, "n", "o"), id="output"),
    ],
)
def test_a_stream_that_fails_part_way_stores_nothing_and_keeps_the_old_table(tables, path):
    old = pa.table({"x": [1, 2, 3]})
    put_table(tables, path, old)
    batch = pa.record_batch({"x": pa.array(np.arange(MIN_AVG_BATCH_ROWS * 3))})

    with pytest.raises(ConnectionResetError, match="the client went away"):
        tables.put(path, _breaking(batch.schema, [batch, batch]))

    assert tables.get(path).equals(old)
    assert tables.info(path).num_rows == 3
    assert tables.paths() == [path]
    assert _temporaries(tables) == []


def test_a_stream_that_fails_before_its_first_batch_stores_nothing(tables):
    schema = pa.schema([("x", pa.int64())])
    with pytest.raises(ConnectionResetError):
        tables.put(TablePath("t"), _breaking(schema, []))

    assert tables.paths() == []
    assert _temporaries(tables) == []
    with pytest.raises(NotFound, match="tables/t"):
        tables.get(TablePath("t"))


# -- batch shapes ----------------------------------------------------------------------------


def _binary_rows(rows: int, row_bytes: int) -> pa.Array:
    """`rows` binary values of `row_bytes` each, over one shared zeroed buffer (cheap to build)."""
    data = pa.py_buffer(np.zeros(rows * row_bytes, dtype=np.uint8))
    offsets = pa.py_buffer(np.arange(0, (rows + 1) * row_bytes, row_bytes, dtype=np.int64))
    return pa.Array.from_buffers(pa.large_binary(), rows, [None, offsets, data])


def _assert_bounded(table: pa.Table) -> None:
    for batch in table.to_batches():
        assert batch.num_rows <= MAX_BATCH_ROWS
        assert batch.num_rows <= 1 or batch.nbytes <= MAX_BATCH_BYTES


def test_a_batch_over_64_mib_is_stored_in_bounded_batches(tables):
    column = _binary_rows(160, 512 * 1024)  # 80 MiB in one batch
    table = pa.table({"blob": column, "i": pa.array(np.arange(160))})
    assert table.to_batches()[0].nbytes > MAX_BATCH_BYTES

    put_table(tables, TablePath("wide"), table)

    served = tables.get(TablePath("wide"))
    assert len(served.to_batches()) >= 2
    _assert_bounded(served)
    assert served.equals(table)


def test_a_batch_over_2_20_rows_is_stored_in_bounded_batches(tables):
    table = pa.table({"x": pa.array(np.arange(MAX_BATCH_ROWS + 10, dtype=np.int8))})

    put_table(tables, OutputPath(1, "n", "long"), table)

    served = tables.get(OutputPath(1, "n", "long"))
    assert [b.num_rows for b in served.to_batches()] == [MAX_BATCH_ROWS, 10]
    _assert_bounded(served)
    assert served.equals(table)


def test_a_single_row_over_64_mib_is_a_batch_of_its_own(tables):
    table = pa.table({"blob": _binary_rows(3, 30 * 1024 * 1024)})  # 90 MiB, 30 MiB a row

    put_table(tables, TablePath("rows"), table)

    served = tables.get(TablePath("rows"))
    _assert_bounded(served)
    assert served.equals(table)


def test_many_tiny_batches_are_merged(tables):
    rows_each, count = 10, 2000
    batches = [
        pa.record_batch({"x": pa.array(np.arange(i * rows_each, (i + 1) * rows_each))})
        for i in range(count)
    ]
    table = pa.Table.from_batches(batches)

    put_table(tables, TablePath("tiny"), table)

    served = tables.get(TablePath("tiny"))
    assert served.equals(table)
    assert len(served.to_batches()) <= rows_each * count // MIN_AVG_BATCH_ROWS + 1
    _assert_bounded(served)


def test_tiny_batches_between_big_ones_keep_their_order(tables):
    big = pa.record_batch({"x": pa.array(np.arange(MIN_AVG_BATCH_ROWS))})
    tiny = [pa.record_batch({"x": pa.array([-i])}) for i in range(1, 6)]
    batches = [*tiny, big, *tiny, big, *tiny]
    table = pa.Table.from_batches(batches)

    put_table(tables, TablePath("mixed"), table)

    assert tables.get(TablePath("mixed")).equals(table)


def test_empty_batches_and_an_empty_stream_are_stored(tables):
    schema = pa.schema([("x", pa.int64()), ("s", pa.string())])
    empty = pa.RecordBatch.from_pylist([], schema)
    one = pa.RecordBatch.from_pylist([{"x": 1, "s": "a"}], schema)

    tables.put(TablePath("some"), pa.RecordBatchReader.from_batches(schema, [empty, one, empty]))
    tables.put(TablePath("none"), pa.RecordBatchReader.from_batches(schema, []))

    assert tables.get(TablePath("some")).to_pylist() == [{"x": 1, "s": "a"}]
    served = tables.get(TablePath("none"))
    assert served.schema == schema
    assert served.num_rows == 0
    assert tables.info(TablePath("none")).num_rows == 0


def test_batches_with_different_dictionaries_are_stored_and_read_back_equal(tables):
    kind = pa.dictionary(pa.int32(), pa.string())
    first = pa.record_batch(
        {"d": pa.DictionaryArray.from_arrays(pa.array([0, 1, 0], pa.int32()), ["a", "b"])}
    )
    second = pa.record_batch(
        {"d": pa.DictionaryArray.from_arrays(pa.array([1, None, 0], pa.int32()), ["c", "a"])}
    )
    third = pa.record_batch({"d": pa.DictionaryArray.from_arrays(pa.array([0], pa.int32()), ["z"])})
    schema = pa.schema([("d", kind)])

    tables.put(TablePath("dict"), pa.RecordBatchReader.from_batches(schema, [first, second, third]))

    served = tables.get(TablePath("dict"))
    assert served.schema == schema
    assert served.column("d").to_pylist() == ["a", "b", "a", "a", None, "c", "z"]
    assert tables.info(TablePath("dict")).num_rows == 7


def test_an_output_with_dictionaries_from_polars_categoricals_is_stored(tables):
    df = pl.DataFrame({"c": ["x", "y", "x"]}, schema={"c": pl.Categorical})
    other = pl.DataFrame({"c": ["z", "x"]}, schema={"c": pl.Categorical})
    arrow = [df.to_arrow(), other.to_arrow()]
    schema = arrow[0].schema
    batches = [b for t in arrow for b in t.cast(schema).to_batches()]

    tables.put(OutputPath(1, "n", "cat"), pa.RecordBatchReader.from_batches(schema, batches))

    served = tables.get(OutputPath(1, "n", "cat"))
    assert served.column("c").to_pylist() == ["x", "y", "x", "z", "x"]


# -- a full store ----------------------------------------------------------------------------


def test_an_upload_bigger_than_max_bytes_is_store_full_and_keeps_nothing(tmp_path):
    store = Store(str(tmp_path / "store"))
    old = pa.table({"x": [1, 2, 3]})
    put_table(store, TablePath("t"), old)
    store.max_bytes = store.usage() + 1000  # 1000 bytes left
    before = store.usage()
    big = pa.table({"x": pa.array(np.arange(100_000))})

    with pytest.raises(StoreFull) as info:
        put_table(store, TablePath("t"), big)

    message = str(info.value)
    assert store.directory in message
    assert "1000 bytes left" in message
    assert "tables/t" in message
    assert store.get(TablePath("t")).equals(old)
    assert store.usage() == before
    assert _temporaries(store) == []


def test_store_full_part_way_through_a_stream_keeps_nothing(tmp_path):
    store = Store(str(tmp_path / "store"), max_bytes=256 * 1024)
    old = pa.table({"x": [7]})
    put_table(store, OutputPath(1, "n", "o"), old)
    batch = pa.record_batch({"x": pa.array(np.arange(MIN_AVG_BATCH_ROWS))})  # 64 KiB each
    reader = pa.RecordBatchReader.from_batches(batch.schema, [batch] * 10)

    with pytest.raises(StoreFull, match=re.escape(store.directory)) as info:
        store.put(OutputPath(1, "n", "o"), reader)

    assert re.search(r"the \d+\.\d KiB left", str(info.value))
    assert store.get(OutputPath(1, "n", "o")).equals(old)
    assert _temporaries(store) == []
    assert store.paths() == [OutputPath(1, "n", "o")]


def test_store_full_on_a_new_path_leaves_no_table_there(tmp_path):
    store = Store(str(tmp_path / "store"), max_bytes=1000)
    with pytest.raises(StoreFull):
        put_table(store, TablePath("big"), pa.table({"x": pa.array(np.arange(10_000))}))

    assert store.paths() == []
    assert store.usage() == 0
    with pytest.raises(NotFound):
        store.get(TablePath("big"))


def test_space_left_and_report_follow_what_is_stored(tmp_path):
    store = Store(str(tmp_path / "store"), max_bytes=10 * 1024 * 1024)
    assert store.usage() == 0
    put_table(store, TablePath("t"), pa.table({"x": pa.array(np.arange(1000))}))

    used = os.path.getsize(store.file(TablePath("t")))
    assert store.usage() == used
    assert store.space_left() == 10 * 1024 * 1024 - used
    assert store.report() == {
        "dir": store.directory,
        "bytes": used,
        "max_bytes": 10 * 1024 * 1024,
        "durable": True,
    }


def test_count_counts_tables_and_outputs_apart(tables):
    put_table(tables, TablePath("a"), pa.table({"x": [1]}))
    put_table(tables, TablePath("b"), pa.table({"x": [1]}))
    put_table(tables, OutputPath(1, "n", "o"), pa.table({"x": [1]}))
    assert tables.count("tables") == 2
    assert tables.count("outputs") == 1


# -- owning a directory ----------------------------------------------------------------------


def test_a_second_service_on_the_same_directory_is_refused_naming_it(tmp_path):
    settings = Settings(store_dir=str(tmp_path / "owned"))
    first = Store.for_service(settings)
    try:
        with pytest.raises(StoreInUse) as info:
            Store.for_service(settings)
        assert first.directory in str(info.value)
        assert str(os.getpid()) in str(info.value)
    finally:
        first.close()

    again = Store.for_service(settings)
    again.close()


def test_a_service_store_keeps_what_an_earlier_service_stored(tmp_path):
    directory = str(tmp_path / "owned")
    settings = Settings(store_dir=directory)
    first = Store.for_service(settings)
    put_table(first, TablePath("t"), pa.table({"x": [1]}))
    put_table(first, OutputPath(2, "n", "o"), pa.table({"y": [2]}))
    first.close()

    second = Store.for_service(settings)
    try:
        assert second.durable
        assert second.paths() == [OutputPath(2, "n", "o"), TablePath("t")]
        assert second.get(TablePath("t")).to_pydict() == {"x": [1]}
    finally:
        second.close()
    assert os.path.isdir(directory)


def test_for_service_sweeps_temporaries_and_pending_markers(tmp_path):
    directory = tmp_path / "owned"
    earlier = Store(str(directory))
    put_table(earlier, TablePath("kept"), pa.table({"x": [1]}))
    leftovers = [
        directory / "tables" / ".tmp-0123456789abcdef",
        directory / "outputs" / "1" / "n" / ".tmp-feedfacefeedface",
        directory / "artifacts" / "1" / ".tmp-deadbeefdeadbeef",
        directory / "artifacts" / "1" / "model.pending",
        directory / "artifacts" / "2" / "other.pending",
    ]
    for leftover in leftovers:
        leftover.parent.mkdir(parents=True, exist_ok=True)
        leftover.write_bytes(b"half")

    store = Store.for_service(Settings(store_dir=str(directory)))
    try:
        assert [p for p in leftovers if p.exists()] == []
        assert store.paths() == [TablePath("kept")]
        assert store.get(TablePath("kept")).to_pydict() == {"x": [1]}
        assert store.take_lost() == []
    finally:
        store.close()


def test_sweep_written_leaves_uploads_in_progress(tmp_path):
    store = Store(str(tmp_path / "store"))
    upload = tmp_path / "store" / "tables" / ".tmp-0000000000000000"
    output = tmp_path / "store" / "outputs" / "1" / "n" / ".tmp-1111111111111111"
    artifact = tmp_path / "store" / "artifacts" / "1" / ".tmp-2222222222222222"
    for leftover in (upload, output, artifact):
        leftover.parent.mkdir(parents=True, exist_ok=True)
        leftover.write_bytes(b"half")

    store.sweep_written()

    assert upload.exists()
    assert not output.exists()
    assert not artifact.exists()


def test_a_private_store_is_removed_by_close():
    store = Store.private()
    put_table(store, TablePath("t"), pa.table({"x": [1]}))
    assert os.path.isfile(store.file(TablePath("t")))
    assert not store.durable
    assert store.max_bytes is not None and store.max_bytes > 0

    store.close()

    assert not os.path.exists(store.directory)
    store.close()  # twice is fine


def test_a_service_without_a_directory_gets_a_private_store():
    store = Store.for_service(Settings(store_dir=None))
    try:
        assert not store.durable
        assert os.path.isdir(store.directory)
    finally:
        store.close()
    assert not os.path.exists(store.directory)


# -- reading while writing -------------------------------------------------------------------


def test_a_replaced_table_reads_new_while_an_old_mapped_one_stays_readable(tables):
    old = pa.table({"x": pa.array(np.arange(50_000)), "s": [f"old{i}" for i in range(50_000)]})
    new = pa.table({"y": ["new"]})
    put_table(tables, TablePath("t"), old)
    mapped = tables.get(TablePath("t"))
    assert tables.info(TablePath("t")).num_rows == 50_000

    put_table(tables, TablePath("t"), new)

    assert tables.get(TablePath("t")).equals(new)
    assert tables.info(TablePath("t")) == TableInfo(
        new.schema, 1, tables.get(TablePath("t")).nbytes
    )
    assert mapped.equals(old)
    assert mapped.column("s")[49_999].as_py() == "old49999"


def test_a_deleted_table_stays_readable_where_it_was_mapped(tables):
    table = pa.table({"x": pa.array(np.arange(10_000))})
    put_table(tables, TablePath("t"), table)
    mapped = tables.get(TablePath("t"))

    tables.delete(TablePath("t"))

    assert not os.path.exists(tables.file(TablePath("t")))
    assert mapped.equals(table)
    with pytest.raises(NotFound, match="tables/t"):
        tables.info(TablePath("t"))


def test_delete_removes_the_file(tables):
    put_table(tables, OutputPath(1, "n", "o"), pa.table({"x": [1]}))
    file = tables.file(OutputPath(1, "n", "o"))
    assert os.path.isfile(file)

    tables.delete(OutputPath(1, "n", "o"))

    assert not os.path.exists(file)
    assert tables.paths() == []
    _freed(tables)
    assert tables.usage() == 0


def test_a_table_another_store_on_the_directory_wrote_is_seen_at_once(tmp_path):
    writer = Store(str(tmp_path / "shared"))
    reader = Store(str(tmp_path / "shared"))
    put_table(writer, TablePath("t"), pa.table({"x": [1]}))
    assert reader.get(TablePath("t")).to_pydict() == {"x": [1]}
    put_table(writer, TablePath("t"), pa.table({"x": [2, 3]}))
    assert reader.info(TablePath("t")).num_rows == 2
    assert reader.get(TablePath("t")).to_pydict() == {"x": [2, 3]}


# -- artifacts -------------------------------------------------------------------------------

_LOADS: list[object] = []


def _note_load(value: object) -> object:
    """What unpickling a `_Noisy` calls: it leaves a trace."""
    _LOADS.append(value)
    return value


class _Noisy:
    """An object whose unpickling shows: it becomes its value, noted in `_LOADS`."""

    def __init__(self, value: object) -> None:
        self.value = value

    def __reduce__(self):
        return (_note_load, (self.value,))


def test_published_artifacts_are_recovered_by_a_new_artifact_store(tables):
    frame = pl.DataFrame({"a": [1, 2, None], "s": ["x", None, "z"]})
    array = np.arange(12, dtype=np.float32).reshape(3, 4)
    first = ArtifactStore(tables)
    published = [
        first.publish(1, "n1", "dict", {"k": [1, 2], "v": "x"}),
        first.publish(1, 2, "frame", frame),
        first.publish(1, "n3", "array", array),
        first.publish(2, "n1", "dict", "another flow"),
    ]
    assert first.flush(timeout=30)
    assert all(a.persisted for a in published)

    second = ArtifactStore(tables)
    recovered = {(a.flow_id, a.name): a for a in second.recover()}

    assert sorted(recovered) == [(1, "array"), (1, "dict"), (1, "frame"), (2, "dict")]
    for art in published:
        again = recovered[(art.flow_id, art.name)]
        assert again.record() == art.record()
        assert (again.node_id, again.created_at) == (art.node_id, art.created_at)
        assert (again.type_name, again.size_bytes) == (art.type_name, art.size_bytes)
    assert second.get(1, "dict").obj == {"k": [1, 2], "v": "x"}
    assert_frame_equal(second.get(1, "frame").obj, frame)
    loaded = second.get(1, "array").obj
    assert loaded.dtype == array.dtype
    np.testing.assert_array_equal(loaded, array)
    assert second.get(2, "dict").obj == "another flow"


def test_recover_of_one_flow_knows_only_that_flows_artifacts(tables):
    first = ArtifactStore(tables)
    first.publish(1, "n", "a", 1)
    first.publish(2, "n", "b", 2)
    assert first.flush(timeout=30)

    second = ArtifactStore(tables)
    assert [a.name for a in second.recover(2)] == ["b"]
    assert [a.name for a in second.find()] == ["b"]
    with pytest.raises(NotFound, match="'a'"):
        second.get(1, "a")


def test_a_recovered_artifact_is_loaded_on_its_first_read_only(tables):
    first = ArtifactStore(tables)
    first.publish(1, "n", "noisy", _Noisy({"v": 1}))
    assert first.flush(timeout=30)
    _LOADS.clear()

    second = ArtifactStore(tables)
    (recovered,) = second.recover()
    assert recovered.type_name == "_Noisy"
    assert second.find(1)[0].record().persisted
    assert _LOADS == []

    assert second.get(1, "noisy").obj == {"v": 1}
    assert second.get(1, "noisy").obj == {"v": 1}
    assert _LOADS == [{"v": 1}]


def test_an_unpicklable_artifact_stays_live_only_and_is_reported_lost(tables):
    artifacts = ArtifactStore(tables)
    lock = threading.Lock()
    artifacts.publish(1, "n", "lock", lock)
    artifacts.publish(1, "n", "fine", [1, 2])
    assert artifacts.flush(timeout=30)

    assert artifacts.get(1, "lock").obj is lock
    assert artifacts.get(1, "lock").record().persisted is False
    assert tables.persisted(ArtifactPath(1, "lock")) is None
    assert tables.persisted(ArtifactPath(1, "fine")) is not None
    assert [p.name for p in _pending(tables)] == ["lock.pending"]
    assert [a.path.name for a in tables.artifacts(1)] == ["fine"]

    assert tables.take_lost(1) == [ArtifactPath(1, "lock")]
    assert _pending(tables) == []
    assert tables.take_lost(1) == []
    assert artifacts.get(1, "lock").obj is lock  # the live object is not the store's


def test_take_lost_of_one_flow_leaves_the_others(tables):
    artifacts = ArtifactStore(tables)
    artifacts.publish(1, "n", "a", threading.Lock())
    artifacts.publish(2, "n", "b", threading.Lock())
    assert artifacts.flush(timeout=30)

    assert tables.take_lost(2) == [ArtifactPath(2, "b")]
    assert tables.take_lost() == [ArtifactPath(1, "a")]


def _pending(store: Store) -> list[pathlib.Path]:
    return sorted(pathlib.Path(store.directory).rglob("*.pending"))


def _artifact_files(store: Store) -> list[str]:
    """The artifacts' files (not the temporaries that removed files become until freed)."""
    root = pathlib.Path(store.directory) / "artifacts"
    return sorted(p.name for p in root.rglob("*") if p.is_file() and not p.name.startswith(".tmp-"))


def _freed(store: Store) -> None:
    """Wait until what was removed from the store has been freed (that happens behind)."""
    poll(
        lambda: not _temporaries(store),
        10,
        "removed files to be freed",
        detail=lambda: str(_temporaries(store)),
    )


def test_deleting_an_artifact_removes_its_persisted_file(tables):
    artifacts = ArtifactStore(tables)
    artifacts.publish(1, "n", "obj", {"a": 1})
    artifacts.publish(1, "n", "frame", pl.DataFrame({"x": [1]}))
    assert artifacts.flush(timeout=30)
    assert _artifact_files(tables) == ["frame.arrow", "obj.pickle"]

    artifacts.delete(1, "obj")
    artifacts.delete(1, "frame")

    assert _artifact_files(tables) == []
    assert tables.artifacts() == []
    assert ArtifactStore(tables).recover() == []
    _freed(tables)
    assert tables.usage() == 0


def test_clearing_artifacts_removes_their_files(tables):
    artifacts = ArtifactStore(tables)
    artifacts.publish(1, "a", "one", 1)
    artifacts.publish(1, "b", "two", 2)
    artifacts.publish(2, "a", "three", 3)
    assert artifacts.flush(timeout=30)

    artifacts.clear_nodes(["a"], 1)
    assert [str(a.path) for a in tables.artifacts()] == ["artifacts/1/two", "artifacts/2/three"]
    artifacts.clear(2)
    assert [str(a.path) for a in tables.artifacts()] == ["artifacts/1/two"]


def test_republishing_an_artifact_replaces_its_persisted_file(tables):
    artifacts = ArtifactStore(tables)
    artifacts.publish(1, "n", "model", {"version": 1})
    assert artifacts.flush(timeout=30)
    old_file = tables.persisted(ArtifactPath(1, "model")).file
    assert old_file.endswith(".pickle")

    frame = pl.DataFrame({"version": [2]})
    artifacts.publish(1, "n", "model", frame)

    assert not os.path.exists(old_file)  # never served stale, even before the new one is written
    assert artifacts.flush(timeout=30)
    assert _artifact_files(tables) == ["model.arrow"]
    (recovered,) = ArtifactStore(tables).recover()
    assert recovered.type_name == "DataFrame"
    assert_frame_equal(tables.load_artifact(recovered.file), frame)


def test_republishing_an_object_of_the_same_kind_persists_the_new_one(tables):
    artifacts = ArtifactStore(tables)
    artifacts.publish(1, "n", "model", {"version": 1})
    assert artifacts.flush(timeout=30)
    artifacts.publish(1, "n", "model", {"version": 2})
    assert artifacts.flush(timeout=30)

    second = ArtifactStore(tables)
    second.recover()
    assert second.get(1, "model").obj == {"version": 2}
    assert _artifact_files(tables) == ["model.pickle"]


def test_a_pickled_artifacts_table_is_its_bytes_unpickled_only_by_from_arrow(tables):
    artifacts = ArtifactStore(tables)
    artifacts.publish(1, "n", "noisy", _Noisy({"weights": [1.5, 2.5]}))
    assert artifacts.flush(timeout=30)
    _LOADS.clear()

    table = tables.artifact_table(ArtifactPath(1, "noisy"))
    info = tables.artifact_info(ArtifactPath(1, "noisy"))

    assert _LOADS == []
    assert table.num_rows == 1
    assert table.schema.names == [PICKLE_COLUMN]
    assert table.schema.field(PICKLE_COLUMN).type == pa.large_binary()
    meta = table.schema.metadata
    assert meta[SERIALIZER_KEY] == PICKLE
    assert meta[TYPE_KEY] == f"{__name__}._Noisy".encode()
    assert info == TableInfo(table.schema, 1, -1)

    assert from_arrow(table) == {"weights": [1.5, 2.5]}
    assert _LOADS == [{"weights": [1.5, 2.5]}]


def test_a_pickled_artifacts_table_is_what_to_arrow_gives(tables):
    obj = {"a": [1, 2, 3], "b": ("x", None)}
    artifacts = ArtifactStore(tables)
    artifacts.publish(1, "n", "obj", obj)
    assert artifacts.flush(timeout=30)

    table = tables.artifact_table(ArtifactPath(1, "obj"))
    sent = to_arrow(obj, "artifacts/1/obj")

    assert table.schema.equals(sent.schema, check_metadata=True)
    assert from_arrow(table) == obj


def test_a_table_artifacts_table_is_the_table(tables):
    frame = pl.DataFrame({"x": [1, 2], "s": ["a", None]})
    artifacts = ArtifactStore(tables)
    artifacts.publish(1, "n", "frame", frame)
    assert artifacts.flush(timeout=30)

    table = tables.artifact_table(ArtifactPath(1, "frame"))
    info = tables.artifact_info(ArtifactPath(1, "frame"))

    assert table.num_rows == 2
    assert info.num_rows == 2
    assert info.schema == table.schema
    assert_frame_equal(from_arrow(table), frame)


def test_an_artifact_not_persisted_has_no_table(tables):
    assert tables.artifact_table(ArtifactPath(1, "nope")) is None
    assert tables.artifact_info(ArtifactPath(1, "nope")) is None
    assert tables.persisted(ArtifactPath(1, "nope")) is None


def test_a_lazy_frame_artifact_is_persisted_unevaluated_and_has_no_stored_table(tables):
    lazy = pl.LazyFrame({"x": [1, 2, 3]}).filter(pl.col("x") > 1)
    artifacts = ArtifactStore(tables)
    artifacts.publish(1, "n", "lazy", lazy)
    assert artifacts.flush(timeout=30)

    assert _artifact_files(tables) == ["lazy.pickle"]
    assert tables.artifact_table(ArtifactPath(1, "lazy")) is None
    assert tables.artifact_info(ArtifactPath(1, "lazy")) is None
    second = ArtifactStore(tables)
    second.recover()
    assert_frame_equal(second.get(1, "lazy").obj.collect(), lazy.collect())


@pytest.mark.parametrize("name", ODD_NAMES)
def test_any_flight_name_round_trips_as_a_persisted_artifact(tables, name):
    first = ArtifactStore(tables)
    first.publish(7, None, name, {"name": name})
    first.publish(7, None, name + "-frame", pl.DataFrame({"name": [name]}))
    assert first.flush(timeout=30)

    second = ArtifactStore(tables)
    recovered = sorted(second.recover(7), key=lambda a: a.name)

    assert [(a.name, a.node_id, a.persisted) for a in recovered] == [
        (name, None, True),
        (name + "-frame", None, True),
    ]
    assert second.get(7, name).obj == {"name": name}
    assert second.get(7, name + "-frame").obj.to_dict(as_series=False) == {"name": [name]}
    assert [str(a.path) for a in tables.artifacts(7)] == [
        f"artifacts/7/{name}",
        f"artifacts/7/{name}-frame",
    ]


def test_schema_and_field_metadata_are_kept(tables):
    schema = pa.schema(
        [pa.field("x", pa.int64(), metadata={b"unit": b"m"})], metadata={b"origin": b"test"}
    )
    table = pa.table({"x": [1, 2]}, schema=schema)

    put_table(tables, TablePath("meta"), table)

    served = tables.get(TablePath("meta"))
    assert served.schema.equals(schema, check_metadata=True)
    assert tables.info(TablePath("meta")).schema.equals(schema, check_metadata=True)


def test_an_artifact_bigger_than_the_space_left_is_refused_at_publish(tmp_path):
    store = Store(str(tmp_path / "store"), max_bytes=64 * 1024)
    artifacts = ArtifactStore(store)

    with pytest.raises(StoreFull, match=re.escape(store.directory)) as info:
        artifacts.publish(1, "n", "big", np.zeros(1024 * 1024, dtype=np.uint8))

    assert "'big'" in str(info.value)
    assert "bytes left" in str(info.value)
    assert artifacts.find() == []
    assert _pending(store) == []
    assert store.usage() == 0


def test_an_artifact_that_pickles_bigger_than_the_space_left_stays_live_only(tmp_path):
    store = Store(str(tmp_path / "store"), max_bytes=2 * 1024 * 1024)
    artifacts = ArtifactStore(store)
    # Its estimate stops after a bounded walk (about 1 MB here); pickled it is 5 MB.
    obj = [bytes([i % 256]) * 1000 for i in range(5000)]

    artifacts.publish(1, "n", "big", obj)
    assert artifacts.flush(timeout=30)

    assert artifacts.get(1, "big").obj is obj
    assert artifacts.get(1, "big").record().persisted is False
    assert store.persisted(ArtifactPath(1, "big")) is None
    assert _artifact_files(store) == ["big.pending"]
    _freed(store)
    assert store.usage() < 1024
    assert store.take_lost(1) == [ArtifactPath(1, "big")]


def test_artifact_counts_are_per_flow_and_count_persisted_ones_only(tables):
    artifacts = ArtifactStore(tables)
    artifacts.publish(1, "n1", "frame", pl.DataFrame({"a": [1]}))
    artifacts.publish(1, "n1", "dict", {"k": 1})
    artifacts.publish(-2, "n1", "dict", "negative flows too")
    assert artifacts.flush(timeout=30)
    artifacts.publish(3, "n1", "lock", threading.Lock())  # cannot be pickled: never persisted
    assert artifacts.flush(timeout=30)

    assert tables.artifact_counts() == {1: 2, -2: 1, 3: 0}
