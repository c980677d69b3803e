"""What a benchmark run is made of: its sizes (`Config`), its rows (`Result`), helpers."""

from __future__ import annotations

import statistics
from collections.abc import Callable
from dataclasses import dataclass, field

import pyarrow.flight as flight

from benchmarks.harness import Interleaved, Service, Spread

MiB = 1 << 20
GiB = 1 << 30
TIMES = "\u00d7"  # the unit of ratios, as the issue writes them
MINUS = "\u2212"


def size_text(nbytes: int) -> str:
    """1.00 GiB / 128 MiB / 256 KiB."""
    if nbytes >= GiB / 2:
        return f"{nbytes / GiB:.2f} GiB"
    if nbytes >= MiB:
        return f"{nbytes / MiB:.0f} MiB"
    return f"{nbytes / 1024:.0f} KiB"


@dataclass(frozen=True)
class Config:
    """Sizes and repetitions of one run."""

    name: str
    table_bytes: int  # goals 1, 2, 7, 7b, 10
    passthrough_rows: int  # goal 3
    transfer_reps: int  # goals 1, 2, 10
    passthrough_reps: int  # goal 3
    latency_blocks: int  # goals 4, 5, 6b, 14: blocks per variant
    latency_requests: int  # requests per block
    agg_rows: int  # goals 6, 6b
    agg_groups: int
    agg_reps: int
    memory_reps: int  # goals 7, 7b
    artifact_bytes: int  # goal 8
    artifact_reps: int
    executions: int  # goal 9 (RSS compared with that after 100)
    persist_bytes: int  # goal 11: the published object
    persist_reps: int
    new_flow_reps: int  # goal 12: first executions in new flows (each after a spare is ready)
    idle_kernels: int  # goals 13, 13b: idle flow kernels measured (13b is for 20)
    stream_execs: int  # goal 15: streaming executions measured (after one warm-up)
    stream_prints: int  # goal 15: timestamps each of them prints, 50 ms apart


FULL = Config(
    "full",
    table_bytes=GiB,
    passthrough_rows=10_000_000,
    transfer_reps=9,
    passthrough_reps=5,
    latency_blocks=7,
    latency_requests=400,
    agg_rows=10_000_000,
    agg_groups=1_000_000,
    agg_reps=5,
    memory_reps=3,
    artifact_bytes=100 * MiB,
    artifact_reps=31,
    executions=10_000,
    persist_bytes=10_000_000,
    persist_reps=51,
    new_flow_reps=21,
    idle_kernels=20,
    stream_execs=11,
    stream_prints=20,
)
QUICK = Config(
    "quick",
    table_bytes=128 * MiB,
    passthrough_rows=1_000_000,
    transfer_reps=7,
    passthrough_reps=3,
    latency_blocks=4,
    latency_requests=200,
    agg_rows=2_000_000,
    agg_groups=200_000,
    agg_reps=3,
    memory_reps=2,
    artifact_bytes=100 * MiB,
    artifact_reps=11,
    executions=2_000,
    persist_bytes=10_000_000,
    persist_reps=21,
    new_flow_reps=8,
    idle_kernels=6,
    stream_execs=5,
    stream_prints=20,
)
TINY = Config(
    "tiny",
    table_bytes=256 * 1024,
    passthrough_rows=4_000,
    transfer_reps=1,
    passthrough_reps=1,
    latency_blocks=1,
    latency_requests=20,
    agg_rows=4_000,
    agg_groups=100,
    agg_reps=1,
    memory_reps=1,
    artifact_bytes=MiB,
    artifact_reps=2,
    executions=150,
    persist_bytes=1_000_000,
    persist_reps=2,
    new_flow_reps=2,
    idle_kernels=2,
    stream_execs=1,
    stream_prints=4,
)
CONFIGS = {c.name: c for c in (FULL, QUICK, TINY)}


@dataclass(frozen=True)
class Side:
    """One side of a comparison: what was measured, in which unit, over the repetitions."""

    label: str
    spread: Spread
    unit: str


@dataclass
class Result:
    """One row of the results table."""

    key: str
    title: str
    value: Spread  # the figure: a ratio, or an absolute for 6b/7/7b/8/9/11
    unit: str  # TIMES, "ms", "%", "MB"
    goal_op: str  # "≥", "≤", "<"
    goal: float
    service: Side | None = None
    baseline: Side | None = None
    details: list[str] = field(default_factory=list)

    @property
    def holds(self) -> bool:
        v, g = self.value.median, self.goal
        return {"≥": v >= g, "≤": v <= g, "<": v < g}[self.goal_op]


@dataclass
class Env:
    """The running processes the figures use."""

    service: Service
    bare: flight.FlightClient
    noop_port: int
    log: Callable[[str], None] = print


def spread_ms(values: list[float]) -> Spread:
    return Spread.of([v * 1000 for v in values])


def ratio_of(pairs: Interleaved, invert: bool = False) -> Spread:
    """Ratio of the medians, with min and max of the per-pair ratios."""
    a, b = statistics.median(pairs.a), statistics.median(pairs.b)
    per_pair = pairs.ratios()
    if invert:
        return Spread(
            b / a, min(1 / r for r in per_pair), max(1 / r for r in per_pair), len(per_pair)
        )
    return Spread(a / b, min(per_pair), max(per_pair), len(per_pair))


def gb_s(nbytes: int, seconds: list[float]) -> Spread:
    return Spread.of([nbytes / s / 1e9 for s in seconds])


def kernel_gc(svc: Service, flow_id: int) -> None:
    """A garbage collection in the kernel of `flow_id` (with `KERNEL_ISOLATION=flow` each
    flow has a kernel of its own: a collection in another flow would not reach it)."""
    svc.execute("import gc\ngc.collect()", node_id="gc", flow_id=flow_id)
