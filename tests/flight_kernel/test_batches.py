"""What `do_get` streams: batches any client can take, and no view types at any depth."""

from __future__ import annotations

from typing import Any

import numpy as np
import polars as pl
import pyarrow as pa
import pytest
from polars.testing import assert_frame_equal

from flight_kernel import tables
from flight_kernel.paths import OutputPath, TablePath
from flight_kernel.serialization import TYPE_KEY, as_arrow_table, from_arrow, to_arrow
from flight_kernel.store import Store

MiB = 1 << 20
MAX_ROWS = 1 << 20  # SPEC §4: at most 2^20 rows and 64 MiB a batch
MAX_BYTES = 64 * MiB


def _assert_bounded(table: pa.Table) -> None:
    for batch in table.to_batches():
        assert batch.num_rows <= MAX_ROWS
        assert batch.nbytes <= MAX_BYTES or batch.num_rows == 1


def _wide_numeric(rows: int = MiB // 2, columns: int = 20) -> pa.Table:
    """One batch of `rows` x `columns` float64: 80 MiB by default, in fewer than 2^20 rows."""
    data = np.arange(rows * columns, dtype=np.float64).reshape(columns, rows)
    batch = pa.record_batch([pa.array(c) for c in data], names=[f"c{i}" for i in range(columns)])
    return pa.Table.from_batches([batch])


def _data_range(table: pa.Table) -> tuple[int, int]:
    buffer = table.column(0).chunk(0).buffers()[1]
    return buffer.address, buffer.address + buffer.size


# -- bounded by rows and bytes --------------------------------------------------------


def test_a_batch_over_64_mib_is_cut_into_zero_copy_slices() -> None:
    table = _wide_numeric()
    assert table.to_batches()[0].nbytes == 80 * MiB
    result = tables.bounded(table)
    _assert_bounded(result)
    assert len(result.to_batches()) > 1
    assert result.equals(table)
    low, high = _data_range(table)
    for chunk in result.column(0).chunks:  # slices of the same memory, not copies
        assert low <= chunk.buffers()[1].address < high


def test_batches_stay_within_2_20_rows() -> None:
    table = pa.table({"x": np.zeros(3 * MAX_ROWS + 5, dtype=np.int8)})
    result = tables.bounded(table)
    _assert_bounded(result)
    assert [b.num_rows for b in result.to_batches()] == [MAX_ROWS] * 3 + [5]
    assert result.equals(table)


def test_a_table_within_bounds_is_returned_as_it_is() -> None:
    table = pa.table({"x": [1, 2, 3]})
    assert tables.bounded(table) is table


def test_a_row_larger_than_64_mib_is_a_batch_of_its_own() -> None:
    big = b"x" * (65 * MiB)
    table = pa.table({"b": pa.array([b"a", big, b"b", b"c", big], pa.large_binary())})
    result = tables.bounded(table)
    batches = result.to_batches()
    assert [b.num_rows for b in batches if b.nbytes > MAX_BYTES] == [1, 1]
    assert all(b.nbytes <= MAX_BYTES for b in batches if b.num_rows > 1)
    assert result.equals(table)


def test_skewed_rows_are_cut_until_every_batch_fits() -> None:
    heavy = ["y" * (4 * MiB)] * 30  # 120 MiB in the first 30 rows, then a long tail of tiny ones
    table = pa.table({"s": pa.array(heavy + ["z"] * 500_000, pa.large_string())})
    result = tables.bounded(table)
    _assert_bounded(result)
    assert result.equals(table)


def test_a_large_dictionary_does_not_split_the_rows_it_indexes() -> None:
    words = pa.array([f"{i:08d}" + "w" * MiB for i in range(70)], pa.large_string())  # 70 MiB
    indices = pa.array(np.arange(100_000, dtype=np.int32) % 70)
    table = pa.table({"d": pa.DictionaryArray.from_arrays(indices, words)})
    result = tables.bounded(table)  # a dictionary is sent once, not with every batch
    assert [b.num_rows for b in result.to_batches()] == [100_000]


def test_an_artifact_in_its_arrow_form_is_bounded_and_still_restores() -> None:
    frame = pl.from_arrow(_wide_numeric())
    assert isinstance(frame, pl.DataFrame)
    sent = tables.bounded(to_arrow(frame, "artifacts/1/big"))  # what do_get of it streams
    _assert_bounded(sent)
    assert sent.schema.metadata[TYPE_KEY] == b"polars.dataframe.frame.DataFrame"
    assert_frame_equal(from_arrow(sent), frame)


# -- through the store ----------------------------------------------------------------


@pytest.fixture
def store(tmp_path: Any) -> Store:
    return Store(str(tmp_path))


def _upload(store: Store, table: pa.Table) -> pa.Table:
    """Put as `do_put` does, and get back as `do_get` serves it."""
    path = TablePath("t")
    store.put(path, pa.RecordBatchReader.from_batches(table.schema, table.to_batches()))
    return store.get(path)


def _output(store: Store, table: pa.Table) -> pa.Table:
    """Publish as `publish_output` does, and get back as `do_get` serves it."""
    path = OutputPath(1, "n", "o")
    store.put(path, pa.RecordBatchReader.from_batches(table.schema, table.to_batches()))
    return store.get(path)


def test_an_uploaded_table_of_one_huge_batch_is_served_in_bounded_batches(store: Store) -> None:
    table = _wide_numeric()
    served = _upload(store, table)
    _assert_bounded(served)
    assert served.equals(table)


def test_an_output_of_one_huge_batch_is_served_in_bounded_batches(store: Store) -> None:
    table = _wide_numeric()
    served = _output(store, table)
    _assert_bounded(served)
    assert served.equals(table)


def test_an_output_whose_strings_grow_when_cast_for_clients_is_still_bounded(
    store: Store,
) -> None:
    frame = pl.repeat("s" * 200, 500_000, eager=True).to_frame("s")  # views share one string
    views = as_arrow_table(frame, views=True)
    assert views.nbytes < MAX_BYTES < frame.to_arrow().nbytes
    served = _output(store, views)
    _assert_bounded(served)
    assert served.schema.field("s").type == pa.large_string()
    assert_frame_equal(pl.DataFrame(pl.from_arrow(served)), frame)


# -- no view types reach a client -----------------------------------------------------


def _view_types(t: pa.DataType) -> list[pa.DataType]:
    """Every view type in `t`, at any depth."""
    views = (pa.types.is_string_view, pa.types.is_binary_view, pa.types.is_list_view)
    own = [t] if any(is_view(t) for is_view in (*views, pa.types.is_large_list_view)) else []
    if pa.types.is_dictionary(t):
        return own + _view_types(t.value_type)
    return own + [v for i in range(t.num_fields) for v in _view_types(t.field(i).type)]


def _nested_frame() -> pl.DataFrame:
    return pl.DataFrame(
        {
            "tags": [["a", "b" * 40], None, [None, "c"]],
            "point": [{"name": "p" * 30, "n": 1}, {"name": None, "n": 2}, None],
            "deep": [[[{"k": "v"}]], [[None]], []],
            "pair": pl.Series([["x", "y"], ["z", "w"], None], dtype=pl.Array(pl.String, 2)),
            "blobs": [[b"\x00\x01"], None, [b"long blob " * 5]],
            "blob": [b"a", None, b"b" * 20],
            "cat": pl.Series(["u", "v", "u"], dtype=pl.Categorical),
            "s": ["plain", None, "z" * 20],
        }
    )


def test_an_output_from_polars_reaches_clients_without_views_at_any_depth(store: Store) -> None:
    frame = _nested_frame()
    published = as_arrow_table(frame, views=True)
    assert _view_types(published.schema.field("tags").type)  # polars does publish views
    served = _output(store, published)
    assert {f.name: _view_types(f.type) for f in served.schema} == {n: [] for n in frame.columns}
    assert served.schema.field("tags").type == pa.large_list(pa.large_string())
    assert served.schema.field("point").type.field("name").type == pa.large_string()
    assert_frame_equal(pl.DataFrame(pl.from_arrow(served)), frame)


def test_client_schema_is_what_polars_gives_without_views() -> None:
    frame = _nested_frame()
    views = as_arrow_table(frame, views=True).schema
    assert tables.client_schema(views).equals(frame.to_arrow().schema, check_metadata=True)


def _uploaded() -> pa.Table:
    return pa.table(
        {
            "tags": pa.array([["a", None], None], pa.list_(pa.string())),
            "point": pa.array(
                [{"name": "p", "n": 1}, None], pa.struct([("name", pa.string()), ("n", pa.int64())])
            ),
            "attrs": pa.array([[("k", "v")], []], pa.map_(pa.string(), pa.large_string())),
            "pair": pa.array([["x", "y"], None], pa.list_(pa.large_string(), 2)),
            "blob": pa.array([b"a", None], pa.large_binary()),
            "n": [1, 2],
        }
    )


def test_an_upload_is_read_by_polars_as_views_at_any_depth_and_served_back_unchanged(
    store: Store,
) -> None:
    table = _uploaded()
    served = _upload(store, table)
    polars_form = tables.for_polars(served).schema
    assert polars_form.field("tags").type == pa.list_(pa.string_view())
    assert polars_form.field("point").type.field("name").type == pa.string_view()
    assert polars_form.field("attrs").type == pa.map_(pa.string_view(), pa.string_view())
    assert polars_form.field("pair").type == pa.list_(pa.string_view(), 2)
    assert polars_form.field("blob").type == pa.binary_view()
    assert polars_form.field("n").type == pa.int64()
    assert tables.for_polars(served).cast(table.schema).equals(table)
    assert served.schema.equals(table.schema)
    assert served.equals(table)


@pytest.mark.parametrize(
    ("view", "plain"),
    [
        pytest.param(pa.string_view(), pa.large_string(), id="string"),
        pytest.param(pa.binary_view(), pa.large_binary(), id="binary"),
        pytest.param(pa.list_view(pa.string_view()), pa.list_(pa.large_string()), id="list-view"),
        pytest.param(pa.large_list_view(pa.int8()), pa.large_list(pa.int8()), id="large-list-view"),
        pytest.param(
            pa.map_(pa.string_view(), pa.list_(pa.binary_view())),
            pa.map_(pa.large_string(), pa.list_(pa.large_binary())),
            id="map",
        ),
        pytest.param(
            pa.dictionary(pa.int32(), pa.string_view()),
            pa.dictionary(pa.int32(), pa.large_string()),
            id="dictionary",
        ),
    ],
)
def test_client_schema_replaces_each_kind_of_view(view: Any, plain: Any) -> None:
    schema = pa.schema([pa.field("c", view, metadata={"k": "v"})], metadata={"t": "m"})
    assert tables.client_schema(schema).equals(
        pa.schema([pa.field("c", plain, metadata={"k": "v"})], metadata={"t": "m"}),
        check_metadata=True,
    )
