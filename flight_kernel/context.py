"""The context of one execution, its ContextVar, and per-execution stdout/stderr capture.

`contextlib.redirect_stdout` swaps the process-global `sys.stdout`, so executions running
at the same time would mix their output. Instead `sys.stdout` and `sys.stderr` are replaced
once by routers that write into the buffers of whichever execution is current in the
calling thread, and to the real stream when none is.
"""

from __future__ import annotations

import contextvars
import io
import logging
import sys
import threading
import time
from collections.abc import Callable
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TextIO

from flight_kernel.results import ErrorKind, LogRecord
from flight_kernel.spool import SpoolFile, marker

if TYPE_CHECKING:
    from flight_kernel.artifacts import ArtifactStore
    from flight_kernel.events import EventStream
    from flight_kernel.inputs import InputReader
    from flight_kernel.store import Store


class CappedBuffer:
    """Text sink that keeps the first `limit` bytes and counts what it dropped; with `spool`,
    what it keeps is mirrored into a spool file (made on the first write) that outlives the
    kernel's death (`flight_kernel.spool`)."""

    def __init__(
        self,
        limit: int,
        spool: Callable[[], SpoolFile] | None = None,
        on_kept: Callable[[str], None] | None = None,
    ) -> None:
        self.limit = limit
        self._on_kept = on_kept  # told what is kept, in order (a streaming execution's events)
        self._limit = limit
        self._parts: list[str] = []
        self._size = 0
        self.dropped = 0
        self._lock = threading.Lock()
        self._spool = spool
        self._spooled: SpoolFile | None = None

    def write(self, text: str) -> int:
        data = None if text.isascii() and self._spool is None else text.encode("utf-8", "replace")
        n = len(text) if data is None else len(data)
        with self._lock:
            room = self._limit - self._size
            if n <= room:
                kept = text
                self._size += n
            else:
                kept = ""
                if room > 0:
                    kept = text.encode("utf-8", "replace")[:room].decode("utf-8", "ignore")
                    self._size = self._limit
                    n -= len(kept.encode("utf-8"))
                self.dropped += n
                data = None
            if kept:
                self._parts.append(kept)
                if self._on_kept is not None:
                    self._on_kept(kept)
            if self._spool is not None:
                if self._spooled is None:
                    self._spooled = self._spool()
                self._spooled.write(kept.encode("utf-8") if data is None else data, self.dropped)
        return len(text)

    def getvalue(self) -> str:
        with self._lock:
            text = "".join(self._parts)
            if self.dropped:
                text += marker(self.dropped, self._limit)
            return text

    def close(self) -> None:
        """The execution ended: its answer carries the text, the spool file goes."""
        with self._lock:
            if self._spooled is not None:
                self._spooled.close()
                self._spooled = None
            self._spool = None


@dataclass
class ExecutionContext:
    """Everything one execution of user code needs and produces."""

    execution_id: str
    flow_id: int
    node_id: str | int
    input_paths: dict[str, list[str]]
    output_dir: str
    store: Store
    artifacts: ArtifactStore
    reader: InputReader
    stdout: CappedBuffer
    stderr: CappedBuffer
    output_paths: list[str] = field(default_factory=list)
    published_artifacts: list[str] = field(default_factory=list)
    deleted_artifacts: list[str] = field(default_factory=list)
    logs: list[LogRecord] = field(default_factory=list)
    displays: list[dict[str, Any]] = field(default_factory=list)  # display_data bundles
    display_bytes: int = 0
    displays_dropped: int = 0
    unnamed_outputs: int = 0
    # names published or being published: one name is one output per execution (SPEC §5)
    output_names: set[str] = field(default_factory=set)
    output_lock: threading.Lock = field(default_factory=threading.Lock, repr=False)
    thread_id: int = field(default_factory=threading.get_ident)
    started: float = field(default_factory=time.perf_counter)
    log_bytes: int = 0
    logs_dropped: int = 0
    log_bytes_dropped: int = 0
    cancel_reason: str | None = None  # set once, by a timeout or an interrupt
    cancel_kind: ErrorKind | None = None
    done: bool = False
    events: EventStream | None = None  # a streaming execution's: what it prints, logs, shows

    @property
    def node_key(self) -> str:
        return str(self.node_id)

    def describe(self) -> RunningExecution:
        return RunningExecution(self.execution_id, self.flow_id, self.node_id)


