"""Goals 12-13b: a kernel per flow (`KERNEL_ISOLATION=flow`, SPEC §9): the first execution in
a new flow, and what an idle flow kernel costs in private memory.

The three run on a service of their own with `KERNEL_ISOLATION=flow` and a
`KERNEL_MAX_KERNELS` above the number of flows they make: no kernel is retired while they
measure (a retirement runs in a background thread beside the execution that caused it),
and the service of the other figures is not left with dozens of kernels (this one is stopped
at the end). The kernels of 12's new flows, each of which ran `x = 1` once, are the idle
kernels of 13 and 13b (more flows are made if 12 made fewer than 13 needs).
"""

from __future__ import annotations

import statistics
from typing import Any

from benchmarks.harness import Service, Spread, interleave, latencies, smaps_rollup, timed, uss_of
from benchmarks.model import TIMES, Config, Env, Result, Side, ratio_of, spread_ms
from benchmarks.report import DASH

CODE = "x = 1"
MB = 1e6  # the goals are in MB and GB (powers of ten)
GB = 1e9
TOTAL_KERNELS = 20  # goal 13b: 20 idle flow kernels


def flow_service(max_kernels: int) -> Service:
    """A service of its own: a kernel per flow, none retired below `max_kernels` flows."""
    return Service({"KERNEL_ISOLATION": "flow", "KERNEL_MAX_KERNELS": str(max_kernels)})


def _flow_kernels(kernels: list[dict[str, Any]], flows: set[int]) -> list[dict[str, Any]]:
    return [k for k in kernels if k["flow_id"] in flows]


def _check_own_kernels(svc: Service, flows: set[int]) -> list[dict[str, Any]]:
    """Every flow has a kernel of its own, alive, never restarted (nothing was retired)."""
    kernels = svc.kernels()
    mine = _flow_kernels(kernels, flows)
    pids = {k["pid"] for k in mine}
    if len(mine) != len(flows) or len(pids) != len(flows):
        raise RuntimeError(f"expected a kernel for each of {len(flows)} flows, got: {kernels}")
    if any(k["restarts"] for k in mine):
        raise RuntimeError(f"a flow kernel restarted while measured: {kernels}")
    return kernels


# -- 12: the first execution in a new flow; 13, 13b: what idle flow kernels cost ------------

BASE_FLOW = 1  # the flow with a kernel: the baseline of 12
FIRST_NEW_FLOW = 1000
BASELINE_CALLS = 5  # the baseline of a pair: the median of this many /executes
SPARE_POLL_S = 0.1  # /health asks every kernel: polled faster, it slows the spare's start


def flows(env: Env, cfg: Config) -> list[Result]:
    """12: A, the first `/execute` of `x = 1` in a flow never used before (it takes the
    started spare; the next spare starts in the background); then, untimed, `/health` is
    polled until a spare is listed `healthy` again, so every sample finds one ready and no
    spare starts beside the next measurement. B: the median of 5 `/execute`s of the same code
    in a flow that has its kernel. A B A B ..., one warm-up pair. 13, 13b: then one
    `GET /memory`."""
    warmup = 1
    count = max(cfg.new_flow_reps + warmup, cfg.idle_kernels)
    new_flows = list(range(FIRST_NEW_FLOW, FIRST_NEW_FLOW + count))
    with flow_service(count + 4) as svc:
        svc.execute(CODE, node_id="new", flow_id=BASE_FLOW)
        svc.wait_spare(pause=SPARE_POLL_S)
        pending = iter(new_flows)
        waits: list[float] = []

        def fresh() -> float:
            flow = next(pending)
            elapsed = timed(lambda: svc.execute(CODE, node_id="new", flow_id=flow))
            waits.append(svc.wait_spare(pause=SPARE_POLL_S))
            return elapsed

        def existing() -> float:
            calls = latencies(
                lambda: svc.execute(CODE, node_id="new", flow_id=BASE_FLOW), BASELINE_CALLS
            )
            return statistics.median(calls)

        runs = interleave(cfg.new_flow_reps, fresh, existing, warmup=warmup)
        for flow in pending:  # 13 needs more idle kernels than 12 made
            svc.execute(CODE, node_id="new", flow_id=flow)
        svc.wait_spare(pause=SPARE_POLL_S)
        kernels = _check_own_kernels(svc, {BASE_FLOW, *new_flows})
        idle = _idle(svc, cfg, set(new_flows[: cfg.idle_kernels]))
    ratio = ratio_of(runs)
    extra = statistics.median(runs.a) * 1000 - statistics.median(runs.b) * 1000
    measured = waits[warmup:]
    first = Result(
        "12",
        f"first /execute of `{CODE}` in a new flow (its kernel taken from the started spare), p50",
        spread_ms(runs.a),
        "ms",
        "≤",
        20.0,
        Side("first /execute in a new flow", spread_ms(runs.a), "ms"),
        Side(
            f"/execute in a flow with its kernel (median of {BASELINE_CALLS})",
            spread_ms(runs.b),
            "ms",
        ),
        [
            f"12: a service of its own (`KERNEL_ISOLATION=flow`, `KERNEL_MAX_KERNELS="
            f"{count + 4}`: no kernel retired); {cfg.new_flow_reps} samples after {warmup} "
            "warm-up, each in a flow never used before and interleaved with the baseline (the "
            f"median of {BASELINE_CALLS} `/execute`s in flow {BASE_FLOW}, which has its "
            f"kernel); after each sample `/health` is polled (untimed, {SPARE_POLL_S:g} s "
            "pauses) until a spare is listed healthy again: "
            f"{statistics.median(measured):.2f} s after the response (median; "
            f"{min(measured):.2f} to {max(measured):.2f} s); the first execution costs "
            f"{extra:+.2f} ms over the baseline, {ratio.median:.2f}{TIMES} "
            f"[{ratio.lo:.2f} {DASH} {ratio.hi:.2f}] of it; {len(kernels) - 1} flow kernels "
            "and a spare at the end, none restarted"
        ],
    )
    return [first, *idle]


