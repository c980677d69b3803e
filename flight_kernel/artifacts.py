"""Artifacts: live Python objects of a flow, kept as they are, keyed by `(flow_id, name)`."""

from __future__ import annotations

import dataclasses
import threading
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from flight_kernel.errors import Conflict, NotFound
from flight_kernel.paths import ArtifactPath
from flight_kernel.serialization import estimate_size


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

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass
class Artifact:
    """An artifact: the object and who published it when."""

    flow_id: int
    name: str
    node_id: str | int | None
    obj: Any
    size_bytes: int
    created_at: str = field(default_factory=lambda: datetime.now(UTC).isoformat())

    @property
    def path(self) -> ArtifactPath:
        return ArtifactPath(self.flow_id, self.name)

    def record(self) -> ArtifactRecord:
        return ArtifactRecord(
            name=self.name,
            flow_id=self.flow_id,
            node_id=self.node_id,
            type_name=type(self.obj).__name__,
            module=type(self.obj).__module__,
            size_bytes=self.size_bytes,
            created_at=self.created_at,
            ticket=str(self.path),
        )


def same_node(a: str | int | None, b: str | int | None) -> bool:
    """Node ids compare by their string form; an artifact without a node matches none."""
    return a is not None and b is not None and str(a) == str(b)


class ArtifactStore:
    """Thread-safe map of artifacts; the lock is only held for dictionary operations."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._artifacts: dict[tuple[int, str], Artifact] = {}

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
        with self._lock:
            old = self._artifacts.get((flow_id, name))
            if old is not None and not replace and not same_node(old.node_id, node_id):
                raise Conflict(
                    f"artifact {name!r} in flow {flow_id} is already published by node "
                    f"{old.node_id!r}; delete it first or choose another name"
                )
            self._artifacts[(flow_id, name)] = art
        return art

    def _missing(self, flow_id: int, name: str) -> NotFound:
        known = sorted(n for f, n in self._artifacts if f == flow_id)
        return NotFound(
            f"no artifact {name!r} in flow {flow_id} (known: {', '.join(known) or 'none'})"
        )

    def get(self, flow_id: int, name: str) -> Artifact:
        with self._lock:
            art = self._artifacts.get((flow_id, name))
            if art is None:
                raise self._missing(flow_id, name)
        return art

    def delete(self, flow_id: int, name: str) -> Artifact:
        with self._lock:
            art = self._artifacts.pop((flow_id, name), None)
            if art is None:
                raise self._missing(flow_id, name)
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
                    removed.append(a)
        return removed

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