@dataclass(frozen=True)
class RunningExecution:
    """An execution that is running (listed by `health`, answered by `interrupt`)."""

    execution_id: str
    flow_id: int
    node_id: str | int


current: ContextVar[ExecutionContext | None] = ContextVar("flowfile_execution", default=None)


class _StreamRouter(io.TextIOBase):
    """Stands in for sys.stdout/sys.stderr and writes to the current execution's buffer."""

    def __init__(self, which: str, fallback: TextIO) -> None:
        self._which = which
        self.fallback = fallback

    def _target(self) -> TextIO | CappedBuffer:
        ctx = current.get()
        if ctx is None or ctx.done:  # a thread that outlived its execution writes to the log
            return self.fallback
        return ctx.stdout if self._which == "stdout" else ctx.stderr

    def write(self, text: str) -> int:
        return self._target().write(text)

    def writable(self) -> bool:
        return True

    def flush(self) -> None:
        if current.get() is None:
            self.fallback.flush()

    def isatty(self) -> bool:
        return False

    @property
    def encoding(self) -> str:  # type: ignore[override]
        return "utf-8"

    def fileno(self) -> int:
        return self.fallback.fileno()


_KERNEL_LOGGERS = ("flowfile", "flight_kernel", "control")  # logged by the kernel itself


class _ExecutionLogHandler(logging.Handler):
    """On the root logger: a record that user code logs goes to its execution's stderr."""

    def __init__(self) -> None:
        super().__init__()
        self.setFormatter(logging.Formatter("%(levelname)s:%(name)s:%(message)s"))

    def emit(self, record: logging.LogRecord) -> None:
        ctx = current.get()
        if ctx is None or ctx.done or record.name.startswith(_KERNEL_LOGGERS):
            return
        try:
            ctx.stderr.write(self.format(record) + "\n")
        except Exception:
            self.handleError(record)


def _start_in_execution(start: Callable[[threading.Thread], None]) -> Callable[..., None]:
    """`Thread.start`, so that a thread started during an execution belongs to it (Jupyter's
    thread-parent rule): its prints, logging and `flowfile` calls go to that execution."""

    def start_thread(self: threading.Thread) -> None:
        ctx = current.get()
        if ctx is not None and not ctx.done:
            run, context = self.run, contextvars.copy_context()
            self.run = lambda: context.run(run)  # type: ignore[method-assign]
        start(self)

    start_thread.__wrapped__ = start  # type: ignore[attr-defined]
    return start_thread


def install_capture() -> None:
    """Route sys.stdout/sys.stderr, logging and new threads through the current execution
    (idempotent, cheap)."""
    if not isinstance(sys.stdout, _StreamRouter):
        sys.stdout = _StreamRouter("stdout", sys.stdout)
    if not isinstance(sys.stderr, _StreamRouter):
        sys.stderr = _StreamRouter("stderr", sys.stderr)
    root = logging.getLogger()
    if not any(isinstance(h, _ExecutionLogHandler) for h in root.handlers):
        root.addHandler(_ExecutionLogHandler())
    if not hasattr(threading.Thread.start, "__wrapped__"):
        threading.Thread.start = _start_in_execution(threading.Thread.start)  # type: ignore[method-assign]


def cap_text(text: str, limit: int) -> str:
    """`text` cut to `limit` bytes of UTF-8, with a marker saying what was dropped."""
    data = text.encode("utf-8", "replace")
    if len(data) <= limit:
        return text
    kept = data[:limit].decode("utf-8", "ignore")
    dropped = len(data) - len(kept.encode("utf-8"))
    return f"{kept}\n[truncated: {dropped} bytes dropped beyond the {limit}-byte limit]\n"


def require_context() -> ExecutionContext:
    ctx = current.get()
    if ctx is None:
        raise RuntimeError("flowfile functions only work inside code run by the kernel")
    if ctx.done:
        raise RuntimeError(
            f"the execution this thread belongs to (node {ctx.node_id!r}) has ended; flowfile "
            "works in threads only while their execution runs"
        )
    return ctx
