"""Artifacts to Arrow and back: tables travel as tables, other objects as pickled bytes."""

from __future__ import annotations

import sys
from typing import Any

import cloudpickle
import polars as pl
import pyarrow as pa

from flight_kernel.errors import InvalidRequest, SerializationFailed

SERIALIZER_KEY = b"kernel.serializer"
TYPE_KEY = b"kernel.python_type"
PICKLE = b"cloudpickle"
ARROW = b"arrow"
PICKLE_COLUMN = "object"
PICKLE_SCHEMA = pa.schema([pa.field(PICKLE_COLUMN, pa.large_binary())])


def type_name(obj: Any) -> str:
    t = type(obj)
    return f"{t.__module__}.{t.__qualname__}"


def _pandas_frame_type() -> Any:
    pd = sys.modules.get("pandas")  # only when user code already imported it
    return pd.DataFrame if pd is not None else None


def is_table_like(obj: Any) -> bool:
    pd_frame = _pandas_frame_type()
    return isinstance(obj, pl.DataFrame | pl.LazyFrame | pa.Table | pa.RecordBatch) or (
        pd_frame is not None and isinstance(obj, pd_frame)
    )


def as_arrow_table(obj: Any, *, views: bool = False) -> pa.Table:
    """A table-like object as an Arrow table; with `views`, polars strings stay views (no copy)."""
    if isinstance(obj, pa.Table):
        return obj
    if isinstance(obj, pa.RecordBatch):
        return pa.Table.from_batches([obj])
    if isinstance(obj, pl.LazyFrame):
        obj = obj.collect()
    if isinstance(obj, pl.DataFrame):
        return obj.to_arrow(compat_level=pl.CompatLevel.newest() if views else None)
    pd_frame = _pandas_frame_type()
    if pd_frame is not None and isinstance(obj, pd_frame):
        return pa.Table.from_pandas(obj)
    raise TypeError(f"{type_name(obj)} is not a table")


def _tagged(schema: pa.Schema, obj: Any) -> pa.Schema:
    meta = dict(schema.metadata or {})
    meta.update({SERIALIZER_KEY: ARROW, TYPE_KEY: type_name(obj).encode()})
    return schema.with_metadata(meta)


def describe_table(obj: Any) -> tuple[pa.Schema, int, int]:
    """Schema, rows and bytes of a table-like artifact as `to_arrow` would send it, without
    evaluating anything: a LazyFrame gives `collect_schema()` and -1 rows and bytes."""
    if isinstance(obj, pa.Table | pa.RecordBatch):
        return _tagged(obj.schema, obj), obj.num_rows, obj.nbytes
    if isinstance(obj, pl.LazyFrame):
        empty = pl.DataFrame(schema=obj.collect_schema())
        return _tagged(empty.to_arrow().schema, obj), -1, -1
    if isinstance(obj, pl.DataFrame):
        return _tagged(obj.head(0).to_arrow().schema, obj), obj.height, int(obj.estimated_size())
    pd_frame = _pandas_frame_type()
    if pd_frame is not None and isinstance(obj, pd_frame):
        schema = pa.Schema.from_pandas(obj)  # infers types; converts nothing
        return _tagged(schema, obj), len(obj), int(obj.memory_usage(deep=True).sum())
    raise TypeError(f"{type_name(obj)} is not a table")


def pickle_schema(obj: Any) -> pa.Schema:
    return PICKLE_SCHEMA.with_metadata({SERIALIZER_KEY: PICKLE, TYPE_KEY: type_name(obj)})


def to_arrow(obj: Any, label: str) -> pa.Table:
    """Serialize an artifact for Flight; `label` names it in errors."""
    if is_table_like(obj):
        table = as_arrow_table(obj)
        meta = dict(table.schema.metadata or {})
        meta.update({SERIALIZER_KEY: ARROW, TYPE_KEY: type_name(obj)})
        return table.replace_schema_metadata(meta)
    try:
        data = cloudpickle.dumps(obj, protocol=5)
    except Exception as exc:
        raise SerializationFailed(
            f"artifact {label} of type {type_name(obj)} cannot be serialized: "
            f"{type(exc).__name__}: {exc}"
        ) from None
    return pa.table({PICKLE_COLUMN: pa.array([data], pa.large_binary())}, schema=pickle_schema(obj))


def from_arrow(table: pa.Table) -> Any:
    """Restore what `to_arrow` produced; a table without our metadata stays a pyarrow Table."""
    meta = table.schema.metadata or {}
    serializer = meta.get(SERIALIZER_KEY)
    kind = meta.get(TYPE_KEY, b"").decode()
    if serializer == PICKLE:
        if table.num_rows != 1 or table.schema.names != [PICKLE_COLUMN]:
            raise InvalidRequest(
                "a cloudpickle artifact stream must be one row of one "
                f"binary column {PICKLE_COLUMN!r}"
            )
        try:
            return cloudpickle.loads(table.column(0)[0].as_py())
        except Exception as exc:
            raise InvalidRequest(
                f"cannot restore artifact of type {kind}: {type(exc).__name__}: {exc}"
            ) from None
    clean = {k: v for k, v in meta.items() if k not in (SERIALIZER_KEY, TYPE_KEY)}
    table = table.replace_schema_metadata(clean or None)
    if kind in ("polars.dataframe.frame.DataFrame", "polars.lazyframe.frame.LazyFrame"):
        df = pl.from_arrow(table)
        assert isinstance(df, pl.DataFrame)
        return df.lazy() if kind.endswith("LazyFrame") else df
    if kind in ("pandas.core.frame.DataFrame", "pandas.DataFrame"):  # pandas >= 3 says the latter
        return table.to_pandas()
    if kind == "pyarrow.lib.RecordBatch":
        return table.combine_chunks().to_batches()[0] if table.num_rows else table
    return table


def estimate_size(obj: Any) -> int:
    """Bytes held by an object's buffers; a shallow `sys.getsizeof` only as a last resort."""
    try:
        if isinstance(obj, pl.DataFrame):
            return int(obj.estimated_size())
        if isinstance(obj, pa.Table | pa.RecordBatch):
            return int(obj.nbytes)
        if isinstance(obj, pl.LazyFrame):
            return sys.getsizeof(obj)  # a query plan; nothing materialised yet
        nbytes = getattr(obj, "nbytes", None)  # numpy arrays and friends
        if isinstance(nbytes, int):
            return nbytes
        pd_frame = _pandas_frame_type()
        if pd_frame is not None and isinstance(obj, pd_frame):
            return int(obj.memory_usage(deep=True).sum())
        if isinstance(obj, bytes | bytearray | str):
            return sys.getsizeof(obj)
        if isinstance(obj, list | tuple | set | frozenset):
            return sys.getsizeof(obj) + sum(estimate_size(x) for x in list(obj)[:10_000])
        if isinstance(obj, dict):
            items = list(obj.items())[:10_000]
            return sys.getsizeof(obj) + sum(estimate_size(k) + estimate_size(v) for k, v in items)
    except Exception:  # an estimate must never fail a publish
        pass
    return sys.getsizeof(obj)
