"""The store: tables, outputs and persisted artifacts, as files in one directory.

Every table is an Arrow IPC file, written under a temporary name beside its place and
renamed there only when complete, and memory-mapped by whoever reads it: polars builds its
frames over the mapped buffers (aligned: no copy, no private memory), the data plane streams
`do_get` from the map, and a client on the same host may map the file itself. Any number of
processes share one store (the control process and every kernel); the directory is the only
index, so what one process writes the others see at once, and a process's death loses
nothing it wrote.

Layout (each segment of a Flight path is one file or directory name, `encode`d):

    tables/<name>.arrow
    outputs/<flow_id>/<node_id>/<name>.arrow
    artifacts/<flow_id>/<name>.arrow     a table artifact, in its Flight form
    artifacts/<flow_id>/<name>.pickle    any other object: one JSON header line, then cloudpickle
    artifacts/<flow_id>/<name>.pending   published and not persisted yet: lost if its kernel dies
    .tmp-*                               being written; swept when a service opens the store
    .lock                                held by the service that owns the store
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import functools
import hashlib
import json
import logging
import os
import queue
import secrets
import shutil
import tempfile
import threading
import weakref
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import IO, Any
from urllib.parse import quote, unquote

import cloudpickle
import pyarrow as pa
import pyarrow.ipc as ipc

from flight_kernel.errors import NotFound, StoreFull, StoreInUse
from flight_kernel.paths import ArtifactPath, FlightPath, OutputPath, TablePath, from_segments
from flight_kernel.serialization import (
    PICKLE,
    PICKLE_SCHEMA,
    SERIALIZER_KEY,
    TYPE_KEY,
    from_arrow,
    is_table_like,
    to_arrow,
)
from flight_kernel.settings import Settings
from flight_kernel.tables import MIN_AVG_BATCH_ROWS, client_schema, fits, slices

logger = logging.getLogger(__name__)

StoredPath = TablePath | OutputPath

TABLE = ".arrow"
PICKLED = ".pickle"
PENDING = ".pending"
TEMPORARY = ".tmp-"
LOCK = ".lock"
PATH_KEY = b"kernel.path"  # in each IPC file's footer: the Flight path it holds
ARTIFACT_KEY = b"kernel.artifact"  # in a table artifact's footer: its record (JSON)
MAX_NAME = 200  # longer encoded names are hashed: any Flight name fits any file system
_HASHED = "%%"  # `quote` never writes two '%' in a row: a hashed name cannot be a quoted one
_KINDS = ("tables", "outputs", "artifacts")


@functools.lru_cache(maxsize=4096)  # flows, nodes and names repeat: every execution asks
def encode(segment: str) -> str:
    """One path segment as a file name: percent-encoded ASCII (never starting with '.', which
    temporary and lock files do), or a hash when that would be too long for a file system."""
    name = quote(segment, safe="")
    if name.startswith("."):
        name = "%2E" + name[1:]
    if len(name) > MAX_NAME:
        return _HASHED + hashlib.sha256(segment.encode("utf-8", "surrogatepass")).hexdigest()
    return name


def _is_hashed(name: str) -> bool:
    return name.startswith(_HASHED)


@dataclass(frozen=True)
class TableInfo:
    """What listings say about a stored table, without reading its data."""

    schema: pa.Schema
    num_rows: int
    nbytes: int


@dataclass(frozen=True)
class PersistedArtifact:
    """An artifact as its file in the store records it."""

    path: ArtifactPath
    file: str
    record: dict[str, Any]  # node_id, type_name, module, size_bytes, created_at

    @property
    def is_table(self) -> bool:
        return self.file.endswith(TABLE)


def _space_error(directory: str, left: int, what: str) -> StoreFull:
    return StoreFull(
        f"the store {directory} is full: {what} does not fit in the {_size(max(left, 0))} "
        "left (KERNEL_STORE_MAX_BYTES, or the file system's free space); nothing of it was kept"
    )


def _size(n: int) -> str:
    for unit in ("bytes", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n} {unit}" if unit == "bytes" else f"{n:.1f} {unit}"
        n /= 1024  # type: ignore[assignment]
    raise AssertionError


def _write_batches(
    batches: Iterable[pa.RecordBatch], schema: pa.Schema, writer: ipc.RecordBatchFileWriter
) -> None:
    """Write a stream's batches within the bounds any Flight client can take (big ones cut
    into zero-copy slices), merging runs of tiny ones (they cost more per row than a copy)."""
    small: list[pa.RecordBatch] = []
    rows = 0

    def flush() -> None:
        nonlocal rows
        if small:
            merged = pa.Table.from_batches(small, schema).combine_chunks()
            for batch in merged.to_batches():
                for part in slices(batch):
                    writer.write_batch(part)
            small.clear()
            rows = 0

    for batch in batches:
        if batch.num_rows >= MIN_AVG_BATCH_ROWS or not fits(batch):
            flush()
            for part in slices(batch):
                writer.write_batch(part)
        elif batch.num_rows:
            small.append(batch)
            rows += batch.num_rows
            if rows >= MIN_AVG_BATCH_ROWS:
                flush()
    flush()


class Store:
    """One store directory; many processes may open it, one service owns it."""

    def __init__(
        self, directory: str, max_bytes: int | None = None, *, durable: bool = True
    ) -> None:
        self.directory = os.path.abspath(directory)
        os.makedirs(self.directory, exist_ok=True)
        self.max_bytes = max_bytes
        self.durable = durable  # it outlives the service (its directory was given)
        self._lock_file: IO[str] | None = None
        self._info_cache: dict[str, tuple[tuple[int, int, int], TableInfo]] = {}
        self._cache_lock = threading.Lock()
        self._cleanup: weakref.finalize[Any, Any] | None = None
        self._doomed: queue.SimpleQueue[str] = queue.SimpleQueue()
        self._reaper: threading.Thread | None = None

    # -- opening ---------------------------------------------------------------------------

    @classmethod
    def private(cls, max_bytes: int | None = None) -> Store:
        """A new directory under /dev/shm (memory that every process on the host shares),
        else the temp dir; removed when the store is closed or the process exits."""
        parent = "/dev/shm" if os.access("/dev/shm", os.W_OK) else None
        store = cls(tempfile.mkdtemp(prefix="kernel-store-", dir=parent), durable=False)
        store.max_bytes = max_bytes if max_bytes is not None else store._default_max()
        store._cleanup = weakref.finalize(store, shutil.rmtree, store.directory, ignore_errors=True)
        return store

    @classmethod
    def attach(cls, settings: Settings) -> Store:
        """The store a kernel uses: its service's directory, or a private one."""
        if settings.store_dir is None:
            return cls.private(settings.store_max_bytes)
        return cls(settings.store_dir, settings.store_max_bytes)

    @classmethod
    def for_service(cls, settings: Settings) -> Store:
        """The store a service owns: the given directory (locked against a second service,
        swept of what a crash left half-done), or a private one."""
        if settings.store_dir is None:
            return cls.private(settings.store_max_bytes)
        store = cls(settings.store_dir, settings.store_max_bytes)
        store._take_lock()
        if store.max_bytes is None:
            store.max_bytes = store._default_max()
        lost = store.take_lost()
        if lost:
            logger.warning(
                "artifacts never persisted before the last service stopped are gone: %s",
                ", ".join(map(str, lost)),
            )
        store.sweep()
        return store

    def _default_max(self) -> int:
        """80% of what the file system has free now, beside what the store holds already."""
        return int(shutil.disk_usage(self.directory).free * 0.8) + self.usage()

    def _take_lock(self) -> None:
        path = os.path.join(self.directory, LOCK)
        lock = open(path, "a+")  # noqa: SIM115 -- held open as long as the service runs
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            lock.seek(0)
            holder = lock.read().strip() or "unknown"
            lock.close()
            raise StoreInUse(
                f"the store directory {self.directory} is in use by another service (pid "
                f"{holder}); give each service its own KERNEL_STORE_DIR"
            ) from None
        lock.truncate(0)
        lock.write(str(os.getpid()))
        lock.flush()
        self._lock_file = lock

    def sweep(self) -> None:
        """Remove what a crash left: temporary files, and markers of artifacts that were
        never persisted (they died with their kernel)."""
        for root, _, files in os.walk(self.directory):
            for name in files:
                if name.startswith(TEMPORARY) or name.endswith(PENDING):
                    with contextlib.suppress(FileNotFoundError):
                        os.remove(os.path.join(root, name))

    def sweep_written(self, flow_id: int | None = None) -> None:
        """Remove the half-written files of outputs and artifacts (of one flow, or all: a
        kernel died writing them); uploads to `tables/` are the data plane's own and go on."""
        for top in ("outputs", "artifacts"):
            if flow_id is not None:
                top = os.path.join(top, encode(str(flow_id)))
            for root, _, files in os.walk(os.path.join(self.directory, top)):
                for name in files:
                    if name.startswith(TEMPORARY):
                        with contextlib.suppress(FileNotFoundError):
                            os.remove(os.path.join(root, name))

    def artifact_counts(self) -> dict[int, int]:
        """How many persisted artifacts each flow has (from file names: nothing is opened)."""
        counts: dict[int, int] = {}
        with contextlib.suppress(FileNotFoundError):
            for entry in os.scandir(os.path.join(self.directory, "artifacts")):
                with contextlib.suppress(ValueError):  # not a flow's directory
                    top = os.path.join("artifacts", entry.name)
                    n = sum(1 for suffix in (TABLE, PICKLED) for _ in self._files(top, suffix))
                    counts[int(unquote(entry.name))] = n
        return counts

    def count(self, kind: str) -> int:
        """How many tables (`tables`) or outputs (`outputs`) the store holds."""
        return sum(1 for _ in self._files(kind, TABLE))

    def close(self) -> None:
        """Release the store; a private one is removed."""
        if self._lock_file is not None:
            self._lock_file.close()
            self._lock_file = None
        if self._cleanup is not None:
            self._cleanup()

    # -- files -----------------------------------------------------------------------------

    def _base(self, path: FlightPath) -> str:
        """The file of a path, without its suffix."""
        segments = str(path).split("/")
        return os.path.join(self.directory, segments[0], *(encode(s) for s in segments[1:]))

    def file(self, path: StoredPath) -> str:
        return self._base(path) + TABLE

    def _discard(self, file: str) -> bool:
        """Remove a file at once from every reader's view, and free its space in the
        background: freeing 100 MiB of tmpfs pages takes milliseconds, a rename does not.
        False when there was no such file."""
        doomed = os.path.join(os.path.dirname(file), TEMPORARY + secrets.token_hex(8))
        try:
            os.replace(file, doomed)
        except FileNotFoundError:
            return False
        if self._reaper is None:
            self._reaper = threading.Thread(target=self._reap, name="store-reaper", daemon=True)
            self._reaper.start()
        self._doomed.put(doomed)
        return True

    def _reap(self) -> None:
        while True:
            with contextlib.suppress(FileNotFoundError):
                os.remove(self._doomed.get())

    def usage(self) -> int:
        """Bytes the store's files hold."""
        total = 0
        for root, _, files in os.walk(self.directory):
            for name in files:
                with contextlib.suppress(FileNotFoundError):
                    total += os.stat(os.path.join(root, name)).st_size
        return total

    def space_left(self) -> int:
        free = shutil.disk_usage(self.directory).free
        if self.max_bytes is None:
            return free
        return min(free, self.max_bytes - self.usage())

    @contextlib.contextmanager
    def _staged(self, target: str, what: str) -> Iterator[tuple[str, int]]:
        """A temporary file beside `target`, and the bytes it may take: the caller writes it
        and renames it into place; whatever is left of it is removed. Running out of space
        is `StoreFull`."""
        directory = os.path.dirname(target)
        os.makedirs(directory, exist_ok=True)
        tmp = os.path.join(directory, TEMPORARY + secrets.token_hex(8))
        left = self.space_left()
        try:
            yield tmp, left
        except OSError as exc:
            if exc.errno == errno.ENOSPC or "No space left" in str(exc):
                raise _space_error(self.directory, left, what) from None
            raise
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.remove(tmp)

    # -- tables and outputs ----------------------------------------------------------------

    def put(self, path: StoredPath, reader: pa.RecordBatchReader) -> TableInfo:
        """Store (or replace) the table at `path` from a stream of batches, written as they
        arrive; a stream that fails stores nothing and leaves what was there."""
        target = self.file(path)
        schema = reader.schema if isinstance(path, TablePath) else client_schema(reader.schema)
        if not schema.equals(reader.schema):  # an output from polars: no views for clients
            reader = pa.RecordBatchReader.from_batches(schema, (b.cast(schema) for b in reader))
        if any(pa.types.is_dictionary(f.type) for f in schema):
            # The file format holds one dictionary per column: batches that came with their
            # own are unified first (the one case that reads the whole stream before writing).
            table = reader.read_all().unify_dictionaries()
            reader = pa.RecordBatchReader.from_batches(schema, table.to_batches())
        with self._staged(target, f"the table {path}") as (tmp, left):
            self._write_table(tmp, left, reader, {PATH_KEY: str(path).encode()})
            os.replace(tmp, target)
        return self.info(path)

    def _write_table(
        self, tmp: str, left: int, reader: pa.RecordBatchReader, footer: dict[bytes, bytes]
    ) -> None:
        with (
            pa.OSFile(tmp, "wb") as sink,
            ipc.new_file(sink, reader.schema, metadata=footer) as writer,
        ):
            guarded = _Guarded(reader, sink, left, self.directory, footer[PATH_KEY])
            _write_batches(guarded, reader.schema, writer)

    def _open(self, file: str, path: FlightPath) -> ipc.RecordBatchFileReader:
        try:
            return ipc.open_file(pa.memory_map(file))
        except FileNotFoundError:
            raise NotFound(f"nothing stored at {path} ({self._neighbours(path)})") from None

    def get(self, path: StoredPath) -> pa.Table:
        """The table at `path`, over the mapped file (no copy)."""
        return self._open(self.file(path), path).read_all()

    def info(self, path: StoredPath) -> TableInfo:
        return self._info(self.file(path), path)

    def _info(self, file: str, path: FlightPath) -> TableInfo:
        try:
            st = os.stat(file)
        except FileNotFoundError:
            raise NotFound(f"nothing stored at {path} ({self._neighbours(path)})") from None
        key = (st.st_ino, st.st_mtime_ns, st.st_size)
        with self._cache_lock:
            cached = self._info_cache.get(file)
        if cached is not None and cached[0] == key:
            return cached[1]
        table = self._open(file, path).read_all()  # metadata only: the data stays unread
        info = TableInfo(table.schema, table.num_rows, table.nbytes)
        with self._cache_lock:
            self._info_cache[file] = (key, info)
        return info

    def _path_of(self, file: str) -> FlightPath | None:
        """The Flight path a file holds: from its name, or from its footer when hashed."""
        rel = os.path.relpath(file, self.directory).split(os.sep)
        if rel[0] not in _KINDS or not rel[-1].endswith(TABLE):
            return None
        rel[-1] = rel[-1][: -len(TABLE)]
        if any(_is_hashed(s) for s in rel[1:]):
            try:
                meta = ipc.open_file(pa.memory_map(file)).metadata or {}
            except (OSError, pa.ArrowInvalid):
                return None
            return from_segments(meta[PATH_KEY].decode().split("/"))
        return from_segments([rel[0], *(unquote(s) for s in rel[1:])])

    def _files(self, top: str, suffix: str) -> Iterator[str]:
        for root, _, files in os.walk(os.path.join(self.directory, top)):
            for name in files:
                if name.endswith(suffix) and not name.startswith(TEMPORARY):
                    yield os.path.join(root, name)

    def paths(self, prefix: str = "") -> list[StoredPath]:
        """Every table and output whose path starts with `prefix`."""
        found: list[StoredPath] = []
        for top in ("tables", "outputs"):
            if not (top.startswith(prefix) or prefix.startswith(top)):
                continue
            start = _whole_dirs(prefix) if prefix.startswith(top + "/") else top
            for file in self._files(start, TABLE):
                path = self._path_of(file)
                if isinstance(path, TablePath | OutputPath) and str(path).startswith(prefix):
                    found.append(path)
        return sorted(found, key=str)

    def delete(self, path: StoredPath) -> None:
        if not self._discard(self.file(path)):
            raise NotFound(f"nothing stored at {path}")

    def _neighbours(self, path: FlightPath) -> str:
        """What exists beside a missing path, for the error message."""
        if isinstance(path, TablePath):
            names = [p.name for p in self.paths("tables/") if isinstance(p, TablePath)]
            what = "tables"
        elif isinstance(path, OutputPath):
            names = [str(p) for p in self.paths(f"outputs/{path.flow_id}/{path.node_id}/")]
            what = f"outputs of node {path.node_id!r} in flow {path.flow_id}"
        else:
            names = [a.path.name for a in self.artifacts(path.flow_id)]
            what = f"persisted artifacts of flow {path.flow_id}"
        shown = ", ".join(names[:20]) + (", ..." if len(names) > 20 else "")
        return f"{what}: {shown or 'none'}"

    # -- artifacts -------------------------------------------------------------------------

    def mark_pending(self, path: ArtifactPath) -> None:
        """Say that an artifact exists only in its kernel (until `persist` replaces this):
        should the kernel die first, the service reports it lost."""
        base = self._base(path)
        os.makedirs(os.path.dirname(base), exist_ok=True)
        for suffix in (TABLE, PICKLED):  # an older persisted object of that name is stale
            self._discard(base + suffix)
        with open(base + PENDING, "w") as marker:
            marker.write(json.dumps({"path": str(path)}))

    def persist(
        self,
        path: ArtifactPath,
        obj: Any,
        record: dict[str, Any],
        commit: Callable[[Callable[[], None]], bool],
    ) -> None:
        """Write an artifact (`table`: its Arrow form; otherwise cloudpickled) and let
        `commit` decide, holding its own lock, whether to run the rename it is given (the
        artifact may have been deleted or replaced meanwhile). Raises when it cannot be
        serialized or does not fit; nothing of it remains then."""
        base = self._base(path)
        lazy = type(obj).__name__ == "LazyFrame"  # pickled: persisting never evaluates it
        suffix = TABLE if is_table_like(obj) and not lazy else PICKLED
        what = f"the artifact {path}"
        with self._staged(base + suffix, what) as (tmp, left):
            if suffix == TABLE:
                table = to_arrow(obj, str(path))
                footer = {PATH_KEY: str(path).encode(), ARTIFACT_KEY: json.dumps(record).encode()}
                reader = pa.RecordBatchReader.from_batches(table.schema, table.to_batches())
                self._write_table(tmp, left, reader, footer)
            else:
                header = {"path": str(path), **record, "served_as_object": not lazy}
                with open(tmp, "wb") as file:
                    file.write(json.dumps(header).encode() + b"\n")
                    cloudpickle.CloudPickler(file, protocol=5).dump(obj)
                    if file.tell() > left:
                        raise _space_error(self.directory, left, what)

            def rename() -> None:
                os.replace(tmp, base + suffix)
                with contextlib.suppress(FileNotFoundError):
                    os.remove(base + PENDING)

            commit(rename)

    def drop_artifact(self, path: ArtifactPath) -> None:
        """Remove an artifact's files (persisted form and marker), if any."""
        base = self._base(path)
        for suffix in (TABLE, PICKLED, PENDING):
            self._discard(base + suffix)

    def artifacts(self, flow_id: int | None = None) -> list[PersistedArtifact]:
        """The persisted artifacts (of one flow, or all), with their records."""
        top = "artifacts" if flow_id is None else os.path.join("artifacts", encode(str(flow_id)))
        found = []
        for suffix in (TABLE, PICKLED):
            for file in self._files(top, suffix):
                with contextlib.suppress(FileNotFoundError, ValueError, KeyError, OSError):
                    found.append(self._persisted(file))
        return sorted(found, key=lambda a: str(a.path))

    def _persisted(self, file: str) -> PersistedArtifact:
        if file.endswith(TABLE):
            meta = ipc.open_file(pa.memory_map(file)).metadata or {}
            record = json.loads(meta[ARTIFACT_KEY])
            raw_path = meta[PATH_KEY].decode()
        else:
            with open(file, "rb") as f:
                record = json.loads(f.readline())
            raw_path = record.pop("path")
        path = from_segments(raw_path.split("/"))
        assert isinstance(path, ArtifactPath)
        return PersistedArtifact(path, file, record)

    def persisted(self, path: ArtifactPath) -> PersistedArtifact | None:
        base = self._base(path)
        for suffix in (TABLE, PICKLED):
            with contextlib.suppress(FileNotFoundError):
                return self._persisted(base + suffix)
        return None

    def load_artifact(self, found: PersistedArtifact) -> Any:
        """The object again (this runs the unpickling: only kernels call it)."""
        if found.is_table:
            return from_arrow(self._open(found.file, found.path).read_all())
        with open(found.file, "rb") as f:
            f.readline()
            return cloudpickle.load(f)

    def artifact_table(self, path: ArtifactPath) -> pa.Table | None:
        """A persisted artifact in its Flight form, straight from the map (no unpickling);
        None when it is not persisted, or its Flight form is not its file (a LazyFrame)."""
        found = self.persisted(path)
        if found is None:
            return None
        if found.is_table:
            return self._open(found.file, path).read_all()
        if not found.record.get("served_as_object", True):
            return None
        data = pa.memory_map(found.file).read_buffer()
        body = data.slice(_header_end(data))
        offsets = pa.array([0, body.size], pa.int64()).buffers()[1]
        column = pa.Array.from_buffers(pa.large_binary(), 1, [None, offsets, body])
        schema = PICKLE_SCHEMA.with_metadata(
            {SERIALIZER_KEY: PICKLE, TYPE_KEY: _qualified(found.record)}
        )
        return pa.Table.from_arrays([column], schema=schema)

    def artifact_info(self, path: ArtifactPath) -> TableInfo | None:
        """What listings say of a persisted artifact served from the store."""
        found = self.persisted(path)
        if found is None:
            return None
        if found.is_table:
            return self._info(found.file, path)
        if not found.record.get("served_as_object", True):
            return None
        schema = PICKLE_SCHEMA.with_metadata(
            {SERIALIZER_KEY: PICKLE, TYPE_KEY: _qualified(found.record)}
        )
        return TableInfo(schema, 1, -1)

    def take_lost(self, flow_id: int | None = None) -> list[ArtifactPath]:
        """The artifacts that were never persisted (markers without a persisted file): after
        their kernel died they are gone. Their markers are removed."""
        top = "artifacts" if flow_id is None else os.path.join("artifacts", encode(str(flow_id)))
        lost = []
        for marker in self._files(top, PENDING):
            base = marker[: -len(PENDING)]
            try:
                with open(marker) as f:
                    raw = json.load(f)["path"]
                os.remove(marker)
            except (FileNotFoundError, ValueError, KeyError):
                continue
            if not (os.path.exists(base + TABLE) or os.path.exists(base + PICKLED)):
                path = from_segments(raw.split("/"))
                assert isinstance(path, ArtifactPath)
                lost.append(path)
        return sorted(lost, key=str)

    def report(self) -> dict[str, Any]:
        """The store as `/health` shows it."""
        return {
            "dir": self.directory,
            "bytes": self.usage(),
            "max_bytes": self.max_bytes,
            "durable": self.durable,
        }


def _header_end(data: pa.Buffer) -> int:
    head = data.slice(0, min(data.size, 1 << 20)).to_pybytes()
    return int(head.index(b"\n")) + 1


def _qualified(record: dict[str, Any]) -> bytes:
    return f"{record.get('module', '')}.{record.get('type_name', '')}".encode()


def _whole_dirs(prefix: str) -> str:
    """The directory that holds every path starting with `prefix` (its complete segments)."""
    segments = prefix.split("/")[:-1]  # the last one may be partial
    return os.path.join(segments[0], *(encode(s) for s in segments[1:]))


class _Guarded:
    """A reader whose batches stop the write once the file outgrows the space left."""

    def __init__(
        self, reader: pa.RecordBatchReader, sink: Any, left: int, directory: str, path: bytes
    ) -> None:
        self._reader = reader
        self._sink = sink
        self._left = left
        self._directory = directory
        self._what = f"the table {path.decode()}"

    def __iter__(self) -> Iterator[pa.RecordBatch]:
        for batch in self._reader:
            if int(self._sink.tell()) + batch.nbytes > self._left:
                raise _space_error(self._directory, self._left, self._what)
            yield batch
