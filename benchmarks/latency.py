"""Goals 4-6b: latency of a trivial execution, and two flows at once."""

from __future__ import annotations

import json
import statistics
import threading
import time
from collections.abc import Callable

import httpx
import pyarrow.flight as flight

from benchmarks import data
from benchmarks.harness import (
    HttpClient,
    Interleaved,
    Spread,
    flight_put,
    interleave,
    latencies,
    percentile,
    timed,
)
from benchmarks.model import (
    TIMES,
    Config,
    Env,
    Result,
    Side,
    ratio_of,
    spread_ms,
)

# -- 4, 5: latency of a trivial execution -----------------------------------------------------

TRIVIAL = {"node_id": "lat", "code": "x = 1", "flow_id": 1}
JSON_HEADERS = {"content-type": "application/json"}


def _httpx(port: int) -> httpx.Client:
    """The HTTP client of the project's own `KernelClient` (and of most Python callers)."""
    return httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=600.0)


def _post(client: httpx.Client, path: str, payload: bytes) -> Callable[[], object]:
    def call() -> object:
        resp = client.post(path, content=payload, headers=JSON_HEADERS)
        resp.raise_for_status()
        return resp

    return call


def latency(env: Env, cfg: Config) -> list[Result]:
    svc = env.service
    payload = json.dumps(TRIVIAL).encode()
    hx_svc, hx_noop = _httpx(svc.http_port), _httpx(env.noop_port)
    lean_svc, lean_noop = HttpClient(svc.http_port), HttpClient(env.noop_port)
    assert json.loads(lean_svc.post_raw("/execute", payload))["success"]
    variants: dict[str, Callable[[], object]] = {
        "http": _post(hx_svc, "/execute", payload),
        "noop": _post(hx_noop, "/noop", payload),
        "flight": lambda: svc.execute_action(payload),
        "bare_action": lambda: list(env.bare.do_action(flight.Action("ping", payload))),
        "lean_http": lambda: lean_svc.post_raw("/execute", payload),
        "lean_noop": lambda: lean_noop.post_raw("/noop", payload),
        "noop_thread": _post(hx_noop, "/noop_thread", payload),
        "noop_flight": _post(hx_noop, "/noop_flight", payload),
    }
    blocks: dict[str, list[list[float]]] = {k: [] for k in variants}
    for i in range(cfg.latency_blocks + 1):  # the first round warms up and is dropped
        for name, call in variants.items():
            samples = latencies(call, cfg.latency_requests)
            if i:
                blocks[name].append([s * 1000 for s in samples])
    for c in (hx_svc, hx_noop, lean_svc, lean_noop):
        c.close()

    p50 = {k: [percentile(b, 50) for b in v] for k, v in blocks.items()}
    p99 = {k: [percentile(b, 99) for b in v] for k, v in blocks.items()}

    def ratio(num: str, den: str, p: dict[str, list[float]] = p50) -> Spread:
        return ratio_of(Interleaved(p[num], p[den]))

    def med(name: str, p: dict[str, list[float]] = p50) -> float:
        return statistics.median(p[name])

    n = cfg.latency_blocks * cfg.latency_requests
    details = [
        f"4/5: {cfg.latency_blocks} rounds, each a block of {cfg.latency_requests} sequential "
        f"requests per variant in turn ({n} per variant); p50/p99 per block, median over "
        "blocks. HTTP client: `httpx.Client` (keep-alive; what `KernelClient` uses), the same "
        "for the service and the no-op endpoint",
        f"4/5 with a leaner client (stdlib `http.client`, keep-alive): /execute p50 "
        f"{med('lean_http'):.3f} ms vs no-op p50 {med('lean_noop'):.3f} ms = "
        f"{ratio('lean_http', 'lean_noop').median:.2f}{TIMES}; p99 {med('lean_http', p99):.2f} vs "
        f"{med('lean_noop', p99):.2f} ms = {ratio('lean_http', 'lean_noop', p99).median:.2f}{TIMES}"
        " (httpx itself costs ≈ "
        f"{(med('noop') - med('lean_noop')) * 1000:.0f} µs per request)",
        f"4: /execute split into steps (p50, httpx): a no-op POST {med('noop'):.3f} ms; + a hop "
        f"to a worker thread and back (`run_in_threadpool`, as the service's routes do) "
        f"{med('noop_thread'):.3f} ms; + in that thread one Flight do_action round trip to "
        f"the bare Flight server (the service's control plane over a kernel that does "
        f"nothing) {med('noop_flight'):.3f} ms = {ratio('noop_flight', 'noop').median:.2f}{TIMES} "
        f"the no-op; the service's /execute {med('http'):.3f} ms",
        f"5: floor of any Flight action: a bare `pyarrow.flight` do_action round trip, p50 "
        f"{med('bare_action'):.3f} ms = {ratio('bare_action', 'noop').median:.2f}{TIMES} the no-op "
        f"POST; the kernel's execute action adds "
        f"{(med('flight') - med('bare_action')) * 1000:.0f} µs to it",
    ]
    noop50 = Side("no-op FastAPI POST p50", Spread.of(p50["noop"]), "ms")
    noop99 = Side("no-op FastAPI POST p99", Spread.of(p99["noop"]), "ms")
    return [
        Result(
            "4",
            "/execute of `x = 1`, p50 / no-op FastAPI POST p50",
            ratio("http", "noop"),
            TIMES,
            "≤",
            1.6,
            Side("/execute p50", Spread.of(p50["http"]), "ms"),
            noop50,
            details,
        ),
        Result(
            "4 p99",
            "/execute of `x = 1`, p99 / no-op FastAPI POST p99",
            ratio("http", "noop", p99),
            TIMES,
            "≤",
            2.2,
            Side("/execute p99", Spread.of(p99["http"]), "ms"),
            noop99,
        ),
        Result(
            "5",
            "Flight execute action of `x = 1`, p50 / no-op FastAPI POST p50",
            ratio("flight", "noop"),
            TIMES,
            "≤",
            0.5,
            Side("execute action p50", Spread.of(p50["flight"]), "ms"),
            noop50,
        ),
    ]


