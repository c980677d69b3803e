"""Where tables and outputs live: the `TableStore` protocol and its in-memory backend.

`put` takes a record-batch reader, so a backend can stream an upload into a file as its
batches arrive; `get` gives a `StoredTable`, which serves both clients and polars.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Protocol

import pyarrow as pa

from flight_kernel.errors import NotFound
from flight_kernel.paths import OutputPath, TablePath
from flight_kernel.tables import StoredTable

StoredPath = TablePath | OutputPath


@dataclass(frozen=True)
class TableInfo:
    """What listings say about a stored table, without reading it."""

    schema: pa.Schema
    num_rows: int
    nbytes: int


class TableStore(Protocol):
    """Tables uploaded by clients (`tables/…`) and outputs published by code (`outputs/…`)."""

    def put(self, path: StoredPath, reader: pa.RecordBatchReader) -> TableInfo:
        """Store (or replace) the table at `path` from a stream of batches."""
        ...

    def get(self, path: StoredPath) -> StoredTable:
        """The table at `path`; `NotFound` names what exists beside it."""
        ...

    def list(self, prefix: str = "") -> list[StoredPath]:
        """Every path held whose string form starts with `prefix`."""
        ...

    def delete(self, path: StoredPath) -> None:
        """Remove the table at `path`; `NotFound` when there is none."""
        ...


def info_of(table: StoredTable) -> TableInfo:
    return TableInfo(table.schema, table.num_rows, table.nbytes)


class MemoryTableStore:
    """Tables held as Arrow batches in this process (one lock, held for dict operations)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._tables: dict[StoredPath, StoredTable] = {}

    def put(self, path: StoredPath, reader: pa.RecordBatchReader) -> TableInfo:
        table = reader.read_all()
        entry = (
            StoredTable.upload(table) if isinstance(path, TablePath) else StoredTable.output(table)
        )
        with self._lock:
            self._tables[path] = entry
        return info_of(entry)

    def get(self, path: StoredPath) -> StoredTable:
        with self._lock:
            found = self._tables.get(path)
            if found is None:
                raise NotFound(f"nothing stored at {path} ({self._neighbours(path)})")
        return found

    def _neighbours(self, path: StoredPath) -> str:
        """What exists beside a missing path, for the error message (lock held)."""
        if isinstance(path, TablePath):
            names = sorted(p.name for p in self._tables if isinstance(p, TablePath))
            what = "tables"
        else:
            names = sorted(
                str(p)
                for p in self._tables
                if isinstance(p, OutputPath)
                and (p.flow_id, p.node_id) == (path.flow_id, path.node_id)
            )
            what = f"outputs of node {path.node_id!r} in flow {path.flow_id}"
        shown = ", ".join(names[:20]) + (", ..." if len(names) > 20 else "")
        return f"{what}: {shown or 'none'}"

    def list(self, prefix: str = "") -> list[StoredPath]:
        with self._lock:
            return [p for p in self._tables if str(p).startswith(prefix)]

    def delete(self, path: StoredPath) -> None:
        with self._lock:
            if self._tables.pop(path, None) is None:
                raise NotFound(f"nothing stored at {path}")
