"""What an execution answers: one frozen `ExecutionResult`, shared by every side.

The executor builds it, the supervisor builds the "kernel died" form, the HTTP schema
mirrors its fields and `KernelClient` decodes it: a new response field is one edit here.
"""

from __future__ import annotations

import dataclasses
import enum
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any


class ErrorKind(enum.StrEnum):
    """Why an execution failed (`error_kind` in the response)."""

    EXCEPTION = "exception"
    SYNTAX = "syntax"
    EXIT = "exit"
    TIMEOUT = "timeout"
    INTERRUPTED = "interrupted"
    KERNEL_DIED = "kernel_died"


@dataclass(frozen=True)
class LogRecord:
    """One `flowfile.log` record, tagged with its flow and node."""

    level: str
    message: str
    flow_id: int
    node_id: str | int
    timestamp: str


@dataclass(frozen=True)
class ExecutionResult:
    """The response of one execution (HTTP 200 also when user code failed)."""

    success: bool
    flow_id: int
    node_id: str | int
    execution_id: str
    output_paths: list[str] = field(default_factory=list)
    published_artifacts: list[str] = field(default_factory=list)
    deleted_artifacts: list[str] = field(default_factory=list)
    stdout: str = ""
    stderr: str = ""
    error: str | None = None
    error_kind: ErrorKind | None = None
    traceback: str | None = None
    logs: list[LogRecord] = field(default_factory=list)
    display_outputs: list[dict[str, Any]] = field(default_factory=list)
    execution_time_ms: float = 0.0
    kernel_restarted: bool = False
    lost_state: list[str] = field(default_factory=list)
    lost_artifacts: list[str] = field(default_factory=list)
    lost_namespaces: list[str] = field(default_factory=list)
    exit_code: int | None = None

    @classmethod
    def kernel_died(
        cls,
        *,
        flow_id: int,
        node_id: str | int,
        execution_id: str,
        error: str,
        error_kind: ErrorKind = ErrorKind.KERNEL_DIED,
        execution_time_ms: float,
        lost_state: list[str],
        lost_artifacts: list[str],
        lost_namespaces: Sequence[str] = (),
        exit_code: int | None,
        stdout: str = "",
        stderr: str = "",
    ) -> ExecutionResult:
        """The answer to an execution whose kernel died (or was killed) under it."""
        return cls(
            success=False,
            flow_id=flow_id,
            node_id=node_id,
            execution_id=execution_id,
            stdout=stdout,
            stderr=stderr,
            error=error,
            error_kind=error_kind,
            execution_time_ms=round(execution_time_ms, 3),
            kernel_restarted=True,
            lost_state=lost_state,
            lost_artifacts=lost_artifacts,
            lost_namespaces=list(lost_namespaces),
            exit_code=exit_code,
        )

    def to_json(self) -> dict[str, Any]:
        """The JSON body: sequences as lists, the error kind as its string."""
        body = dict(self.__dict__)  # the fields, in order (hot: every execution)
        for name in _LISTS:  # the body is the caller's to change, the result not
            body[name] = list(body[name])
        body["logs"] = [dataclasses.asdict(r) for r in self.logs]
        if self.error_kind is not None:
            body["error_kind"] = self.error_kind.value
        return body

    @classmethod
    def from_json(cls, body: dict[str, Any]) -> ExecutionResult:
        """Decode a response body; unknown fields are ignored, missing optional ones default."""
        known = {k: v for k, v in body.items() if k in _FIELDS}
        known["logs"] = [LogRecord(**r) for r in known.get("logs") or ()]
        if known.get("error_kind") is not None:
            known["error_kind"] = ErrorKind(known["error_kind"])
        return cls(**known)


_FIELDS = frozenset(f.name for f in dataclasses.fields(ExecutionResult))
_LISTS = (
    "output_paths",
    "published_artifacts",
    "deleted_artifacts",
    "display_outputs",
    "lost_state",
    "lost_artifacts",
    "lost_namespaces",
)
