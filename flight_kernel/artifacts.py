"""Artifacts: live Python objects of a flow, kept as they are, keyed by `(flow_id, name)`,
and persisted into the store behind the execute path.

Publishing keeps the object and marks it pending in the store (a small file: should the
kernel die before the object is persisted, the service reports it lost); a background writer
then persists it (`Store.persist`) and renames it into place only if it is still the
artifact of that name. After a restart the persisted ones are known again by their records
and loaded on their first read.
"""

from __future__ import annotations

import dataclasses
import logging
import queue
import threading
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from flight_kernel.errors import Conflict, NotFound, StoreFull
from flight_kernel.paths import ArtifactPath
from flight_kernel.serialization import estimate_size
from flight_kernel.store import PersistedArtifact, Store

logger = logging.getLogger(__name__)

_UNLOADED = object()  # the object of a persisted artifact not read since a restart


@dataclass(frozen=True)
class ArtifactRecord:
    """One artifact as the listings show it."""

    name: str
    flow_id: int
    node_id: str | int | None
    type_name: str
    module: str
    size_bytes: int
    created_at: str
    ticket: str
    persisted: bool

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass(eq=False)
class Artifact:
    """An artifact: the object and who published it when."""

    flow_id: int
    name: str
    node_id: str | int | None
    obj: Any
    size_bytes: int
    created_at: str = field(default_factory=lambda: datetime.now(UTC).isoformat())
    type_name: str = ""
    module: str = ""
    persisted: bool = False
    file: PersistedArtifact | None = None  # where to load it from, until it is loaded

    def __post_init__(self) -> None:
        if self.obj is not _UNLOADED:
            self.type_name = type(self.obj).__name__
            self.module = type(self.obj).__module__

    @property
    def path(self) -> ArtifactPath:
        return ArtifactPath(self.flow_id, self.name)

    def record(self) -> ArtifactRecord:
        return ArtifactRecord(
            name=self.name,
            flow_id=self.flow_id,
            node_id=self.node_id,
            type_name=self.type_name,
            module=self.module,
            size_bytes=self.size_bytes,
            created_at=self.created_at,
            ticket=str(self.path),
            persisted=self.persisted,
        )

    def stored_record(self) -> dict[str, Any]:
        """What its file in the store keeps of it."""
        record = self.record().to_json()
        for key in ("name", "flow_id", "ticket", "persisted"):
            del record[key]
        return record


def same_node(a: str | int | None, b: str | int | None) -> bool:
    """Node ids compare by their string form; an artifact without a node matches none."""
    return a is not None and b is not None and str(a) == str(b)


