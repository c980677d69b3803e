"""One execution of user code: compile, run with `flowfile` injected, capture, report.

User code runs in the calling thread (a Flight handler thread), so executions of
different flows run side by side. Timeouts and interrupts raise `KeyboardInterrupt`
inside that thread with `PyThreadState_SetAsyncExc`; code that ignores it (stuck in C,
or catching it) is ended by the supervisor restarting the kernel.
"""

from __future__ import annotations

import ast
import builtins
import contextlib
import ctypes
import functools
import linecache
import logging
import os
import sys
import threading
import time
import traceback
import types
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime
from types import CodeType, TracebackType

from flight_kernel import display, flowfile
from flight_kernel.artifacts import ArtifactStore
from flight_kernel.context import (
    CappedBuffer,
    ExecutionContext,
    RunningExecution,
    cap_text,
    current,
    install_capture,
)
from flight_kernel.events import EventStream
from flight_kernel.inputs import InputReader
from flight_kernel.namespaces import Namespace, Namespaces
from flight_kernel.requests import ExecuteRequest, InterruptRequest
from flight_kernel.results import ErrorKind, ExecutionResult, LogRecord
from flight_kernel.spool import SpoolFile
from flight_kernel.store import Store

logger = logging.getLogger(__name__)

_KERNEL_DIR = os.path.dirname(os.path.abspath(__file__))


def _set_async_exc(thread_id: int, exc: type[BaseException] | None) -> None:
    """Raise `exc` in a thread at its next bytecode; None drops a pending one."""
    ctypes.pythonapi.PyThreadState_SetAsyncExc(
        ctypes.c_ulong(thread_id), ctypes.py_object(exc) if exc is not None else None
    )


def _format_error(exc: BaseException) -> str:
    if isinstance(exc, KeyError) and len(exc.args) == 1 and isinstance(exc.args[0], str):
        message = exc.args[0]
    elif isinstance(exc, SystemExit):
        message = f"exit code {exc.code!r}" if exc.code is not None else "exit code None"
    else:
        try:
            message = str(exc)
        except Exception:  # an exception whose __str__ raises is still a result
            message = "<unprintable>"
    return f"{type(exc).__name__}: {message}" if message else type(exc).__name__


_import = builtins.__import__
_MODULE_KEY = "__kernel_builtins_module__"


def _user_import(
    name: str,
    globals: Mapping[str, object] | None = None,
    locals: Mapping[str, object] | None = None,
    fromlist: Sequence[str] = (),
    level: int = 0,
) -> types.ModuleType:
    """`__import__` of user code: `flowfile` is always the real one (whatever user code did
    to `sys.modules`), `builtins` is the execution's own copy."""
    if level == 0 and name == "flowfile":
        return flowfile
    if level == 0 and name == "builtins" and globals is not None:
        own = globals.get("__builtins__")
        if isinstance(own, dict):
            module = own.get(_MODULE_KEY)
            if not isinstance(module, types.ModuleType):  # made on first import only
                module = types.ModuleType("builtins")
                module.__dict__.update(own)
                own[_MODULE_KEY] = module
            return module
    return _import(name, globals, locals, fromlist, level)


# `builtins` as the kernel started, before any user code ran; each execution gets a copy, so
# rebinding a builtin changes nothing for the kernel or for another execution.
_BUILTINS = {**builtins.__dict__, "__import__": _user_import}


def _fresh_globals() -> dict[str, object]:
    """The globals of a new namespace: user code's `__main__`, with `flowfile` injected."""
    return {"__name__": "__main__", "__builtins__": dict(_BUILTINS), "flowfile": flowfile}


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


MAX_CACHED_SOURCE = 64 * 1024  # pipelines re-run small node code; large sources are rare


Compiled = tuple[CodeType, CodeType | None]  # the code, and its final expression (interactive)
_NOT_SHOWN = ("print", "display")  # final calls whose value a notebook does not display


def _shown_last(tree: ast.Module) -> ast.expr | None:
    """The final bare expression that interactive mode displays, if there is one."""
    last = tree.body[-1] if tree.body else None
    if not isinstance(last, ast.Expr):
        return None
    call = last.value
    if isinstance(call, ast.Call):
        func = call.func
        name = func.id if isinstance(func, ast.Name) else getattr(func, "attr", None)
        if name in _NOT_SHOWN:
            return None
    return last.value


def _compile_now(code: str, filename: str, interactive: bool) -> Compiled:
    if not interactive:
        return compile(code, filename, "exec"), None
    tree = ast.parse(code, filename, "exec")
    last = _shown_last(tree)
    if last is None:
        return compile(tree, filename, "exec"), None
    body = ast.Module(body=tree.body[:-1], type_ignores=[])
    return compile(body, filename, "exec"), compile(ast.Expression(last), filename, "eval")


@functools.lru_cache(maxsize=256)
def _compile_cached(code: str, filename: str, interactive: bool) -> Compiled:
    return _compile_now(code, filename, interactive)


