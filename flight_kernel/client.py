"""`KernelClient`: one object for callers, HTTP for control and Flight for data.

with KernelClient("http://127.0.0.1:9999", "grpc://127.0.0.1:8815") as kc:
    uri = kc.put_table("sales", frame)
    result = kc.execute("n1", code, input_paths={"main": [uri]})
    out = kc.get_table(result.output_paths[0])
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Callable, Iterator
from types import TracebackType
from typing import Any
from urllib.parse import unquote, urlsplit

import httpx
import pyarrow as pa
import pyarrow.flight as flight
import pyarrow.ipc as ipc
import pydantic

from flight_kernel.auth import call_options
from flight_kernel.errors import (
    ConnectionLost,
    DeadlineExceeded,
    InvalidRequest,
    KernelError,
    decode_error,
)
from flight_kernel.flight_errors import client_errors
from flight_kernel.paths import (
    ArtifactPath,
    FlightPath,
    TablePath,
    from_segments,
    is_flight_uri,
    local_uri,
    parse_flight_uri,
)
from flight_kernel.requests import ExecuteRequest, describe_errors
from flight_kernel.results import ExecutionResult
from flight_kernel.serialization import as_arrow_table, from_arrow, is_table_like, to_arrow


def _http_error(response: httpx.Response, what: str) -> KernelError:
    """The refusal an error response names (`error_kind`), with the service's own detail."""
    try:
        body = response.json()
    except ValueError:
        body = None
    kind = body.get("error_kind") if isinstance(body, dict) else None
    detail = body.get("detail") if isinstance(body, dict) else None
    if isinstance(detail, list):  # FastAPI's 422: one entry per bad field
        detail = "; ".join(
            f"{'.'.join(str(p) for p in d.get('loc', []))}: {d.get('msg')}"
            for d in detail
            if isinstance(d, dict)
        )
    message = f"{what} answered {response.status_code}: {detail or response.text}"
    if kind is None:
        kind = _STATUS_KINDS.get(response.status_code, "KernelError")
    return decode_error(kind, message)


_STATUS_KINDS = {
    401: "Unauthenticated",
    404: "NotFound",
    409: "Conflict",
    422: "InvalidRequest",
    503: "KernelUnavailable",
}


@contextlib.contextmanager
def _http_errors(what: str) -> Iterator[None]:
    """The one place where httpx's errors become `KernelError`s."""
    try:
        yield
    except httpx.TimeoutException as exc:
        raise DeadlineExceeded(f"{what}: no answer in time: {exc}") from None
    except httpx.TransportError as exc:
        raise ConnectionLost(f"{what}: {type(exc).__name__}: {exc}") from None


def _mapped(uri: str) -> pa.Table | None:
    """The Arrow IPC file of a `file://` location, memory-mapped; None when it is not one, or
    this process cannot open it (another host, another container, replaced meanwhile)."""
    parts = urlsplit(uri)
    if parts.scheme != "file" or parts.netloc not in ("", "localhost"):
        return None
    try:
        return ipc.open_file(pa.memory_map(unquote(parts.path))).read_all()
    except (OSError, pa.ArrowInvalid):
        return None


