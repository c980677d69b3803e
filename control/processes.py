"""Kernel processes: how a kernel is started, reached, killed and watched.

`KernelProcess` is the seam: `LocalKernelProcess` runs `python -m flight_kernel` as a child
and restarts it whenever it dies; `AttachedKernel` wraps a connection to a kernel someone
else runs (tests, another host). `KernelHandle` works over either.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import secrets
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from control.connection import ChannelConnection, Connection, call_json
from flight_kernel import namespaces, spool
from flight_kernel.errors import (
    ConnectionLost,
    DeadlineExceeded,
    KernelError,
    KernelUnavailable,
)
from flight_kernel.journal import StartJournal
from flight_kernel.kernel import RESTART_EXIT_CODE
from flight_kernel.parent import PARENT_PID
from flight_kernel.paths import ArtifactPath
from flight_kernel.process import ANNOUNCE_FD, FLOW_ID, JOURNAL_FD, KERNEL_ID, SPOOL_DIR, TOKEN_FD
from flight_kernel.results import ErrorKind
from flight_kernel.settings import Settings
from flight_kernel.store import Store

logger = logging.getLogger(__name__)

_SIGNAL_HINTS: dict[int, str] = {
    signal.SIGKILL: " (likely out of memory)",
    signal.SIGSEGV: " (segmentation fault)",
    signal.SIGABRT: " (aborted)",
}


@dataclass(frozen=True)
class Lost:
    """What died with a kernel: artifacts published and not persisted before it, and the
    named namespaces it held (flow_id, name). Tables and outputs are in the store."""

    artifacts: tuple[ArtifactPath, ...] = ()
    namespaces: tuple[tuple[int, str], ...] = ()

    def of(self, flow_id: int) -> Lost:
        """One flow's share."""
        return Lost(
            tuple(p for p in self.artifacts if p.flow_id == flow_id),
            tuple(k for k in self.namespaces if k[0] == flow_id),
        )

    def __add__(self, other: Lost) -> Lost:
        return Lost(self.artifacts + other.artifacts, self.namespaces + other.namespaces)

    def report(self) -> dict[str, list[str]]:
        """The response fields: `lost_state` (each kind only when something of it was lost),
        `lost_artifacts`, `lost_namespaces`."""
        state = ["namespace"] if self.namespaces else []
        state += ["artifacts"] if self.artifacts else []
        return {
            "lost_state": state,
            "lost_artifacts": [p.name for p in self.artifacts],
            "lost_namespaces": [name for _, name in self.namespaces],
        }


@dataclass(frozen=True)
class Death:
    """How one kernel process ended, and why when it was killed on purpose."""

    returncode: int
    reason: str | None = None  # set when we killed it (timeout, ignored interrupt, restart)
    kind: ErrorKind | None = None
    culprits: frozenset[str] = frozenset()  # the executions it was killed for, if any
    lost: Lost = Lost()

    def describe(self) -> str:
        if self.returncode == RESTART_EXIT_CODE:
            return "was restarted on request (the restart action)"
        if self.returncode >= 0:
            return f"exited with code {self.returncode}"
        signum = -self.returncode
        try:
            name = signal.Signals(signum).name
        except ValueError:
            name = f"signal {signum}"
        return f"was killed by {name}{_SIGNAL_HINTS.get(signum, '')}"


@dataclass(frozen=True)
class KernelStatus:
    """What the control plane knows of a kernel without asking it."""

    state: str  # "healthy" or "starting"
    restarts: int
    pid: int | None
    flow_id: int | None = None  # the flow it serves; None: every flow, or a spare


class KernelProcess(Protocol):
    """A kernel the control plane can reach, and perhaps kill and restart."""

    def start(self) -> None:
        """Bring the kernel up; raise when it cannot start."""
        ...

    def stop(self) -> None: ...

    def connection(self, wait: bool = True) -> tuple[int, Connection]:
        """The running kernel's generation and connection; waits (bounded) while it restarts,
        or raises `KernelUnavailable` at once without `wait`."""
        ...

    def kill(
        self,
        generation: int,
        reason: str,
        kind: ErrorKind,
        culprits: frozenset[str] = frozenset(),
    ) -> None:
        """End that generation of the kernel (when it still runs), saying why and for which
        executions (the others running in it are bystanders)."""
        ...

    def death(self, generation: int, timeout: float) -> Death | None:
        """How that generation ended; None when it has not (within `timeout`)."""
        ...

    def starts(self, generation: int) -> int:
        """How many executions that generation started so far (a mark to pass `started`)."""
        ...

    def started(self, generation: int, execution_id: str, since: int) -> bool:
        """Whether that generation started the execution after `starts` was `since` (False:
        the code never ran, so it may go to the next kernel)."""
        ...

    def adopt(self, flow_id: int) -> None:
        """A spare becomes the kernel of `flow_id` (its next start serves that flow)."""
        ...

    def retire(self) -> Lost:
        """Stop for good, letting the kernel persist what it can; what it could not keep."""
        ...

    def printed(self, generation: int, execution_id: str) -> tuple[str, str]:
        """What an execution of that (dead) generation printed: (stdout, stderr)."""
        ...

    def status(self) -> KernelStatus: ...