class ArtifactStore:
    """Thread-safe map of artifacts; the lock is only held for dictionary operations and for
    the renames and removals of their files, so that a file always matches its record."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self._lock = threading.Lock()
        self._artifacts: dict[tuple[int, str], Artifact] = {}
        self._queue: queue.SimpleQueue[Artifact] = queue.SimpleQueue()
        self._idle = threading.Condition(self._lock)
        self._queued = 0
        self._writer: threading.Thread | None = None
        self._loading = threading.Lock()

    # -- persistence -----------------------------------------------------------------------

    def recover(self, flow_id: int | None = None) -> list[Artifact]:
        """Know again the artifacts persisted in the store (of one flow, or all); each is
        loaded on its first read."""
        found = []
        for persisted in self.store.artifacts(flow_id):
            rec = persisted.record
            art = Artifact(
                persisted.path.flow_id,
                persisted.path.name,
                rec.get("node_id"),
                _UNLOADED,
                int(rec.get("size_bytes", 0)),
                created_at=rec.get("created_at", ""),
                type_name=rec.get("type_name", ""),
                module=rec.get("module", ""),
                persisted=True,
                file=persisted,
            )
            with self._lock:
                self._artifacts.setdefault((art.flow_id, art.name), art)
            found.append(art)
        return found

    def _persist_later(self, art: Artifact) -> None:
        with self._lock:
            self._queued += 1
            if self._writer is None:
                self._writer = threading.Thread(
                    target=self._write_behind, name="artifact-writer", daemon=True
                )
                self._writer.start()
        self._queue.put(art)

    def _write_behind(self) -> None:
        while True:
            art = self._queue.get()
            try:
                if self._current(art):
                    self._persist(art)
            except Exception as exc:  # unpicklable, or no room: it stays live-only
                logger.warning(
                    "artifact %s stays in memory only, not persisted: %s: %s",
                    art.path,
                    type(exc).__name__,
                    exc,
                )
            finally:
                with self._lock:
                    self._queued -= 1
                    self._idle.notify_all()

    def _current(self, art: Artifact) -> bool:
        """Whether `art` is still the artifact of its name (lock not held)."""
        with self._lock:
            return self._artifacts.get((art.flow_id, art.name)) is art

    def _persist(self, art: Artifact) -> None:
        def commit(rename: Any) -> bool:
            with self._lock:
                if self._artifacts.get((art.flow_id, art.name)) is not art:
                    return False  # deleted or replaced while it was written
                rename()
                art.persisted = True
                return True

        self.store.persist(art.path, art.obj, art.stored_record(), commit)

    def flush(self, timeout: float | None = None) -> bool:
        """Wait until every published artifact was persisted (or found unpersistable)."""
        with self._lock:
            return self._idle.wait_for(lambda: self._queued == 0, timeout)

    def _load(self, art: Artifact) -> Any:
        """The object of an artifact, loading it from the store on its first read."""
        with self._loading:  # one load at a time; the others then find it loaded
            if art.obj is _UNLOADED:
                assert art.file is not None
                art.obj = self.store.load_artifact(art.file)
                art.file = None
        return art.obj

    # -- the map ---------------------------------------------------------------------------

    def publish(
        self,
        flow_id: int,
        node_id: str | int | None,
        name: str,
        obj: Any,
        *,
        replace: bool = False,
    ) -> Artifact:
        """Keep an object; another node's artifact of that name is refused unless `replace`."""
        art = Artifact(flow_id, name, node_id, obj, estimate_size(obj))
        left = self.store.space_left()
        if art.size_bytes > left:  # it could never be persisted: say so now
            raise StoreFull(
                f"the store {self.store.directory} is full: artifact {name!r} "
                f"({art.size_bytes} bytes) does not fit in the {max(left, 0)} bytes left"
            )
        with self._lock:
            old = self._artifacts.get((flow_id, name))
            if old is not None and not replace and not same_node(old.node_id, node_id):
                raise Conflict(
                    f"artifact {name!r} in flow {flow_id} is already published by node "
                    f"{old.node_id!r}; delete it first or choose another name"
                )
            self._artifacts[(flow_id, name)] = art
            self.store.mark_pending(art.path)  # under the lock: ordered with drop_artifact
        self._persist_later(art)
        return art

    def _missing(self, flow_id: int, name: str) -> NotFound:
        known = sorted(n for f, n in self._artifacts if f == flow_id)
        return NotFound(
            f"no artifact {name!r} in flow {flow_id} (known: {', '.join(known) or 'none'})"
        )

    def get(self, flow_id: int, name: str) -> Artifact:
        """The artifact, its object loaded (from the store, after a restart)."""
        with self._lock:
            art = self._artifacts.get((flow_id, name))
            if art is None:
                raise self._missing(flow_id, name)
        if art.obj is _UNLOADED:
            self._load(art)
        return art

    def delete(self, flow_id: int, name: str) -> Artifact:
        with self._lock:
            art = self._artifacts.pop((flow_id, name), None)
            if art is None:
                raise self._missing(flow_id, name)
            self.store.drop_artifact(art.path)
        return art

    def find(self, flow_id: int | None = None, node_id: str | int | None = None) -> list[Artifact]:
        with self._lock:
            arts = list(self._artifacts.values())
        return [
            a
            for a in arts
            if (flow_id is None or a.flow_id == flow_id)
            and (node_id is None or same_node(a.node_id, node_id))
        ]

    def remove(self, gone: list[Artifact]) -> list[Artifact]:
        """Drop the given artifacts (those still there); return the ones dropped."""
        removed = []
        with self._lock:
            for a in gone:
                if self._artifacts.get((a.flow_id, a.name)) is a:
                    del self._artifacts[(a.flow_id, a.name)]
                    self.store.drop_artifact(a.path)
                    removed.append(a)
        return removed

    def forget(self, art: Artifact) -> None:
        """Drop an artifact from this map only; its files stay (another kernel holds it)."""
        with self._lock:
            if self._artifacts.get((art.flow_id, art.name)) is art:
                del self._artifacts[(art.flow_id, art.name)]

    def clear_nodes(self, node_ids: list[str | int], flow_id: int | None = None) -> list[Artifact]:
        """Drop the artifacts the given nodes published (in one flow, or in all)."""
        wanted = {str(n) for n in node_ids}
        return self.remove(
            [a for a in self.find(flow_id) if a.node_id is not None and str(a.node_id) in wanted]
        )

    def clear(self, flow_id: int | None = None) -> list[Artifact]:
        """Drop every artifact, or one flow's."""
        return self.remove(self.find(flow_id))

    def count(self) -> int:
        with self._lock:
            return len(self._artifacts)
