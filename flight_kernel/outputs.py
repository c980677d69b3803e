"""`publish_output`: parquet files in `output_dir`, or tables in the Flight store."""

from __future__ import annotations

import contextlib
import errno
import os
import secrets
from collections.abc import Iterator
from typing import Any

import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq

from flight_kernel.context import ExecutionContext
from flight_kernel.errors import Conflict, InvalidRequest
from flight_kernel.paths import OutputPath, check_segment, is_flight_uri, local_uri, resolve
from flight_kernel.serialization import as_arrow_table, is_table_like

SUFFIX = ".parquet"
NAME_MAX = 255  # bytes in one file name (Linux's NAME_MAX: ext4, xfs, btrfs, tmpfs)


def to_flight_store(output_dir: str) -> bool:
    return output_dir == "" or is_flight_uri(output_dir)


def _shown(name: str) -> str:
    return repr(name) if len(name) <= 60 else f"{name[:40]!r}... ({len(name)} characters)"


def check_output_name(name: str, *, to_files: bool) -> str:
    """Refuse a name that is not a plain file name, saying which rule it broke; the length
    rule is the file system's, so it holds only for files (the Flight store keeps any)."""
    check_segment(name, "output name")
    try:
        size = len((name + SUFFIX).encode("utf-8"))
    except UnicodeEncodeError:  # no file name and no Flight ticket (UTF-8) can hold it
        raise InvalidRequest(
            f"output name {_shown(name)} is not valid Unicode text (it holds a lone surrogate)"
        ) from None
    if to_files and size > NAME_MAX:
        raise InvalidRequest(
            f"output name {_shown(name)} is too long: '<name>{SUFFIX}' is {size} bytes in "
            f"UTF-8, and a file name may have at most {NAME_MAX}"
        )
    return name


@contextlib.contextmanager
def _claim(ctx: ExecutionContext, name: str | None) -> Iterator[str]:
    """Reserve an output name for this execution; a publish that fails gives it back."""
    with ctx.output_lock:
        number = ctx.unnamed_outputs if name is None else None
        claimed = f"output_{number}" if name is None else name
        if claimed in ctx.output_names:
            if number is not None:
                raise Conflict(
                    f"this unnamed output would be numbered {claimed!r}, a name this execution "
                    "already used; give it a name of its own"
                )
            raise Conflict(
                f"output {claimed!r} was already published by this execution; "
                "give each output its own name"
            )
        ctx.output_names.add(claimed)
        if number is not None:
            ctx.unnamed_outputs += 1
    try:
        yield claimed
    except BaseException:
        with ctx.output_lock:
            ctx.output_names.discard(claimed)
            if number is not None and ctx.unnamed_outputs == number + 1:
                ctx.unnamed_outputs = number  # no later unnamed output took a number
        raise


def publish(ctx: ExecutionContext, frame: Any, name: str | None) -> str:
    """Publish one output; returns its path or Flight URI."""
    if not is_table_like(frame):
        raise TypeError(
            f"publish_output takes a polars DataFrame or LazyFrame (or a pyarrow "
            f"Table), not {type(frame).__name__}"
        )
    to_files = not to_flight_store(ctx.output_dir)
    if name is not None:
        if not isinstance(name, str):
            raise TypeError(f"output name must be a string, not {type(name).__name__}")
        check_output_name(name, to_files=to_files)

    with _claim(ctx, name) as claimed:
        if not to_files:
            path = OutputPath(ctx.flow_id, check_segment(ctx.node_key, "node_id"), claimed)
            table = as_arrow_table(frame)
            ctx.store.put(path, pa.RecordBatchReader.from_batches(table.schema, table.to_batches()))
            where = local_uri(path)
        else:
            where = _write_parquet(ctx.output_dir, claimed, frame)
    ctx.output_paths.append(where)
    return where


def _write(frame: Any, target: str) -> None:
    if isinstance(frame, pl.LazyFrame):
        # Through a file we opened: polars' sink can go on writing after it raised, and a
        # writer that has only our descriptor cannot create the file again once we removed it.
        with open(target, "wb") as file:
            frame.sink_parquet(file)
    elif isinstance(frame, pl.DataFrame):
        frame.write_parquet(target)
    else:
        pq.write_table(frame if isinstance(frame, pa.Table) else as_arrow_table(frame), target)


def _temporary(directory: str) -> str:
    """A new empty file beside the target; its name fits whatever the output's name is."""
    while True:
        tmp = os.path.join(directory, f".output-{secrets.token_hex(8)}.tmp")
        try:
            os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
        except FileExistsError:
            continue
        return tmp


def _write_parquet(output_dir: str, name: str, frame: Any) -> str:
    """Write under a temporary name and rename into place when complete (SPEC §5)."""
    directory = resolve(output_dir)
    try:
        os.makedirs(directory, exist_ok=True)
    except OSError as exc:
        raise type(exc)(
            exc.errno, f"cannot create output_dir {output_dir!r}: {exc.strerror}"
        ) from None
    target = os.path.join(directory, name + SUFFIX)
    tmp: str | None = None
    try:
        tmp = _temporary(directory)
        _write(frame, tmp)
        os.replace(tmp, target)
    except BaseException as exc:
        if tmp is not None:
            with contextlib.suppress(FileNotFoundError):
                os.remove(tmp)
        if isinstance(exc, OSError) and exc.errno == errno.ENAMETOOLONG:
            raise InvalidRequest(
                f"output name {_shown(name)} is too long for the file system of "
                f"output_dir {output_dir!r}"
            ) from None
        if isinstance(exc, OSError) and exc.errno is not None:
            raise type(exc)(
                exc.errno,
                f"cannot write {target!r} in output_dir {output_dir!r}: {exc.strerror}",
            ) from None
        raise
    return target
