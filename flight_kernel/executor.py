"""One execution of user code: compile, run with `flowfile` injected, capture, report.

User code runs in the calling thread (a Flight handler thread), so executions of
different flows run side by side. Timeouts and interrupts raise `KeyboardInterrupt`
inside that thread with `PyThreadState_SetAsyncExc`; code that ignores it (stuck in C,
or catching it) is ended by the supervisor restarting the kernel.
"""

from __future__ import annotations

import builtins
import ctypes
import functools
import itertools
import linecache
import logging
import os
import sys
import threading
import time
import traceback
from dataclasses import dataclass, field
from types import CodeType, TracebackType
from typing import Any

from flight_kernel import flowfile
from flight_kernel.context import CappedBuffer, ExecutionContext, current, install_capture
from flight_kernel.errors import InvalidRequest
from flight_kernel.inputs import InputReader
from flight_kernel.store import Store

logger = logging.getLogger(__name__)

_KERNEL_DIR = os.path.dirname(os.path.abspath(__file__))


def _set_async_exc(thread_id: int, exc: type[BaseException] | None) -> None:
    """Raise `exc` in a thread at its next bytecode; None drops a pending one."""
    ctypes.pythonapi.PyThreadState_SetAsyncExc(
        ctypes.c_ulong(thread_id), ctypes.py_object(exc) if exc is not None else None
    )


@dataclass(frozen=True)
class ExecuteRequest:
    """A validated `execute` body."""

    node_id: str | int
    code: str
    input_paths: dict[str, list[str]] = field(default_factory=dict)
    output_dir: str = ""
    flow_id: int = 0
    timeout_s: float | None = None

    @classmethod
    def from_json(cls, body: Any) -> ExecuteRequest:
        """Validate a decoded JSON body; `InvalidRequest` names the bad field."""
        if not isinstance(body, dict):
            raise InvalidRequest("execute body must be a JSON object")
        node_id = body.get("node_id")
        if isinstance(node_id, bool) or not isinstance(node_id, str | int):
            raise InvalidRequest("field 'node_id' is required and must be a string or an integer")
        code = body.get("code")
        if not isinstance(code, str):
            raise InvalidRequest("field 'code' is required and must be a string")
        inputs = body.get("input_paths") or {}
        if not isinstance(inputs, dict) or not all(
            isinstance(k, str) and isinstance(v, list) and all(isinstance(p, str) for p in v)
            for k, v in inputs.items()
        ):
            raise InvalidRequest("field 'input_paths' must map names to lists of strings")
        output_dir = body.get("output_dir") or ""
        if not isinstance(output_dir, str):
            raise InvalidRequest("field 'output_dir' must be a string")
        flow_id = body.get("flow_id", 0)
        if isinstance(flow_id, bool) or not isinstance(flow_id, int):
            raise InvalidRequest("field 'flow_id' must be an integer")
        timeout = body.get("timeout_s")
        if timeout is not None and (  # NaN fails the range; a timer cannot wait past its max
            isinstance(timeout, bool)
            or not isinstance(timeout, int | float)
            or not 0 < timeout <= threading.TIMEOUT_MAX
        ):
            raise InvalidRequest(
                "field 'timeout_s' must be a positive number of seconds, at "
                f"most {threading.TIMEOUT_MAX:g}"
            )
        return cls(
            node_id,
            code,
            inputs,
            output_dir,
            flow_id,
            float(timeout) if timeout is not None else None,
        )


def _format_error(exc: BaseException) -> str:
    if isinstance(exc, KeyError) and len(exc.args) == 1 and isinstance(exc.args[0], str):
        message = exc.args[0]
    elif isinstance(exc, SystemExit):
        message = f"exit code {exc.code!r}" if exc.code is not None else "exit code None"
    else:
        message = str(exc)
    return f"{type(exc).__name__}: {message}" if message else type(exc).__name__


def _user_traceback(exc: BaseException, filename: str) -> str:
    """The traceback with the kernel's own frames left out."""
    if isinstance(exc, SyntaxError) and exc.filename == filename:
        return "".join(traceback.format_exception_only(type(exc), exc))
    tb: TracebackType | None = exc.__traceback__
    frames = []
    while tb is not None:
        name = tb.tb_frame.f_code.co_filename
        if not os.path.abspath(name).startswith(_KERNEL_DIR) or name == filename:
            frames.append((tb.tb_frame, tb.tb_lineno))
        tb = tb.tb_next
    summary = traceback.StackSummary.extract(frames, lookup_lines=True)
    lines = ["Traceback (most recent call last):\n", *summary.format()]
    lines += traceback.format_exception_only(type(exc), exc)
    return "".join(lines)


@functools.lru_cache(maxsize=256)
def _compile(code: str, filename: str) -> CodeType:
    """Pipelines re-run the same node code: compile it once."""
    return compile(code, filename, "exec")