# -- 6, 6b: two flows at once ------------------------------------------------------------------

AGG = (
    "import polars as pl\n"
    "r = (flowfile.read_input().group_by('k')\n"
    "     .agg(pl.col('v').sum().alias('s'), pl.col('v').mean().alias('m'),\n"
    "          pl.col('v').std().alias('sd')).collect())"
)


def concurrency(env: Env, cfg: Config) -> list[Result]:
    svc = env.service
    assert svc.flight is not None
    flight_put(svc.flight, ["tables", "agg"], data.agg_table(cfg.agg_rows, cfg.agg_groups))
    inputs = {"main": ["flight:///tables/agg"]}
    clients = [HttpClient(svc.http_port), HttpClient(svc.http_port)]

    def run(flow: int) -> None:
        svc.execute(AGG, node_id="agg", flow_id=flow, inputs=inputs, client=clients[flow - 1])

    def both() -> None:
        run(1)
        run(2)

    def serial() -> float:
        return timed(both)

    def together() -> float:
        barrier = threading.Barrier(3)
        errors: list[BaseException] = []

        def worker(flow: int) -> None:
            barrier.wait()
            try:
                run(flow)
            except BaseException as exc:  # reported below, in the main thread
                errors.append(exc)

        threads = [threading.Thread(target=worker, args=(f,)) for f in (1, 2)]
        for t in threads:
            t.start()
        barrier.wait()
        t0 = time.perf_counter()
        for t in threads:
            t.join()
        if errors:
            raise errors[0]
        return time.perf_counter() - t0

    runs = interleave(cfg.agg_reps, together, serial)
    single = statistics.median(runs.b) / 2 * 1000
    results = [
        Result(
            "6",
            "two flows each running a polars aggregation at once / one after another",
            ratio_of(runs),
            TIMES,
            "≤",
            1.05,
            Side("both at once", spread_ms(runs.a), "ms"),
            Side("one after the other", spread_ms(runs.b), "ms"),
            [
                f"6: aggregation: group_by of {cfg.agg_rows:,} rows into {cfg.agg_groups:,} groups "
                f"(sum, mean, std), ≈ {single:,.0f} ms alone, input flight:///tables/agg"
            ],
        )
    ]
    results.append(_latency_under_load(env, cfg, inputs))
    for c in clients:
        c.close()
    return results


def _latency_under_load(env: Env, cfg: Config, inputs: dict[str, list[str]]) -> Result:
    svc = env.service
    payload = json.dumps(TRIVIAL).encode()
    hx = _httpx(svc.http_port)
    probe = _post(hx, "/execute", payload)
    busy_client = HttpClient(svc.http_port)
    started = threading.Event()
    busy_runs = [0]

    def busy(stop: threading.Event) -> None:
        while not stop.is_set():
            started.set()
            svc.execute(AGG, node_id="busy", flow_id=2, inputs=inputs, client=busy_client)
            busy_runs[0] += 1

    def loaded() -> list[float]:
        started.clear()
        stop = threading.Event()
        thread = threading.Thread(target=busy, args=(stop,), daemon=True)
        thread.start()
        started.wait()
        time.sleep(0.02)  # let the aggregation get going in the kernel
        try:
            return latencies(probe, cfg.latency_requests)
        finally:
            stop.set()
            thread.join()

    def idle() -> list[float]:
        return latencies(probe, cfg.latency_requests)

    load_blocks: list[list[float]] = []
    idle_blocks: list[list[float]] = []
    for _ in range(cfg.latency_blocks):
        load_blocks.append([s * 1000 for s in loaded()])
        idle_blocks.append([s * 1000 for s in idle()])
    hx.close()
    busy_client.close()
    load99 = [percentile(b, 99) for b in load_blocks]
    idle99 = [percentile(b, 99) for b in idle_blocks]
    load50 = statistics.median(percentile(b, 50) for b in load_blocks)
    return Result(
        "6b",
        "/execute of `x = 1` in one flow while another runs a core-saturating polars "
        "aggregation: p99",
        Spread.of(load99),
        "ms",
        "≤",
        20.0,
        Side("p99 under load", Spread.of(load99), "ms"),
        Side("p99 idle (reference)", Spread.of(idle99), "ms"),
        [
            f"6b: {cfg.latency_blocks} blocks of {cfg.latency_requests} requests under load, "
            f"interleaved with idle blocks; p50 under load {load50:.2f} ms; "
            f"{busy_runs[0]} aggregations ran meanwhile"
        ],
    )
