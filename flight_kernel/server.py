"""KernelFlightServer: the Flight transport over the store, the executor and the actions.

Thin by design: it parses paths, calls the plain-Python core and converts errors in one
place (`flight_errors`), so no traceback of user code or kernel internals reaches a client.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from typing import Any

import pyarrow as pa
import pyarrow.flight as flight

from flight_kernel.actions import Actions
from flight_kernel.auth import BearerAuthMiddlewareFactory
from flight_kernel.errors import (
    Conflict,
    InvalidRequest,
    KernelError,
    KernelUnavailable,
    NotFound,
    SerializationFailed,
    Unauthenticated,
)
from flight_kernel.executor import Executor
from flight_kernel.paths import (
    ArtifactPath,
    FlightPath,
    OutputPath,
    TablePath,
    parse_descriptor_path,
    parse_ticket,
)
from flight_kernel.serialization import from_arrow, is_table_like, pickle_schema, to_arrow
from flight_kernel.settings import Settings
from flight_kernel.store import Store

logger = logging.getLogger(__name__)

REUSE_CONNECTION = "arrow-flight-reuse-connection://?"


@contextlib.contextmanager
def flight_errors(what: str) -> Iterator[None]:
    """Convert every error to what a Flight client should see (the one place that does)."""
    try:
        yield
    except NotFound as exc:
        raise KeyError(exc.message) from None  # the only exception pyarrow maps to NOT_FOUND
    except (InvalidRequest, Conflict, SerializationFailed) as exc:
        raise flight.FlightServerError(exc.message, exc.kind.encode()) from None
    except Unauthenticated as exc:
        raise flight.FlightUnauthenticatedError(exc.message) from None
    except KernelUnavailable as exc:
        raise flight.FlightUnavailableError(exc.message) from None
    except KernelError as exc:
        raise flight.FlightServerError(exc.message, exc.kind.encode()) from None
    except flight.FlightError:
        raise
    except Exception as exc:
        logger.exception("internal error in %s", what)
        raise flight.FlightInternalError(
            f"internal error in {what}: {type(exc).__name__}: {exc}"
        ) from None


class KernelFlightServer(flight.FlightServerBase):  # type: ignore[misc]
    """The kernel's Flight server."""

    def __init__(
        self, settings: Settings, store: Store | None = None, location: str | None = None
    ) -> None:
        middleware = {}
        if settings.auth_token:
            middleware["auth"] = BearerAuthMiddlewareFactory(settings.auth_token)
        location = location or f"grpc://{settings.host}:{settings.flight_port}"
        super().__init__(location, middleware=middleware)
        self.settings = settings
        self.store = store if store is not None else Store()
        self.executor = Executor(
            self.store,
            max_stream_bytes=settings.max_stream_bytes,
            default_timeout_s=settings.exec_timeout_s,
            auth_token=settings.auth_token,
        )
        self.actions = Actions(
            self.store, self.executor, f"grpc://{settings.connect_host}:{self.port}"
        )
        self._locations = [REUSE_CONNECTION]
        if settings.advertise_location:
            self._locations.append(settings.advertise_location)

    # -- data ------------------------------------------------------------------------------

    def _artifact(self, path: ArtifactPath) -> Any:
        try:
            return self.store.get_artifact(path.flow_id, path.name).obj
        except NotFound as exc:  # Flight clients address by path: name it
            raise NotFound(f"nothing stored at {path}: {exc.message}") from None

    def _table_at(self, path: FlightPath) -> pa.Table:
        if isinstance(path, ArtifactPath):
            return to_arrow(self._artifact(path), str(path))
        return self.store.get_table(path).client()

    def do_get(self, context: Any, ticket: flight.Ticket) -> flight.RecordBatchStream:
        with flight_errors("do_get"):
            return flight.RecordBatchStream(self._table_at(parse_ticket(ticket.ticket)))

    def do_put(
        self,
        context: Any,
        descriptor: flight.FlightDescriptor,
        reader: flight.MetadataRecordBatchReader,
        writer: Any,
    ) -> None:
        with flight_errors("do_put"):
            path = self._descriptor_path(descriptor)
            if isinstance(path, OutputPath):
                raise InvalidRequest(
                    f"{path} is written by executions only; upload inputs "
                    "to tables/<name> or artifacts/<flow_id>/<name>"
                )
            table = reader.read_all()
            if isinstance(path, TablePath):
                self.store.put_table(path, table)
            else:
                self.store.publish_artifact(
                    path.flow_id, None, path.name, from_arrow(table), replace=True
                )

    def _descriptor_path(self, descriptor: flight.FlightDescriptor) -> FlightPath:
        if descriptor.descriptor_type != flight.DescriptorType.PATH:
            raise InvalidRequest(
                "only path descriptors are supported "
                "(tables/<name>, artifacts/<flow_id>/<name>, ...)"
            )
        return parse_descriptor_path(list(descriptor.path or []))

    def _info(self, path: FlightPath) -> flight.FlightInfo:
        descriptor = flight.FlightDescriptor.for_path(*str(path).split("/"))
        endpoint = flight.FlightEndpoint(str(path).encode(), self._locations)
        if isinstance(path, ArtifactPath):
            obj = self._artifact(path)
            if not is_table_like(obj):  # not serialized until someone asks for it
                return flight.FlightInfo(pickle_schema(obj), descriptor, [endpoint], 1, -1)
            table = to_arrow(obj, str(path))
            return flight.FlightInfo(
                table.schema, descriptor, [endpoint], table.num_rows, table.nbytes
            )
        entry = self.store.get_table(path)
        return flight.FlightInfo(entry.schema, descriptor, [endpoint], entry.num_rows, entry.nbytes)

    def get_flight_info(
        self, context: Any, descriptor: flight.FlightDescriptor
    ) -> flight.FlightInfo:
        with flight_errors("get_flight_info"):
            return self._info(self._descriptor_path(descriptor))

    def list_flights(self, context: Any, criteria: bytes) -> Iterator[flight.FlightInfo]:
        with flight_errors("list_flights"):
            try:
                prefix = (criteria or b"").decode("utf-8")
            except UnicodeDecodeError:
                raise InvalidRequest("list_flights criteria must be a UTF-8 path prefix") from None
            infos = []
            for path in self.store.paths(prefix):
                with contextlib.suppress(NotFound):  # deleted meanwhile
                    infos.append(self._info(path))
        return iter(infos)

    # -- actions ---------------------------------------------------------------------------

    def do_action(self, context: Any, action: flight.Action) -> list[flight.Result]:
        with flight_errors(f"action {action.type!r}"):
            body = action.body.to_pybytes() if action.body is not None else b""
            return [flight.Result(self.actions.handle(action.type, body))]

    def list_actions(self, context: Any) -> list[tuple[str, str]]:
        return self.actions.descriptions()
