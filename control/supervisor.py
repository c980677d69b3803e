"""The kernel's nanny: spawn it, wait until it answers, restart it when it dies.

Every call goes through `KernelHandle`. `KernelSupervisor` owns a child process
(`python -m flight_kernel`); `AttachedKernel` talks to a kernel someone else runs
(an in-process server in the tests, or another host).
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from typing import Any

import pyarrow.flight as flight

from control.connection import KernelConnection, TransportError
from flight_kernel.errors import KernelUnavailable
from flight_kernel.settings import Settings

logger = logging.getLogger(__name__)

LOST_STATE = ["tables", "outputs", "artifacts"]
_SIGNAL_HINTS: dict[int, str] = {
    signal.SIGKILL: " (likely out of memory)",
    signal.SIGSEGV: " (segmentation fault)",
    signal.SIGABRT: " (aborted)",
}


@dataclass(frozen=True)
class Death:
    """How one kernel process ended."""

    returncode: int
    reason: str | None  # set when we killed it on purpose (timeout, ignored interrupt)

    def describe(self) -> str:
        if self.returncode >= 0:
            return f"exited with code {self.returncode}"
        signum = -self.returncode
        try:
            name = signal.Signals(signum).name
        except ValueError:
            name = f"signal {signum}"
        hint = _SIGNAL_HINTS.get(signum, "")
        return f"was killed by {name}{hint}"


def _kind_of(error: str) -> str:
    head = error.split(":", 1)[0]
    return {"KernelDied": "kernel_died", "Timeout": "timeout"}.get(head, head.lower())


class KernelHandle:
    """What the routes use: forward an action, execute, interrupt, report status."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings

    def start(self) -> None:
        raise NotImplementedError

    def stop(self) -> None:
        raise NotImplementedError

    def status(self) -> dict[str, Any]:
        raise NotImplementedError

    def _connection(self, wait: bool = True) -> tuple[int, KernelConnection]:
        raise NotImplementedError

    def _lost(self, generation: int, started: float, body: dict[str, Any]) -> bytes:
        raise KernelUnavailable("the kernel did not answer")

    def _kill(self, generation: int, reason: str) -> None:
        """End an unresponsive kernel (only a supervisor can)."""

    def call(self, action: str, body: dict[str, Any] | None = None, *, wait: bool = True) -> bytes:
        """Forward one action; without `wait`, a kernel that is not up is refused at once."""
        _, conn = self._connection(wait)
        try:
            return conn.call(action, body)
        except (TransportError, flight.FlightTimedOutError) as exc:
            raise KernelUnavailable(f"the kernel did not answer {action!r}: {exc}") from None

    def execute(self, body: dict[str, Any], *, retry: bool = True) -> bytes:
        """Run code; a kernel that dies or hangs gives a failed result, not an error."""
        timeout = body.get("timeout_s") or self.settings.exec_timeout_s
        # The kernel stops the code itself at `timeout`; this limit is only for code that
        # ignores the interrupt.
        limit = None if timeout is None else timeout + self.settings.interrupt_grace_s + 1.0
        generation, conn = self._connection()
        started = time.perf_counter()
        try:
            return conn.call("execute", body, timeout=limit)
        except flight.FlightTimedOutError:
            self._kill(
                generation,
                f"Timeout: execution exceeded timeout_s={timeout:g} and "
                f"ignored the interrupt for {self.settings.interrupt_grace_s:g}"
                " s, so the kernel was restarted",
            )
            return self._lost(generation, started, body)
        except TransportError as exc:
            if retry and "failed to connect" in str(exc):  # it never reached a kernel
                return self.execute(body, retry=False)
            return self._lost(generation, started, body)

    def interrupt(self, body: dict[str, Any]) -> bytes:
        generation, conn = self._connection()
        raw = conn.call("interrupt", body)
        ids = {r["execution_id"] for r in json.loads(raw)["interrupted"]}
        if ids:
            timer = threading.Timer(
                self.settings.interrupt_grace_s, self._escalate, (generation, conn, ids)
            )
            timer.daemon = True
            timer.start()
        return raw

    def _escalate(self, generation: int, conn: KernelConnection, ids: set[int]) -> None:
        try:
            running = conn.call_json("health", timeout=5.0)["running"]
        except Exception:  # gone already, or wedged: the kill below is right either way
            running = [{"execution_id": i} for i in ids]
        if ids & {r["execution_id"] for r in running}:
            self._kill(
                generation,
                "Interrupted: the execution ignored the interrupt for "
                f"{self.settings.interrupt_grace_s:g} s, so the kernel "
                "was restarted",
            )


