"""The `do_action` operations: JSON in, JSON out, shaped like the HTTP responses."""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from typing import Any

from flight_kernel import __version__
from flight_kernel.errors import InvalidRequest
from flight_kernel.executor import ExecuteRequest, Executor
from flight_kernel.paths import from_segments
from flight_kernel.store import Store

Handler = Callable[[dict[str, Any]], Any]


def _optional_int(body: dict[str, Any], key: str) -> int | None:
    value = body.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidRequest(f"field {key!r} must be an integer")
    return value


def _optional_node(body: dict[str, Any], key: str = "node_id") -> str | int | None:
    value = body.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, str | int):
        raise InvalidRequest(f"field {key!r} must be a string or an integer")
    return value


class Actions:
    """Dispatches action names to handlers over the store and the executor."""

    def __init__(self, store: Store, executor: Executor, location: str = "") -> None:
        self._store = store
        self._executor = executor
        self._location = location
        self._started = time.monotonic()
        self._handlers: dict[str, tuple[Handler, str]] = {
            "execute": (self.execute, "run code: the /execute body and response"),
            "list_artifacts": (self.list_artifacts, "artifact records: {flow_id?, node_id?}"),
            "clear": (self.clear, "drop everything, or one flow's: {flow_id?}"),
            "clear_node_artifacts": (
                self.clear_node_artifacts,
                "drop nodes' artifacts: {node_ids, flow_id?}",
            ),
            "interrupt": (self.interrupt, "interrupt executions: {flow_id?, node_id?}"),
            "health": (self.health, "status, version, counts, pid"),
            "delete": (self.delete, "remove one Flight path: {path}"),
        }

    def descriptions(self) -> list[tuple[str, str]]:
        return [(name, desc) for name, (_, desc) in self._handlers.items()]

    def handle(self, name: str, raw: bytes) -> bytes:
        """Run action `name` on a JSON body; return the JSON result."""
        entry = self._handlers.get(name)
        if entry is None:
            raise InvalidRequest(f"unknown action {name!r} (known: {', '.join(self._handlers)})")
        try:
            body = json.loads(raw) if raw.strip() else {}
        except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:
            raise InvalidRequest(f"body of action {name!r} is not valid JSON: {exc}") from None
        if not isinstance(body, dict):
            raise InvalidRequest(f"body of action {name!r} must be a JSON object")
        return json.dumps(entry[0](body), default=str).encode()

    def execute(self, body: dict[str, Any]) -> dict[str, Any]:
        return self._executor.execute(ExecuteRequest.from_json(body))

    def list_artifacts(self, body: dict[str, Any]) -> list[dict[str, Any]]:
        found = self._store.list_artifacts(_optional_int(body, "flow_id"), _optional_node(body))
        return [a.record() for a in found]

    def clear(self, body: dict[str, Any]) -> dict[str, Any]:
        return {"status": "cleared", **self._store.clear(_optional_int(body, "flow_id"))}

    def clear_node_artifacts(self, body: dict[str, Any]) -> dict[str, Any]:
        node_ids = body.get("node_ids")
        if not isinstance(node_ids, list) or not all(
            isinstance(n, str | int) and not isinstance(n, bool) for n in node_ids
        ):
            raise InvalidRequest(
                "field 'node_ids' is required and must be a list of strings or integers"
            )
        gone = self._store.clear_node_artifacts(node_ids, _optional_int(body, "flow_id"))
        return {
            "status": "cleared",
            "removed": [a.name for a in gone],
            "removed_artifacts": [{"flow_id": a.flow_id, "name": a.name} for a in gone],
        }

    def interrupt(self, body: dict[str, Any]) -> dict[str, Any]:
        return {
            "interrupted": self._executor.interrupt(
                _optional_int(body, "flow_id"), _optional_node(body)
            )
        }

    def health(self, body: dict[str, Any]) -> dict[str, Any]:
        return {
            "status": "healthy",
            "version": __version__,
            **self._store.counts(),
            "running": self._executor.running(),
            "kernel_pid": os.getpid(),
            "flight_location": self._location,
            "uptime_s": round(time.monotonic() - self._started, 3),
        }

    def delete(self, body: dict[str, Any]) -> dict[str, Any]:
        path = body.get("path")
        if not isinstance(path, str):
            raise InvalidRequest("field 'path' is required and must be a Flight path string")
        parsed = from_segments(path.split("/"))
        self._store.delete(parsed)
        return {"deleted": str(parsed)}