def _compile(code: str, filename: str, interactive: bool = False) -> Compiled:
    """Compile once what pipelines re-run; the cache holds at most 256 x 64 KiB of source."""
    if len(code) > MAX_CACHED_SOURCE:
        return _compile_now(code, filename, interactive)
    return _compile_cached(code, filename, interactive)


QUERY_CANCEL_AFTER_S = 0.1  # how long an interrupted execution may take to stop by itself
QUERY_CANCELLED = (
    "Interrupted: a polars query of this execution was cancelled, because another execution "
    "in the same kernel was interrupted while it ran (polars cancels every query of a "
    "process on SIGINT)"
)


class Executor:
    """Runs executions and keeps track of the running ones for interrupts."""

    def __init__(
        self,
        store: Store,
        artifacts: ArtifactStore,
        reader: InputReader,
        *,
        max_stream_bytes: int = 1024 * 1024,
        default_timeout_s: float | None = None,
        max_namespaces: int = 20,
    ) -> None:
        self._store = store
        self._artifacts = artifacts
        self._reader = reader
        self._max_stream_bytes = max_stream_bytes
        self._default_timeout_s = default_timeout_s
        self._lock = threading.Lock()
        self._running: dict[str, ExecutionContext] = {}
        self.namespaces = Namespaces(max_namespaces)
        self.on_start: Callable[[str], None] | None = None  # told each execution's id
        self.before_end: Callable[[], None] | None = None  # e.g. deliver fd output still due
        # Cancels the polars queries of the process (a kernel process sends itself SIGINT);
        # None in-process, where that signal would reach the host program.
        self.cancel_queries: Callable[[], None] | None = None
        self._spool_dir: str | None = None
        self._queries_cancelled = float("-inf")  # perf_counter of the last such cancel

    @property
    def spool_dir(self) -> str | None:
        """Where printed output is mirrored and namespaces are marked for the supervisor
        (`flight_kernel.spool`, `flight_kernel.namespaces`); None in-process, where nobody
        reads them after a death."""
        return self._spool_dir

    @spool_dir.setter
    def spool_dir(self, directory: str | None) -> None:
        self._spool_dir = self.namespaces.marker_dir = directory

    def run(self, req: ExecuteRequest, events: EventStream | None = None) -> ExecutionResult:
        """Run one request to the end; user code failing is a result, not an exception. With
        `events`, what it prints, logs and displays is also put there as it happens."""
        install_capture()
        sys.modules["flowfile"] = flowfile  # `import flowfile` in modules user code imports
        execution_id = req.execution_id or os.urandom(16).hex()
        ctx = ExecutionContext(
            execution_id=execution_id,
            flow_id=req.flow_id,
            node_id=req.node_id,
            input_paths=req.input_paths,
            output_dir=req.output_dir,
            store=self._store,
            artifacts=self._artifacts,
            reader=self._reader,
            stdout=self._buffer(execution_id, "stdout", events),
            stderr=self._buffer(execution_id, "stderr", events),
            events=events,
        )
        base_filename = f"<node {req.node_id}>".replace("\x00", "\\x00")  # compile() refuses NUL
        filename = base_filename
        timeout = req.timeout_s if req.timeout_s is not None else self._default_timeout_s
        timer = None
        if timeout is not None:
            reason = f"Timeout: execution exceeded timeout_s={timeout:g}"
            timer = threading.Timer(timeout, self._cancel, (ctx, ErrorKind.TIMEOUT, reason))
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
                if self.on_start is not None:
                    self.on_start(ctx.execution_id)
                with self._space(req) as space:  # a named one: waits for its turn
                    if space is None:
                        compiled, last = _compile(req.code, filename, req.interactive)
                        scope = _fresh_globals()
                    else:  # a cell of its own, its source kept while the namespace lives
                        filename = space.cell(req.node_id, req.code)
                        compiled, last = _compile_now(req.code, filename, req.interactive)
                        scope = space.globals
                    exec(compiled, scope)
                    if last is not None:  # interactive: the final expression's value is shown
                        value = eval(last, scope)
                        if value is not None:
                            display.show(ctx, value)
            finally:
                display.show_figures(ctx)  # also when the code failed
                if self.before_end is not None:
                    try:
                        self.before_end()
                    except BaseException:  # an interrupt landing here must not skip the rest
                        logger.exception("before_end of execution %s", ctx.execution_id)
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
        result = self._result(ctx, req.code, error, filename, cell=filename != base_filename)
        ctx.stdout.close()
        ctx.stderr.close()
        return result

    def _buffer(self, execution_id: str, stream: str, events: EventStream | None) -> CappedBuffer:
        """A stream's capture: mirrored into the spool (when there is one), and told to
        `events` (when streaming)."""
        directory, limit = self.spool_dir, self._max_stream_bytes
        spool = None
        if directory is not None:
            spool = functools.partial(SpoolFile, directory, execution_id, stream, limit)
        told = functools.partial(events.text, stream) if events is not None else None
        return CappedBuffer(limit, spool, told)

    def _space(self, req: ExecuteRequest) -> contextlib.AbstractContextManager[Namespace | None]:
        if req.namespace is None:
            return contextlib.nullcontext()
        return self.namespaces.entered(req.flow_id, req.namespace, _fresh_globals)

    def _result(
        self,
        ctx: ExecutionContext,
        code: str,
        error: BaseException | None,
        filename: str,
        *,
        cell: bool,
    ) -> ExecutionResult:
        elapsed_ms = (time.perf_counter() - ctx.started) * 1000
        message = kind = trace = None
        if error is not None:
            if ctx.cancel_reason is not None and isinstance(error, KeyboardInterrupt):
                message, kind = ctx.cancel_reason, ctx.cancel_kind
            elif isinstance(error, KeyboardInterrupt) and self._queries_cancelled > ctx.started:
                message, kind = QUERY_CANCELLED, ErrorKind.INTERRUPTED
            else:
                message = _format_error(error)
                kind = (
                    ErrorKind.SYNTAX
                    if isinstance(error, SyntaxError)
                    else ErrorKind.EXIT
                    if isinstance(error, SystemExit)
                    else ErrorKind.EXCEPTION
                )
            if cell:  # its namespace keeps its source in linecache already
                trace = _user_traceback(error, filename)
            else:  # linecache lets the traceback show the user's source lines
                linecache.cache[filename] = (
                    len(code),
                    None,
                    code.splitlines(keepends=True),
                    filename,
                )
                try:
                    trace = _user_traceback(error, filename)
                finally:
                    linecache.cache.pop(filename, None)
            logger.info(
                "execution %s (flow %s node %s) failed: %s",
                ctx.execution_id,
                ctx.flow_id,
                ctx.node_id,
                message,
            )
        limit = ctx.stdout.limit
        logs = list(ctx.logs)
        if ctx.logs_dropped:
            logs.append(
                LogRecord(
                    level="WARNING",
                    message=f"{ctx.logs_dropped} log records ({ctx.log_bytes_dropped} bytes) "
                    f"dropped beyond the {limit}-byte limit",
                    flow_id=ctx.flow_id,
                    node_id=ctx.node_id,
                    timestamp=datetime.now(UTC).isoformat(),
                )
            )
        return ExecutionResult(
            success=error is None,
            flow_id=ctx.flow_id,
            node_id=ctx.node_id,
            execution_id=ctx.execution_id,
            output_paths=list(ctx.output_paths),
            published_artifacts=list(ctx.published_artifacts),
            deleted_artifacts=list(ctx.deleted_artifacts),
            stdout=ctx.stdout.getvalue(),
            stderr=ctx.stderr.getvalue(),
            error=None if message is None else cap_text(message, limit),
            error_kind=kind,
            traceback=None if trace is None else cap_text(trace, limit),
            logs=logs,
            display_outputs=display.finished(ctx),
            execution_time_ms=round(elapsed_ms, 3),
        )

    def _cancel(self, ctx: ExecutionContext, kind: ErrorKind, reason: str) -> bool:
        """Raise KeyboardInterrupt inside a running execution, once."""
        with self._lock:
            if ctx.done or ctx.cancel_reason is not None:
                return False
            ctx.cancel_reason, ctx.cancel_kind = reason, kind
            _set_async_exc(ctx.thread_id, KeyboardInterrupt)
        if self.cancel_queries is not None:
            # Code inside a polars query hears no async exception until the query ends: if
            # the execution still runs a moment later, cancel the process's queries.
            timer = threading.Timer(QUERY_CANCEL_AFTER_S, self._cancel_queries, (ctx,))
            timer.daemon = True
            timer.start()
        logger.info(
            "execution %s (flow %s node %s): %s",
            ctx.execution_id,
            ctx.flow_id,
            ctx.node_id,
            reason,
        )
        return True

    def _cancel_queries(self, ctx: ExecutionContext) -> None:
        with self._lock:
            if ctx.done or self.cancel_queries is None:
                return
            self._queries_cancelled = time.perf_counter()
        logger.info(
            "cancelling the polars queries of this kernel for execution %s", ctx.execution_id
        )
        self.cancel_queries()

    def interrupt(
        self, req: InterruptRequest, reason: str = "Interrupted: execution interrupted on request"
    ) -> list[RunningExecution]:
        """Interrupt the running executions that match every field given."""
        with self._lock:
            matches = [
                c
                for c in self._running.values()
                if (req.flow_id is None or c.flow_id == req.flow_id)
                and (req.node_id is None or c.node_key == str(req.node_id))
                and (req.execution_id is None or c.execution_id == req.execution_id)
            ]
        return [c.describe() for c in matches if self._cancel(c, ErrorKind.INTERRUPTED, reason)]

    def sole_running(self) -> ExecutionContext | None:
        """The running execution, when exactly one runs."""
        with self._lock:
            if len(self._running) != 1:
                return None
            return next(iter(self._running.values()))

    def printed(self) -> list[tuple[str, str, str]]:
        """What each running execution printed so far: (execution_id, stdout, stderr)."""
        with self._lock:
            running = list(self._running.values())
        return [(c.execution_id, c.stdout.getvalue(), c.stderr.getvalue()) for c in running]

    def running(self) -> list[RunningExecution]:
        with self._lock:
            return [c.describe() for c in self._running.values()]
