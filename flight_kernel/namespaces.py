"""Named namespaces (SPEC §10): the variables a flow's executions share, as notebook cells do.

An execution that names a namespace runs in that namespace's globals, so what an earlier
execution of the same flow defined there (variables, imports, functions) is there for it.
Executions of one namespace run one at a time: the second waits for the first. Each
execution is a *cell* with a file name of its own whose source stays in `linecache` while
the namespace lives, so a traceback through a function an earlier cell defined shows that
cell's lines. A kernel keeps at most `limit` namespaces; beyond it the least recently used
idle one is dropped.

A kernel that dies takes its namespaces with it. So that its supervisor can say so
(`lost_state: ["namespace"]`), each namespace is marked by a small file in a directory the
supervisor reads after the death (the kernel's spool directory); `marked` lists them.
"""

from __future__ import annotations

import contextlib
import hashlib
import linecache
import os
import threading
from collections import OrderedDict, deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

MAX_CELL_SOURCES = 1000  # cells of one namespace whose source tracebacks can still show
_WAIT_STEP_S = 0.05  # a waiting execution checks for its interrupt this often
_MARKER = "namespace-"

Key = tuple[int, str]  # (flow_id, name)


def _marker_path(directory: str, key: Key) -> str:
    digest = hashlib.sha256(key[1].encode()).hexdigest()[:32]
    return os.path.join(directory, f"{_MARKER}{key[0]}-{digest}")


def marked(directory: str) -> list[Key]:
    """The namespaces whose markers are in `directory`: (flow_id, name), as a supervisor reads
    them after the kernel's death."""
    found = []
    try:
        names = os.listdir(directory)
    except OSError:
        return []
    for entry in names:
        if not entry.startswith(_MARKER):
            continue
        try:
            with open(os.path.join(directory, entry), encoding="utf-8") as f:
                name = f.read()
            found.append((int(entry[len(_MARKER) :].split("-", 1)[0]), name))
        except (OSError, ValueError):  # half-written by a kernel that died creating it
            continue
    return sorted(found)


@dataclass(eq=False)
class Namespace:
    """One namespace: its globals, the lock its executions take turns on, its cells."""

    key: Key
    globals: dict[str, Any]
    lock: threading.Lock = field(default_factory=threading.Lock)
    users: int = 0  # executions in it or waiting for it (guarded by the registry's lock)
    cells: int = 0
    _sources: deque[str] = field(default_factory=deque)

    def cell(self, node_id: str | int, code: str) -> str:
        """A new cell's file name, its source kept for tracebacks (the lock is held)."""
        self.cells += 1
        filename = f"<node {node_id}, cell {self.cells}>".replace("\x00", "\\x00")
        lines = code.splitlines(keepends=True)
        # mtime None: `linecache.checkcache` leaves the entry alone
        linecache.cache[filename] = (len(code), None, lines, filename)
        self._sources.append(filename)
        while len(self._sources) > MAX_CELL_SOURCES:
            linecache.cache.pop(self._sources.popleft(), None)
        return filename

    def forget_sources(self) -> None:
        while self._sources:
            linecache.cache.pop(self._sources.popleft(), None)


class Namespaces:
    """A kernel's named namespaces, the most recently used `limit` kept."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        # Where each namespace is marked for the supervisor; None: nobody reads markers.
        self.marker_dir: str | None = None
        self._lock = threading.Lock()
        self._spaces: OrderedDict[Key, Namespace] = OrderedDict()

    @contextlib.contextmanager
    def entered(
        self, flow_id: int, name: str, fresh: Callable[[], dict[str, Any]]
    ) -> Iterator[Namespace]:
        """The namespace `name` of `flow_id` (its globals made by `fresh` the first time), held
        by this execution alone until the block ends. Waiting for it can be interrupted."""
        key = (flow_id, name)
        with self._lock:
            space = self._spaces.get(key)
            if space is None:
                space = self._spaces[key] = Namespace(key, fresh())
                self._mark(key)
            self._spaces.move_to_end(key)
            space.users += 1
            dropped = self._beyond_limit()
        self._unmark(dropped)
        try:
            # A timed wait, so that an interrupt or timeout (an exception raised in this
            # thread) ends a wait behind a long execution.
            while not space.lock.acquire(timeout=_WAIT_STEP_S):
                pass
            try:
                yield space
            finally:
                space.lock.release()
        finally:
            with self._lock:
                space.users -= 1

    def _beyond_limit(self) -> list[Namespace]:
        """Drop the least recently used idle namespaces beyond the limit (lock held)."""
        dropped = []
        for key in list(self._spaces):
            if len(self._spaces) <= self.limit:
                break
            if self._spaces[key].users == 0:
                dropped.append(self._spaces.pop(key))
        return dropped

    def drop(self, flow_id: int | None = None, name: str | None = None) -> list[Key]:
        """Drop every namespace, one flow's, or one; the keys dropped. An execution running in
        one goes on in it; the next execution of that name starts afresh."""
        with self._lock:
            keys = [
                k
                for k in self._spaces
                if (flow_id is None or k[0] == flow_id) and (name is None or k[1] == name)
            ]
            dropped = [self._spaces.pop(k) for k in keys]
        self._unmark(dropped)
        return keys

    def names(self, flow_id: int | None = None) -> list[Key]:
        with self._lock:
            return [k for k in self._spaces if flow_id is None or k[0] == flow_id]

    def _mark(self, key: Key) -> None:
        if self.marker_dir is None:
            return
        with (
            contextlib.suppress(OSError),
            open(_marker_path(self.marker_dir, key), "w", encoding="utf-8") as f,
        ):
            f.write(key[1])

    def _unmark(self, dropped: list[Namespace]) -> None:
        for space in dropped:
            space.forget_sources()
            if self.marker_dir is not None:
                with contextlib.suppress(OSError):
                    os.unlink(_marker_path(self.marker_dir, space.key))
