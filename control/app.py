"""`create_app(settings)`: the FastAPI control plane; its lifespan runs the data plane (the
service's Flight port) and the kernels, over the store."""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import json
import logging
from collections.abc import AsyncIterator
from typing import Any

import anyio.to_thread
from fastapi import Depends, FastAPI, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.encoders import jsonable_encoder
from fastapi.exception_handlers import http_exception_handler
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from starlette.exceptions import HTTPException

from control.dataplane import DataPlane
from control.handle import KernelHandle
from control.processes import LocalKernelProcess
from control.router import FlowRouter, KernelRouter, SharedRouter
from control.routes import open_router, require_token, router
from control.schemas import ErrorBody
from control.service import Service
from flight_kernel import __version__
from flight_kernel.errors import (
    Conflict,
    InvalidRequest,
    KernelError,
    KernelUnavailable,
    NotFound,
    SerializationFailed,
    StoreFull,
    StoreInUse,
    Unauthenticated,
    lookup,
)
from flight_kernel.settings import Settings
from flight_kernel.store import Store

logger = logging.getLogger(__name__)

# Looked up along the MRO: a subclass (ConnectionLost is a KernelUnavailable) needs no row.
HTTP_STATUS: dict[type[KernelError], int] = {
    KernelError: 500,
    NotFound: 404,
    InvalidRequest: 422,
    Conflict: 409,
    Unauthenticated: 401,
    KernelUnavailable: 503,
    SerializationFailed: 422,
    StoreFull: 507,
    StoreInUse: 409,
}


ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    401: {"model": ErrorBody, "description": "missing or wrong bearer token"},
    404: {"model": ErrorBody, "description": "nothing of that name"},
    409: {"model": ErrorBody, "description": "clashes with what exists"},
    503: {"model": ErrorBody, "description": "the kernel is (re)starting"},
}


async def _kernel_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, KernelError)
    status = lookup(HTTP_STATUS, exc) or 500
    headers = {"WWW-Authenticate": "Bearer"} if status == 401 else None
    detail: Any = exc.message
    if status == 422:  # the shape of FastAPI's own 422s, so one schema documents both
        detail = [{"type": exc.kind, "loc": ["body"], "msg": exc.message}]
    return JSONResponse(
        {"detail": detail, "error_kind": exc.kind}, status_code=status, headers=headers
    )


async def _validation_error(request: Request, exc: Exception) -> JSONResponse:
    """FastAPI's 422 body, but NaN/Infinity inputs (Python's JSON parser lets them in) become
    strings: FastAPI's own handler cannot render them and answered 500."""
    assert isinstance(exc, RequestValidationError)
    errors = json.loads(json.dumps(jsonable_encoder(exc.errors())), parse_constant=str)
    return JSONResponse({"detail": errors}, status_code=422)


async def _http_error(request: Request, exc: Exception) -> Response:
    """A body FastAPI cannot even parse (not UTF-8, nested too deep) is malformed: 422, not 400."""
    assert isinstance(exc, HTTPException)
    if exc.status_code == 400 and isinstance(exc.__cause__, UnicodeDecodeError | RecursionError):
        return await _validation_error(
            request,
            RequestValidationError(
                [
                    {
                        "type": "json_invalid",
                        "loc": ("body",),
                        "msg": "JSON decode error",
                        "input": {},
                        "ctx": {"error": str(exc.__cause__)},
                    }
                ]
            ),
        )
    return await http_exception_handler(request, exc)


def local_kernels(settings: Settings, store: Store) -> KernelRouter:
    """The kernels of a service on this machine: supervised child processes, one per flow
    (or one for every flow in `shared` isolation)."""
    if settings.isolation == "shared":
        return SharedRouter(KernelHandle(LocalKernelProcess(settings, store), settings))

    def spare() -> KernelHandle:
        return KernelHandle(LocalKernelProcess(settings, store, spare=True), settings)

    return FlowRouter(spare, settings.max_kernels)


def create_app(
    settings: Settings | None = None,
    kernels: KernelRouter | None = None,
    store: Store | None = None,
) -> FastAPI:
    """The control plane; without `kernels` it supervises its own kernel process, and
    without `store` it opens the one the settings name (or a private one)."""
    settings = settings or Settings.from_env()
    owned = store is None
    store = store or Store.for_service(settings)
    # Kernels are told where the store is, and how much it may hold.
    settings = dataclasses.replace(
        settings, store_dir=store.directory, store_max_bytes=store.max_bytes
    )
    router_ = kernels or local_kernels(settings, store)
    service = Service(settings, router_, store)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        # Executions block a worker thread each: never let long ones starve the others.
        anyio.to_thread.current_default_thread_limiter().total_tokens = 512
        dataplane = DataPlane(service)  # first: a taken Flight port stops start-up at once
        try:
            await run_in_threadpool(router_.start)
            try:
                yield
            finally:
                await run_in_threadpool(router_.stop)
        finally:
            dataplane.shutdown()
            if owned:
                store.close()

    app = FastAPI(
        title="Kernel runtime",
        version=__version__,
        lifespan=lifespan,
        description="Runs Python code for data-pipeline tools. Data moves over "
        "Arrow Flight; this is the control plane.",
    )
    app.state.settings = settings
    app.state.kernels = router_
    app.state.service = service
    app.add_exception_handler(KernelError, _kernel_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(HTTPException, _http_error)
    app.include_router(open_router)
    # Without a token there is nothing to check: no dependency on the hot path.
    guard = [Depends(require_token)] if settings.auth_token else []
    app.include_router(router, responses=ERROR_RESPONSES, dependencies=guard)
    return app


@functools.cache
def _app_from_env() -> FastAPI:
    return create_app()


def __getattr__(name: str) -> Any:
    """`uvicorn control.app:app` builds the app from the environment once, on first access."""
    if name == "app":
        return _app_from_env()
    raise AttributeError(name)