class AttachedKernel:
    """A kernel that runs elsewhere, over a given connection; never killed from here."""

    def __init__(self, connection: Connection) -> None:
        self._conn = connection

    def start(self) -> None:
        pass

    def stop(self) -> None:
        self._conn.close()

    def connection(self, wait: bool = True) -> tuple[int, Connection]:
        return 0, self._conn

    def kill(
        self,
        generation: int,
        reason: str,
        kind: ErrorKind,
        culprits: frozenset[str] = frozenset(),
    ) -> None:
        logger.warning("cannot kill an attached kernel (%s)", reason)

    def death(self, generation: int, timeout: float) -> Death | None:
        return None

    def starts(self, generation: int) -> int:
        return 0

    def started(self, generation: int, execution_id: str, since: int) -> bool:
        return True

    def adopt(self, flow_id: int) -> None:
        pass

    def retire(self) -> Lost:
        self.stop()
        return Lost()

    def printed(self, generation: int, execution_id: str) -> tuple[str, str]:
        return "", ""

    def status(self) -> KernelStatus:
        return KernelStatus("healthy", 0, None)


def _alive(proc: subprocess.Popen[bytes]) -> bool:
    """Whether a child still runs, without reaping it (the monitor thread does that)."""
    try:
        return os.waitid(os.P_PID, proc.pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is None
    except ChildProcessError:  # reaped already
        return False


def _end_group(proc: subprocess.Popen[bytes]) -> None:
    """Kill the kernel and everything it started (its own session): a child that user code
    forked must not keep the kernel's sockets, connections or memory alive."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)


HEALTH_CHECK_EVERY_S = 2.0
_SHM = "/dev/shm" if os.path.isdir("/dev/shm") else None


class StartFailed(RuntimeError):
    """A kernel could not be started; the message says why."""


def _read_announcement(fd: int, proc: subprocess.Popen[bytes], deadline: float) -> dict[str, Any]:
    """The one JSON line a starting kernel writes on its pipe."""
    data = b""
    while b"\n" not in data:
        left = deadline - time.monotonic()
        if left <= 0:
            raise StartFailed("the kernel did not announce itself in time")
        ready, _, _ = select.select([fd], [], [], left)
        if not ready:
            continue
        chunk = os.read(fd, 65536)
        if not chunk:  # the kernel closed the pipe without a word: it died
            code = proc.wait()
            raise StartFailed(f"the kernel process exited with code {code} while starting")
        data += chunk
    message: dict[str, Any] = json.loads(data.split(b"\n", 1)[0])
    return message


def _replaced(kernel: LocalKernelProcess, generation: int) -> Callable[[], bool]:
    """Whether `kernel` has moved past `generation` (or is stopping)."""
    return lambda: kernel._generation != generation or kernel._stopping


class LocalKernelProcess:
    """Owns a kernel child process and restarts it whenever it dies.

    It serves one flow (`flow_id`), every flow (`flow_id` None, `shared` isolation), or, as
    a spare, none until it adopts one: what a death takes from the store (the markers of
    unpersisted artifacts, half-written files) is that scope's only."""

    def __init__(
        self,
        settings: Settings,
        store: Store,
        command: Sequence[str] | None = None,
        *,
        flow_id: int | None = None,
        spare: bool = False,
    ) -> None:
        self.settings = settings
        self.store = store
        self.flow_id = flow_id
        self.spare = spare
        self._command = list(command or [sys.executable, "-m", "flight_kernel"])
        self._cond = threading.Condition()
        self._proc: subprocess.Popen[bytes] | None = None
        self._conn: ChannelConnection | None = None
        self._generation = 0
        self._restarts = 0
        self._ready = False
        self._stopping = False
        self._deaths: dict[int, Death] = {}
        self._kill_reasons: dict[int, tuple[str, ErrorKind, frozenset[str]]] = {}
        self._monitor: threading.Thread | None = None
        self._journals: dict[int, StartJournal] = {}
        self._spools: dict[int, str] = {}  # each generation's spool directory

    # -- lifecycle -------------------------------------------------------------------------

    def start(self) -> None:
        """Start the kernel and its monitor; raise `StartFailed` if the first start fails."""
        failure: list[BaseException] = []
        self._monitor = threading.Thread(
            target=self._watch, args=(failure,), name="kernel-monitor", daemon=True
        )
        self._monitor.start()
        with self._cond:
            self._cond.wait_for(lambda: self._ready or bool(failure))
        if failure:
            raise failure[0]
        watchdog = threading.Thread(target=self._watch_health, name="kernel-health", daemon=True)
        watchdog.start()

    def _watch_health(self) -> None:
        """Restart a kernel that answers `health` wrongly, or not at all for too long."""
        limit = self.settings.health_timeout_s
        last_ok = time.monotonic()
        while True:
            with self._cond:
                if self._cond.wait_for(lambda: self._stopping, timeout=HEALTH_CHECK_EVERY_S):
                    return
                if not self._ready or self._conn is None:
                    last_ok = time.monotonic()
                    continue
                generation, conn = self._generation, self._conn
            reason = None
            try:
                conn.call("health", None, min(HEALTH_CHECK_EVERY_S, limit))
                last_ok = time.monotonic()
            except (DeadlineExceeded, ConnectionLost):  # busy in C, or dying: give it time
                if time.monotonic() - last_ok > limit:
                    reason = f"the kernel did not answer health for {limit:g} s"
            except KernelError as exc:  # it answers, but cannot serve
                reason = f"the kernel answered health with an error ({exc})"
            if reason is not None:
                self.kill(
                    generation, f"KernelDied: {reason}, so it was restarted", ErrorKind.KERNEL_DIED
                )
                last_ok = time.monotonic()

    def _spawn(self) -> None:
        kernel_id = secrets.token_hex(16)
        read_fd, write_fd = os.pipe()
        token_read, token_write = os.pipe()
        os.write(token_write, (self.settings.auth_token or "").encode())  # fits a pipe's buffer
        os.close(token_write)
        env = {k: v for k, v in os.environ.items() if k != "KERNEL_AUTH_TOKEN"}
        env.update(self.settings.to_env())
        # Only the control process listens on the service's ports: the kernel takes a free
        # port on loopback, which it announces, for the control process alone.
        env.update({"KERNEL_HOST": "127.0.0.1", "KERNEL_FLIGHT_PORT": "0"})
        with self._cond:
            if self.spare:
                env[FLOW_ID] = "spare"
            elif self.flow_id is not None:
                env[FLOW_ID] = str(self.flow_id)
        journal = StartJournal.create()
        spool_dir = tempfile.mkdtemp(prefix="kernel-spool-", dir=_SHM)
        env.update(
            {
                ANNOUNCE_FD: str(write_fd),
                TOKEN_FD: str(token_read),
                JOURNAL_FD: str(journal.fd),
                SPOOL_DIR: spool_dir,
                KERNEL_ID: kernel_id,
                PARENT_PID: str(os.getpid()),
            }
        )
        try:
            proc = subprocess.Popen(
                self._command,
                env=env,
                pass_fds=(write_fd, token_read, journal.fd),
                start_new_session=True,  # its own process group, ended with it
            )
        finally:
            os.close(write_fd)
            os.close(token_read)
        try:
            conn = self._verify(proc, read_fd, kernel_id)
        except BaseException:
            journal.close()
            shutil.rmtree(spool_dir, ignore_errors=True)
            _end_group(proc)
            proc.wait()
            raise
        finally:
            os.close(read_fd)
        with self._cond:
            old = self._conn
            self._proc, self._conn = proc, conn
            self._generation += 1
            for generation in [g for g in self._journals if g <= self._generation - 4]:
                self._journals.pop(generation).close()  # late answers only ask recent ones
                shutil.rmtree(self._spools.pop(generation), ignore_errors=True)
            self._journals[self._generation] = journal
            self._spools[self._generation] = spool_dir
            self._ready = True
            self._cond.notify_all()
        if old is not None:
            old.close()
        logger.info(
            "kernel ready (pid %s, generation %s) on %s", proc.pid, self._generation, conn.location
        )

    def _verify(self, proc: subprocess.Popen[bytes], fd: int, kernel_id: str) -> ChannelConnection:
        """Connect to the kernel that announced itself, checking that it is the one started."""
        deadline = time.monotonic() + self.settings.start_timeout_s
        announced = _read_announcement(fd, proc, deadline)
        if "error" in announced:
            raise StartFailed(str(announced["error"]))
        if announced.get("pid") != proc.pid or announced.get("kernel_id") != kernel_id:
            raise StartFailed(
                f"a process announced itself as pid {announced.get('pid')}, not as the kernel "
                f"this service started (pid {proc.pid})"
            )
        if not announced.get("channel") or not announced.get("location"):
            raise StartFailed(f"the kernel announced no channel and location: {announced}")
        conn = ChannelConnection(
            str(announced["channel"]), str(announced["location"]), self.settings.auth_token
        )
        try:
            health = call_json(conn, "health", timeout=max(1.0, deadline - time.monotonic()))
        except KernelError as exc:
            conn.close()
            raise StartFailed(f"the kernel did not answer on {conn.channel}: {exc}") from None
        if health.get("kernel_id") != kernel_id or health.get("kernel_pid") != proc.pid:
            conn.close()
            raise StartFailed(
                f"{conn.channel} is answered by another process (pid "
                f"{health.get('kernel_pid')}), not by the kernel this service started "
                f"(pid {proc.pid})"
            )
        return conn

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
            _end_group(proc)  # what it started dies with it
            with self._cond:
                if self._conn is not None:
                    self._conn.remove()
            with self._cond:
                if self._stopping:  # executions still running hear why at once; what it
                    # could not persist stays marked, for `retire` (or the next service)
                    self._deaths[generation] = Death(
                        code,
                        "KernelDied: the service shut down during this execution",
                        ErrorKind.KERNEL_DIED,
                    )
                    self._cond.notify_all()
                    return
            # What it had not persisted is gone: the store's markers say what, and go with
            # its half-written files, before the next kernel reads the store.
            lost = self._take_lost(generation)
            with self._cond:
                why = self._kill_reasons.pop(generation, None)
                reason, kind, culprits = why if why is not None else (None, None, frozenset())
                death = Death(code, reason, kind, culprits, lost)
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

    def _take_lost(self, generation: int) -> Lost:
        """What died with this kernel generation (its namespaces, what it had not persisted),
        and its half-written files: its scope's."""
        with self._cond:
            spare, flow_id = self.spare, self.flow_id
            directory = self._spools.get(generation)
        if spare:  # it served no flow: nothing of anyone's is its
            return Lost()
        artifacts = tuple(self.store.take_lost(flow_id))
        self.store.sweep_written(flow_id)
        held = tuple(namespaces.marked(directory)) if directory is not None else ()
        return Lost(artifacts, held)

    def adopt(self, flow_id: int) -> None:
        with self._cond:
            self.flow_id, self.spare = flow_id, False

    def retire(self) -> Lost:
        with self._cond:
            generation = self._generation
        self._stop()  # SIGTERM: it persists what it can first (`TERM_FLUSH_S`)
        lost = self._take_lost(generation)  # read from its spool directory, so before this:
        self._remove_spools()
        return lost

    def stop(self) -> None:
        self._stop()
        self._remove_spools()

    def _remove_spools(self) -> None:
        with self._cond:
            for directory in self._spools.values():
                shutil.rmtree(directory, ignore_errors=True)

    def _stop(self) -> None:
        with self._cond:
            if self._stopping:  # stopped at the end of the shutdown grace already
                return
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
        if proc is not None:
            _end_group(proc)
        if conn is not None:
            conn.close()

    # -- calls -----------------------------------------------------------------------------

    def connection(self, wait: bool = True) -> tuple[int, Connection]:
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
                    _replaced(self, self._generation),
                    timeout=max(0.0, deadline - time.monotonic()),
                )

    def kill(
        self,
        generation: int,
        reason: str,
        kind: ErrorKind,
        culprits: frozenset[str] = frozenset(),
    ) -> None:
        with self._cond:
            if generation != self._generation or self._proc is None:
                return
            self._kill_reasons.setdefault(generation, (reason, kind, culprits))
            proc = self._proc
        logger.warning("killing kernel pid %s: %s", proc.pid, reason)
        _end_group(proc)

    def death(self, generation: int, timeout: float) -> Death | None:
        with self._cond:
            self._cond.wait_for(lambda: generation in self._deaths, timeout=timeout)
            return self._deaths.get(generation)

    def starts(self, generation: int) -> int:
        with self._cond:
            journal = self._journals.get(generation)
        return journal.count() if journal is not None else 0

    def started(self, generation: int, execution_id: str, since: int) -> bool:
        with self._cond:
            journal = self._journals.get(generation)
        return journal is None or journal.started_since(execution_id, since)

    def printed(self, generation: int, execution_id: str) -> tuple[str, str]:
        with self._cond:
            directory = self._spools.get(generation)
        if directory is None:
            return "", ""
        return spool.read(directory, execution_id, self.settings.max_stream_bytes)

    def status(self) -> KernelStatus:
        with self._cond:
            return KernelStatus(
                "healthy" if self._ready else "starting",
                self._restarts,
                self._proc.pid if self._proc is not None else None,
                self.flow_id,
            )
