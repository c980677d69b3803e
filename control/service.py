"""`Service`: every control operation once, for both public transports.

The HTTP routes and the Flight actions of the data plane call these methods with the same
validated requests and send back the same JSON: a Flight-only client can do everything an
HTTP client can. Each method asks the router for the kernel(s) it concerns; answers from
several kernels are merged by the router.
"""

from __future__ import annotations

import json
import os
import socket
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from control.router import KernelRouter, merge_dicts_of_lists, merge_lists
from flight_kernel import __version__
from flight_kernel.errors import InvalidRequest
from flight_kernel.paths import ArtifactPath, from_segments
from flight_kernel.requests import (
    Body,
    ClearNodeArtifactsRequest,
    DeleteRequest,
    EmptyRequest,
    ExecuteRequest,
    FlowFilter,
    InterruptRequest,
    ListArtifactsRequest,
    parse,
)
from flight_kernel.settings import Settings
from flight_kernel.store import Store


class Service:
    """The control operations over a router of kernels and the store they share."""

    def __init__(self, settings: Settings, kernels: KernelRouter, store: Store) -> None:
        self.settings = settings
        self.kernels = kernels
        self.store = store
        self.flight_location = ""  # the data plane's, once it listens

    # -- executions ------------------------------------------------------------------------

    def execute(self, req: ExecuteRequest) -> bytes:
        """Run code in the flow's kernel; the raw JSON result."""
        return self.kernels.for_flow(req.flow_id).execute(req)

    def interrupt(self, req: InterruptRequest) -> Any:
        if req.flow_id is not None:
            return json.loads(self.kernels.for_flow(req.flow_id).interrupt(req))
        return self.kernels.fan_out(lambda h: h.interrupt(req), merge_dicts_of_lists)

    def restart(self, req: FlowFilter) -> dict[str, Any]:
        handles = (
            [self.kernels.for_flow(req.flow_id)] if req.flow_id is not None else self.kernels.all()
        )
        return {"restarted": [h.restart() for h in handles]}

    # -- artifacts and clearing ------------------------------------------------------------

    def _on_flows(self, flow_id: int | None, action: str, body: dict[str, Any], merge: Any) -> Any:
        if flow_id is not None:
            return self.kernels.for_flow(flow_id).call_json(action, body)
        return self.kernels.fan_out(lambda h: h.call(action, body), merge)

    def list_artifacts(self, req: ListArtifactsRequest) -> Any:
        body = {"flow_id": req.flow_id, "node_id": req.node_id}
        return self._on_flows(req.flow_id, "list_artifacts", body, merge_lists)

    def clear(self, req: FlowFilter) -> Any:
        return self._on_flows(req.flow_id, "clear", {"flow_id": req.flow_id}, merge_dicts_of_lists)

    def clear_node_artifacts(self, req: ClearNodeArtifactsRequest) -> Any:
        body = req.model_dump()
        return self._on_flows(req.flow_id, "clear_node_artifacts", body, merge_dicts_of_lists)

    def delete(self, req: DeleteRequest) -> dict[str, str]:
        """Remove one Flight path: a file of the store, or an artifact in its kernel."""
        path = from_segments(req.path.split("/"))
        if isinstance(path, ArtifactPath):
            return dict(self.kernels.for_flow(path.flow_id).call_json("delete", req.model_dump()))
        self.store.delete(path)
        return {"deleted": str(path)}

    # -- health ----------------------------------------------------------------------------

    def health(self) -> tuple[bool, dict[str, Any]]:
        """Whether the service can serve, and the `/health` body: within a second, whatever
        the kernels do (a busy one is reported with what it last said)."""
        kernels = []
        bodies = []
        serving = False
        for handle in self.kernels.all():
            state, body = handle.health()
            status = handle.status()
            serving = serving or state != "starting"
            bodies.append(body)
            kernels.append(
                {
                    "flow_id": None,
                    "pid": status.pid,
                    "state": state,
                    "restarts": status.restarts,
                    "node": socket.gethostname(),
                }
            )
        first = next((b for b in bodies if b), {})
        counts = [b.get("artifact_count") for b in bodies]
        body = {
            **first,
            "status": "healthy" if serving else "starting",
            "version": __version__,
            "artifact_count": sum(counts) if serving and None not in counts else None,
            "table_count": self.store.count("tables"),
            "output_count": self.store.count("outputs"),
            "restarts": sum(k["restarts"] for k in kernels),
            "supervisor_pid": os.getpid(),
            "flight_location": self.flight_location,
            "kernels": kernels,
            "store": self.store.report(),
        }
        if not serving:
            body["kernel_pid"] = kernels[0]["pid"] if kernels else None
        return serving, body

    # -- the Flight actions ----------------------------------------------------------------

    def action(self, name: str, raw: bytes) -> bytes:
        """A Flight action of the public port: the same operation and JSON as over HTTP."""
        found = ACTIONS.get(name)
        if found is None:
            raise InvalidRequest(f"unknown action {name!r} (known: {', '.join(ACTIONS)})")
        request = parse(found.model, raw, f"action {name!r}")
        answer = found.run(self, request)
        return answer if isinstance(answer, bytes) else json.dumps(answer).encode()


@dataclass(frozen=True)
class Action:
    model: type[Body]
    run: Callable[[Service, Any], Any]
    description: str


def _health(service: Service, _: EmptyRequest) -> dict[str, Any]:
    return service.health()[1]


ACTIONS: dict[str, Action] = {
    "execute": Action(ExecuteRequest, Service.execute, "run code: the /execute body and response"),
    "list_artifacts": Action(
        ListArtifactsRequest, Service.list_artifacts, "artifact records: {flow_id?, node_id?}"
    ),
    "clear": Action(FlowFilter, Service.clear, "drop everything, or one flow's: {flow_id?}"),
    "clear_node_artifacts": Action(
        ClearNodeArtifactsRequest,
        Service.clear_node_artifacts,
        "drop nodes' artifacts: {node_ids, flow_id?}",
    ),
    "interrupt": Action(
        InterruptRequest,
        Service.interrupt,
        "interrupt executions: {flow_id?, node_id?, execution_id?}",
    ),
    "restart": Action(
        FlowFilter,
        Service.restart,
        "restart kernels: {flow_id?}; running executions end with KernelDied",
    ),
    "health": Action(EmptyRequest, _health, "the /health body"),
    "delete": Action(DeleteRequest, Service.delete, "remove one Flight path: {path}"),
}


def descriptions() -> list[tuple[str, str]]:
    return [(name, a.description) for name, a in ACTIONS.items()]
