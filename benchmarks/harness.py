"""Process management, interleaving and statistics shared by every benchmark.

Everything runs in one process tree: the benchmark process is the client, and it starts
the real service (`kernel-runtime serve`, which spawns the kernel) and the baselines as
its children, on free ports, and stops them at the end.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil
import pyarrow as pa
import pyarrow.flight as flight

LOG_LEVEL = "WARNING"  # the service and the no-op baseline both run with this level


def free_port() -> int:
    """A TCP port that nobody listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _venv_script(name: str) -> str:
    candidate = Path(sys.executable).parent / name
    return str(candidate) if candidate.exists() else name


def wait_until(
    check: Callable[[], bool],
    timeout: float,
    what: str,
    proc: subprocess.Popen[bytes] | None = None,
) -> None:
    """Poll `check` until it holds; fail early if `proc` died."""
    deadline = time.monotonic() + timeout
    while True:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"{what}: process exited with code {proc.returncode}")
        with contextlib.suppress(Exception):
            if check():
                return
        if time.monotonic() > deadline:
            raise RuntimeError(f"{what}: not ready within {timeout:g} s")
        time.sleep(0.05)


def stop_process(proc: subprocess.Popen[bytes], grace: float = 15.0) -> None:
    """SIGTERM, then SIGKILL after `grace` seconds (only this one process)."""
    if proc.poll() is not None:
        return
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=grace)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


# -- HTTP -----------------------------------------------------------------------------------


class HttpClient:
    """A keep-alive HTTP/1.1 connection with as little client overhead as the stdlib allows.

    The same client measures the service and the no-op baseline, so its own cost appears
    on both sides of every ratio.
    """

    def __init__(self, port: int, host: str = "127.0.0.1", timeout: float = 600.0) -> None:
        self._conn = http.client.HTTPConnection(host, port, timeout=timeout)
        self._headers = {"Content-Type": "application/json"}

    def _call(self, method: str, path: str, payload: bytes | None) -> bytes:
        try:
            self._conn.request(method, path, payload, self._headers)
            resp = self._conn.getresponse()
        except (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError):
            # uvicorn closes keep-alive connections idle for 5 s: reconnect once
            self._conn.close()
            self._conn.request(method, path, payload, self._headers)
            resp = self._conn.getresponse()
        data = resp.read()
        if resp.status != 200:
            raise RuntimeError(f"{method} {path}: HTTP {resp.status}: {data[:300]!r}")
        return data

    def post_raw(self, path: str, payload: bytes) -> bytes:
        return self._call("POST", path, payload)

    def post(self, path: str, body: dict[str, Any]) -> Any:
        return json.loads(self._call("POST", path, json.dumps(body).encode()))

    def get(self, path: str) -> Any:
        return json.loads(self._call("GET", path, None))

    def close(self) -> None:
        self._conn.close()


