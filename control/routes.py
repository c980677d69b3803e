"""The HTTP endpoints: each validates, calls the `Service` (which the Flight actions call
too), and passes its JSON on."""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
from collections.abc import AsyncIterator, Coroutine
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query, Request, Response
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse, StreamingResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from control.schemas import (
    ArtifactRecord,
    ClearResponse,
    DisplayOutput,
    ExecuteResponse,
    HealthResponse,
    InterruptResponse,
    MemoryResponse,
    RestartResponse,
)
from control.service import Service, named
from flight_kernel.errors import KernelError, Unauthenticated
from flight_kernel.events import result_event
from flight_kernel.requests import (
    ClearNamespaceRequest,
    ClearNodeArtifactsRequest,
    DisplayOutputsRequest,
    ExecuteRequest,
    FlowFilter,
    InterruptRequest,
    ListArtifactsRequest,
)

logger = logging.getLogger(__name__)

NDJSON = "application/x-ndjson"

_bearer = HTTPBearer(auto_error=False, description="KERNEL_AUTH_TOKEN, when it is set")


async def service(request: Request) -> Service:
    found: Service = request.app.state.service
    return found


async def require_token(
    request: Request,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> None:
    expected = request.app.state.settings.auth_token
    if expected is None:
        return
    given = credentials.credentials if credentials is not None else ""
    if not hmac.compare_digest(given.encode(), expected.encode()):
        raise Unauthenticated("missing or invalid bearer token")


Served = Annotated[Service, Depends(service)]
FlowId = Annotated[int | None, Query(description="only this flow")]


open_router = APIRouter()
router = APIRouter()  # create_app adds `require_token` when a token is set


@open_router.get(
    "/health",
    response_model=HealthResponse,
    responses={503: {"description": "no kernel can serve yet"}},
)
async def health(service: Served) -> Response:
    """Service health, within a second even while user code holds a kernel's GIL (that
    kernel is reported `busy`, with what it last said), with the kernels and the store;
    503 `starting` while no kernel can serve."""
    serving, body = await run_in_threadpool(service.health)
    return JSONResponse(body, status_code=200 if serving else 503)


@router.post(
    "/execute",
    response_model=ExecuteResponse,
    responses={200: {"content": {NDJSON: {}}, "description": "with `stream: true`: events"}},
)
async def execute(req: ExecuteRequest, service: Served) -> Response:
    """Run code in the flow's kernel (HTTP 200 also when the code fails). With
    `stream: true`, NDJSON events while it runs (`stdout`, `stderr`, `log`, `display`), the
    last one `{"event": "result", "result": <this body>}`; a client that disconnects
    interrupts the execution."""
    if req.stream:
        return StreamingResponse(_events(service, named(req)), media_type=NDJSON)
    raw = await run_in_threadpool(service.execute, req)
    return Response(content=raw, media_type="application/json")


async def _events(service: Service, req: ExecuteRequest) -> AsyncIterator[bytes]:
    """The lines of a streaming execution, each as its event comes from the kernel. The
    execution runs in a worker thread; if the client goes away (this generator is closed
    before the result), it is interrupted."""
    loop = asyncio.get_running_loop()
    lines: asyncio.Queue[bytes | None] = asyncio.Queue()

    def event(raw: bytes) -> None:
        loop.call_soon_threadsafe(lines.put_nowait, raw)

    def run() -> None:
        try:
            answer = result_event(service.execute(req, event))
        except Exception as exc:  # a refusal: the stream ends with an error event, not silence
            logger.warning("streaming execution %s failed: %s", req.execution_id, exc)
            kind = exc.kind if isinstance(exc, KernelError) else "KernelError"
            refused = {"event": "error", "error": str(exc), "error_kind": kind}
            answer = json.dumps(refused).encode()
        loop.call_soon_threadsafe(lines.put_nowait, answer)
        loop.call_soon_threadsafe(lines.put_nowait, None)

    _in_background(run_in_threadpool(run))  # the threads (and limit) of sync endpoints
    finished = False
    try:
        while (line := await lines.get()) is not None:
            yield line + b"\n"
        finished = True
    finally:
        if not finished:  # the client went away mid-stream
            _in_background(run_in_threadpool(service.abandoned, req))


_running_tasks: set[asyncio.Task[Any]] = set()  # strong references: the loop keeps weak ones


def _in_background(work: Coroutine[Any, Any, Any]) -> None:
    task = asyncio.ensure_future(work)
    _running_tasks.add(task)
    task.add_done_callback(_running_tasks.discard)


async def _answer(call: Any, *args: Any) -> Response:
    return JSONResponse(await run_in_threadpool(call, *args))


@router.get("/artifacts", response_model=list[ArtifactRecord])
async def list_artifacts(service: Served, flow_id: FlowId = None) -> Response:
    """All artifacts, or one flow's."""
    return await _answer(service.list_artifacts, ListArtifactsRequest(flow_id=flow_id))


@router.get("/artifacts/node/{node_id}", response_model=list[ArtifactRecord])
async def list_node_artifacts(node_id: str, service: Served, flow_id: FlowId = None) -> Response:
    """The artifacts one node published (node ids compare by their string form)."""
    req = ListArtifactsRequest(flow_id=flow_id, node_id=node_id)
    return await _answer(service.list_artifacts, req)


@router.post("/clear", response_model=ClearResponse)
async def clear(service: Served, flow_id: FlowId = None) -> Response:
    """Drop everything the service holds, or one flow's artifacts and outputs."""
    return await _answer(service.clear, FlowFilter(flow_id=flow_id))


@router.post("/clear_node_artifacts", response_model=ClearResponse)
async def clear_node_artifacts(req: ClearNodeArtifactsRequest, service: Served) -> Response:
    """Drop the artifacts the given nodes published."""
    return await _answer(service.clear_node_artifacts, req)


@router.post("/restart", response_model=RestartResponse)
async def restart(service: Served, req: FlowFilter | None = None) -> Response:
    """Restart the flow's kernel, or every kernel: running executions end with `KernelDied`,
    unpersisted artifacts go; the store stays."""
    return await _answer(service.restart, req or FlowFilter())


@router.post("/clear_namespace", response_model=ClearResponse)
async def clear_namespace(req: ClearNamespaceRequest, service: Served) -> Response:
    """Drop a flow's named namespace, or (no `namespace`) all of that flow's."""
    return await _answer(service.clear_namespace, req)


@router.get("/display_outputs", response_model=list[DisplayOutput])
async def display_outputs(
    service: Served, node_id: Annotated[str, Query()], flow_id: Annotated[int, Query()] = 0
) -> Response:
    """The display outputs of a node's last execution (`[]` if none)."""
    req = DisplayOutputsRequest(flow_id=flow_id, node_id=node_id)
    return await _answer(service.display_outputs, req)


@router.get("/memory", response_model=MemoryResponse)
async def memory(service: Served) -> Response:
    """Memory used and allowed (cgroup v2 or v1; `limit_bytes` 0 without a limit), the
    store's bytes, and each kernel's RSS and private memory (USS)."""
    return await _answer(service.memory)


@router.post("/interrupt", response_model=InterruptResponse)
async def interrupt(service: Served, req: InterruptRequest | None = None) -> Response:
    """Interrupt running executions (all, one flow's, one node's, or one by execution_id)."""
    return await _answer(service.interrupt, req or InterruptRequest())
