"""The HTTP endpoints: each validates, forwards one Flight action, and passes the JSON on."""

from __future__ import annotations

import functools
import hmac
import json
import os
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query, Request, Response
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from control.schemas import (
    ArtifactRecord,
    ClearNodeArtifactsRequest,
    ClearResponse,
    ExecuteRequest,
    ExecuteResponse,
    HealthResponse,
    InterruptRequest,
    InterruptResponse,
)
from control.supervisor import KernelHandle
from flight_kernel import __version__
from flight_kernel.errors import KernelUnavailable, Unauthenticated

_bearer = HTTPBearer(auto_error=False, description="KERNEL_AUTH_TOKEN, when it is set")


async def kernel(request: Request) -> KernelHandle:
    handle: KernelHandle = request.app.state.kernel
    return handle


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


Kernel = Annotated[KernelHandle, Depends(kernel)]
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
async def health(kernel: Kernel) -> Response:
    """Service health; 503 with status 'starting' while the kernel (re)starts."""
    status = kernel.status()
    extra = {"restarts": status["restarts"], "supervisor_pid": os.getpid()}
    if status["state"] == "healthy":
        try:
            body: dict[str, Any] = json.loads(
                await run_in_threadpool(functools.partial(kernel.call, "health", wait=False))
            )
            return JSONResponse({**body, **extra, "kernel_pid": body.get("kernel_pid")})
        except KernelUnavailable:
            pass
    return JSONResponse(
        {
            "status": "starting",
            "version": __version__,
            "artifact_count": None,
            **extra,
            "kernel_pid": status["kernel_pid"],
        },
        status_code=503,
    )


@router.post("/execute", response_model=ExecuteResponse)
async def execute(req: ExecuteRequest, kernel: Kernel) -> Response:
    """Run code in the kernel (HTTP 200 also when the code fails)."""
    return _json(await run_in_threadpool(kernel.execute, req.model_dump()))


@router.get("/artifacts", response_model=list[ArtifactRecord])
async def list_artifacts(kernel: Kernel, flow_id: FlowId = None) -> Response:
    """All artifacts, or one flow's."""
    return _json(await run_in_threadpool(kernel.call, "list_artifacts", {"flow_id": flow_id}))


@router.get("/artifacts/node/{node_id}", response_model=list[ArtifactRecord])
async def list_node_artifacts(node_id: str, kernel: Kernel, flow_id: FlowId = None) -> Response:
    """The artifacts one node published (node ids compare by their string form)."""
    body = {"flow_id": flow_id, "node_id": node_id}
    return _json(await run_in_threadpool(kernel.call, "list_artifacts", body))


@router.post("/clear", response_model=ClearResponse)
async def clear(kernel: Kernel, flow_id: FlowId = None) -> Response:
    """Drop everything the kernel holds, or one flow's artifacts and outputs."""
    return _json(await run_in_threadpool(kernel.call, "clear", {"flow_id": flow_id}))


@router.post("/clear_node_artifacts", response_model=ClearResponse)
async def clear_node_artifacts(req: ClearNodeArtifactsRequest, kernel: Kernel) -> Response:
    """Drop the artifacts the given nodes published."""
    return _json(await run_in_threadpool(kernel.call, "clear_node_artifacts", req.model_dump()))


@router.post("/interrupt", response_model=InterruptResponse)
async def interrupt(kernel: Kernel, req: InterruptRequest | None = None) -> Response:
    """Interrupt running executions (all, one flow's, or one node's)."""
    body = req.model_dump() if req is not None else {}
    return _json(await run_in_threadpool(kernel.interrupt, body))
