"""The HTTP bodies, with the contract's exact field names."""

from __future__ import annotations

import threading
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, StrictInt, StrictStr

NodeId = StrictStr | StrictInt


class ExecuteRequest(BaseModel):
    """Body of POST /execute; unknown fields are ignored."""

    node_id: NodeId = Field(description="the node this code belongs to (string or int)")
    code: StrictStr = Field(description="Python source")
    input_paths: dict[StrictStr, list[StrictStr]] = Field(
        default_factory=dict, description="input name -> file paths or flight:// URIs"
    )
    output_dir: StrictStr = Field("", description="parquet output directory; empty -> Flight")
    flow_id: StrictInt = Field(0, description="isolation key for artifacts")
    timeout_s: float | None = Field(
        None,
        gt=0,
        le=threading.TIMEOUT_MAX,  # a timer's max wait
        strict=True,  # no `true`, no "1"
        description="wall-clock limit in seconds",
    )


class LogRecord(BaseModel):
    level: str
    message: str
    flow_id: int
    node_id: NodeId
    timestamp: str


class ExecuteResponse(BaseModel):
    """Result of POST /execute (HTTP 200 also when user code failed)."""

    model_config = ConfigDict(extra="allow")

    success: bool
    output_paths: list[str]
    published_artifacts: list[str]
    deleted_artifacts: list[str]
    stdout: str
    stderr: str
    error: str | None
    traceback: str | None
    execution_time_ms: float
    logs: list[LogRecord] = []
    error_kind: str | None = None
    kernel_restarted: bool = False
    lost_state: list[str] = []


class ArtifactRecord(BaseModel):
    """One artifact in the listings."""

    model_config = ConfigDict(extra="allow")

    name: str
    flow_id: int
    node_id: NodeId | None
    type_name: str
    size_bytes: int
    created_at: str
    ticket: str


class ClearNodeArtifactsRequest(BaseModel):
    node_ids: list[NodeId]
    flow_id: StrictInt | None = None


class InterruptRequest(BaseModel):
    flow_id: StrictInt | None = None
    node_id: NodeId | None = None


class ClearResponse(BaseModel):
    model_config = ConfigDict(extra="allow")

    status: str
    removed: list[str]


class InterruptResponse(BaseModel):
    interrupted: list[dict[str, Any]]


class HealthResponse(BaseModel):
    model_config = ConfigDict(extra="allow")

    status: str
    version: str
    artifact_count: int | None = None


class ErrorBody(BaseModel):
    """A refusal: what was wrong, and its kind (NotFound, Conflict, ...)."""

    detail: str
    error_kind: str
