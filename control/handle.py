"""`KernelHandle`: what the routes call on one kernel, over any `KernelProcess`.

Calls carry deadlines: an execution that outlives its timeout plus the interrupt's grace
gets its kernel killed, and a kernel that dies under an execution gives a failed result
(`KernelDied`), never an error of the control plane. The handle keeps its own list of the
executions in flight, so that it can answer for them when the kernel cannot: an interrupt
of a kernel stuck in C, and the death reports of bystanders.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from typing import Any

import pyarrow as pa
import pyarrow.flight as flight

from control.connection import Connection, OnEvent, call_json
from control.processes import Death, KernelProcess, KernelStatus, Lost
from flight_kernel.errors import ConnectionLost, DeadlineExceeded, KernelError, KernelUnavailable
from flight_kernel.requests import ExecuteRequest, InterruptRequest
from flight_kernel.results import ErrorKind, ExecutionResult
from flight_kernel.settings import Settings

logger = logging.getLogger(__name__)

DEATH_REPORT_WAIT_S = 10.0  # how long a lost call waits for the monitor to see the death
QUICK_CALL_S = 1.0  # deadline of calls that must not wait on a busy kernel (interrupt, listing)
HEALTH_CALL_S = 0.8  # /health answers within 1 s, busy kernel or not


def _matches(req: ExecuteRequest, flt: InterruptRequest) -> bool:
    return (
        (flt.flow_id is None or req.flow_id == flt.flow_id)
        and (flt.node_id is None or str(req.node_id) == str(flt.node_id))
        and (flt.execution_id is None or req.execution_id == flt.execution_id)
    )


def _describe(req: ExecuteRequest) -> dict[str, Any]:
    return {"execution_id": req.execution_id, "flow_id": req.flow_id, "node_id": req.node_id}


def _restarted_between(raw: bytes, lost: Lost) -> bytes:
    """An answer from a kernel that replaced the one this flow last used: say what went."""
    body = json.loads(raw)
    body.update(kernel_restarted=True, **lost.report())
    return json.dumps(body).encode()


class KernelHandle:
    """Forward actions to one kernel, execute, interrupt, restart, report status."""

    def __init__(self, process: KernelProcess, settings: Settings) -> None:
        self.process = process
        self.settings = settings
        self._lock = threading.Lock()
        self._inflight: dict[str, ExecuteRequest] = {}
        self._last_health: dict[str, Any] = {}
        # The kernel generation each flow last heard from: a flow's first answer from a newer
        # one says that its kernel died in between.
        self._flow_generation: dict[int, int] = {}
        # What a flow lost when an earlier kernel of it was retired, told on its next answer.
        self._untold: dict[int, Lost] = {}
        self._escalations: set[threading.Timer] = set()  # interrupts' grace timers, pending

    def start(self) -> None:
        self.process.start()

    def stop(self) -> None:
        self._cancel_escalations()
        self.process.stop()

    def _cancel_escalations(self) -> None:
        """A kernel stopped for good is escalated against by nobody."""
        with self._lock:
            timers, self._escalations = self._escalations, set()
        for timer in timers:
            timer.cancel()

    def adopt(self, flow_id: int, lost: Lost | None = None) -> None:
        """This (spare) kernel now serves `flow_id`, which lost `lost` when its last kernel
        was retired (None: it never had one)."""
        self.process.adopt(flow_id)  # a kernel that dies now comes back serving the flow
        if lost is not None:
            with self._lock:
                self._untold[flow_id] = lost
        try:
            self.call("adopt", {"flow_id": flow_id})
        except (ConnectionLost, KernelUnavailable):  # its successor serves the flow from start
            logger.info("the kernel died while adopting flow %s", flow_id)

    def retire(self) -> Lost:
        """Stop this kernel for good (it persists what it can first); what went with it."""
        self._cancel_escalations()
        return self.process.retire()

    def status(self) -> KernelStatus:
        return self.process.status()

    def call(
        self,
        action: str,
        body: dict[str, Any] | None = None,
        *,
        wait: bool = True,
        timeout: float | None = None,
    ) -> bytes:
        """Forward one action; without `wait`, a kernel that is not up is refused at once."""
        _, conn = self.process.connection(wait)
        return conn.call(action, body, timeout)

    def call_json(
        self, action: str, body: dict[str, Any] | None = None, *, wait: bool = True
    ) -> Any:
        """`call`, decoded."""
        return json.loads(self.call(action, body, wait=wait))

    # -- executions ------------------------------------------------------------------------

    def execute(
        self, req: ExecuteRequest, on_event: OnEvent | None = None, *, retry: bool = True
    ) -> bytes:
        """Run code; a kernel that dies or hangs gives a failed result, not an error. A
        streaming execution's events go to `on_event` as they come."""
        if req.execution_id is None:  # minted here, so that a death report can name it
            req = req.model_copy(update={"execution_id": os.urandom(16).hex()})
        execution_id = req.execution_id
        assert execution_id is not None
        timeout = req.timeout_s or self.settings.exec_timeout_s
        grace = self.settings.interrupt_grace_s
        # The kernel stops the code itself at `timeout`; this limit is only for code that
        # ignores the interrupt.
        limit = None if timeout is None else timeout + grace + 1.0
        generation, conn = self.process.connection()
        started = time.perf_counter()
        starts = self.process.starts(generation)
        with self._lock:
            self._inflight[execution_id] = req
            heard = self._flow_generation.setdefault(req.flow_id, generation)
            self._flow_generation[req.flow_id] = generation
            untold = self._untold.pop(req.flow_id, None)
        try:
            try:
                raw = conn.call("execute", req.model_dump(), limit, on_event)
            except KernelError:
                if untold is not None:  # not told yet: the flow's next answer says it
                    with self._lock:
                        self._untold.setdefault(req.flow_id, untold)
                raise
            if heard == generation and untold is None:
                return raw
            lost = (untold or Lost()) + self._lost_between(req.flow_id, heard, generation)
            return _restarted_between(raw, lost)
        except DeadlineExceeded:
            reason = (
                f"Timeout: execution exceeded timeout_s={timeout:g} and ignored the interrupt "
                f"for {grace:g} s, so the kernel was restarted"
            )
            self.process.kill(generation, reason, ErrorKind.TIMEOUT, frozenset({execution_id}))
            return self._lost(generation, started, req)
        except ConnectionLost:
            never_ran = self.process.death(generation, DEATH_REPORT_WAIT_S) is not None and (
                not self.process.started(generation, execution_id, starts)
            )
            if never_ran and retry:  # it died before the code started: the next kernel runs it
                with self._lock:
                    self._flow_generation[req.flow_id] = heard
                return self.execute(req, on_event, retry=False)
            return self._lost(generation, started, req)
        finally:
            with self._lock:
                self._inflight.pop(execution_id, None)

    def _lost_between(self, flow_id: int, first: int, last: int) -> Lost:
        """What of a flow died with the kernels of generations first..last-1."""
        lost = Lost()
        for generation in range(first, last):
            death = self.process.death(generation, 0)
            if death is not None:
                lost += death.lost.of(flow_id)
        return lost

    def _lost(self, generation: int, started: float, req: ExecuteRequest) -> bytes:
        """The answer to an execution whose kernel died under it."""
        death = self.process.death(generation, DEATH_REPORT_WAIT_S)
        if death is None:
            raise KernelUnavailable("the kernel stopped answering during the execution")
        with self._lock:  # this flow is told now; its next answer comes from the next kernel
            self._flow_generation[req.flow_id] = generation + 1
        error, kind = self._why(death, req)
        stdout, stderr = self.process.printed(generation, req.execution_id or "")
        result = ExecutionResult.kernel_died(
            flow_id=req.flow_id,
            node_id=req.node_id,
            execution_id=req.execution_id or "",
            error=error,
            error_kind=kind,
            execution_time_ms=(time.perf_counter() - started) * 1000,
            **death.lost.of(req.flow_id).report(),
            exit_code=death.returncode,
            stdout=stdout,
            stderr=stderr,
        )
        return json.dumps(result.to_json()).encode()

    @staticmethod
    def _why(death: Death, req: ExecuteRequest) -> tuple[str, ErrorKind]:
        """What this execution is told: the reason if it was killed for its own sake or for
        every execution's (a restart), else that it died with the kernel, and why."""
        lost = "what it held in memory is lost (tables, outputs and persisted artifacts are kept)"
        if death.reason is None:
            return (
                f"KernelDied: the kernel process {death.describe()} during this execution; it "
                f"was restarted and {lost}",
                ErrorKind.KERNEL_DIED,
            )
        kind = death.kind or ErrorKind.KERNEL_DIED
        if not death.culprits or req.execution_id in death.culprits:
            return death.reason, kind
        cause = death.reason.split(": ", 1)[-1]
        return (
            f"KernelDied: the kernel was restarted during this execution because of another "
            f"execution in it ({cause}); {lost}",
            ErrorKind.KERNEL_DIED,
        )

    # -- data only the kernel holds -------------------------------------------------------

    def read(self, path: str) -> flight.FlightStreamReader:
        """`do_get` of an artifact the store does not hold (yet)."""
        _, conn = self.process.connection()
        return conn.read(path)

    def write(self, path: str, table: pa.Table) -> None:
        """`do_put` of an artifact: the kernel restores the object (that may run code)."""
        _, conn = self.process.connection()
        conn.write(path, table)

    def infos(self, prefix: str) -> list[flight.FlightInfo]:
        """The kernel's listing; a kernel too busy to answer at once is left out."""
        _, conn = self.process.connection(wait=False)
        return conn.infos(prefix, QUICK_CALL_S)

    def info(self, path: str) -> flight.FlightInfo:
        _, conn = self.process.connection()
        return conn.info(path, QUICK_CALL_S)

    # -- interrupt, restart, health -------------------------------------------------------

    def interrupt(self, req: InterruptRequest) -> bytes:
        """Interrupt matching executions; those still running after the grace are ended by
        killing the kernel. A kernel too busy to answer gets the kill without the question."""
        generation, conn = self.process.connection()
        try:
            raw = conn.call("interrupt", req.model_dump(exclude_none=True), QUICK_CALL_S)
            interrupted = json.loads(raw)["interrupted"]
        except (DeadlineExceeded, ConnectionLost):
            with self._lock:
                interrupted = [_describe(r) for r in self._inflight.values() if _matches(r, req)]
            raw = json.dumps({"interrupted": interrupted}).encode()
        ids = {r["execution_id"] for r in interrupted}
        if ids:
            timer = threading.Timer(
                self.settings.interrupt_grace_s, self._escalate, (generation, conn, ids)
            )
            timer.daemon = True
            timer.start()
            with self._lock:  # the ones that fired are done with
                self._escalations = {t for t in self._escalations if t.is_alive()} | {timer}
        return raw

    def _escalate(self, generation: int, conn: Connection, ids: set[str]) -> None:
        try:
            running = call_json(conn, "health", timeout=QUICK_CALL_S)["running"]
        except KernelError:  # gone already, or wedged: the kill below is right either way
            running = [{"execution_id": i} for i in ids]
        stuck = ids & {r["execution_id"] for r in running}
        if stuck:
            grace = self.settings.interrupt_grace_s
            reason = (
                f"Interrupted: the execution ignored the interrupt for {grace:g} s, so the "
                "kernel was restarted"
            )
            self.process.kill(generation, reason, ErrorKind.INTERRUPTED, frozenset(stuck))

    def restart(self) -> dict[str, Any]:
        """Jupyter's "restart kernel": running executions end with `KernelDied`."""
        generation, _ = self.process.connection()
        reason = (
            "KernelDied: the kernel was restarted during this execution: a restart was "
            "requested (POST /restart)"
        )
        self.process.kill(generation, reason, ErrorKind.KERNEL_DIED)
        death = self.process.death(generation, DEATH_REPORT_WAIT_S)
        self.process.connection()  # waits for the new kernel
        lost = death.lost if death is not None else Lost()
        status = self.process.status()
        return {
            "flow_id": status.flow_id,
            "pid": status.pid,
            "lost_artifacts": [str(p) for p in lost.artifacts],
            "lost_namespaces": [{"flow_id": f, "namespace": n} for f, n in lost.namespaces],
        }

    def health(self) -> tuple[str, dict[str, Any]]:
        """The kernel's own health body, and its state: `healthy`, `busy` (it did not answer
        within `HEALTH_CALL_S`: the last answer is given) or `starting`."""
        if self.process.status().state != "healthy":
            return "starting", {}
        try:
            body: dict[str, Any] = json.loads(
                self.call("health", wait=False, timeout=HEALTH_CALL_S)
            )
        except DeadlineExceeded:
            with self._lock:
                return "busy", dict(self._last_health)
        except KernelUnavailable:
            return "starting", {}
        with self._lock:
            self._last_health = body
        return "healthy", body
