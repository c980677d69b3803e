"""`create_app(settings)`: the FastAPI control plane; its lifespan runs the kernel."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator
from typing import Any

import anyio.to_thread
from fastapi import FastAPI, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse

from control.routes import open_router, router
from control.supervisor import KernelHandle, KernelSupervisor
from flight_kernel import __version__
from flight_kernel.errors import (
    Conflict,
    InvalidRequest,
    KernelError,
    KernelUnavailable,
    NotFound,
    SerializationFailed,
    Unauthenticated,
)
from flight_kernel.settings import Settings

logger = logging.getLogger(__name__)

HTTP_STATUS: dict[type[KernelError], int] = {
    NotFound: 404,
    InvalidRequest: 422,
    Conflict: 409,
    Unauthenticated: 401,
    KernelUnavailable: 503,
    SerializationFailed: 422,
}


async def _kernel_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, KernelError)
    status = next((code for cls, code in HTTP_STATUS.items() if isinstance(exc, cls)), 500)
    headers = {"WWW-Authenticate": "Bearer"} if status == 401 else None
    return JSONResponse({"detail": exc.message, "error_kind": exc.kind}, status_code=status,
                        headers=headers)


def create_app(settings: Settings | None = None, kernel: KernelHandle | None = None) -> FastAPI:
    """The control plane; without `kernel` it supervises its own kernel process."""
    settings = settings or Settings.from_env()
    handle = kernel or KernelSupervisor(settings)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        # Executions block a worker thread each: never let long ones starve the others.
        anyio.to_thread.current_default_thread_limiter().total_tokens = 512
        await run_in_threadpool(handle.start)
        try:
            yield
        finally:
            await run_in_threadpool(handle.stop)

    app = FastAPI(title="Kernel runtime", version=__version__, lifespan=lifespan,
                  description="Runs Python code for data-pipeline tools. Data moves over "
                              "Arrow Flight; this is the control plane.")
    app.state.settings = settings
    app.state.kernel = handle
    app.add_exception_handler(KernelError, _kernel_error)
    app.include_router(open_router)
    app.include_router(router)
    return app


def __getattr__(name: str) -> Any:
    """`uvicorn control.app:app` builds the app from the environment on first access."""
    if name == "app":
        return create_app()
    raise AttributeError(name)
