"""The shapes a stored table takes: bounded batches for clients, views for polars.

Two facts shape it (measured with pyarrow 26 and polars 2.1):
* Flight throughput halves with one giant batch and fails past 2 GiB: stored batches are
  capped at `MAX_BATCH_ROWS` rows and `MAX_BATCH_BYTES` bytes (zero-copy `slices`), and the
  store merges runs of tiny ones.
* polars copies `string`/`large_string` columns into its string views on every read but
  takes `string_view` columns as they are: a kernel reads a stored table `for_polars`, cast
  to views (the cast shares the character data and only adds 16 bytes a row), while files
  and clients get no view types at any depth (many clients cannot read them): both casts
  reach into lists, structs and maps, and the clients' into dictionaries' values.
"""

from __future__ import annotations

from collections.abc import Mapping

import pyarrow as pa

MAX_BATCH_ROWS = 1 << 20
MAX_BATCH_BYTES = 64 << 20
MIN_AVG_BATCH_ROWS = 8192


def bounded(table: pa.Table) -> pa.Table:
    """The table in batches any Flight client can take: at most `MAX_BATCH_ROWS` rows and
    `MAX_BATCH_BYTES` bytes each, as zero-copy slices (a single larger row is a batch alone);
    the table itself when its batches already fit."""
    batches = table.to_batches()
    if all(fits(b) for b in batches):
        return table
    return pa.Table.from_batches([s for b in batches for s in slices(b)], table.schema)


def _row_bytes(batch: pa.RecordBatch) -> int:
    """The bytes of a batch that grow with its rows. What an empty slice still counts (the
    dictionary of a dictionary column, the data buffers of views) is left out: slicing
    cannot shrink it, and IPC sends a dictionary ahead of the batches, once."""
    return int(batch.nbytes - batch.slice(0, 0).nbytes)


def fits(batch: pa.RecordBatch) -> bool:
    rows = batch.num_rows
    return rows <= MAX_BATCH_ROWS and (rows <= 1 or _row_bytes(batch) <= MAX_BATCH_BYTES)


def slices(batch: pa.RecordBatch) -> list[pa.RecordBatch]:
    """Zero-copy slices of a batch that each `fits`; rows are cut evenly by bytes, and a
    slice still too big (rows of uneven width) is cut again."""
    done: list[pa.RecordBatch] = []
    todo = [batch]
    while todo:
        part = todo.pop()
        if fits(part):
            done.append(part)
            continue
        rows = part.num_rows
        pieces = -(-_row_bytes(part) // MAX_BATCH_BYTES)  # ceil; >= 2 when bytes do not fit
        step = min(MAX_BATCH_ROWS, -(-rows // pieces))  # < rows: every round makes progress
        todo.extend(part.slice(start, step) for start in reversed(range(0, rows, step)))
    return done


# What a type becomes, wherever it sits in a nested type.
_TO_CLIENT: Mapping[pa.DataType, pa.DataType] = {
    pa.string_view(): pa.large_string(),
    pa.binary_view(): pa.large_binary(),
}
_TO_POLARS: Mapping[pa.DataType, pa.DataType] = {
    pa.string(): pa.string_view(),
    pa.large_string(): pa.string_view(),
    pa.binary(): pa.binary_view(),
    pa.large_binary(): pa.binary_view(),
}


def _retyped(
    t: pa.DataType, leaves: Mapping[pa.DataType, pa.DataType], *, client: bool
) -> pa.DataType:
    """`t` with `leaves` swapped at any depth; for clients, list views become lists and
    dictionary values are swapped too (polars builds its categories from them anyway)."""

    def field(f: pa.Field) -> pa.Field:
        return f.with_type(_retyped(f.type, leaves, client=client))

    if t in leaves:
        return leaves[t]
    if pa.types.is_struct(t):
        return pa.struct([field(t.field(i)) for i in range(t.num_fields)])
    if pa.types.is_map(t):
        return pa.map_(field(t.key_field), field(t.item_field), keys_sorted=t.keys_sorted)
    if pa.types.is_list(t) or (client and pa.types.is_list_view(t)):
        return pa.list_(field(t.value_field))
    if pa.types.is_large_list(t) or (client and pa.types.is_large_list_view(t)):
        return pa.large_list(field(t.value_field))
    if pa.types.is_list_view(t):
        return pa.list_view(field(t.value_field))
    if pa.types.is_large_list_view(t):
        return pa.large_list_view(field(t.value_field))
    if pa.types.is_fixed_size_list(t):
        return pa.list_(field(t.value_field), t.list_size)
    if client and pa.types.is_dictionary(t):
        return pa.dictionary(t.index_type, _retyped(t.value_type, leaves, client=client), t.ordered)
    return t


def _retyped_schema(
    schema: pa.Schema, leaves: Mapping[pa.DataType, pa.DataType], *, client: bool
) -> pa.Schema:
    fields = [f.with_type(_retyped(f.type, leaves, client=client)) for f in schema]
    return pa.schema(fields, metadata=schema.metadata)


def views_schema(schema: pa.Schema) -> pa.Schema:
    """The schema polars reads without copying: strings and binaries as views, at any depth."""
    return _retyped_schema(schema, _TO_POLARS, client=False)


def client_schema(schema: pa.Schema) -> pa.Schema:
    """The schema clients get for a table published from polars: no view types at any depth
    (strings as large strings, binaries as large binaries, list views as lists)."""
    return _retyped_schema(schema, _TO_CLIENT, client=True)


def for_polars(table: pa.Table) -> pa.Table:
    """The table as polars reads it without copying: strings and binaries as views."""
    target = views_schema(table.schema)
    return table if target.equals(table.schema) else table.cast(target)
