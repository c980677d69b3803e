"""`DataPlane`: the service's Flight port, in the control process, which never runs user code.

Tables, outputs and persisted artifacts are served from the store's mapped files, so
`do_get`, `do_put`, `list_flights` and `get_flight_info` of them answer while a kernel is
busy, stuck in C, dead or restarting. Only what the store cannot give goes to the flow's
kernel: an artifact not persisted yet (or one whose Flight form is computed, a LazyFrame),
and uploads of artifacts (restoring one may unpickle: that runs in the kernel, never
here). Actions are the `Service`'s, as over HTTP.
"""

from __future__ import annotations

import contextlib
import logging
import pathlib
from collections.abc import Generator, Iterable, Iterator
from typing import Any

import pyarrow as pa
import pyarrow.flight as flight

from control.handle import KernelHandle
from control.processes import StartFailed
from control.router import each
from control.service import Service, descriptions
from flight_kernel.auth import BearerAuthMiddlewareFactory
from flight_kernel.errors import InvalidRequest, KernelError, NotFound
from flight_kernel.flight_errors import server_errors
from flight_kernel.kernel import check_uploadable
from flight_kernel.paths import ArtifactPath, FlightPath, from_segments, parse_ticket
from flight_kernel.server import REUSE_CONNECTION, descriptor_path, finished_only
from flight_kernel.store import TableInfo

logger = logging.getLogger(__name__)