class KernelClient:
    """Typed client of a kernel runtime: HTTP control plane plus Flight data plane."""

    def __init__(
        self,
        http_url: str = "http://127.0.0.1:9999",
        flight_url: str = "grpc://127.0.0.1:8815",
        *,
        token: str | None = None,
        timeout: float | None = None,
    ) -> None:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        self._token = token
        self._http = httpx.Client(base_url=http_url, headers=headers, timeout=timeout)
        self._flight = flight.connect(flight_url)
        self._options = call_options(token)

    def __enter__(self) -> KernelClient:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        self._http.close()
        self._flight.close()

    # -- control plane ---------------------------------------------------------------------

    def _request(self, method: str, url: str, **kwargs: Any) -> Any:
        what = f"{method} {url}"
        with _http_errors(what):
            response = self._http.request(method, url, **kwargs)
        if response.is_error:  # say what the service said, not only the status
            raise _http_error(response, what)
        return response.json()

    def execute(
        self,
        node_id: str | int,
        code: str,
        *,
        input_paths: dict[str, list[str]] | None = None,
        output_dir: str = "",
        flow_id: int = 0,
        timeout_s: float | None = None,
        execution_id: str | None = None,
        namespace: str | None = None,
        interactive: bool = False,
        on_stdout: Callable[[str], None] | None = None,
        on_stderr: Callable[[str], None] | None = None,
        on_display: Callable[[dict[str, Any]], None] | None = None,
    ) -> ExecutionResult:
        """Run code in the kernel; a failure of the code is `success=False`, not an exception.
        With any `on_*` callback the execution streams: each callback is called with the text
        printed (or the display bundle) as it comes, while the code runs."""
        fields = {
            "node_id": node_id,
            "code": code,
            "input_paths": input_paths or {},
            "output_dir": output_dir,
            "flow_id": flow_id,
            "timeout_s": timeout_s,
            "execution_id": execution_id,
            "namespace": namespace,
            "interactive": interactive,
            "stream": any(c is not None for c in (on_stdout, on_stderr, on_display)),
        }
        try:
            request = ExecuteRequest.model_validate(fields)
        except pydantic.ValidationError as exc:
            raise InvalidRequest(f"execute: {describe_errors(exc)}") from None
        body = request.model_dump(exclude_none=True)
        if not request.stream:
            return ExecutionResult.from_json(self._request("POST", "/execute", json=body))
        told: dict[str, Callable[[Any], None] | None] = {
            "stdout": on_stdout,
            "stderr": on_stderr,
            "display": on_display,
        }
        for event in self._events("/execute", body):
            kind = event.pop("event", None)
            if kind == "result":
                return ExecutionResult.from_json(event["result"])
            if kind == "error":  # refused once the stream had begun (a kernel unavailable)
                raise decode_error(event.get("error_kind"), f"POST /execute: {event.get('error')}")
            callback = told.get(str(kind))
            if callback is not None:
                callback(event["text"] if kind in ("stdout", "stderr") else event)
        raise ConnectionLost("POST /execute: the stream ended before its result")

    def _events(self, url: str, body: dict[str, Any]) -> Iterator[dict[str, Any]]:
        """The NDJSON events of a streaming call, each as it arrives."""
        what = f"POST {url}"
        with _http_errors(what), self._http.stream("POST", url, json=body) as response:
            if response.is_error:
                response.read()
                raise _http_error(response, what)
            for line in response.iter_lines():
                if line:
                    yield json.loads(line)

    def list_artifacts(
        self, flow_id: int | None = None, node_id: str | int | None = None
    ) -> list[dict[str, Any]]:
        params = {"flow_id": flow_id} if flow_id is not None else {}
        url = "/artifacts" if node_id is None else f"/artifacts/node/{node_id}"
        found: list[dict[str, Any]] = self._request("GET", url, params=params)
        return found

    def clear(self, flow_id: int | None = None) -> dict[str, Any]:
        params = {"flow_id": flow_id} if flow_id is not None else {}
        cleared: dict[str, Any] = self._request("POST", "/clear", params=params)
        return cleared

    def clear_node_artifacts(
        self, node_ids: list[str | int], flow_id: int | None = None
    ) -> dict[str, Any]:
        body = {"node_ids": node_ids, "flow_id": flow_id}
        cleared: dict[str, Any] = self._request("POST", "/clear_node_artifacts", json=body)
        return cleared

    def interrupt(
        self,
        flow_id: int | None = None,
        node_id: str | int | None = None,
        execution_id: str | None = None,
    ) -> list[dict[str, Any]]:
        """Interrupt the running executions that match every filter given (none: all)."""
        body = {"flow_id": flow_id, "node_id": node_id, "execution_id": execution_id}
        interrupted: list[dict[str, Any]] = self._request("POST", "/interrupt", json=body)[
            "interrupted"
        ]
        return interrupted

    def restart(self, flow_id: int | None = None) -> list[dict[str, Any]]:
        """Restart the flow's kernel (None: every kernel); the new kernels."""
        body = {"flow_id": flow_id} if flow_id is not None else {}
        restarted: list[dict[str, Any]] = self._request("POST", "/restart", json=body)["restarted"]
        return restarted

    def clear_namespace(self, flow_id: int = 0, namespace: str | None = None) -> dict[str, Any]:
        """Drop a flow's named namespace, or (None) all of that flow's."""
        body = {"flow_id": flow_id, "namespace": namespace}
        cleared: dict[str, Any] = self._request("POST", "/clear_namespace", json=body)
        return cleared

    def display_outputs(self, node_id: str | int, flow_id: int = 0) -> list[dict[str, Any]]:
        """The display outputs of a node's last execution."""
        params = {"flow_id": flow_id, "node_id": str(node_id)}
        shown: list[dict[str, Any]] = self._request("GET", "/display_outputs", params=params)
        return shown

    def memory(self) -> dict[str, Any]:
        """The /memory body: used and limit bytes, the store's, each kernel's."""
        found: dict[str, Any] = self._request("GET", "/memory")
        return found

    def health(self) -> dict[str, Any]:
        """The /health body (also when the kernel is starting, with HTTP 503)."""
        with _http_errors("GET /health"):
            response = self._http.get("/health")
        if response.status_code not in (200, 503):
            raise _http_error(response, "GET /health")
        body: dict[str, Any] = response.json()
        return body

    # -- data plane ------------------------------------------------------------------------

    def _put(self, path: FlightPath, table: pa.Table) -> None:
        descriptor = flight.FlightDescriptor.for_path(*str(path).split("/"))
        with client_errors(f"do_put {path}"):
            writer, _ = self._flight.do_put(descriptor, table.schema, self._options)
            with writer:
                writer.write_table(table)

    def _get(self, client: flight.FlightClient, path: FlightPath) -> pa.Table:
        """The table at a path: mapped from the store when its endpoint names a file this
        process can see (same host, no copy), else streamed with `do_get`."""
        descriptor = flight.FlightDescriptor.for_path(*str(path).split("/"))
        with client_errors(f"get_flight_info {path}"):
            info = client.get_flight_info(descriptor, self._options)
        for endpoint in info.endpoints:
            for location in endpoint.locations:
                table = _mapped(location.uri.decode())
                if table is not None:
                    return table
        with client_errors(f"do_get {path}"):
            return client.do_get(flight.Ticket(str(path).encode()), self._options).read_all()

    def put_table(self, name: str, table: Any) -> str:
        """Upload a pyarrow Table or polars/pandas frame; returns its `flight:///` URI."""
        if not is_table_like(table):
            raise TypeError(f"put_table takes a table or a frame, not {type(table).__name__}")
        path = TablePath(name)
        self._put(path, as_arrow_table(table))
        return local_uri(path)

    def get_table(self, path_or_uri: str) -> pa.Table:
        """Download `tables/x`, `flight:///outputs/...` or `flight://host:port/...`."""
        if is_flight_uri(path_or_uri):
            uri = parse_flight_uri(path_or_uri)
            if not uri.is_local:
                with flight.connect(f"grpc://{uri.host}:{uri.port}") as other:
                    return self._get(other, uri.path)
            path: FlightPath = uri.path
        else:
            path = from_segments(path_or_uri.split("/"))
        return self._get(self._flight, path)

    def get_artifact(self, flow_id: int, name: str) -> Any:
        """An artifact as its object: tables as their type, others unpickled."""
        return from_arrow(self._get(self._flight, ArtifactPath(flow_id, name)))

    def put_artifact(self, flow_id: int, name: str, obj: Any) -> None:
        """Store any object (tables as tables, others pickled) as an artifact of a flow."""
        path = ArtifactPath(flow_id, name)
        self._put(path, to_arrow(obj, str(path)))

    def delete(self, path: str) -> None:
        """Remove what is stored at a Flight path."""
        action = flight.Action("delete", json.dumps({"path": path}).encode())
        with client_errors(f"delete {path}"):
            list(self._flight.do_action(action, self._options))
