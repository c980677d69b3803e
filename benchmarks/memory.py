"""Goals 7-9, 11: kernel memory while reading big tables, publish_artifact, many executions,
persisting an artifact."""

from __future__ import annotations

import json
import os
import re
import statistics
import tempfile
import time
from dataclasses import dataclass

import cloudpickle
import numpy as np
import pyarrow as pa

from benchmarks import data
from benchmarks.harness import (
    MemorySampler,
    Service,
    Spread,
    flight_put,
    interleave,
    memory_of,
    timed,
)
from benchmarks.model import (
    MINUS,
    Config,
    Env,
    MiB,
    Result,
    Side,
    kernel_gc,
    size_text,
    spread_ms,
)


def wait_persisted(
    svc: Service, flow_id: int, name: str, timeout: float = 60.0, pause: float = 0.0005
) -> int:
    """Poll GET /artifacts?flow_id= until the artifact `name` reads `persisted: true`
    (sleeping `pause` between polls); returns how many polls it took."""
    assert svc.http is not None
    deadline = time.perf_counter() + timeout
    polls = 0
    while True:
        polls += 1
        records = svc.http.get(f"/artifacts?flow_id={flow_id}")
        if any(r["name"] == name and r["persisted"] for r in records):
            return polls
        if time.perf_counter() > deadline:
            raise RuntimeError(f"artifact {name!r} of flow {flow_id} not persisted in {timeout} s")
        time.sleep(pause)


# -- 7, 7b: kernel memory while reading a big flight:/// table ---------------------------------

FILTER = (
    "import polars as pl\n"
    "df = flowfile.read_input().filter(pl.col('a') > 0.99).collect()\n"
    "flowfile.publish_artifact('kept', df)\n"
    "print(df.height, df.estimated_size())"
)
READ_ONLY = "lf = flowfile.read_input()"
MEMORY_FLOW = 7  # warm-up and measurements: one flow, so one kernel


@dataclass(frozen=True)
class Growth:
    """Kernel memory growth (bytes) over one execution: peaks while it ran, and what is
    still up after it; `anon` is private memory (RssAnon), `rss` all resident memory."""

    peak_anon: int
    held_anon: int
    peak_rss: int
    held_rss: int
    stdout: str


def _growth(svc: Service, code: str, node: str, path: str, artifact: str | None) -> Growth:
    """Sampled from before the execution until its `artifact` (if any) reads persisted: the
    background write of the held result is the kernel's work too."""
    kernel_gc(svc, MEMORY_FLOW)
    pid = svc.kernel_process(MEMORY_FLOW).pid
    rss0, anon0 = memory_of(pid)
    with MemorySampler(pid) as sampler:
        res = svc.execute(
            code, node_id=node, flow_id=MEMORY_FLOW, inputs={"main": [f"flight:///{path}"]}
        )
        if artifact is not None:
            wait_persisted(svc, MEMORY_FLOW, artifact)
    rss1, anon1 = memory_of(pid)
    return Growth(
        sampler.peak_anon - anon0,
        anon1 - anon0,
        sampler.peak_rss - rss0,
        rss1 - rss0,
        str(res["stdout"]),
    )


def _mib(values: list[int]) -> str:
    return f"{statistics.median(values) / MiB:,.1f} MiB"