class DataPlane(flight.FlightServerBase):  # type: ignore[misc]
    """The public Flight server: the store's data, the kernels' live artifacts, the actions."""

    def __init__(self, service: Service) -> None:
        settings = service.settings
        middleware = {}
        if settings.auth_token:
            middleware["auth"] = BearerAuthMiddlewareFactory(settings.auth_token)
        try:
            super().__init__(
                f"grpc://{settings.host}:{settings.flight_port}", middleware=middleware
            )
        except Exception as exc:  # pyarrow says only "Server did not start properly"
            raise StartFailed(
                f"cannot listen on Flight port {settings.flight_port} of {settings.host} "
                f"(KERNEL_FLIGHT_PORT): is it taken? ({exc})"
            ) from None
        self.service = service
        self.store = service.store
        service.flight_location = f"grpc://{settings.connect_host}:{self.port}"
        self._locations = [REUSE_CONNECTION]
        if settings.advertise_location:
            self._locations.append(settings.advertise_location)

    def _flight_info(
        self, path: FlightPath, info: TableInfo, file: str | None
    ) -> flight.FlightInfo:
        locations = list(self._locations)
        if file is not None:  # same-host readers may map it (SPEC §8)
            locations.append(pathlib.Path(file).as_uri())
        descriptor = flight.FlightDescriptor.for_path(*str(path).split("/"))
        endpoint = flight.FlightEndpoint(str(path).encode(), locations)
        return flight.FlightInfo(info.schema, descriptor, [endpoint], info.num_rows, info.nbytes)

    def _stored_artifact(self, path: ArtifactPath) -> tuple[TableInfo, str | None] | None:
        """What the store says of a persisted artifact it can serve itself, and its IPC file."""
        info = self.store.artifact_info(path)
        if info is None:
            return None
        found = self.store.persisted(path)
        file = found.file if found is not None and found.is_table else None
        return info, file

    def _holder(self, path: ArtifactPath) -> KernelHandle:
        """The kernel that holds a flow's live artifacts; a flow without one has only what
        the store holds, and this is not in it."""
        holder = self.service.kernels.holder(path.flow_id)
        if holder is None:
            names = [a.path.name for a in self.store.artifacts(path.flow_id)]
            raise NotFound(
                f"nothing stored at {path} (artifacts of flow {path.flow_id}: "
                f"{', '.join(names) or 'none'})"
            )
        return holder

    # -- reads -----------------------------------------------------------------------------

    def do_get(self, context: Any, ticket: flight.Ticket) -> flight.FlightDataStream:
        with server_errors("do_get"):
            path = parse_ticket(ticket.ticket)
            if not isinstance(path, ArtifactPath):
                return flight.RecordBatchStream(self.store.get(path))
            table = self.store.artifact_table(path)
            if table is not None:
                return flight.RecordBatchStream(table)
            reader = self._holder(path).read(str(path))
            return flight.GeneratorStream(reader.schema, _relayed(reader, path))

    def get_flight_info(
        self, context: Any, descriptor: flight.FlightDescriptor
    ) -> flight.FlightInfo:
        with server_errors("get_flight_info"):
            path = descriptor_path(descriptor)
            if not isinstance(path, ArtifactPath):
                return self._flight_info(path, self.store.info(path), self.store.file(path))
            stored = self._stored_artifact(path)
            if stored is not None:
                return self._flight_info(path, *stored)
            live = self._holder(path).info(str(path))
            return self._flight_info(path, _info_of(live), None)

    def list_flights(self, context: Any, criteria: bytes) -> Iterator[flight.FlightInfo]:
        with server_errors("list_flights"):
            try:
                prefix = (criteria or b"").decode("utf-8")
            except UnicodeDecodeError:
                raise InvalidRequest("list_flights criteria must be a UTF-8 path prefix") from None
            infos = [self._table_entry(p) for p in self.store.paths(prefix)]
            if "artifacts/".startswith(prefix) or prefix.startswith("artifacts/"):
                infos += self._artifact_entries(prefix)
        return iter([i for i in infos if i is not None])

    def _table_entry(self, path: FlightPath) -> flight.FlightInfo | None:
        assert not isinstance(path, ArtifactPath)
        with contextlib.suppress(KernelError):  # deleted meanwhile
            return self._flight_info(path, self.store.info(path), self.store.file(path))
        return None

    def _artifact_entries(self, prefix: str) -> list[flight.FlightInfo]:
        """Artifacts: each kernel lists its own (live ones included); what the store holds
        of a kernel that cannot answer now is listed from the store."""
        found: dict[str, flight.FlightInfo] = {}
        for persisted in self.store.artifacts():
            if str(persisted.path).startswith(prefix):
                stored = self._stored_artifact(persisted.path)
                if stored is not None:
                    found[str(persisted.path)] = self._flight_info(persisted.path, *stored)
        for live in each(self.service.kernels.all(), lambda h: _live_infos(h, prefix)):
            for info in live:
                key = "/".join(p.decode() for p in info.descriptor.path)
                if key.startswith("artifacts/") and key not in found:
                    path = from_segments(key.split("/"))
                    found[key] = self._flight_info(path, _info_of(info), None)
        return [found[k] for k in sorted(found)]

    # -- writes ----------------------------------------------------------------------------

    def do_put(
        self,
        context: Any,
        descriptor: flight.FlightDescriptor,
        reader: flight.MetadataRecordBatchReader,
        writer: Any,
    ) -> None:
        with server_errors("do_put"):
            path = descriptor_path(descriptor)
            check_uploadable(path)
            stream = finished_only(reader, context, path)
            if isinstance(path, ArtifactPath):  # restored in its kernel, which persists it
                table = stream.read_all()
                self.service.kernels.for_flow(path.flow_id).write(str(path), table)
            else:
                self.store.put(path, stream)

    # -- actions ---------------------------------------------------------------------------

    def do_action(self, context: Any, action: flight.Action) -> Iterable[flight.Result]:
        with server_errors(f"action {action.type!r}"):
            body = action.body.to_pybytes() if action.body is not None else b""
            answer = self.service.action(action.type, body)
            if isinstance(answer, bytes):
                return [flight.Result(answer)]
        return _streamed(action.type, answer)

    def list_actions(self, context: Any) -> list[tuple[str, str]]:
        return descriptions()


def _streamed(name: str, events: Generator[bytes]) -> Iterator[flight.Result]:
    """A streaming execution's events, a Result each; closed as soon as this is (its client
    went away), which interrupts the execution."""
    with server_errors(f"action {name!r}"), contextlib.closing(events):
        for event in events:
            yield flight.Result(event)


def _live_infos(handle: KernelHandle, prefix: str) -> list[flight.FlightInfo]:
    """A kernel's own listing (every kernel is asked at once); one that cannot answer now is
    left out: the store lists what it persisted."""
    try:
        return handle.infos(prefix)
    except KernelError as exc:
        logger.info("list_flights lists the store's artifacts only: %s", exc)
        return []


def _info_of(info: flight.FlightInfo) -> TableInfo:
    return TableInfo(info.schema, info.total_records, info.total_bytes)


def _relayed(reader: flight.FlightStreamReader, path: ArtifactPath) -> Iterator[pa.RecordBatch]:
    """A kernel's stream, batch by batch; a kernel that goes away mid-stream is an error
    naming the artifact."""
    try:
        for chunk in reader:
            yield chunk.data
    except (flight.FlightError, OSError) as exc:
        raise flight.FlightUnavailableError(
            f"the kernel holding artifact {path} went away while sending it ({exc})"
        ) from None
