"""`Service`: every control operation once, for both public transports.

The HTTP routes and the Flight actions of the data plane call these methods with the same
validated requests and send back the same JSON: a Flight-only client can do everything an
HTTP client can. Each method asks the router for the kernel(s) it concerns; answers from
several kernels are merged by the router. A flow whose kernel was retired (or never
started) lives in the store only: its listings and clears are answered from the store by a
`Kernel` facade that never runs code or loads an object, so no kernel starts for them.
"""

from __future__ import annotations

import json
import os
import socket
from collections.abc import Callable, Generator
from dataclasses import dataclass
from typing import Any

from control import memory
from control.connection import OnEvent
from control.handle import KernelHandle
from control.router import (
    KernelRouter,
    Merge,
    each,
    fan_out,
    merge_dicts_of_lists,
    merge_lists,
)
from flight_kernel import __version__
from flight_kernel.actions import handle as kernel_action
from flight_kernel.errors import InvalidRequest
from flight_kernel.events import relayed, result_event
from flight_kernel.kernel import Kernel
from flight_kernel.paths import ArtifactPath, from_segments
from flight_kernel.requests import (
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
from flight_kernel.settings import Settings
from flight_kernel.store import Store


def named(req: ExecuteRequest) -> ExecuteRequest:
    """The request with its execution id: the client's, or minted here (a streaming
    execution's client that goes away interrupts it by that id)."""
    if req.execution_id is not None:
        return req
    return req.model_copy(update={"execution_id": os.urandom(16).hex()})


class Service:
    """The control operations over a router of kernels and the store they share."""

    def __init__(self, settings: Settings, kernels: KernelRouter, store: Store) -> None:
        self.settings = settings
        self.kernels = kernels
        self.store = store
        self.flight_location = ""  # the data plane's, once it listens

    # -- executions ------------------------------------------------------------------------

    def execute(self, req: ExecuteRequest, on_event: OnEvent | None = None) -> bytes:
        """Run code in the flow's kernel; the raw JSON result. With `stream: true`, the
        events of the execution go to `on_event` while it runs."""
        with self.kernels.using(req.flow_id) as handle:  # never retired while it runs
            return handle.execute(req, on_event)

    def execute_streamed(self, req: ExecuteRequest) -> Generator[bytes]:
        """A streaming execution for transports that answer with an iterator: each event as
        it comes, then `{"event": "result", ...}`. A consumer that stops early (its client
        went away) interrupts the execution."""
        req = named(req)
        return relayed(
            lambda send: result_event(self.execute(req, send)), lambda: self.abandoned(req)
        )

    def abandoned(self, req: ExecuteRequest) -> None:
        """The client of a streaming execution went away: nobody reads it, so it stops."""
        self.interrupt(InterruptRequest(flow_id=req.flow_id, execution_id=req.execution_id))

    def interrupt(self, req: InterruptRequest) -> Any:
        if req.flow_id is not None:
            holder = self.kernels.holder(req.flow_id)  # no kernel: nothing of it runs
            return json.loads(holder.interrupt(req)) if holder else {"interrupted": []}
        merged = fan_out(self.kernels, lambda h: h.interrupt(req), merge_dicts_of_lists)
        return {"interrupted": [], **merged}  # no kernel serves a flow yet: nothing runs

    def restart(self, req: FlowFilter) -> dict[str, Any]:
        if req.flow_id is None:
            handles = self.kernels.all()
        else:  # a flow without a kernel has nothing to restart
            holder = self.kernels.holder(req.flow_id)
            handles = [holder] if holder is not None else []
        return {"restarted": each(handles, lambda h: h.restart())}

    # -- artifacts and clearing ------------------------------------------------------------

    def _from_store(self, flow_id: int | None, action: str, body: dict[str, Any]) -> Any:
        """An answer about flows that live in the store only (no kernel holds them): one
        flow's, or (None) those of every flow without a kernel."""
        dormant = Kernel(self.settings, self.store, flow_id=flow_id)
        if flow_id is None:  # forget the flows a kernel holds: it answers for them
            held = {h.status().flow_id for h in self.kernels.all()}
            for art in dormant.artifacts.find():
                if art.flow_id in held:
                    dormant.artifacts.forget(art)
        return json.loads(kernel_action(dormant, action, json.dumps(body).encode()))

    def _on_flows(
        self, flow_id: int | None, action: str, body: dict[str, Any], merge: Merge
    ) -> Any:
        """An action on one flow's kernel (or the store, when no kernel holds the flow), or on
        every flow: each kernel for its own, the store for the rest, merged."""
        if flow_id is not None:
            holder = self.kernels.holder(flow_id)
            if holder is None:
                return self._from_store(flow_id, action, body)
            return holder.call_json(action, body)
        if self.kernels.serves_every_flow:
            return fan_out(self.kernels, lambda h: h.call(action, body), merge)

        def own(handle: KernelHandle) -> Any:
            return handle.call_json(action, {**body, "flow_id": handle.status().flow_id})

        return merge([*each(self.kernels.all(), own), self._from_store(None, action, body)])

    def list_artifacts(self, req: ListArtifactsRequest) -> Any:
        body = {"flow_id": req.flow_id, "node_id": req.node_id}
        return self._on_flows(req.flow_id, "list_artifacts", body, merge_lists)

    def clear_namespace(self, req: ClearNamespaceRequest) -> Any:
        """Drop a flow's namespace, or all of them (a flow without a kernel holds none)."""
        return self._on_flows(
            req.flow_id, "clear_namespace", req.model_dump(), merge_dicts_of_lists
        )

    def display_outputs(self, req: DisplayOutputsRequest) -> Any:
        """A node's last display outputs, from its flow's kernel (none without a kernel)."""
        holder = self.kernels.holder(req.flow_id)
        return holder.call_json("display_outputs", req.model_dump()) if holder else []

    def clear(self, req: FlowFilter) -> Any:
        return self._on_flows(req.flow_id, "clear", {"flow_id": req.flow_id}, merge_dicts_of_lists)

    def clear_node_artifacts(self, req: ClearNodeArtifactsRequest) -> Any:
        body = req.model_dump()
        return self._on_flows(req.flow_id, "clear_node_artifacts", body, merge_dicts_of_lists)

    def delete(self, req: DeleteRequest) -> dict[str, str]:
        """Remove one Flight path: a file of the store, or an artifact in its kernel."""
        path = from_segments(req.path.split("/"))
        if isinstance(path, ArtifactPath):
            return dict(self._on_flows(path.flow_id, "delete", req.model_dump(), merge_lists))
        self.store.delete(path)
        return {"deleted": str(path)}

    # -- health ----------------------------------------------------------------------------

    def health(self) -> tuple[bool, dict[str, Any]]:
        """Whether the service can serve, and the `/health` body: within a second, whatever
        the kernels do (every kernel is asked at once; a busy one is reported with what it
        last said)."""
        handles = self.kernels.kernels()
        answers = each(handles, lambda h: (h.health(), h.status()))
        kernels: list[dict[str, Any]] = [
            {
                "flow_id": status.flow_id,
                "pid": status.pid,
                "state": state,
                "restarts": status.restarts,
                "node": socket.gethostname(),
            }
            for (state, _), status in answers
        ]
        serving = any(k["state"] != "starting" for k in kernels)
        bodies = [body for (_, body), _ in answers]
        counts = [b.get("artifact_count") for b in bodies if b]  # a starting one holds none
        stored = 0
        if not self.kernels.serves_every_flow:  # flows that no kernel holds now
            held = {k["flow_id"] for k in kernels}
            stored = sum(n for f, n in self.store.artifact_counts().items() if f not in held)
        artifacts = sum(c or 0 for c in counts) + stored
        body = {
            "status": "healthy" if serving else "starting",
            "version": __version__,
            "isolation": self.settings.isolation,
            "artifact_count": artifacts if serving and None not in counts else None,
            "namespace_count": sum(b.get("namespace_count", 0) for b in bodies if b),
            "table_count": self.store.count("tables"),
            "output_count": self.store.count("outputs"),
            "restarts": sum(k["restarts"] for k in kernels),
            "running": [r for b in bodies for r in b.get("running", [])],
            "supervisor_pid": os.getpid(),
            "flight_location": self.flight_location,
            "kernels": kernels,
            "store": self.store.report(),
        }
        return serving, body

    def memory(self) -> dict[str, Any]:
        """`/memory`: the container's use and limit, the store, and each kernel's memory."""
        statuses = [h.status() for h in self.kernels.kernels()]
        return memory.report(self.store.usage(), [(s.flow_id, s.pid) for s in statuses])

    # -- the Flight actions ----------------------------------------------------------------

    def action(self, name: str, raw: bytes) -> bytes | Generator[bytes]:
        """A Flight action of the public port: the same operation and JSON as over HTTP; one
        answer, or a streaming execution's events and then its result."""
        found = ACTIONS.get(name)
        if found is None:
            raise InvalidRequest(f"unknown action {name!r} (known: {', '.join(ACTIONS)})")
        request = parse(found.model, raw, f"action {name!r}")
        if isinstance(request, ExecuteRequest) and request.stream:
            return self.execute_streamed(request)
        answer = found.run(self, request)
        return answer if isinstance(answer, bytes) else json.dumps(answer).encode()


@dataclass(frozen=True)
class Action:
    model: type[Body]
    run: Callable[[Service, Any], Any]
    description: str


def _health(service: Service, _: EmptyRequest) -> dict[str, Any]:
    return service.health()[1]


def _memory(service: Service, _: EmptyRequest) -> dict[str, Any]:
    return service.memory()


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
    "clear_namespace": Action(
        ClearNamespaceRequest,
        Service.clear_namespace,
        "drop a flow's namespace, or all of them: {flow_id, namespace?}",
    ),
    "display_outputs": Action(
        DisplayOutputsRequest,
        Service.display_outputs,
        "a node's last display outputs: {flow_id, node_id}",
    ),
    "memory": Action(EmptyRequest, _memory, "the /memory body: use, limit, store, kernels"),
    "delete": Action(DeleteRequest, Service.delete, "remove one Flight path: {path}"),
}


def descriptions() -> list[tuple[str, str]]:
    return [(name, a.description) for name, a in ACTIONS.items()]