class AttachedKernel(KernelHandle):
    """A kernel that runs elsewhere (in-process in tests); never restarted from here."""

    def __init__(self, settings: Settings, location: str) -> None:
        super().__init__(settings)
        self._location = location
        self._conn: KernelConnection | None = None

    def start(self) -> None:
        self._conn = KernelConnection(self._location, self.settings.auth_token)

    def stop(self) -> None:
        if self._conn is not None:
            self._conn.close()

    def _connection(self, wait: bool = True) -> tuple[int, KernelConnection]:
        if self._conn is None:
            raise KernelUnavailable("the kernel connection is not open")
        return 0, self._conn

    def status(self) -> dict[str, Any]:
        return {"state": "healthy", "restarts": 0, "kernel_pid": None}


def _alive(proc: subprocess.Popen[bytes]) -> bool:
    """Whether a child still runs, without reaping it (the monitor thread does that)."""
    try:
        return os.waitid(os.P_PID, proc.pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is None
    except ChildProcessError:  # reaped already
        return False


def _die_with_parent() -> None:  # runs in the child between fork and exec
    with contextlib.suppress(Exception):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


class KernelSupervisor(KernelHandle):
    """Owns the kernel child process and restarts it whenever it dies."""

    def __init__(self, settings: Settings) -> None:
        super().__init__(settings)
        self._cond = threading.Condition()
        self._proc: subprocess.Popen[bytes] | None = None
        self._conn: KernelConnection | None = None
        self._generation = 0
        self._restarts = 0
        self._ready = False
        self._stopping = False
        self._deaths: dict[int, Death] = {}
        self._kill_reasons: dict[int, str] = {}
        self._monitor: threading.Thread | None = None

    # -- lifecycle -------------------------------------------------------------------------

    def start(self) -> None:
        """Start the kernel and its monitor; raise if the first start fails."""
        failure: list[BaseException] = []
        self._monitor = threading.Thread(
            target=self._watch, args=(failure,), name="kernel-monitor", daemon=True
        )
        self._monitor.start()
        with self._cond:
            self._cond.wait_for(lambda: self._ready or bool(failure))
        if failure:
            raise failure[0]

    def _spawn(self) -> None:
        location = f"grpc://{self.settings.connect_host}:{self.settings.flight_port}"
        env = {**os.environ, **self.settings.to_env()}
        proc = subprocess.Popen(
            [sys.executable, "-m", "flight_kernel"], env=env, preexec_fn=_die_with_parent
        )
        deadline = time.monotonic() + self.settings.start_timeout_s
        conn = KernelConnection(location, self.settings.auth_token)
        while True:
            code = proc.poll()
            if code is not None:
                conn.close()
                raise RuntimeError(
                    f"the kernel process exited with code {code} while starting "
                    f"(is Flight port {self.settings.flight_port} free?)"
                )
            try:
                conn.call("health", timeout=1.0)
                break
            except Exception:
                if time.monotonic() > deadline:
                    proc.kill()
                    conn.close()
                    raise RuntimeError(
                        f"the kernel did not answer on {location} within "
                        f"{self.settings.start_timeout_s:g} s"
                    ) from None
                time.sleep(0.05)
        with self._cond:
            old = self._conn
            self._proc, self._conn = proc, conn
            self._generation += 1
            self._ready = True
            self._cond.notify_all()
        if old is not None:
            old.close()
        logger.info(
            "kernel ready (pid %s, generation %s) on %s", proc.pid, self._generation, location
        )

    def _watch(self, failure: list[BaseException]) -> None:
        # Every spawn happens in this long-lived thread: the kernel's "die with parent"
        # signal fires when the *thread* that forked it ends, not the process.
        try:
            self._spawn()
        except BaseException as exc:
            with self._cond:
                failure.append(exc)
                self._cond.notify_all()
            return
        while True:
            with self._cond:
                proc, generation = self._proc, self._generation
            if proc is None:
                return
            code = proc.wait()
            with self._cond:
                if self._stopping:
                    return
                death = Death(code, self._kill_reasons.pop(generation, None))
                self._deaths[generation] = death
                self._ready = False
                self._restarts += 1
                self._cond.notify_all()
            logger.warning(
                "kernel (pid %s) %s; restarting it", proc.pid, death.reason or death.describe()
            )
            while not self._stopping:
                try:
                    self._spawn()
                    break
                except Exception as exc:
                    logger.error("kernel restart failed: %s; retrying", exc)
                    time.sleep(1.0)

    def stop(self) -> None:
        with self._cond:
            self._stopping = True
            proc, conn = self._proc, self._conn
            self._ready = False
            self._cond.notify_all()
        if proc is not None and proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=5.0)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        if conn is not None:
            conn.close()

    # -- calls -----------------------------------------------------------------------------

    def _connection(self, wait: bool = True) -> tuple[int, KernelConnection]:
        """The running kernel; waits (bounded) while it (re)starts."""
        deadline = time.monotonic() + (self.settings.start_timeout_s if wait else 0.0)
        with self._cond:
            while True:
                ok = self._cond.wait_for(
                    lambda: self._ready or self._stopping,
                    timeout=max(0.0, deadline - time.monotonic()),
                )
                if not ok or self._stopping or self._conn is None or self._proc is None:
                    raise KernelUnavailable("the kernel is (re)starting; try again shortly")
                if _alive(self._proc):
                    return self._generation, self._conn
                if not wait:
                    raise KernelUnavailable("the kernel is restarting")
                # Dead, and the monitor has not noticed yet: a request sent now would be
                # reported as killed by code it never ran. Wait for the next kernel instead.
                self._cond.wait_for(
                    lambda g=self._generation: (  # type: ignore[misc]
                        self._generation != g or self._stopping
                    ),
                    timeout=max(0.0, deadline - time.monotonic()),
                )

    def _kill(self, generation: int, reason: str) -> None:
        with self._cond:
            if generation != self._generation or self._proc is None:
                return
            self._kill_reasons[generation] = reason
            proc = self._proc
        logger.warning("killing kernel pid %s: %s", proc.pid, reason)
        with contextlib.suppress(ProcessLookupError):
            proc.kill()

    def _lost(self, generation: int, started: float, body: dict[str, Any]) -> bytes:
        """The answer to an execution whose kernel died under it."""
        with self._cond:
            self._cond.wait_for(lambda: generation in self._deaths, timeout=10.0)
            death = self._deaths.get(generation)
        if death is None:
            raise KernelUnavailable("the kernel stopped answering during the execution")
        error = death.reason or (
            f"KernelDied: the kernel process {death.describe()} during this execution; it was "
            "restarted and its in-memory state (tables, outputs, artifacts) is lost"
        )
        return json.dumps(
            {
                "success": False,
                "flow_id": body.get("flow_id", 0),
                "node_id": body.get("node_id"),
                "output_paths": [],
                "published_artifacts": [],
                "deleted_artifacts": [],
                "stdout": "",
                "stderr": "",
                "error": error,
                "error_kind": _kind_of(error),
                "traceback": None,
                "logs": [],
                "execution_time_ms": round((time.perf_counter() - started) * 1000, 3),
                "kernel_restarted": True,
                "lost_state": LOST_STATE,
                "exit_code": death.returncode,
            }
        ).encode()

    def status(self) -> dict[str, Any]:
        with self._cond:
            return {
                "state": "healthy" if self._ready else "starting",
                "restarts": self._restarts,
                "kernel_pid": self._proc.pid if self._proc is not None else None,
            }