def _memory(cfg: Config, key: str, kind: str, table: pa.Table, goal: float) -> Result:
    """Each repetition on a fresh service, so that it sees the first read of a fresh upload
    and no allocator holds pages freed by an earlier phase (they would hide growth)."""
    nbytes = table.nbytes
    schema = ", ".join(sorted({str(f.type) for f in table.schema}))
    rows = table.num_rows
    filtered: list[Growth] = []
    read_only: list[Growth] = []
    for _ in range(cfg.memory_reps):
        with Service() as svc:
            assert svc.flight is not None
            # warm up polars in the measured flow's kernel (thread pool, code pages) on a
            # small table first (with `KERNEL_ISOLATION=flow` another flow is another kernel)
            flight_put(svc.flight, ["tables", "warm"], table.slice(0, 10_000))
            svc.execute(
                FILTER.replace("'kept'", "'warm_kept'"),
                node_id="warm",
                flow_id=MEMORY_FLOW,
                inputs={"main": ["flight:///tables/warm"]},
            )
            flight_put(svc.flight, ["tables", "mem"], table)
            filtered.append(_growth(svc, FILTER, "mem_filter", "tables/mem", "kept"))
            read_only.append(_growth(svc, READ_ONLY, "mem_read", "tables/mem", None))
    pct = [100 * g.peak_anon / nbytes for g in filtered]
    kept_rows, _, kept_bytes = filtered[-1].stdout.strip().partition(" ")
    return Result(
        key,
        f"kernel private memory (RssAnon) growth while user code reads a {size_text(nbytes)} "
        f"flight:/// {kind} table, filters it and holds the result, % of the table",
        Spread.of(pct),
        "%",
        "<",
        goal,
        Side("peak RssAnon growth", Spread.of([g.peak_anon / MiB for g in filtered]), "MiB"),
        Side("table size", Spread.of([nbytes / MiB]), "MiB"),
        [
            f"{key}: table {rows:,} rows of {schema}, uploaded by do_put to a fresh service for "
            f"each of {cfg.memory_reps} repetitions (polars warmed up on 10,000 rows in the "
            "same kernel first); "
            f"filter `a > 0.99` keeps {kept_rows} rows "
            f"({int(kept_bytes or 0) / MiB:,.1f} MiB, held as an artifact while measured, and "
            "sampled until it reads persisted); "
            "medians: RssAnon still up after the execution "
            f"{_mib([g.held_anon for g in filtered])}; RSS (mapped pages of the store's file "
            f"included) peak growth {_mib([g.peak_rss for g in filtered])}, still up after "
            f"{_mib([g.held_rss for g in filtered])}; a second read (`read_input()` alone): "
            f"peak RssAnon growth {_mib([g.peak_anon for g in read_only])}, peak RSS growth "
            f"{_mib([g.peak_rss for g in read_only])}"
        ],
    )


def memory(env: Env, cfg: Config) -> list[Result]:
    numeric = data.numeric_table(data.numeric_rows_for(cfg.table_bytes))
    first = _memory(cfg, "7", "numeric", numeric, 2.0)
    del numeric
    strings = data.string_table(data.string_rows_for(cfg.table_bytes))
    return [first, _memory(cfg, "7b", "string-heavy", strings, 10.0)]


# -- 8: publish_artifact of a big numpy array ---------------------------------------------------

_TIMER = re.compile(r"publish_s=([0-9.e-]+)")


def artifact(env: Env, cfg: Config) -> list[Result]:
    """Both executions take the same array (made once, by a setup node), so the difference
    is publish_artifact and not the noise of allocating and freeing 100 MiB."""
    svc = env.service
    n = cfg.artifact_bytes // 8
    svc.execute(
        f"import numpy as np\nflowfile.publish_artifact('source', np.ones({n}))",
        node_id="art_setup",
        flow_id=8,
    )
    take = "import time\narr = flowfile.read_artifact('source')\nt0 = time.perf_counter()\n"
    with_pub = take + (
        "flowfile.publish_artifact('arr', arr)\nprint(f'publish_s={time.perf_counter() - t0}')"
    )
    without = take + "print(f'publish_s={time.perf_counter() - t0}')"
    inside: list[float] = []

    def publish() -> float:
        t0 = time.perf_counter()
        res = svc.execute(with_pub, node_id="art_pub", flow_id=8)
        elapsed = time.perf_counter() - t0
        inside.append(float(_TIMER.findall(str(res["stdout"]))[0]))
        return elapsed

    runs = interleave(
        cfg.artifact_reps,
        publish,
        lambda: timed(lambda: svc.execute(without, node_id="art_none", flow_id=8)),
    )
    svc.clear()
    diffs = [(a - b) * 1000 for a, b in zip(runs.a, runs.b, strict=True)]
    diff = statistics.median(runs.a) * 1000 - statistics.median(runs.b) * 1000
    return [
        Result(
            "8",
            f"publish_artifact of a {size_text(cfg.artifact_bytes)} numpy array: /execute "
            f"time with it {MINUS} without it",
            Spread(diff, min(diffs), max(diffs), len(diffs)),
            "ms",
            "<",
            1.0,
            Side("/execute with publish_artifact", spread_ms(runs.a), "ms"),
            Side("/execute without", spread_ms(runs.b), "ms"),
            [
                f"8: {cfg.artifact_reps} interleaved pairs; both executions read the same "
                f"{size_text(cfg.artifact_bytes)} array (`np.ones`, published once by a setup "
                "node) "
                "and one publishes it again under another name; min/max are of the pairwise "
                "differences; publish_artifact itself, timed inside the kernel: median "
                f"{statistics.median(inside) * 1e6:,.0f} µs, max {max(inside) * 1e6:,.0f} µs"
            ],
        )
    ]


# -- 9: kernel RSS over many trivial executions -------------------------------------------------


