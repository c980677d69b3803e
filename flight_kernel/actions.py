"""The `do_action` operations: JSON in, JSON out, shaped like the HTTP responses.

Each action names its request model (validated with `requests.parse`) and a handler that
calls the `Kernel` and shapes the dataclasses it returns.
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from flight_kernel.errors import InvalidRequest
from flight_kernel.events import EventStream, Send
from flight_kernel.kernel import Cleared, Kernel
from flight_kernel.paths import from_segments
from flight_kernel.requests import (
    AdoptRequest,
    Body,
    ClearNamespaceRequest,
    ClearNodeArtifactsRequest,
    DeleteRequest,
    DisplayOutputsRequest,
    EmptyRequest,
    ExecuteRequest,
    FlowFilter,
    InterruptRequest,
    ListArtifactsRequest,
    parse,
)


def cleared_json(cleared: Cleared) -> dict[str, Any]:
    """The body of `/clear` and `/clear_node_artifacts`."""
    return {
        "status": "cleared",
        "removed": [name for _, name in cleared.artifacts],
        "removed_artifacts": [{"flow_id": f, "name": n} for f, n in cleared.artifacts],
        "removed_outputs": list(cleared.outputs),
        "removed_tables": list(cleared.tables),
        "removed_namespaces": [{"flow_id": f, "namespace": n} for f, n in cleared.namespaces],
    }


@dataclass(frozen=True)
class Action:
    """One action: what its body must be, what it does, and a line for `list_actions`."""

    model: type[Body]
    run: Callable[[Kernel, Any], Any]
    description: str


ACTIONS: dict[str, Action] = {
    "execute": Action(
        ExecuteRequest,
        lambda k, r: k.execute(r).to_json(),
        "run code: the /execute body and response",
    ),
    "list_artifacts": Action(
        ListArtifactsRequest,
        lambda k, r: [a.to_json() for a in k.list_artifacts(r.flow_id, r.node_id)],
        "artifact records: {flow_id?, node_id?}",
    ),
    "clear": Action(
        FlowFilter,
        lambda k, r: cleared_json(k.clear(r.flow_id)),
        "drop everything, or one flow's: {flow_id?}",
    ),
    "clear_node_artifacts": Action(
        ClearNodeArtifactsRequest,
        lambda k, r: cleared_json(k.clear_node_artifacts(r.node_ids, r.flow_id)),
        "drop nodes' artifacts: {node_ids, flow_id?}",
    ),
    "interrupt": Action(
        InterruptRequest,
        lambda k, r: {"interrupted": [dataclasses.asdict(e) for e in k.interrupt(r)]},
        "interrupt executions: {flow_id?, node_id?, execution_id?}",
    ),
    "restart": Action(
        FlowFilter,
        lambda k, r: _restart(k),
        "restart the kernel: {flow_id?}; running executions end with KernelDied",
    ),
    "clear_namespace": Action(
        ClearNamespaceRequest,
        lambda k, r: cleared_json(k.clear_namespace(r.flow_id, r.namespace)),
        "drop a flow's namespace, or all of them: {flow_id, namespace?}",
    ),
    "display_outputs": Action(
        DisplayOutputsRequest,
        lambda k, r: k.display_outputs(r.flow_id, r.node_id),
        "the display outputs of a node's last execution: {flow_id, node_id}",
    ),
    "adopt": Action(
        AdoptRequest,
        lambda k, r: _adopt(k, r.flow_id),
        "a spare kernel becomes the kernel of a flow: {flow_id}",
    ),
    "health": Action(
        EmptyRequest,
        lambda k, r: dataclasses.asdict(k.health()),
        "status, version, counts, running executions, pid",
    ),
    "delete": Action(
        DeleteRequest,
        lambda k, r: _delete(k, r.path),
        "remove one Flight path: {path}",
    ),
}


def _delete(kernel: Kernel, raw: str) -> dict[str, str]:
    path = from_segments(raw.split("/"))
    kernel.delete(path)
    return {"deleted": str(path)}


def _adopt(kernel: Kernel, flow_id: int) -> dict[str, int]:
    kernel.adopt(flow_id)
    return {"flow_id": flow_id}


def _restart(kernel: Kernel) -> dict[str, Any]:
    kernel.exit_for_restart()
    # The new kernel's pid is not known here: the supervisor starts it after this answer.
    return {"restarted": [{"flow_id": None, "pid": None}]}


def descriptions() -> list[tuple[str, str]]:
    return [(name, a.description) for name, a in ACTIONS.items()]


@dataclass(frozen=True)
class Call:
    """One validated action call."""

    action: Action
    request: Body

    @property
    def streams(self) -> bool:
        """An `execute` with `stream: true`: its events come before its answer."""
        return isinstance(self.request, ExecuteRequest) and self.request.stream


def parse_call(name: str, raw: bytes) -> Call:
    """The action `name` and its validated JSON body; `InvalidRequest` names what is wrong."""
    action = ACTIONS.get(name)
    if action is None:
        raise InvalidRequest(f"unknown action {name!r} (known: {', '.join(ACTIONS)})")
    return Call(action, parse(action.model, raw, f"action {name!r}"))


def run(kernel: Kernel, call: Call, send: Send | None = None) -> bytes:
    """Run a call; its JSON result. A transport that can send events before the result gives
    `send`: a streaming `execute` then sends what the code prints, logs and displays."""
    if send is not None and call.streams:
        assert isinstance(call.request, ExecuteRequest)
        answer = _streamed(kernel, call.request, send)
    else:
        answer = call.action.run(kernel, call.request)
    return json.dumps(answer, default=str).encode()


def handle(kernel: Kernel, name: str, raw: bytes, send: Send | None = None) -> bytes:
    """Run action `name` on a JSON body; return the JSON result (see `run`)."""
    return run(kernel, parse_call(name, raw), send)


DISCONNECTED = "Interrupted: the client of this streaming execution went away"


def _streamed(kernel: Kernel, req: ExecuteRequest, send: Send) -> dict[str, Any]:
    """An execution whose events go to `send` as they happen; when `send` fails (nobody
    listens any more), the execution is interrupted."""
    if req.execution_id is None:
        req = req.model_copy(update={"execution_id": os.urandom(16).hex()})
    target = InterruptRequest(execution_id=req.execution_id)

    def lost() -> None:
        kernel.executor.interrupt(target, DISCONNECTED)

    events = EventStream(send, on_lost=lost)
    try:
        return kernel.execute(req, events).to_json()
    finally:
        events.close()  # every event is sent before the result