class Executor:
    """Runs executions and keeps track of the running ones for interrupts."""

    def __init__(
        self,
        store: Store,
        *,
        max_stream_bytes: int = 1024 * 1024,
        default_timeout_s: float | None = None,
        auth_token: str | None = None,
    ) -> None:
        self._store = store
        self._reader = InputReader(store, auth_token)
        self._max_stream_bytes = max_stream_bytes
        self._default_timeout_s = default_timeout_s
        self._ids = itertools.count(1)
        self._lock = threading.Lock()
        self._running: dict[int, ExecutionContext] = {}
        sys.modules.setdefault("flowfile", flowfile)  # `import flowfile` works too

    def execute(self, req: ExecuteRequest) -> dict[str, Any]:
        """Run one request to the end and return the response body."""
        install_capture()
        ctx = ExecutionContext(
            execution_id=next(self._ids),
            flow_id=req.flow_id,
            node_id=req.node_id,
            input_paths=req.input_paths,
            output_dir=req.output_dir,
            store=self._store,
            reader=self._reader,
            stdout=CappedBuffer(self._max_stream_bytes),
            stderr=CappedBuffer(self._max_stream_bytes),
        )
        filename = f"<node {req.node_id}>".replace("\x00", "\\x00")  # compile() refuses NUL
        # A node's re-execution replaces what it published before.
        self._store.clear_node_artifacts([req.node_id], req.flow_id)
        self._store.clear_node_outputs(req.flow_id, ctx.node_key)
        timeout = req.timeout_s if req.timeout_s is not None else self._default_timeout_s
        timer = None
        if timeout is not None:
            timer = threading.Timer(
                timeout, self._cancel, (ctx, f"Timeout: execution exceeded timeout_s={timeout:g}")
            )
            timer.daemon = True
        error: BaseException | None = None
        token = current.set(ctx)
        try:
            try:
                if timer is not None:
                    # Before the execution can be interrupted: an async exception sent while
                    # this thread creates one also hits the newborn thread (it briefly has
                    # our ident), which then dies unstarted and start() waits forever.
                    timer.start()
                with self._lock:
                    self._running[ctx.execution_id] = ctx
                compiled = _compile(req.code, filename)
                namespace = {"__name__": "__main__", "__builtins__": builtins, "flowfile": flowfile}
                exec(compiled, namespace)
            finally:
                with self._lock:
                    ctx.done = True
                    if ctx.cancel_reason is not None:  # drop an interrupt not yet delivered
                        _set_async_exc(ctx.thread_id, None)
        except BaseException as exc:
            error = exc
        finally:
            if timer is not None:
                timer.cancel()
            ctx.done = True
            with self._lock:
                self._running.pop(ctx.execution_id, None)
            current.reset(token)
        return self._response(ctx, req, error, filename)

    def _response(
        self, ctx: ExecutionContext, req: ExecuteRequest, error: BaseException | None, filename: str
    ) -> dict[str, Any]:
        elapsed_ms = (time.perf_counter() - ctx.started) * 1000
        body: dict[str, Any] = {
            "success": error is None,
            "flow_id": req.flow_id,
            "node_id": req.node_id,
            "output_paths": ctx.output_paths,
            "published_artifacts": ctx.published_artifacts,
            "deleted_artifacts": ctx.deleted_artifacts,
            "stdout": ctx.stdout.getvalue(),
            "stderr": ctx.stderr.getvalue(),
            "error": None,
            "error_kind": None,
            "traceback": None,
            "logs": ctx.logs,
            "execution_time_ms": round(elapsed_ms, 3),
        }
        if error is not None:
            if ctx.cancel_reason is not None and isinstance(error, KeyboardInterrupt):
                body["error"] = ctx.cancel_reason
                body["error_kind"] = ctx.cancel_reason.split(":", 1)[0].lower()
            else:
                body["error"] = _format_error(error)
                body["error_kind"] = (
                    "syntax"
                    if isinstance(error, SyntaxError)
                    else "exit"
                    if isinstance(error, SystemExit)
                    else "exception"
                )
            # linecache lets the traceback show the user's source lines
            linecache.cache[filename] = (
                len(req.code),
                None,
                req.code.splitlines(keepends=True),
                filename,
            )
            try:
                body["traceback"] = _user_traceback(error, filename)
            finally:
                linecache.cache.pop(filename, None)
            logger.info(
                "execution %s (flow %s node %s) failed: %s",
                ctx.execution_id,
                ctx.flow_id,
                ctx.node_id,
                body["error"],
            )
        return body

    def _cancel(self, ctx: ExecutionContext, reason: str) -> bool:
        """Raise KeyboardInterrupt inside a running execution, once."""
        with self._lock:
            if ctx.done or ctx.cancel_reason is not None:
                return False
            ctx.cancel_reason = reason
            _set_async_exc(ctx.thread_id, KeyboardInterrupt)
        logger.info(
            "execution %s (flow %s node %s): %s", ctx.execution_id, ctx.flow_id, ctx.node_id, reason
        )
        return True

    def interrupt(
        self, flow_id: int | None = None, node_id: str | int | None = None
    ) -> list[dict[str, Any]]:
        """Interrupt running executions matching flow and node (None matches all)."""
        with self._lock:
            matches = [
                c
                for c in self._running.values()
                if (flow_id is None or c.flow_id == flow_id)
                and (node_id is None or c.node_key == str(node_id))
            ]
        return [
            c.describe()
            for c in matches
            if self._cancel(c, "Interrupted: execution interrupted on request")
        ]

    def running(self) -> list[dict[str, Any]]:
        with self._lock:
            return [c.describe() for c in self._running.values()]
