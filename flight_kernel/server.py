"""KernelFlightServer: the Flight transport over a `Kernel`.

Thin by design: it parses paths, calls the kernel and shapes what it returns; errors are
converted in one place (`flight_errors.server_errors`), so no traceback of user code or
kernel internals reaches a client.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from typing import Any

import pyarrow as pa
import pyarrow.flight as flight

from flight_kernel import actions
from flight_kernel.auth import BearerAuthMiddlewareFactory
from flight_kernel.channel import EVENT
from flight_kernel.errors import InvalidRequest
from flight_kernel.events import Send, relayed
from flight_kernel.flight_errors import server_errors
from flight_kernel.kernel import Kernel
from flight_kernel.paths import FlightPath, parse_descriptor_path, parse_ticket
from flight_kernel.store import TableInfo

logger = logging.getLogger(__name__)

REUSE_CONNECTION = "arrow-flight-reuse-connection://?"


def descriptor_path(descriptor: flight.FlightDescriptor) -> FlightPath:
    if descriptor.descriptor_type != flight.DescriptorType.PATH:
        raise InvalidRequest(
            "only path descriptors are supported (tables/<name>, artifacts/<flow_id>/<name>, ...)"
        )
    return parse_descriptor_path(list(descriptor.path or []))


def finished_only(
    reader: flight.MetadataRecordBatchReader, context: Any, path: FlightPath
) -> pa.RecordBatchReader:
    """The uploaded batches, as they arrive; a stream the client broke off (it died, or
    cancelled before finishing) raises at its end, so that nothing of it is stored."""

    def batches() -> Iterator[pa.RecordBatch]:
        for chunk in reader:
            if chunk.data is not None:
                yield chunk.data
        if context.is_cancelled():
            raise InvalidRequest(
                f"the upload to {path} broke off before the client finished it; nothing was "
                "stored and what was there is unchanged"
            )

    return pa.RecordBatchReader.from_batches(reader.schema, batches())


class KernelFlightServer(flight.FlightServerBase):  # type: ignore[misc]
    """A kernel's Flight server: data, listings and actions over one `Kernel`."""

    def __init__(self, kernel: Kernel, location: str | None = None) -> None:
        settings = kernel.settings
        middleware = {}
        if settings.auth_token:
            middleware["auth"] = BearerAuthMiddlewareFactory(settings.auth_token)
        super().__init__(
            location or f"grpc://{settings.host}:{settings.flight_port}", middleware=middleware
        )
        self.kernel = kernel
        kernel.location = f"grpc://{settings.connect_host}:{self.port}"
        self._locations = [REUSE_CONNECTION]
        if settings.advertise_location:
            self._locations.append(settings.advertise_location)

    def _info(self, path: FlightPath, info: TableInfo) -> flight.FlightInfo:
        descriptor = flight.FlightDescriptor.for_path(*str(path).split("/"))
        endpoint = flight.FlightEndpoint(str(path).encode(), self._locations)
        return flight.FlightInfo(info.schema, descriptor, [endpoint], info.num_rows, info.nbytes)

    def do_get(self, context: Any, ticket: flight.Ticket) -> flight.RecordBatchStream:
        with server_errors("do_get"):
            return flight.RecordBatchStream(self.kernel.table(parse_ticket(ticket.ticket)))

    def do_put(
        self,
        context: Any,
        descriptor: flight.FlightDescriptor,
        reader: flight.MetadataRecordBatchReader,
        writer: Any,
    ) -> None:
        with server_errors("do_put"):
            path = descriptor_path(descriptor)
            self.kernel.put(path, finished_only(reader, context, path))

    def get_flight_info(
        self, context: Any, descriptor: flight.FlightDescriptor
    ) -> flight.FlightInfo:
        with server_errors("get_flight_info"):
            path = descriptor_path(descriptor)
            return self._info(path, self.kernel.info(path))

    def list_flights(self, context: Any, criteria: bytes) -> Iterator[flight.FlightInfo]:
        with server_errors("list_flights"):
            try:
                prefix = (criteria or b"").decode("utf-8")
            except UnicodeDecodeError:
                raise InvalidRequest("list_flights criteria must be a UTF-8 path prefix") from None
            infos = [self._info(e.path, e.info) for e in self.kernel.entries(prefix)]
        return iter(infos)

    def do_action(self, context: Any, action: flight.Action) -> Iterator[flight.Result]:
        with server_errors(f"action {action.type!r}"):
            body = action.body.to_pybytes() if action.body is not None else b""
            call = actions.parse_call(action.type, body)
            if not call.streams:
                return iter([flight.Result(actions.run(self.kernel, call))])
        return self._streamed(action.type, call)

    def _streamed(self, name: str, call: actions.Call) -> Iterator[flight.Result]:
        """A streaming execution: a Result per event (marked as the channel marks its event
        frames), then the answer."""

        def run(send: Send) -> bytes:
            return actions.run(self.kernel, call, lambda e: send(EVENT + e))

        with server_errors(f"action {name!r}"), contextlib.closing(relayed(run)) as items:
            for item in items:
                yield flight.Result(item)

    def list_actions(self, context: Any) -> list[tuple[str, str]]:
        return actions.descriptions()
