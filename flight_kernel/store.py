"""Everything the kernel holds: uploaded tables, published outputs and artifacts.

Tables and outputs are Arrow record batches (see `tables.StoredTable`); artifacts are
Python objects kept as they are. One lock guards all three maps; it is
only ever held for dictionary operations, never while user code or I/O runs.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import pyarrow as pa

from flight_kernel.errors import Conflict, NotFound
from flight_kernel.paths import ArtifactPath, FlightPath, OutputPath, TablePath
from flight_kernel.serialization import estimate_size
from flight_kernel.tables import MAX_BATCH_ROWS, StoredTable

__all__ = ["MAX_BATCH_ROWS", "Store", "StoredTable"]


@dataclass
class Artifact:
    """An artifact and what the listings say about it."""

    flow_id: int
    name: str
    node_id: str | int | None
    obj: Any
    size_bytes: int
    created_at: str = field(default_factory=lambda: datetime.now(UTC).isoformat())

    @property
    def path(self) -> ArtifactPath:
        return ArtifactPath(self.flow_id, self.name)

    def record(self) -> dict[str, Any]:
        """The JSON record of the artifact listings."""
        return {
            "name": self.name,
            "flow_id": self.flow_id,
            "node_id": self.node_id,
            "type_name": type(self.obj).__name__,
            "module": type(self.obj).__module__,
            "size_bytes": self.size_bytes,
            "created_at": self.created_at,
            "ticket": str(self.path),
        }


def _same_node(a: str | int | None, b: str | int | None) -> bool:
    return a is not None and b is not None and str(a) == str(b)


class Store:
    """Thread-safe store of tables, outputs and artifacts."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._tables: dict[TablePath, StoredTable] = {}
        self._outputs: dict[OutputPath, StoredTable] = {}
        self._artifacts: dict[tuple[int, str], Artifact] = {}

    # -- tables and outputs -------------------------------------------------------------

    def put_table(self, path: TablePath, table: pa.Table) -> StoredTable:
        """Store (or replace) a table a client uploaded."""
        entry = StoredTable.upload(table)
        with self._lock:
            self._tables[path] = entry
        return entry

    def put_output(self, path: OutputPath, table: pa.Table) -> StoredTable:
        """Store (or replace) an output published by user code."""
        entry = StoredTable.output(table)
        with self._lock:
            self._outputs[path] = entry
        return entry

    def get_table(self, path: TablePath | OutputPath) -> StoredTable:
        with self._lock:
            found = (
                self._tables.get(path) if isinstance(path, TablePath) else self._outputs.get(path)
            )
            if found is None:
                raise NotFound(f"nothing stored at {path} ({self._neighbours(path)})")
        return found

    def _neighbours(self, path: TablePath | OutputPath) -> str:
        """What exists beside a missing path, for the error message (lock held)."""
        if isinstance(path, TablePath):
            names = sorted(p.name for p in self._tables)
            what = "tables"
        else:
            names = sorted(
                str(p)
                for p in self._outputs
                if (p.flow_id, p.node_id) == (path.flow_id, path.node_id)
            )
            what = f"outputs of node {path.node_id!r} in flow {path.flow_id}"
        shown = ", ".join(names[:20]) + (", ..." if len(names) > 20 else "")
        return f"{what}: {shown or 'none'}"

    def clear_node_outputs(self, flow_id: int, node_id: str) -> list[OutputPath]:
        """Drop the outputs a node published (its re-execution replaces them)."""
        with self._lock:
            gone = [p for p in self._outputs if p.flow_id == flow_id and p.node_id == node_id]
            for p in gone:
                del self._outputs[p]
        return gone

    # -- artifacts ------------------------------------------------------------------------

    def publish_artifact(
        self, flow_id: int, node_id: str | int | None, name: str, obj: Any, *, replace: bool = False
    ) -> Artifact:
        """Store an object; another node's artifact of that name is refused unless `replace`."""
        art = Artifact(flow_id, name, node_id, obj, estimate_size(obj))
        with self._lock:
            old = self._artifacts.get((flow_id, name))
            if old is not None and not replace and not _same_node(old.node_id, node_id):
                raise Conflict(
                    f"artifact {name!r} in flow {flow_id} is already published by node "
                    f"{old.node_id!r}; delete it first or choose another name"
                )
            self._artifacts[(flow_id, name)] = art
        return art

    def get_artifact(self, flow_id: int, name: str) -> Artifact:
        with self._lock:
            art = self._artifacts.get((flow_id, name))
            if art is None:
                known = sorted(n for f, n in self._artifacts if f == flow_id)
                raise NotFound(
                    f"no artifact {name!r} in flow {flow_id} (known: {', '.join(known) or 'none'})"
                )
        return art

    def delete_artifact(self, flow_id: int, name: str) -> Artifact:
        with self._lock:
            art = self._artifacts.pop((flow_id, name), None)
            if art is None:
                known = sorted(n for f, n in self._artifacts if f == flow_id)
                raise NotFound(
                    f"no artifact {name!r} in flow {flow_id} (known: {', '.join(known) or 'none'})"
                )
        return art

    def list_artifacts(
        self, flow_id: int | None = None, node_id: str | int | None = None
    ) -> list[Artifact]:
        with self._lock:
            arts = list(self._artifacts.values())
        return [
            a
            for a in arts
            if (flow_id is None or a.flow_id == flow_id)
            and (node_id is None or _same_node(a.node_id, node_id))
        ]

    def clear_node_artifacts(
        self, node_ids: list[str | int], flow_id: int | None = None
    ) -> list[Artifact]:
        """Drop the artifacts the given nodes published (in one flow, or in all)."""
        wanted = {str(n) for n in node_ids}
        with self._lock:
            gone = [
                a
                for a in self._artifacts.values()
                if str(a.node_id) in wanted
                and a.node_id is not None
                and (flow_id is None or a.flow_id == flow_id)
            ]
            for a in gone:
                del self._artifacts[(a.flow_id, a.name)]
        return gone

    # -- whole store ----------------------------------------------------------------------

    def delete(self, path: FlightPath) -> None:
        """Remove whatever is stored at a path."""
        if isinstance(path, ArtifactPath):
            self.delete_artifact(path.flow_id, path.name)
            return
        with self._lock:
            found = (
                self._tables.pop(path, None)
                if isinstance(path, TablePath)
                else self._outputs.pop(path, None)
            )
        if found is None:
            raise NotFound(f"nothing stored at {path}")

    def clear(self, flow_id: int | None = None) -> dict[str, list[Any]]:
        """Drop everything, or one flow's artifacts and outputs; report what went."""
        with self._lock:
            arts = [a for a in self._artifacts.values() if flow_id in (None, a.flow_id)]
            outs = [p for p in self._outputs if flow_id in (None, p.flow_id)]
            tables = list(self._tables) if flow_id is None else []
            for a in arts:
                del self._artifacts[(a.flow_id, a.name)]
            for p in outs:
                del self._outputs[p]
            for t in tables:
                del self._tables[t]
        return {
            "removed": [a.name for a in arts],
            "removed_artifacts": [{"flow_id": a.flow_id, "name": a.name} for a in arts],
            "removed_outputs": [str(p) for p in outs],
            "removed_tables": [t.name for t in tables],
        }

    def paths(self, prefix: str = "") -> list[FlightPath]:
        """Every path held, optionally only those starting with `prefix`."""
        with self._lock:
            every: list[FlightPath] = [*self._tables, *self._outputs]
            every += [a.path for a in self._artifacts.values()]
        return [p for p in every if str(p).startswith(prefix)]

    def counts(self) -> dict[str, int]:
        with self._lock:
            return {
                "artifact_count": len(self._artifacts),
                "table_count": len(self._tables),
                "output_count": len(self._outputs),
            }