def _idle(svc: Service, cfg: Config, flows: set[int]) -> list[Result]:
    """One `GET /memory`: the `uss_bytes` of each of these idle flow kernels (private pages,
    /proc/<pid>/smaps_rollup) and, read here the same way, the control process's."""
    assert svc.http is not None
    n = len(flows)
    control_pid = int(svc.health()["supervisor_pid"])
    report = svc.http.get("/memory")
    control = uss_of(control_pid)
    control_pss = smaps_rollup(control_pid)["Pss"]
    mine = sorted(_flow_kernels(report["kernels"], flows), key=lambda k: k["flow_id"])
    spares = [k for k in report["kernels"] if k["flow_id"] is None]
    pss = [smaps_rollup(int(k["pid"]))["Pss"] for k in mine]
    if len(mine) != n:
        raise RuntimeError(f"/memory lists {len(mine)} of the {n} flow kernels: {report}")
    uss = [int(k["uss_bytes"]) for k in mine]
    rss = [int(k["rss_bytes"]) for k in mine]
    spare = [int(k["uss_bytes"]) for k in spares] or [0]
    per_kernel = Spread.of([u / MB for u in uss])

    if n >= TOTAL_KERNELS:
        total = (control + sum(uss[:TOTAL_KERNELS])) / GB
        total_spread = Spread(total, total, total, 1)
        how = f"{TOTAL_KERNELS} idle flow kernels + the control process"
    else:
        total_spread = Spread(
            (control + TOTAL_KERNELS * statistics.median(uss)) / GB,
            (control + TOTAL_KERNELS * min(uss)) / GB,
            (control + TOTAL_KERNELS * max(uss)) / GB,
            n,
        )
        how = (
            f"{TOTAL_KERNELS} idle flow kernels + the control process (extrapolated to "
            f"{TOTAL_KERNELS} from the median of {n} kernels)"
        )
    return [
        Result(
            "13",
            f"private memory (USS) of an idle flow kernel after `{CODE}`, median of {n}",
            per_kernel,
            "MB",
            "≤",
            60.0,
            Side("flow kernel USS", per_kernel, "MB"),
            Side("spare kernel USS (no code run)", Spread.of([s / MB for s in spare]), "MB"),
            [
                f"13: on 12's service, the kernels of {n} of its new flows (each ran `{CODE}` "
                "once), read by one `GET /memory` once the next spare was ready (MB = 10^6 "
                f"bytes); medians per flow kernel: USS {statistics.median(uss) / MB:.1f} MB, "
                f"RSS (shared library pages included) {statistics.median(rss) / MB:.1f} MB, "
                "PSS (shared pages split among the processes that map them, read here) "
                f"{statistics.median(pss) / MB:.1f} MB"
            ],
        ),
        Result(
            "13b",
            f"total private memory (USS) of {how}",
            total_spread,
            "GB",
            "<",
            1.5,
            Side(f"{TOTAL_KERNELS} kernels + control", total_spread, "GB"),
            Side("control process USS", Spread.of([control / MB]), "MB"),
            [
                f"13b: the control process (`supervisor_pid` of /health) read here from "
                f"/proc/<pid>/smaps_rollup: USS {control / MB:.1f} MB, PSS "
                f"{control_pss / MB:.1f} MB; the {n} flow kernels together: USS "
                f"{sum(uss) / MB:,.0f} MB, PSS {sum(pss) / MB:,.0f} MB; the spare (not "
                f"counted): USS {spare[0] / MB:.1f} MB"
            ],
        ),
    ]