def probe_json(port: int, path: str, timeout: float = 5.0) -> Any:
    """One GET on a fresh connection (a failed connect spoils an `HTTPConnection`)."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request("GET", path)
        resp = conn.getresponse()
        return json.loads(resp.read()) if resp.status == 200 else None
    finally:
        conn.close()


# -- the service ----------------------------------------------------------------------------


class Service:
    """The real `kernel-runtime serve` as a child process on free ports; `env` is added to
    this process's environment (e.g. `KERNEL_MAX_KERNELS`)."""

    def __init__(self, env: Mapping[str, str] | None = None) -> None:
        self.extra_env = dict(env or {})
        self.http_port = free_port()
        self.flight_port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None
        self.flight: flight.FlightClient | None = None
        self.http: HttpClient | None = None

    @property
    def location(self) -> str:
        return f"grpc://127.0.0.1:{self.flight_port}"

    def start(self) -> Service:
        env = {
            **os.environ,
            "KERNEL_HTTP_PORT": str(self.http_port),
            "KERNEL_FLIGHT_PORT": str(self.flight_port),
            "KERNEL_LOG_LEVEL": LOG_LEVEL,
            **self.extra_env,
        }
        self.proc = subprocess.Popen([_venv_script("kernel-runtime"), "serve"], env=env)
        try:
            wait_until(
                lambda: (probe_json(self.http_port, "/health") or {}).get("status") == "healthy",
                90.0,
                "kernel-runtime serve",
                self.proc,
            )
        except BaseException:
            self.stop()
            raise
        self.flight = flight.connect(self.location)
        self.http = HttpClient(self.http_port)
        return self

    def stop(self) -> None:
        if self.flight is not None:
            self.flight.close()
        if self.http is not None:
            self.http.close()
        if self.proc is not None:
            stop_process(self.proc)

    def __enter__(self) -> Service:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- calls ------------------------------------------------------------------------------

    def health(self) -> dict[str, Any]:
        assert self.http is not None
        result: dict[str, Any] = self.http.get("/health")
        return result

    def kernels(self) -> list[dict[str, Any]]:
        """`/health`'s kernels: {flow_id, pid, state, restarts, node}; flow_id None: the spare
        (or, with `KERNEL_ISOLATION=shared`, the one kernel of every flow)."""
        found: list[dict[str, Any]] = self.health()["kernels"]
        return found

    def kernel_process(self, flow_id: int) -> psutil.Process:
        """The kernel that serves `flow_id` (run something in the flow first: with
        `KERNEL_ISOLATION=flow` a flow has no kernel before its first call)."""
        kernels = self.kernels()
        for k in kernels:
            if k["flow_id"] == flow_id:
                return psutil.Process(int(k["pid"]))
        if len(kernels) == 1 and kernels[0]["flow_id"] is None:  # shared: one for all
            return psutil.Process(int(kernels[0]["pid"]))
        raise RuntimeError(f"no kernel serves flow {flow_id}: {kernels}")

    def spare_ready(self) -> bool:
        """Whether a started spare kernel (flow_id None, healthy) is listed in `/health`."""
        return any(k["flow_id"] is None and k["state"] == "healthy" for k in self.kernels())

    def wait_spare(self, timeout: float = 60.0, pause: float = 0.01) -> float:
        """Poll `/health` until a spare is ready; returns the seconds it took."""
        t0 = time.perf_counter()
        while not self.spare_ready():
            if time.perf_counter() - t0 > timeout:
                raise RuntimeError(f"no spare kernel ready within {timeout:g} s")
            time.sleep(pause)
        return time.perf_counter() - t0

    def execute(
        self,
        code: str,
        *,
        node_id: str = "bench",
        flow_id: int = 1,
        inputs: dict[str, list[str]] | None = None,
        output_dir: str = "",
        client: HttpClient | None = None,
    ) -> dict[str, Any]:
        """POST /execute; fails loudly when the user code failed (a benchmark bug)."""
        body = {
            "node_id": node_id,
            "code": code,
            "flow_id": flow_id,
            "input_paths": inputs or {},
            "output_dir": output_dir,
        }
        result: dict[str, Any] = (client or self.http).post("/execute", body)  # type: ignore[union-attr]
        if not result["success"]:
            raise RuntimeError(
                f"benchmark code failed in the kernel: {result['error']}\n{result.get('traceback')}"
            )
        return result

    def execute_action(self, payload: bytes) -> bytes:
        assert self.flight is not None
        results = list(self.flight.do_action(flight.Action("execute", payload)))
        return bytes(results[0].body.to_pybytes())

    def clear(self) -> None:
        assert self.http is not None
        self.http.post("/clear", {})


# -- Flight helpers -------------------------------------------------------------------------


def flight_put(client: flight.FlightClient, path: Sequence[str], table: pa.Table) -> None:
    """Upload `table` batch by batch (the batches are sent as they are)."""
    writer, _ = client.do_put(flight.FlightDescriptor.for_path(*path), table.schema)
    for batch in table.to_batches():
        writer.write_batch(batch)
    writer.close()


def flight_get(client: flight.FlightClient, ticket: str) -> pa.Table:
    return client.do_get(flight.Ticket(ticket.encode())).read_all()


# -- statistics -----------------------------------------------------------------------------


