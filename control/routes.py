"""The HTTP endpoints: each validates, asks the router for its kernel(s), passes JSON on."""

from __future__ import annotations

import hmac
import os
import socket
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query, Request, Response
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from control.router import KernelRouter, merge_dicts_of_lists, merge_lists
from control.schemas import (
    ArtifactRecord,
    ClearResponse,
    ExecuteResponse,
    HealthResponse,
    InterruptResponse,
    RestartResponse,
)
from flight_kernel import __version__
from flight_kernel.errors import Unauthenticated
from flight_kernel.requests import (
    ClearNodeArtifactsRequest,
    ExecuteRequest,
    FlowFilter,
    InterruptRequest,
)

_bearer = HTTPBearer(auto_error=False, description="KERNEL_AUTH_TOKEN, when it is set")


async def kernels(request: Request) -> KernelRouter:
    router: KernelRouter = request.app.state.kernels
    return router


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


Kernels = Annotated[KernelRouter, Depends(kernels)]
FlowId = Annotated[int | None, Query(description="only this flow")]


def _json(raw: bytes) -> Response:
    return Response(content=raw, media_type="application/json")


open_router = APIRouter()
router = APIRouter()  # create_app adds `require_token` when a token is set


@open_router.get(
    "/health",
    response_model=HealthResponse,
    responses={503: {"description": "the kernel is (re)starting"}},
)
async def health(kernels: Kernels) -> Response:
    """Service health, within a second even while user code holds a kernel's GIL (that
    kernel is reported `busy`, with what it last said); 503 `starting` while no kernel can
    serve."""
    (handle,) = kernels.all()  # one kernel serves every flow today
    state, body = await run_in_threadpool(handle.health)
    status = handle.status()
    kernel = {
        "flow_id": None,
        "pid": status.pid,
        "state": state,
        "restarts": status.restarts,
        "node": socket.gethostname(),
    }
    extra = {"restarts": status.restarts, "supervisor_pid": os.getpid(), "kernels": [kernel]}
    if state == "starting":
        starting = {"status": "starting", "version": __version__, "artifact_count": None}
        return JSONResponse({**starting, **extra, "kernel_pid": status.pid}, status_code=503)
    return JSONResponse({"artifact_count": None, **body, "status": "healthy", **extra})


@router.post("/execute", response_model=ExecuteResponse)
async def execute(req: ExecuteRequest, kernels: Kernels) -> Response:
    """Run code in the flow's kernel (HTTP 200 also when the code fails)."""
    return _json(await run_in_threadpool(kernels.for_flow(req.flow_id).execute, req))


async def _artifacts(kernels: KernelRouter, flow_id: int | None, node_id: str | None) -> Any:
    body = {"flow_id": flow_id, "node_id": node_id}
    if flow_id is not None:
        return _json(
            await run_in_threadpool(kernels.for_flow(flow_id).call, "list_artifacts", body)
        )
    merged = await run_in_threadpool(
        kernels.fan_out, lambda h: h.call("list_artifacts", body), merge_lists
    )
    return JSONResponse(merged)


@router.get("/artifacts", response_model=list[ArtifactRecord])
async def list_artifacts(kernels: Kernels, flow_id: FlowId = None) -> Response:
    """All artifacts, or one flow's."""
    response: Response = await _artifacts(kernels, flow_id, None)
    return response


@router.get("/artifacts/node/{node_id}", response_model=list[ArtifactRecord])
async def list_node_artifacts(node_id: str, kernels: Kernels, flow_id: FlowId = None) -> Response:
    """The artifacts one node published (node ids compare by their string form)."""
    response: Response = await _artifacts(kernels, flow_id, node_id)
    return response


@router.post("/clear", response_model=ClearResponse)
async def clear(kernels: Kernels, flow_id: FlowId = None) -> Response:
    """Drop everything the kernels hold, or one flow's artifacts and outputs."""
    body = {"flow_id": flow_id}
    if flow_id is not None:
        return _json(await run_in_threadpool(kernels.for_flow(flow_id).call, "clear", body))
    merged = await run_in_threadpool(
        kernels.fan_out, lambda h: h.call("clear", body), merge_dicts_of_lists
    )
    return JSONResponse(merged)


@router.post("/clear_node_artifacts", response_model=ClearResponse)
async def clear_node_artifacts(req: ClearNodeArtifactsRequest, kernels: Kernels) -> Response:
    """Drop the artifacts the given nodes published."""
    body = req.model_dump()
    if req.flow_id is not None:
        handle = kernels.for_flow(req.flow_id)
        return _json(await run_in_threadpool(handle.call, "clear_node_artifacts", body))
    merged = await run_in_threadpool(
        kernels.fan_out, lambda h: h.call("clear_node_artifacts", body), merge_dicts_of_lists
    )
    return JSONResponse(merged)


@router.post("/restart", response_model=RestartResponse)
async def restart(kernels: Kernels, req: FlowFilter | None = None) -> Response:
    """Restart the flow's kernel, or every kernel: running executions end with `KernelDied`,
    namespaces and artifacts go."""
    req = req or FlowFilter()
    handles = [kernels.for_flow(req.flow_id)] if req.flow_id is not None else kernels.all()
    restarted = [await run_in_threadpool(h.restart) for h in handles]
    return JSONResponse({"restarted": restarted})


@router.post("/interrupt", response_model=InterruptResponse)
async def interrupt(kernels: Kernels, req: InterruptRequest | None = None) -> Response:
    """Interrupt running executions (all, one flow's, one node's, or one by execution_id)."""
    req = req or InterruptRequest()
    if req.flow_id is not None:
        return _json(await run_in_threadpool(kernels.for_flow(req.flow_id).interrupt, req))
    merged = await run_in_threadpool(
        kernels.fan_out, lambda h: h.interrupt(req), merge_dicts_of_lists
    )
    return JSONResponse(merged)
