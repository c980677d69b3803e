"""Goals 7-9: kernel memory while reading big tables, publish_artifact, many executions."""

from __future__ import annotations

import json
import re
import statistics
import time

import pyarrow as pa

from benchmarks import data
from benchmarks.harness import RssSampler, Service, Spread, flight_put, interleave, timed
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

# -- 7, 7b: kernel memory while reading a big flight:/// table ---------------------------------

FILTER = (
    "import polars as pl\n"
    "df = flowfile.read_input().filter(pl.col('a') > 0.99).collect()\n"
    "flowfile.publish_artifact('kept', df)\n"
    "print(df.height, df.estimated_size())"
)
READ_ONLY = "lf = flowfile.read_input()"


def _growth(svc: Service, code: str, node: str, path: str) -> tuple[int, int, str]:
    """Peak and held kernel RSS growth (bytes) over one execution, and its stdout."""
    proc = svc.kernel_process()
    kernel_gc(svc)
    before = proc.memory_info().rss
    with RssSampler(proc) as sampler:
        res = svc.execute(code, node_id=node, flow_id=7, inputs={"main": [f"flight:///{path}"]})
    after = proc.memory_info().rss
    return sampler.peak - before, after - before, str(res["stdout"])


def _memory(cfg: Config, key: str, kind: str, table: pa.Table) -> Result:
    """Each repetition on a fresh service, so that it sees the first read of a fresh upload
    and no allocator holds pages freed by an earlier phase (they would hide growth)."""
    nbytes = table.nbytes
    schema = ", ".join(sorted({str(f.type) for f in table.schema}))
    rows = table.num_rows
    peaks, helds, read_only = [], [], []
    kept = ""
    for _ in range(cfg.memory_reps):
        with Service() as svc:
            assert svc.flight is not None
            # warm up polars in the kernel (thread pool, code pages) on a small table first
            flight_put(svc.flight, ["tables", "warm"], table.slice(0, 10_000))
            svc.execute(
                FILTER, node_id="warm", flow_id=70, inputs={"main": ["flight:///tables/warm"]}
            )
            flight_put(svc.flight, ["tables", "mem"], table)
            peak, held, out = _growth(svc, FILTER, "mem_filter", "tables/mem")
            ro_peak, _, _ = _growth(svc, READ_ONLY, "mem_read", "tables/mem")
        peaks.append(peak)
        helds.append(held)
        read_only.append(ro_peak)
        kept = out.strip()
    pct = [100 * p / nbytes for p in peaks]
    kept_rows, _, kept_bytes = kept.partition(" ")
    return Result(
        key,
        f"kernel RSS growth while user code reads a {size_text(nbytes)} flight:/// {kind} "
        "table, filters it and holds the result, % of the table",
        Spread.of(pct),
        "%",
        "<",
        10.0,
        Side("peak RSS growth", Spread.of([p / MiB for p in peaks]), "MiB"),
        Side("table size", Spread.of([nbytes / MiB]), "MiB"),
        [
            f"{key}: table {rows:,} rows of {schema}, uploaded by do_put to a fresh service for "
            f"each of {cfg.memory_reps} repetitions (polars warmed up on 10,000 rows first); "
            f"filter `a > 0.99` keeps {kept_rows} rows "
            f"({int(kept_bytes or 0) / MiB:,.1f} MiB, held as an artifact while measured); RSS "
            f"still up after the execution: {statistics.median(helds) / MiB:,.1f} MiB; a second "
            f"read (`read_input()` alone): peak growth "
            f"{statistics.median(read_only) / MiB:,.1f} MiB"
        ],
    )


def memory(env: Env, cfg: Config) -> list[Result]:
    numeric = data.numeric_table(data.numeric_rows_for(cfg.table_bytes))
    first = _memory(cfg, "7", "numeric", numeric)
    del numeric
    strings = data.string_table(data.string_rows_for(cfg.table_bytes))
    return [first, _memory(cfg, "7b", "string-heavy", strings)]


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
    proc = svc.kernel_process()
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
