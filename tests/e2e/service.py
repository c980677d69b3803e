"""The real `kernel-runtime serve` as a child process on free ports, for the e2e tests."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import psutil
import pytest

from tests.helpers import Latch, execute, free_port, healthy, poll

SERVE = str(Path(sys.executable).parent / "kernel-runtime")
START_DEADLINE_S = 60.0
STOP_DEADLINE_S = 60.0
# Long enough that code which does stop when interrupted is never restarted for being slow;
# tests of the restart pass a short grace, which only shortens their wait.
PATIENT_GRACE_S = "60"


@dataclass
class Service:
    """A running `kernel-runtime serve`, its HTTP client and where it logs."""

    proc: subprocess.Popen[bytes]
    http: httpx.Client
    flight_port: int
    log_path: Path

    @property
    def flight_url(self) -> str:
        return f"grpc://127.0.0.1:{self.flight_port}"

    def log(self) -> str:
        """What the service (and its kernels) printed so far."""
        return self.log_path.read_text(errors="replace")

    def execute(self, code: str, *, node_id: str | int = "n1", **fields: Any) -> dict[str, Any]:
        """POST /execute; the answer, which must be a 200."""
        return execute(self.http, code, node_id=node_id, **fields)

    def healthy(self, timeout: float = START_DEADLINE_S) -> dict[str, Any]:
        """The /health answer once it is a 200; fails if the service exits or time runs out."""

        def answer() -> dict[str, Any] | None:
            if self.proc.poll() is not None:
                pytest.fail(f"serve exited with {self.proc.returncode}:\n{self.log()}")
            return healthy(self.http)

        return poll(answer, timeout, "/health to answer 200", detail=self.log)

    def kernel_pid(self, flow_id: int | None = 0, *, other_than: int | None = None) -> int:
        """The pid of the healthy kernel that serves `flow_id` (and is not `other_than`: the
        one it had before a restart); fails when there is none in time."""

        def found() -> int | None:
            for kernel in self.healthy()["kernels"]:
                if kernel["flow_id"] == flow_id and kernel["state"] == "healthy":
                    pid: int = kernel["pid"]
                    return pid if pid != other_than else None
            return None

        return poll(found, START_DEADLINE_S, f"a kernel of flow {flow_id}", detail=self.log)

    def flow_kernel(self, flow_id: int = 0) -> int:
        """The pid of the kernel of `flow_id`, giving the flow one first (a no-op runs there)."""
        if not any(k["flow_id"] == flow_id for k in self.healthy()["kernels"]):
            self.execute("pass", node_id="start-the-kernel", flow_id=flow_id)
        return self.kernel_pid(flow_id)

    def kernel_pids(self) -> list[int]:
        """The service's descendant processes: its kernel, normally."""
        return [child.pid for child in psutil.Process(self.proc.pid).children(recursive=True)]

    def stop(self) -> int:
        """SIGTERM, then the exit code; a service that does not stop is killed with its kernel."""
        self.http.close()
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout=STOP_DEADLINE_S)
        except subprocess.TimeoutExpired:
            self.kill()
            raise

    def kill(self) -> None:
        """SIGKILL the service and its kernels (a test that failed half way)."""
        if self.proc.poll() is not None:
            return
        children = psutil.Process(self.proc.pid).children(recursive=True)
        self.proc.kill()
        self.proc.wait()
        for child in children:
            child.kill()


@contextlib.contextmanager
def threads() -> Iterator[ThreadPoolExecutor]:
    """Threads for requests that block; a failing test does not wait for them to end."""
    pool = ThreadPoolExecutor(max_workers=4)
    try:
        yield pool
    finally:
        pool.shutdown(wait=False, cancel_futures=True)


def start(tmp_path: Path, env: dict[str, str]) -> Service:
    """Start `kernel-runtime serve` with `env` over a clean environment; wait until healthy."""
    http_port, flight_port = free_port(), free_port()
    log_path = tmp_path / f"serve-{http_port}.log"
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("KERNEL_")}
    full_env.update(
        KERNEL_HOST="127.0.0.1",
        KERNEL_HTTP_PORT=str(http_port),
        KERNEL_FLIGHT_PORT=str(flight_port),
        KERNEL_INTERRUPT_GRACE_S=PATIENT_GRACE_S,
    )
    full_env.update(env)
    with log_path.open("wb") as log:
        proc = subprocess.Popen(
            [SERVE, "serve"], env=full_env, stdout=log, stderr=subprocess.STDOUT
        )
    token = env.get("KERNEL_AUTH_TOKEN")
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    http = httpx.Client(base_url=f"http://127.0.0.1:{http_port}", headers=headers, timeout=120.0)
    service = Service(proc, http, flight_port, log_path)
    try:
        service.healthy()
    except BaseException:
        service.kill()
        raise
    return service


class KernelStartGate:
    """Holds every kernel that starts while it is closed, until it is opened again.

    A `sitecustomize` module on the service's PYTHONPATH runs in each new Python process;
    in a kernel (`python -m flight_kernel`) it opens the `held` latch and then waits for
    `opened`, when `closed` exists. Other processes, and kernels started while the gate is
    open, pass straight through.
    """

    SITECUSTOMIZE = """\
import os, sys, time

_here = os.path.dirname(os.path.abspath(__file__))
_argv = sys.orig_argv
_kernel = ("-m", "flight_kernel") in zip(_argv, _argv[1:])
if _kernel and os.path.exists(os.path.join(_here, "closed")):
    open(os.path.join(_here, "held"), "w").close()
    _deadline = time.monotonic() + 120.0
    while not os.path.exists(os.path.join(_here, "opened")) and time.monotonic() < _deadline:
        time.sleep(0.02)
"""

    def __init__(self, directory: Path) -> None:
        directory.mkdir()
        (directory / "sitecustomize.py").write_text(self.SITECUSTOMIZE)
        self.directory = directory
        self.held = Latch(directory / "held")
        self.opened = Latch(directory / "opened")

    def env(self) -> dict[str, str]:
        """PYTHONPATH for the service, with the gate first."""
        paths = [str(self.directory), *filter(None, os.environ.get("PYTHONPATH", "").split(":"))]
        return {"PYTHONPATH": os.pathsep.join(paths)}

    def close(self) -> None:
        """From now on, kernels that start are held."""
        (self.directory / "closed").touch()

    def open(self) -> None:
        """Let the held kernel (and any later one) go on starting."""
        self.opened.set()


def wait_persisted(service: Service, name: str, flow_id: int | None = None) -> dict[str, Any]:
    """The record of artifact `name` once the store holds it (persisting is in the background)."""

    def persisted() -> dict[str, Any] | None:
        params = {} if flow_id is None else {"flow_id": flow_id}
        for record in service.http.get("/artifacts", params=params).json():
            if record["name"] == name and record["persisted"]:
                return dict(record)
        return None

    found: dict[str, Any] = poll(persisted, START_DEADLINE_S, f"artifact {name!r} to be persisted")
    return found