def leak(env: Env, cfg: Config) -> list[Result]:
    svc = env.service
    svc.execute_action(json.dumps({"node_id": "n0", "code": "x = 1", "flow_id": 9}).encode())
    proc = svc.kernel_process(9)  # flow 9's own kernel, now that it has one
    payloads = [
        json.dumps({"node_id": f"n{i}", "code": "x = 1", "flow_id": 9}).encode() for i in range(100)
    ]
    checkpoints: list[tuple[int, int]] = []
    t0 = time.perf_counter()
    for i in range(1, cfg.executions + 1):
        svc.execute_action(payloads[i % 100])
        if i == 100 or i % max(1, cfg.executions // 10) == 0:
            checkpoints.append((i, proc.memory_info().rss))
    elapsed = time.perf_counter() - t0
    base = dict(checkpoints)[100]
    final = checkpoints[-1][1]
    growth = (final - base) / 1e6
    trail = ", ".join(f"{i:,}: {(r - base) / 1e6:+.1f}" for i, r in checkpoints if i > 100)
    return [
        Result(
            "9",
            f"kernel RSS after {cfg.executions:,} trivial executions {MINUS} after 100",
            Spread(growth, growth, growth, 1),
            "MB",
            "<",
            20.0,
            Side(f"RSS after {cfg.executions:,}", Spread.of([final / 1e6]), "MB"),
            Side("RSS after 100", Spread.of([base / 1e6]), "MB"),
            [
                f"9: `x = 1` over the execute action, node ids cycling over 100, "
                f"{elapsed / cfg.executions * 1000:.2f} ms each; growth (MB) at {trail}"
            ],
        )
    ]


# -- 11: from an execution's end until its artifact is persisted --------------------------------

PERSIST_FLOW = 11


def persist(env: Env, cfg: Config) -> list[Result]:
    """Each execution publishes a fresh array under a new name (re-running the node drops the
    one it published before):
    timed from its /execute response until GET /artifacts says `persisted: true`. The
    baseline: cloudpickle of the same array into a file on /dev/shm (else the temp dir), in
    this process — the work of persisting it, without the service."""
    svc = env.service
    assert svc.http is not None
    n = cfg.persist_bytes // 8
    polls: list[int] = []
    executes: list[float] = []
    counter = iter(range(1 << 30))
    folder = "/dev/shm" if os.access("/dev/shm", os.W_OK) else None

    def published() -> float:
        i = next(counter)
        code = f"import numpy as np\nflowfile.publish_artifact('obj{i}', np.ones({n}))"
        t0 = time.perf_counter()
        svc.execute(code, node_id="persist", flow_id=PERSIST_FLOW)
        t1 = time.perf_counter()
        polls.append(wait_persisted(svc, PERSIST_FLOW, f"obj{i}"))
        executes.append(t1 - t0)
        return time.perf_counter() - t1

    array = np.ones(n)

    def pickled() -> float:
        with tempfile.NamedTemporaryFile(dir=folder, prefix="kernel-bench-") as f:
            t0 = time.perf_counter()
            cloudpickle.CloudPickler(f, protocol=5).dump(array)
            f.flush()
            return time.perf_counter() - t0

    runs = interleave(cfg.persist_reps, published, pickled)
    svc.http.post(f"/clear?flow_id={PERSIST_FLOW}", {})
    total = sum(polls[1:] or polls)
    per_poll = sum(runs.a) / total * 1000  # the warm-up's polls are left out of both
    size = f"{cfg.persist_bytes / 1e6:g} MB"
    return [
        Result(
            "11",
            f"from an execution's end (its /execute response) until the {size} numpy array it "
            "published reads `persisted: true` in GET /artifacts",
            spread_ms(runs.a),
            "ms",
            "≤",
            100.0,
            Side("/execute response → persisted", spread_ms(runs.a), "ms"),
            Side("cloudpickle to /dev/shm here", spread_ms(runs.b), "ms"),
            [
                f"11: {cfg.persist_reps} executions, each `publish_artifact` of a fresh "
                f"`np.ones({n:,})` ({size}) under a new name, interleaved with the baseline "
                "(cloudpickle protocol 5 of the same array into a file, in the benchmark "
                "process); GET /artifacts?flow_id= polled with a 0.5 ms pause: median "
                f"{statistics.median(polls[1:] or polls):g} polls, {per_poll:.2f} ms a poll "
                "with its pause; "
                f"the /execute itself: median {statistics.median(executes) * 1000:,.1f} ms"
            ],
        )
    ]
