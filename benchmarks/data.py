"""Synthetic tables made with numpy, built batch by batch so no extra full copy is held."""

from __future__ import annotations

import numpy as np
import pyarrow as pa

BATCH_ROWS = 1 << 20  # the batch size the kernel keeps (store.MAX_BATCH_ROWS)
NUMERIC_COLUMNS = 8


def _batches(rows: int, make: object) -> list[pa.RecordBatch]:
    out = []
    start = 0
    while start < rows:
        n = min(BATCH_ROWS, rows - start)
        out.append(make(n))  # type: ignore[operator]
        start += n
    return out


def numeric_rows_for(nbytes: int, columns: int = NUMERIC_COLUMNS) -> int:
    return max(1, nbytes // (8 * columns))


def numeric_table(rows: int, columns: int = NUMERIC_COLUMNS, seed: int = 1) -> pa.Table:
    """`columns` float64 columns a, b, c, ... uniform in [0, 1)."""
    rng = np.random.default_rng(seed)
    names = [chr(ord("a") + i) for i in range(columns)]

    def make(n: int) -> pa.RecordBatch:
        return pa.record_batch([pa.array(rng.random(n)) for _ in names], names=names)

    return pa.Table.from_batches(_batches(rows, make))


STRING_COLUMNS = 4
STRING_LEN = (8, 41)  # lengths drawn in [8, 41): mostly longer than 12, so not inlined in views


def string_rows_for(nbytes: int) -> int:
    mean_len = sum(STRING_LEN) / 2
    per_row = 8 + STRING_COLUMNS * (mean_len + 4)  # float64 + (chars + int32 offset) each
    return max(1, int(nbytes / per_row))


def string_table(rows: int, seed: int = 2) -> pa.Table:
    """A float64 column `a` and `STRING_COLUMNS` `string` columns of random lowercase words."""
    rng = np.random.default_rng(seed)

    def strings(n: int) -> pa.Array:
        lengths = rng.integers(*STRING_LEN, size=n, dtype=np.int32)
        offsets = np.zeros(n + 1, dtype=np.int32)
        np.cumsum(lengths, out=offsets[1:])
        chars = np.frombuffer(rng.bytes(int(offsets[-1])), dtype=np.uint8) % 26 + 97
        return pa.StringArray.from_buffers(n, pa.py_buffer(offsets), pa.py_buffer(chars))

    names = ["a", *(f"s{i}" for i in range(STRING_COLUMNS))]

    def make(n: int) -> pa.RecordBatch:
        return pa.record_batch(
            [pa.array(rng.random(n)), *(strings(n) for _ in names[1:])], names=names
        )

    return pa.Table.from_batches(_batches(rows, make))


def agg_table(rows: int, groups: int, seed: int = 3) -> pa.Table:
    """`k` int64 keys in [0, groups) and `v` float64 values, for group-by aggregations."""
    rng = np.random.default_rng(seed)

    def make(n: int) -> pa.RecordBatch:
        return pa.record_batch(
            [pa.array(rng.integers(0, groups, n)), pa.array(rng.random(n))], names=["k", "v"]
        )

    return pa.Table.from_batches(_batches(rows, make))
