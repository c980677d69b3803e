"""The `flowfile` module injected into user code; every function acts on the current execution.

Refusals of the store (`NotFound`, `Conflict`, `InvalidRequest`) reach user code as the
built-in exceptions a Python programmer expects: `KeyError` and `ValueError`.
"""

from __future__ import annotations

import dataclasses
import logging
from datetime import UTC, datetime
from typing import Any, Literal

import polars as pl

from flight_kernel import outputs
from flight_kernel.context import require_context
from flight_kernel.display import show
from flight_kernel.errors import Conflict, InvalidRequest, NotFound, SerializationFailed
from flight_kernel.paths import check_segment
from flight_kernel.results import LogRecord

__all__ = [
    "delete_artifact",
    "display",
    "list_artifacts",
    "log",
    "log_error",
    "log_info",
    "log_warning",
    "publish_artifact",
    "publish_output",
    "read_artifact",
    "read_first",
    "read_input",
    "read_inputs",
]

logger = logging.getLogger("flowfile")
_LEVELS = {
    "DEBUG": logging.DEBUG,
    "INFO": logging.INFO,
    "WARNING": logging.WARNING,
    "WARN": logging.WARNING,
    "ERROR": logging.ERROR,
    "CRITICAL": logging.CRITICAL,
}


class _as_builtin_errors:
    """The kernel's refusals as the builtin errors user code expects. A class, not a
    `contextlib.contextmanager`: the error is then raised from this module's frame, which
    user tracebacks leave out, instead of from `contextlib`'s."""

    def __enter__(self) -> None:
        return None

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: object
    ) -> Literal[False]:
        if isinstance(exc, NotFound):
            raise KeyError(exc.message) from None
        if isinstance(exc, Conflict | InvalidRequest | SerializationFailed):
            raise ValueError(exc.message) from None
        return False


def _input_entries(name: str) -> list[str]:
    ctx = require_context()
    if not ctx.input_paths:
        raise KeyError(
            f"no inputs were given to this execution (asked for {name!r}); "
            "pass input_paths with the request"
        )
    if name not in ctx.input_paths:
        raise KeyError(f"no input named {name!r} (available: {', '.join(sorted(ctx.input_paths))})")
    entries = ctx.input_paths[name]
    if not entries:
        raise KeyError(f"input {name!r} has no paths")
    return entries


def read_input(name: str = "main") -> pl.LazyFrame:
    """All files or streams of input `name`, concatenated, as one LazyFrame."""
    ctx = require_context()
    with _as_builtin_errors():
        frames = [ctx.reader.read(e) for e in _input_entries(name)]
    return frames[0] if len(frames) == 1 else pl.concat(frames, how="vertical")


def read_first(name: str = "main") -> pl.LazyFrame:
    """The first file or stream of input `name`."""
    ctx = require_context()
    with _as_builtin_errors():
        return ctx.reader.read(_input_entries(name)[0])


def read_inputs() -> dict[str, pl.LazyFrame]:
    """Every input, by name."""
    ctx = require_context()
    if not ctx.input_paths:
        raise KeyError("no inputs were given to this execution; pass input_paths with the request")
    return {name: read_input(name) for name in ctx.input_paths}


def publish_output(df: Any, name: str | None = None) -> None:
    """Publish a DataFrame/LazyFrame (or pyarrow Table) as an output of this node."""
    ctx = require_context()
    with _as_builtin_errors():
        outputs.publish(ctx, df, name)


def publish_artifact(name: str, obj: Any) -> None:
    """Keep `obj` in memory under `name` for this flow (no copy, no serialization)."""
    ctx = require_context()
    if not isinstance(name, str):
        raise TypeError(f"artifact name must be a string, not {type(name).__name__}")
    with _as_builtin_errors():
        check_segment(name, "artifact name")
        ctx.artifacts.publish(ctx.flow_id, ctx.node_id, name, obj)
    if name not in ctx.published_artifacts:
        ctx.published_artifacts.append(name)


def read_artifact(name: str) -> Any:
    """The object stored under `name` in this flow."""
    ctx = require_context()
    with _as_builtin_errors():
        return ctx.artifacts.get(ctx.flow_id, name).obj


def list_artifacts() -> list[dict[str, Any]]:
    """This flow's artifacts, as the records of `GET /artifacts?flow_id=<this flow>`."""
    ctx = require_context()
    return [a.record().to_json() for a in ctx.artifacts.find(flow_id=ctx.flow_id)]


def delete_artifact(name: str) -> None:
    """Remove artifact `name` from this flow."""
    ctx = require_context()
    with _as_builtin_errors():
        ctx.artifacts.delete(ctx.flow_id, name)
    if name in ctx.published_artifacts:
        ctx.published_artifacts.remove(name)
    if name not in ctx.deleted_artifacts:
        ctx.deleted_artifacts.append(name)


def display(obj: Any, title: str = "") -> None:
    """Show `obj` in the response's `display_outputs`, as a notebook shows it: a MIME bundle
    from its `_repr_*_` methods (a polars frame as HTML and text, a matplotlib figure as PNG).
    Displays beyond the output cap are dropped, and the last one says how many."""
    show(require_context(), obj, str(title))


def log(message: Any, level: str = "INFO") -> None:
    """Log to the server log and to the response's `logs`, tagged with flow and node."""
    ctx = require_context()
    levelno = _LEVELS.get(str(level).upper())
    if levelno is None:
        raise ValueError(f"unknown log level {level!r} (use one of {', '.join(_LEVELS)})")
    text = str(message)
    size = len(text.encode("utf-8", "replace"))
    if ctx.log_bytes + size > ctx.stdout.limit:  # the response keeps what fits, says the rest
        ctx.logs_dropped += 1
        ctx.log_bytes_dropped += size
    else:
        ctx.log_bytes += size
        record = LogRecord(
            level=logging.getLevelName(levelno),
            message=text,
            flow_id=ctx.flow_id,
            node_id=ctx.node_id,
            timestamp=datetime.now(UTC).isoformat(),
        )
        ctx.logs.append(record)
        if ctx.events is not None:
            ctx.events.put("log", **dataclasses.asdict(record))
    logger.log(levelno, "[flow %s node %s] %s", ctx.flow_id, ctx.node_id, text)


def log_info(message: Any) -> None:
    log(message, "INFO")


def log_warning(message: Any) -> None:
    log(message, "WARNING")


def log_error(message: Any) -> None:
    log(message, "ERROR")
