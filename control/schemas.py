"""The HTTP response bodies, with the contract's exact field names.

Request bodies are `flight_kernel.requests` (one definition for both edges); the execute
response mirrors `flight_kernel.results.ExecutionResult` field for field (a test keeps them
equal).
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from flight_kernel.requests import NodeId
from flight_kernel.results import ErrorKind


class LogRecord(BaseModel):
    level: str
    message: str
    flow_id: int
    node_id: NodeId
    timestamp: str


class ExecuteResponse(BaseModel):
    """Result of POST /execute (HTTP 200 also when user code failed)."""

    model_config = ConfigDict(extra="allow")

    success: bool = Field(description="user code ran to the end")
    flow_id: int
    node_id: NodeId
    execution_id: str = Field(description="the request's, or the one the service minted")
    output_paths: list[str] = Field(description="every output written, in publish order")
    published_artifacts: list[str]
    deleted_artifacts: list[str]
    stdout: str
    stderr: str
    error: str | None = Field(description='"<ExceptionType>: <message>" on failure')
    error_kind: ErrorKind | None = None
    traceback: str | None = Field(description="the user-code traceback")
    logs: list[LogRecord] = []
    display_outputs: list[DisplayOutput] = Field(
        [], description="what the code displayed, in order (Jupyter display_data bundles)"
    )
    execution_time_ms: float
    kernel_restarted: bool = False
    lost_state: list[str] = Field(
        [], description='what a kernel death lost, from ["namespace", "artifacts"]'
    )
    lost_artifacts: list[str] = Field(
        [], description="the artifacts that died with the kernel (not persisted)"
    )
    lost_namespaces: list[str] = Field(
        [], description="the flow's named namespaces that died with the kernel"
    )
    exit_code: int | None = Field(None, description="the dead kernel's exit code or -signal")


class ArtifactRecord(BaseModel):
    """One artifact in the listings."""

    model_config = ConfigDict(extra="allow")

    name: str
    flow_id: int
    node_id: NodeId | None
    type_name: str
    module: str
    size_bytes: int
    created_at: str
    ticket: str
    persisted: bool = Field(description="kept in the store: it survives its kernel")


class ClearResponse(BaseModel):
    model_config = ConfigDict(extra="allow")

    status: str
    removed: list[str]


class InterruptResponse(BaseModel):
    interrupted: list[dict[str, Any]]


class RestartResponse(BaseModel):
    restarted: list[dict[str, Any]]


class HealthResponse(BaseModel):
    model_config = ConfigDict(extra="allow")

    status: str
    version: str
    artifact_count: int | None = None


class DisplayOutput(BaseModel):
    """A Jupyter `display_data` bundle."""

    data: dict[str, Any] = Field(description="MIME type -> payload (images in base64)")
    metadata: dict[str, Any] = {}
    title: str = ""


class KernelMemory(BaseModel):
    flow_id: int | None = Field(description="the flow it serves; null: every flow, or a spare")
    pid: int
    rss_bytes: int = Field(description="resident memory, shared library and store pages too")
    uss_bytes: int = Field(description="private memory: what this kernel alone costs")


class MemoryResponse(BaseModel):
    used_bytes: int
    limit_bytes: int = Field(description="the cgroup's limit; 0 when there is none")
    usage_percent: float = Field(description="of the limit, or of the machine's memory")
    store_bytes: int
    kernels: list[KernelMemory]


class ErrorBody(BaseModel):
    """A refusal: what was wrong, and its kind (NotFound, Conflict, ...)."""

    detail: str
    error_kind: str
