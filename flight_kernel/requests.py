"""The request bodies, defined once and validated the same way on both edges.

FastAPI takes these models as its bodies; the kernel's Flight actions validate the same
models with `parse`. Unknown fields are ignored, except by `/interrupt`, where a filter that
was not understood must never widen into "every execution".
"""

from __future__ import annotations

import threading
from typing import TypeVar

import pydantic
from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictInt, StrictStr

from flight_kernel.errors import InvalidRequest

NodeId = StrictStr | StrictInt


class Body(BaseModel):
    """Base of every request body: immutable, unknown fields ignored."""

    model_config = ConfigDict(frozen=True, extra="ignore")


class ExecuteRequest(Body):
    """Body of `/execute` and of the `execute` action."""

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
        le=threading.TIMEOUT_MAX,  # the longest a timer can wait
        strict=True,  # no `true`, no "1"
        description="wall-clock limit in seconds",
    )
    execution_id: StrictStr | None = Field(
        None, min_length=1, description="names this execution for /interrupt; minted if absent"
    )
    namespace: StrictStr | None = Field(
        None,
        min_length=1,
        description="null: a fresh namespace; a name: executions of the same flow with the "
        "same name share their variables, one at a time",
    )
    interactive: StrictBool = Field(
        False, description="display the value of a final bare expression, as a notebook does"
    )
    stream: StrictBool = Field(
        False, description="answer events (stdout, stderr, log, display, result) as they come"
    )


class FlowFilter(Body):
    """Body of `clear`: one flow, or every flow when absent."""

    flow_id: StrictInt | None = None


class ClearNamespaceRequest(Body):
    """Body of `/clear_namespace`: one namespace of a flow, or (no name) all of the flow's."""

    flow_id: StrictInt = 0
    namespace: StrictStr | None = None


class DisplayOutputsRequest(Body):
    """Query of `GET /display_outputs`: one node of one flow."""

    flow_id: StrictInt = 0
    node_id: NodeId


class AdoptRequest(Body):
    """Body of the kernel's `adopt` action: the flow a spare kernel now serves."""

    flow_id: StrictInt


class ListArtifactsRequest(Body):
    """Body of `list_artifacts`: optionally one flow's, optionally one node's."""

    flow_id: StrictInt | None = None
    node_id: NodeId | None = None


class ClearNodeArtifactsRequest(Body):
    """Body of `/clear_node_artifacts`."""

    node_ids: list[NodeId]
    flow_id: StrictInt | None = None


class InterruptRequest(Body):
    """Body of `/interrupt`; every field narrows the match, none matches everything."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    flow_id: StrictInt | None = None
    node_id: NodeId | None = None
    execution_id: StrictStr | None = None


class DeleteRequest(Body):
    """Body of the `delete` action."""

    path: StrictStr = Field(description="a Flight path: tables/x, outputs/1/n/x, artifacts/1/x")


class EmptyRequest(Body):
    """Body of actions that take none (`health`)."""


B = TypeVar("B", bound=Body)


def describe_errors(exc: pydantic.ValidationError) -> str:
    """One clause per bad field: `field 'node_id': Field required`."""
    by_field: dict[str, list[str]] = {}
    for error in exc.errors(include_url=False):
        where = str(error["loc"][0]) if error["loc"] else "body"
        if error["msg"] not in by_field.setdefault(where, []):
            by_field[where].append(error["msg"])
    return "; ".join(f"field {k!r}: {' or '.join(v)}" for k, v in by_field.items())


def parse(model: type[B], raw: bytes, what: str) -> B:
    """Validate a JSON body (empty means `{}`); `InvalidRequest` names the bad field."""
    try:
        return model.model_validate_json(raw if raw.strip() else b"{}")
    except pydantic.ValidationError as exc:
        types = {e["type"] for e in exc.errors()}
        if "json_invalid" in types:
            raise InvalidRequest(
                f"body of {what} is not valid JSON: {describe_errors(exc)}"
            ) from None
        if "model_type" in types:
            raise InvalidRequest(f"body of {what} must be a JSON object") from None
        raise InvalidRequest(f"invalid body of {what}: {describe_errors(exc)}") from None
