"""`KernelHandle`: what the routes call on one kernel, over any `KernelProcess`.

Calls carry deadlines: an execution that outlives its timeout plus the interrupt's grace
gets its kernel killed, and a kernel that dies under an execution gives a failed result
(`KernelDied`), never an error of the control plane.
"""

from __future__ import annotations

import json
import logging
import threading
import time
import uuid
from typing import Any

from control.connection import Connection, call_json
from control.processes import KernelProcess, KernelStatus
from flight_kernel.errors import ConnectionLost, DeadlineExceeded, KernelError, KernelUnavailable
from flight_kernel.requests import ExecuteRequest, InterruptRequest
from flight_kernel.results import ErrorKind, ExecutionResult
from flight_kernel.settings import Settings

logger = logging.getLogger(__name__)

# What a kernel's death takes with it: all of it, while the kernel holds every store.
LOST_STATE = ("tables", "outputs", "artifacts")
DEATH_REPORT_WAIT_S = 10.0  # how long a lost call waits for the monitor to see the death


class KernelHandle:
    """Forward actions to one kernel, execute, interrupt, report status."""

    def __init__(self, process: KernelProcess, settings: Settings) -> None:
        self.process = process
        self.settings = settings

    def start(self) -> None:
        self.process.start()

    def stop(self) -> None:
        self.process.stop()

    def status(self) -> KernelStatus:
        return self.process.status()

    def call(self, action: str, body: dict[str, Any] | None = None, *, wait: bool = True) -> bytes:
        """Forward one action; without `wait`, a kernel that is not up is refused at once."""
        _, conn = self.process.connection(wait)
        return conn.call(action, body)

    def call_json(
        self, action: str, body: dict[str, Any] | None = None, *, wait: bool = True
    ) -> Any:
        """`call`, decoded."""
        return json.loads(self.call(action, body, wait=wait))

    def execute(self, req: ExecuteRequest) -> bytes:
        """Run code; a kernel that dies or hangs gives a failed result, not an error."""
        if req.execution_id is None:  # minted here, so that a death report can name it
            req = req.model_copy(update={"execution_id": uuid.uuid4().hex})
        timeout = req.timeout_s or self.settings.exec_timeout_s
        grace = self.settings.interrupt_grace_s
        # The kernel stops the code itself at `timeout`; this limit is only for code that
        # ignores the interrupt.
        limit = None if timeout is None else timeout + grace + 1.0
        generation, conn = self.process.connection()
        started = time.perf_counter()
        try:
            return conn.call("execute", req.model_dump(), timeout=limit)
        except DeadlineExceeded:
            reason = (
                f"Timeout: execution exceeded timeout_s={timeout:g} and ignored the interrupt "
                f"for {grace:g} s, so the kernel was restarted"
            )
            self.process.kill(generation, reason, ErrorKind.TIMEOUT)
            return self._lost(generation, started, req)
        except ConnectionLost:
            return self._lost(generation, started, req)

    def _lost(self, generation: int, started: float, req: ExecuteRequest) -> bytes:
        """The answer to an execution whose kernel died under it."""
        death = self.process.death(generation, DEATH_REPORT_WAIT_S)
        if death is None:
            raise KernelUnavailable("the kernel stopped answering during the execution")
        error = death.reason or (
            f"KernelDied: the kernel process {death.describe()} during this execution; it was "
            "restarted and its in-memory state (tables, outputs, artifacts) is lost"
        )
        result = ExecutionResult.kernel_died(
            flow_id=req.flow_id,
            node_id=req.node_id,
            execution_id=req.execution_id or "",
            error=error,
            error_kind=death.kind or ErrorKind.KERNEL_DIED,
            execution_time_ms=(time.perf_counter() - started) * 1000,
            lost_state=list(LOST_STATE),
            exit_code=death.returncode,
        )
        return json.dumps(result.to_json()).encode()

    def interrupt(self, req: InterruptRequest) -> bytes:
        """Interrupt matching executions; those still running after the grace are ended by
        killing the kernel."""
        generation, conn = self.process.connection()
        raw = conn.call("interrupt", req.model_dump(exclude_none=True))
        ids = {r["execution_id"] for r in json.loads(raw)["interrupted"]}
        if ids:
            timer = threading.Timer(
                self.settings.interrupt_grace_s, self._escalate, (generation, conn, ids)
            )
            timer.daemon = True
            timer.start()
        return raw

    def _escalate(self, generation: int, conn: Connection, ids: set[str]) -> None:
        try:
            running = call_json(conn, "health", timeout=5.0)["running"]
        except KernelError:  # gone already, or wedged: the kill below is right either way
            running = [{"execution_id": i} for i in ids]
        if ids & {r["execution_id"] for r in running}:
            grace = self.settings.interrupt_grace_s
            reason = (
                f"Interrupted: the execution ignored the interrupt for {grace:g} s, so the "
                "kernel was restarted"
            )
            self.process.kill(generation, reason, ErrorKind.INTERRUPTED)
