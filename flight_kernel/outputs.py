"""`publish_output`: parquet files in `output_dir`, or tables in the Flight store."""

from __future__ import annotations

import os
from typing import Any

import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq

from flight_kernel.context import ExecutionContext
from flight_kernel.paths import OutputPath, check_segment, is_flight_uri, local_uri
from flight_kernel.serialization import as_arrow_table, is_table_like


def to_flight_store(output_dir: str) -> bool:
    return output_dir == "" or is_flight_uri(output_dir)


def publish(ctx: ExecutionContext, frame: Any, name: str | None) -> str:
    """Publish one output; returns its path or Flight URI."""
    if not is_table_like(frame):
        raise TypeError(
            f"publish_output takes a polars DataFrame or LazyFrame (or a pyarrow "
            f"Table), not {type(frame).__name__}"
        )
    if name is None:
        name = f"output_{ctx.unnamed_outputs}"
        ctx.unnamed_outputs += 1
    elif not isinstance(name, str):
        raise TypeError(f"output name must be a string, not {type(name).__name__}")
    else:
        check_segment(name, "output name")

    if to_flight_store(ctx.output_dir):
        path = OutputPath(ctx.flow_id, check_segment(ctx.node_key, "node_id"), name)
        table = as_arrow_table(frame, views=True)
        ctx.tables.put(path, pa.RecordBatchReader.from_batches(table.schema, table.to_batches()))
        where = local_uri(path)
    else:
        where = _write_parquet(ctx.output_dir, name, frame)
    if where not in ctx.output_paths:
        ctx.output_paths.append(where)
    return where


def _write_parquet(output_dir: str, name: str, frame: Any) -> str:
    try:
        os.makedirs(output_dir, exist_ok=True)
    except OSError as exc:
        raise type(exc)(
            exc.errno, f"cannot create output_dir {output_dir!r}: {exc.strerror}"
        ) from None
    target = os.path.join(output_dir, f"{name}.parquet")
    try:
        if isinstance(frame, pl.LazyFrame):
            frame.sink_parquet(target)
        elif isinstance(frame, pl.DataFrame):
            frame.write_parquet(target)
        else:
            pq.write_table(frame if isinstance(frame, pa.Table) else as_arrow_table(frame), target)
    except OSError as exc:
        raise type(exc)(
            exc.errno,
            f"output_dir {output_dir!r} is not writable (writing {target!r}): {exc.strerror}",
        ) from None
    return target
