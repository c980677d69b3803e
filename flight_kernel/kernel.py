"""`Kernel`: the rules of one kernel over the store, its artifacts and its executor, free
of any transport.

It decides what a re-execution clears, who may write which path and what a listing
says; it returns dataclasses, and the Flight server and actions only shape them. Tables
and outputs live in the store, shared with the service and every other kernel; artifacts
live here and are persisted into the store behind the execute path.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
import time
from collections import OrderedDict
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa

from flight_kernel import __version__
from flight_kernel.artifacts import ArtifactRecord, ArtifactStore
from flight_kernel.context import RunningExecution
from flight_kernel.errors import InvalidRequest, NotFound
from flight_kernel.events import EventStream
from flight_kernel.executor import Executor
from flight_kernel.inputs import InputReader
from flight_kernel.paths import ArtifactPath, FlightPath, OutputPath, TablePath
from flight_kernel.requests import ExecuteRequest, InterruptRequest
from flight_kernel.results import ExecutionResult
from flight_kernel.serialization import (
    describe_table,
    from_arrow,
    is_table_like,
    pickle_schema,
    to_arrow,
)
from flight_kernel.settings import Settings
from flight_kernel.store import Store, StoredPath, TableInfo
from flight_kernel.tables import bounded

logger = logging.getLogger(__name__)

# A kernel asked to restart over its own Flight port exits with this code; its supervisor
# reports it as restarted on request and starts the next one.
RESTART_EXIT_CODE = 75
MAX_DISPLAYED_NODES = 1000  # nodes whose last display outputs a kernel keeps


def check_uploadable(path: FlightPath) -> None:
    """Clients upload tables and artifacts; outputs are written by executions only."""
    if isinstance(path, OutputPath):
        raise InvalidRequest(
            f"{path} is written by executions only; upload inputs "
            "to tables/<name> or artifacts/<flow_id>/<name>"
        )


@dataclass(frozen=True)
class Cleared:
    """What a clear removed."""

    artifacts: tuple[tuple[int, str], ...] = ()  # (flow_id, name)
    outputs: tuple[str, ...] = ()
    tables: tuple[str, ...] = ()
    namespaces: tuple[tuple[int, str], ...] = ()  # (flow_id, name)


@dataclass(frozen=True)
class KernelHealth:
    """What the kernel says of itself."""

    kernel_id: str
    kernel_pid: int
    artifact_count: int
    namespace_count: int
    running: tuple[RunningExecution, ...]
    uptime_s: float
    flight_location: str
    flow_id: int | None = None
    version: str = __version__
    status: str = "healthy"


@dataclass(frozen=True)
class FlightEntry:
    """One listed Flight: its path and what `get_flight_info` reports."""

    path: FlightPath
    info: TableInfo


@dataclass
class Kernel:
    """One kernel: tables, outputs and artifacts, and the code that runs over them."""

    settings: Settings = field(default_factory=Settings)
    store: Store = None  # type: ignore[assignment]  # default: `Store.attach(settings)`
    kernel_id: str = ""
    location: str = ""  # where its Flight server listens, once it does
    # The flow it serves (`flow` isolation); None: every flow (`shared`, and tests). A spare
    # serves none until it adopts one.
    flow_id: int | None = None
    spare: bool = False

    def __post_init__(self) -> None:
        if self.store is None:
            self.store = Store.attach(self.settings)
        self.artifacts = ArtifactStore(self.store)
        if not self.spare:  # what an earlier kernel persisted is known again
            self.artifacts.recover(self.flow_id)
        reader = InputReader(self.store, self.artifacts, self.settings.auth_token)
        self.executor = Executor(
            self.store,
            self.artifacts,
            reader,
            max_stream_bytes=self.settings.max_stream_bytes,
            default_timeout_s=self.settings.exec_timeout_s,
            max_namespaces=self.settings.max_namespaces,
        )
        self._started = time.monotonic()
        # Each node's last display outputs (GET /display_outputs), the most recent nodes kept.
        self._displays_lock = threading.Lock()
        self._displays: OrderedDict[tuple[int, str], list[dict[str, Any]]] = OrderedDict()

    # -- executions ------------------------------------------------------------------------

    def adopt(self, flow_id: int) -> None:
        """A spare becomes the kernel of `flow_id`: that flow's persisted artifacts are known."""
        if self.flow_id == flow_id and not self.spare:  # restarted serving it already
            return
        if not self.spare:
            raise InvalidRequest(f"this kernel serves {self._serves()} already")
        self.flow_id, self.spare = flow_id, False
        self.artifacts.recover(flow_id)

    def _serves(self) -> str:
        if self.spare:
            return "no flow yet (a spare)"
        return "every flow" if self.flow_id is None else f"flow {self.flow_id}"

    def execute(self, req: ExecuteRequest, events: EventStream | None = None) -> ExecutionResult:
        """Run code; a node's re-execution first drops what it published before. With
        `events`, what the code prints, logs and displays is put there as it happens."""
        if self.spare or self.flow_id not in (None, req.flow_id):  # the router's mistake
            raise InvalidRequest(
                f"flow {req.flow_id} sent to a kernel that serves {self._serves()}"
            )
        self.artifacts.clear_nodes([req.node_id], req.flow_id)
        for path in self.store.paths(f"outputs/{req.flow_id}/{req.node_id}/"):
            self._delete_quietly(path)
        result = self.executor.run(req, events)
        key = (req.flow_id, str(req.node_id))
        with self._displays_lock:
            self._displays[key] = result.display_outputs
            self._displays.move_to_end(key)
            while len(self._displays) > MAX_DISPLAYED_NODES:
                self._displays.popitem(last=False)
        return result

    def display_outputs(self, flow_id: int, node_id: str | int) -> list[dict[str, Any]]:
        """The display outputs of a node's last execution (`[]` if none)."""
        with self._displays_lock:
            return list(self._displays.get((flow_id, str(node_id)), []))

    def clear_namespace(self, flow_id: int, name: str | None = None) -> Cleared:
        """Drop one namespace of a flow, or all of the flow's."""
        return Cleared(namespaces=tuple(self.executor.namespaces.drop(flow_id, name)))

    def interrupt(self, req: InterruptRequest) -> list[RunningExecution]:
        return self.executor.interrupt(req)

    def exit_for_restart(self) -> None:
        """End this process just after the answer is sent; the supervisor starts a new one."""
        timer = threading.Timer(0.1, os._exit, (RESTART_EXIT_CODE,))
        timer.daemon = True
        timer.start()

    def health(self) -> KernelHealth:
        return KernelHealth(
            kernel_id=self.kernel_id,
            kernel_pid=os.getpid(),
            artifact_count=self.artifacts.count(),
            namespace_count=len(self.executor.namespaces.names()),
            running=tuple(self.executor.running()),
            uptime_s=round(time.monotonic() - self._started, 3),
            flight_location=self.location,
            flow_id=self.flow_id,
        )

    # -- artifacts and clearing ------------------------------------------------------------

    def list_artifacts(
        self, flow_id: int | None = None, node_id: str | int | None = None
    ) -> list[ArtifactRecord]:
        return [a.record() for a in self.artifacts.find(flow_id, node_id)]

    def clear(self, flow_id: int | None = None) -> Cleared:
        """Drop everything, or one flow's artifacts, outputs, namespaces and display outputs."""
        namespaces = self.executor.namespaces.drop(flow_id)
        with self._displays_lock:
            for key in [k for k in self._displays if flow_id is None or k[0] == flow_id]:
                del self._displays[key]
        arts = self.artifacts.clear(flow_id)
        outputs = self.store.paths("outputs/" if flow_id is None else f"outputs/{flow_id}/")
        tables = self.store.paths("tables/") if flow_id is None else []
        for path in [*outputs, *tables]:
            self._delete_quietly(path)
        return Cleared(
            artifacts=tuple((a.flow_id, a.name) for a in arts),
            outputs=tuple(str(p) for p in outputs),
            tables=tuple(p.name for p in tables if isinstance(p, TablePath)),
            namespaces=tuple(namespaces),
        )

    def clear_node_artifacts(self, node_ids: list[str | int], flow_id: int | None) -> Cleared:
        gone = self.artifacts.clear_nodes(node_ids, flow_id)
        return Cleared(artifacts=tuple((a.flow_id, a.name) for a in gone))

    def _delete_quietly(self, path: StoredPath) -> None:
        with contextlib.suppress(NotFound):  # deleted meanwhile
            self.store.delete(path)

    # -- the data plane --------------------------------------------------------------------

    def put(self, path: FlightPath, reader: pa.RecordBatchReader) -> None:
        """Store an uploaded stream: a table, or an artifact (restored from its form)."""
        check_uploadable(path)
        if isinstance(path, TablePath):
            self.store.put(path, reader)
        else:
            obj = from_arrow(reader.read_all())
            self.artifacts.publish(path.flow_id, None, path.name, obj, replace=True)

    def _artifact(self, path: ArtifactPath) -> object:
        try:
            return self.artifacts.get(path.flow_id, path.name).obj
        except NotFound as exc:  # Flight clients address by path: name it
            raise NotFound(f"nothing stored at {path}: {exc.message}") from None

    def table(self, path: FlightPath) -> pa.Table:
        """What `do_get` streams: the table at a path, or an artifact in its Arrow form."""
        if isinstance(path, ArtifactPath):
            return bounded(to_arrow(self._artifact(path), str(path)))
        return self.store.get(path)

    def info(self, path: FlightPath) -> TableInfo:
        """Schema, rows and bytes at a path, without evaluating anything."""
        if isinstance(path, ArtifactPath):
            obj = self._artifact(path)
            if not is_table_like(obj):  # not serialized until someone asks for it
                return TableInfo(pickle_schema(obj), 1, -1)
            try:
                return TableInfo(*describe_table(obj))
            except Exception as exc:
                raise InvalidRequest(
                    f"the schema of artifact {path} cannot be had: {type(exc).__name__}: {exc}"
                ) from None
        return self.store.info(path)

    def entries(self, prefix: str = "") -> Iterator[FlightEntry]:
        """Every Flight whose path starts with `prefix`; one that fails is logged and left out."""
        paths: list[FlightPath] = [*self.store.paths(prefix)]
        paths += [a.path for a in self.artifacts.find() if str(a.path).startswith(prefix)]
        for path in paths:
            try:
                yield FlightEntry(path, self.info(path))
            except NotFound:  # deleted meanwhile
                continue
            except Exception as exc:
                logger.warning("list_flights leaves out %s: %s", path, exc)

    def delete(self, path: FlightPath) -> None:
        """Remove whatever is stored at a path."""
        if isinstance(path, ArtifactPath):
            self.artifacts.delete(path.flow_id, path.name)
        else:
            self.store.delete(path)
