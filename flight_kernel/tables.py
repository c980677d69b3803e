"""How a stored table is kept: batches for clients and, sharing their buffers, for polars.

Three facts shape it (measured with pyarrow 26 and polars 2.1):
* Flight throughput halves with one giant batch and fails past 2 GiB: batches are capped at
  `MAX_BATCH_ROWS` rows (zero-copy slices), and many tiny ones are merged.
* polars copies `string`/`large_string` columns into its string views on every read but
  takes `string_view` columns as they are: uploads get a views form, cast once (the cast
  shares the character data and only adds 16 bytes a row).
* buffers that arrive by `do_put` sit at whatever address gRPC put them (1 byte past a
  64-byte boundary here), and polars copies misaligned buffers on every read. They are
  copied once into aligned memory on the first read by user code, one column of one batch
  at a time, so `do_put` stays copy-free and the peak memory of that copy stays small.
"""

from __future__ import annotations

import contextlib
import ctypes
import threading

import pyarrow as pa

MAX_BATCH_ROWS = 1 << 20
MIN_AVG_BATCH_ROWS = 8192
# malloc, where big blocks are mmapped and leave RSS when freed: pyarrow's default mimalloc
# kept 17% more resident (peak growth reading 1 GiB: 6-15% of it, against 6.2% steadily)
# though its copies are faster (pass-through goal 3.3x against 2.6x).
_POOL = pa.system_memory_pool()


def normalize(table: pa.Table) -> pa.Table:
    """Batches of at most `MAX_BATCH_ROWS` rows (zero-copy slices), and not tiny ones."""
    batches = table.to_batches()
    if len(batches) > 1 and table.num_rows < MIN_AVG_BATCH_ROWS * len(batches):
        table = table.combine_chunks()  # many tiny batches cost more per row than one copy
        batches = table.to_batches()
    if all(len(b) <= MAX_BATCH_ROWS for b in batches):
        return table
    return pa.Table.from_batches(table.to_batches(max_chunksize=MAX_BATCH_ROWS), table.schema)


def _swap_types(schema: pa.Schema, old: tuple[pa.DataType, ...], new: pa.DataType) -> pa.Schema:
    fields = [f.with_type(new) if f.type in old else f for f in schema]
    return pa.schema(fields, metadata=schema.metadata)


def views_schema(schema: pa.Schema) -> pa.Schema:
    return _swap_types(schema, (pa.string(), pa.large_string()), pa.string_view())


def client_schema(schema: pa.Schema) -> pa.Schema:
    """The schema clients get for a table published from polars: views as large strings."""
    return _swap_types(schema, (pa.string_view(),), pa.large_string())


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
                    table = table.cast(self.schema)
                self._client = table.to_batches()
            return pa.Table.from_batches(self._client, self.schema)