def percentile(values: Sequence[float], q: float) -> float:
    """The q-th percentile (0..100), linear between closest ranks."""
    ordered = sorted(values)
    if not ordered:
        raise ValueError("no values")
    pos = (len(ordered) - 1) * q / 100.0
    lo = int(pos)
    hi = min(lo + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (pos - lo)


@dataclass(frozen=True)
class Spread:
    """Median, min and max of one quantity over the repetitions."""

    median: float
    lo: float
    hi: float
    n: int

    @classmethod
    def of(cls, values: Sequence[float]) -> Spread:
        if not values:
            raise ValueError("no values")
        return cls(statistics.median(values), min(values), max(values), len(values))


@dataclass
class Interleaved:
    """Samples of two variants measured in alternation (A B A B ...)."""

    a: list[float] = field(default_factory=list)
    b: list[float] = field(default_factory=list)

    def ratios(self) -> list[float]:
        """Per-repetition ratios a_i / b_i (pairs measured next to each other)."""
        return [x / y for x, y in zip(self.a, self.b, strict=True) if y]


def interleave(
    reps: int, run_a: Callable[[], float], run_b: Callable[[], float], warmup: int = 1
) -> Interleaved:
    """Run A, B, A, B ... `reps` times each (after `warmup` unrecorded pairs)."""
    out = Interleaved()
    for i in range(warmup + reps):
        a = run_a()
        b = run_b()
        if i >= warmup:
            out.a.append(a)
            out.b.append(b)
    return out


def timed(fn: Callable[[], object]) -> float:
    """Wall time of one call, in seconds."""
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def latencies(fn: Callable[[], object], n: int) -> list[float]:
    """Wall times of `n` calls, in seconds."""
    out = []
    clock = time.perf_counter
    for _ in range(n):
        t0 = clock()
        fn()
        out.append(clock() - t0)
    return out


# -- memory ---------------------------------------------------------------------------------


def memory_of(pid: int) -> tuple[int, int]:
    """A process's resident memory and the private part of it (`VmRSS`, `RssAnon` of
    /proc/<pid>/status), in bytes. Pages of a mapped file count in the first only: they are
    the file's (shared, in the page cache or tmpfs), not the process's."""
    rss = anon = -1
    with open(f"/proc/{pid}/status", "rb") as status:
        for line in status:
            if line.startswith(b"VmRSS:"):
                rss = int(line.split()[1]) * 1024
            elif line.startswith(b"RssAnon:"):
                anon = int(line.split()[1]) * 1024
                break  # it comes after VmRSS
    if rss < 0 or anon < 0:
        raise RuntimeError(f"no VmRSS/RssAnon in /proc/{pid}/status")
    return rss, anon


def smaps_rollup(pid: int) -> dict[str, int]:
    """The totals of /proc/<pid>/smaps_rollup, in bytes (`Rss`, `Pss`, `Private_Dirty` ...)."""
    fields: dict[str, int] = {}
    with open(f"/proc/{pid}/smaps_rollup") as f:
        for line in f:
            key, _, rest = line.partition(":")
            parts = rest.split()
            if len(parts) == 2 and parts[1] == "kB":
                fields[key] = int(parts[0]) * 1024
    return fields


def uss_of(pid: int) -> int:
    """A process's private memory (USS: `Private_Clean` + `Private_Dirty`), as `/memory`
    counts it for kernels."""
    fields = smaps_rollup(pid)
    return fields["Private_Clean"] + fields["Private_Dirty"]


class MemorySampler:
    """Samples a process's resident and private memory (`memory_of`) in a thread;
    `peak_rss` and `peak_anon` are the highest seen (each on its own)."""

    def __init__(self, pid: int, interval: float = 0.002) -> None:
        self._pid = pid
        self._interval = interval
        self._stop = threading.Event()
        self.peak_rss, self.peak_anon = memory_of(pid)
        self.samples = 0
        self._thread = threading.Thread(target=self._run, name="memory-sampler", daemon=True)

    def _sample(self) -> None:
        with contextlib.suppress(OSError, RuntimeError):  # the process may have ended
            rss, anon = memory_of(self._pid)
            self.peak_rss = max(self.peak_rss, rss)
            self.peak_anon = max(self.peak_anon, anon)
            self.samples += 1

    def _run(self) -> None:
        while not self._stop.is_set():
            self._sample()
            self._stop.wait(self._interval)

    def __enter__(self) -> MemorySampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self._sample()
