"""How a stored table is kept: batches for clients and, sharing their buffers, for polars.

Three facts shape it (measured with pyarrow 26 and polars 2.1):
* Flight throughput halves with one giant batch and fails past 2 GiB: batches are capped at
  `MAX_BATCH_ROWS` rows and `MAX_BATCH_BYTES` bytes (zero-copy slices, `bounded`), and many
  tiny ones are merged.
* polars copies `string`/`large_string` columns into its string views on every read but
  takes `string_view` columns as they are: uploads get a views form, cast once (the cast
  shares the character data and only adds 16 bytes a row), and clients get no view types at
  any depth (many cannot read them): both casts reach into lists, structs and maps, and the
  clients' into dictionaries' values.
* buffers that arrive by `do_put` sit at whatever address gRPC put them (1 byte past a
  64-byte boundary here), and polars copies misaligned buffers on every read. They are
  copied once into aligned memory on the first read by user code, one column of one batch
  at a time, so `do_put` stays copy-free and the peak memory of that copy stays small.
"""

from __future__ import annotations

import contextlib
import ctypes
import threading
from collections.abc import Mapping

import pyarrow as pa

MAX_BATCH_ROWS = 1 << 20
MAX_BATCH_BYTES = 64 << 20
MIN_AVG_BATCH_ROWS = 8192
# malloc, where big blocks are mmapped and leave RSS when freed: pyarrow's default mimalloc
# kept 17% more resident (peak growth reading 1 GiB: 6-15% of it, against 6.2% steadily)
# though its copies are faster (pass-through goal 3.3x against 2.6x).
_POOL = pa.system_memory_pool()


def normalize(table: pa.Table) -> pa.Table:
    """Batches within the bounds of `bounded` (zero-copy slices), and not tiny ones."""
    batches = table.to_batches()
    if len(batches) > 1 and table.num_rows < MIN_AVG_BATCH_ROWS * len(batches):
        table = table.combine_chunks()  # many tiny batches cost more per row than one copy
    return bounded(table)


def bounded(table: pa.Table) -> pa.Table:
    """The table in batches any Flight client can take: at most `MAX_BATCH_ROWS` rows and
    `MAX_BATCH_BYTES` bytes each, as zero-copy slices (a single larger row is a batch alone);
    the table itself when its batches already fit."""
    batches = table.to_batches()
    if all(_fits(b) for b in batches):
        return table
    return pa.Table.from_batches([s for b in batches for s in _slices(b)], table.schema)


def _row_bytes(batch: pa.RecordBatch) -> int:
    """The bytes of a batch that grow with its rows. What an empty slice still counts (the
    dictionary of a dictionary column, the data buffers of views) is left out: slicing
    cannot shrink it, and IPC sends a dictionary ahead of the batches, once."""
    return int(batch.nbytes - batch.slice(0, 0).nbytes)


def _fits(batch: pa.RecordBatch) -> bool:
    rows = batch.num_rows
    return rows <= MAX_BATCH_ROWS and (rows <= 1 or _row_bytes(batch) <= MAX_BATCH_BYTES)


def _slices(batch: pa.RecordBatch) -> list[pa.RecordBatch]:
    """Zero-copy slices of a batch that each `_fits`; rows are cut evenly by bytes, and a
    slice still too big (rows of uneven width) is cut again."""
    done: list[pa.RecordBatch] = []
    todo = [batch]
    while todo:
        part = todo.pop()
        if _fits(part):
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


def _release_freed_memory() -> None:
    """Hand the received buffers just freed back to the OS: glibc keeps large freed blocks
    in its heap once its mmap threshold has grown, and the copy would then double RSS."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").malloc_trim(0)


def _is_aligned(array: pa.Array) -> bool:
    buffers = array.buffers()
    t = array.type
    if (
        pa.types.is_string_view(t)
        or pa.types.is_binary_view(t)
        or pa.types.is_string(t)
        or pa.types.is_binary(t)
        or pa.types.is_large_string(t)
        or pa.types.is_large_binary(t)
    ):
        buffers = buffers[1:2]  # views or offsets; character data is read byte-wise
    return all(b is None or b.address % 8 == 0 for b in buffers)


class StoredTable:
    """One stored table or output, in a client form and a polars form sharing buffers."""

    def __init__(
        self,
        views: list[pa.RecordBatch],
        views_schema: pa.Schema,
        client: list[pa.RecordBatch] | None,
        schema: pa.Schema,
        *,
        check_alignment: bool,
    ) -> None:
        self._views = views
        self._views_schema = views_schema
        self._client = client
        self.schema = schema
        self._unchecked = check_alignment
        self._lock = threading.Lock()
        self.num_rows = sum(len(b) for b in views)
        self.nbytes = sum(b.nbytes for b in (client if client is not None else views))

    @classmethod
    def upload(cls, table: pa.Table) -> StoredTable:
        """A client's table: served back exactly as it came."""
        table = normalize(table)
        client = table.to_batches()
        target = views_schema(table.schema)
        if target.equals(table.schema):
            return cls(client, table.schema, client, table.schema, check_alignment=True)
        views = table.cast(target).to_batches()
        return cls(views, target, client, table.schema, check_alignment=True)

    @classmethod
    def output(cls, table: pa.Table) -> StoredTable:
        """A table from polars (views kept): clients get large strings, cast on first get."""
        table = normalize(table)
        return cls(
            table.to_batches(),
            table.schema,
            None,
            client_schema(table.schema),
            check_alignment=False,
        )

    def for_polars(self) -> pa.Table:
        """The table as polars reads it without copying (aligned, strings as views)."""
        with self._lock:
            if self._unchecked:
                self._align()
                self._unchecked = False
            return pa.Table.from_batches(self._views, self._views_schema)

    def _align(self) -> None:
        for i in range(len(self._views)):
            if self._align_batch(i):
                # The old batch's buffers were one gRPC message, free now: hand it back to
                # the OS before copying the next, so the copy holds at most a batch extra.
                _release_freed_memory()

    def _align_batch(self, i: int) -> bool:
        columns = self._views[i].columns
        if all(_is_aligned(c) for c in columns):
            return False
        fresh = [
            c if _is_aligned(c) else pa.concat_arrays([c], memory_pool=_POOL)  # a copy
            for c in columns
        ]
        if self._client is not None and self._client is not self._views:
            old = self._client[i]  # the client form shares the numeric columns too
            self._client[i] = pa.RecordBatch.from_arrays(
                [
                    f if old.schema.field(j).type == f.type else old.column(j)
                    for j, f in enumerate(fresh)
                ],
                schema=self.schema,
            )
        self._views[i] = pa.RecordBatch.from_arrays(fresh, schema=self._views_schema)
        return True

    def client(self) -> pa.Table:
        """The table as clients get it back."""
        with self._lock:
            if self._client is None:
                table = pa.Table.from_batches(self._views, self._views_schema)
                if not self.schema.equals(self._views_schema):
                    table = bounded(table.cast(self.schema))  # large strings may outgrow views
                self._client = table.to_batches()
            return pa.Table.from_batches(self._client, self.schema)
