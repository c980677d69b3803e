"""Goals 14-15: notebook mode (SPEC §10): an execution in a named namespace against one in a
fresh namespace, and how soon a streaming execution's stdout reaches the client.

Both run on the main service, each in a flow of its own (`NAMESPACE_FLOW`, `STREAM_FLOW`)
whose kernel is adopted, and the next spare started, before anything is timed.
"""

from __future__ import annotations

import json
import re
import statistics
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import httpx

from benchmarks.harness import HttpClient, Interleaved, Service, Spread, percentile
from benchmarks.model import TIMES, Config, Env, Result, Side, ratio_of
from benchmarks.report import DASH

CODE = "x = 1"
SPARE_POLL_S = 0.1  # as in figure 12: /health asks every kernel
JSON_HEADERS = {"content-type": "application/json"}
NDJSON = "application/x-ndjson"


def monotonic() -> float:
    """CLOCK_MONOTONIC, system-wide on Linux: comparable with a kernel's reading of it."""
    return time.clock_gettime(time.CLOCK_MONOTONIC)


def _adopt(svc: Service, flow_id: int) -> None:
    """Give `flow_id` its kernel (it takes the spare) and wait until the next spare is
    ready, so that no kernel starts beside the measurements."""
    svc.execute(CODE, node_id="nb_warm", flow_id=flow_id)
    svc.wait_spare(pause=SPARE_POLL_S)


# -- 14: an execution in a named namespace against one in a fresh namespace ------------------

NAMESPACE_FLOW = 14
NAMESPACE = "main"


def _check_namespace(client: HttpClient) -> None:
    """The named namespace keeps a variable between executions and a fresh one does not:
    the figure measures namespaces that work, not a field that is ignored."""

    def run(code: str, namespace: str | None) -> dict[str, Any]:
        body = {"node_id": "nb_check", "code": code, "flow_id": NAMESPACE_FLOW}
        if namespace is not None:
            body["namespace"] = namespace
        result: dict[str, Any] = client.post("/execute", body)
        return result

    set_it = run("ns_check = 41", NAMESPACE)
    kept = run("assert ns_check == 41", NAMESPACE)
    fresh = run("ns_check", None)
    if not (set_it["success"] and kept["success"]) or fresh["success"]:
        raise RuntimeError(
            f"namespace {NAMESPACE!r} does not keep its variables (or a fresh one sees them): "
            f"{set_it.get('error')} / {kept.get('error')} / fresh: {fresh.get('error')}"
        )


def namespace(env: Env, cfg: Config) -> list[Result]:
    """14: A, `/execute` of `x = 1` with `"namespace": "main"` (flow 14, the same namespace
    every time, so it exists and is reused); B, the same body without `namespace` (a fresh
    namespace each time). A B A B request by request, in blocks of `latency_requests`; the
    first block is a warm-up and is dropped; p50 per block, ratio of the medians over blocks."""
    svc = env.service
    assert svc.http is not None
    _adopt(svc, NAMESPACE_FLOW)
    client = HttpClient(svc.http_port)
    _check_namespace(client)
    base = {"node_id": "nb", "code": CODE, "flow_id": NAMESPACE_FLOW}
    named = json.dumps({**base, "namespace": NAMESPACE}).encode()
    fresh = json.dumps(base).encode()
    clock = time.perf_counter
    blocks_a: list[list[float]] = []
    blocks_b: list[list[float]] = []
    failed: list[str] = []
    for i in range(cfg.latency_blocks + 1):  # the first block warms up and is dropped
        a: list[float] = []
        b: list[float] = []
        for _ in range(cfg.latency_requests):
            for payload, samples in ((named, a), (fresh, b)):
                t0 = clock()
                body = client.post_raw("/execute", payload)
                samples.append((clock() - t0) * 1000)
                answer = json.loads(body)  # after the clock: on neither side's time
                if not answer["success"]:
                    failed.append(str(answer.get("error")))
        if i:
            blocks_a.append(a)
            blocks_b.append(b)
    if failed:
        raise RuntimeError(f"{len(failed)} executions of `{CODE}` failed: {failed[0]}")
    kept = client.post(
        "/execute",
        {
            "node_id": "nb_check",
            "code": "assert ns_check == 41 and x == 1",
            "flow_id": NAMESPACE_FLOW,
            "namespace": NAMESPACE,
        },
    )
    if not kept["success"]:
        raise RuntimeError(f"namespace {NAMESPACE!r} was lost while measured: {kept['error']}")
    client.post("/clear_namespace", {"flow_id": NAMESPACE_FLOW, "namespace": NAMESPACE})
    client.close()

    p50 = Interleaved([percentile(x, 50) for x in blocks_a], [percentile(x, 50) for x in blocks_b])
    p99 = Interleaved([percentile(x, 99) for x in blocks_a], [percentile(x, 99) for x in blocks_b])
    ratio = ratio_of(p50)
    ratio99 = ratio_of(p99)
    n = cfg.latency_blocks * cfg.latency_requests
    extra = (statistics.median(p50.a) - statistics.median(p50.b)) * 1000
    return [
        Result(
            "14",
            f'/execute of `{CODE}` in a named namespace (reused), p50 / without "namespace" '
            "(a fresh one), p50",
            ratio,
            TIMES,
            "≤",
            1.1,
            Side(f'"namespace": "{NAMESPACE}" p50', Spread.of(p50.a), "ms"),
            Side("no namespace (fresh) p50", Spread.of(p50.b), "ms"),
            [
                f"14: flow {NAMESPACE_FLOW} (its kernel adopted and the next spare ready "
                f"first); checked before and after that namespace {NAMESPACE!r} keeps a "
                "variable and a fresh one does not see it; "
                f"{cfg.latency_blocks} blocks after a warm-up block, each of "
                f"{cfg.latency_requests} pairs of sequential requests alternating named, "
                f"fresh, named, fresh … ({n} per variant), stdlib `http.client` keep-alive "
                "(`HttpClient`), bodies encoded once; p50 and p99 per block, medians over "
                f"blocks, ratio with [min {DASH} max] of the per-block ratios; the named "
                f"namespace costs {extra:+.0f} µs at p50; p99 "
                f"{statistics.median(p99.a):.2f} vs {statistics.median(p99.b):.2f} ms = "
                f"{ratio99.median:.2f}{TIMES} [{ratio99.lo:.2f} {DASH} {ratio99.hi:.2f}]"
            ],
        )
    ]


# -- 15: how soon a streaming execution's stdout reaches the client ---------------------------

STREAM_FLOW = 15
PAUSE_S = 0.05  # between two prints
BASELINE_CALLS = 5  # each baseline of a pair: the median of this many /executes
STAMP = re.compile(r"t=(\d+(?:\.\d+)?);")  # what the code prints: `t=<CLOCK_MONOTONIC>;`


def stamp_code(prints: int, pause: float = PAUSE_S) -> str:
    """User code that prints `prints` readings of CLOCK_MONOTONIC, `pause` seconds apart, the
    last one just before it ends. Each is `t=<seconds>;`: complete once the `;` has come,
    however the text is cut into events."""
    return (
        "import time\n"
        f"for i in range({prints}):\n"
        "    if i:\n"
        f"        time.sleep({pause!r})\n"
        "    print(f't={time.clock_gettime(time.CLOCK_MONOTONIC)!r};')\n"
    )


@dataclass
class StreamTimes:
    """What one streaming execution's events said, timed at the client (seconds of
    CLOCK_MONOTONIC)."""

    latencies: list[float] = field(default_factory=list)  # per print: received - printed
    printed: list[float] = field(default_factory=list)  # per print: when it was printed
    stdout_events: int = 0
    events: dict[str, int] = field(default_factory=dict)  # count per kind, result included
    result: dict[str, Any] | None = None
    result_received: float = 0.0


def stream_times(events: Iterable[tuple[float, dict[str, Any]]]) -> StreamTimes:
    """From the events of a stream, each with the time it was received: every stamp
    (`STAMP`) in the stdout text, the time from its print until the event that completed
    it, and the last event's result. A stamp may be cut across events (it counts when its
    end arrives) and an event may carry several. Fails unless the stream ends with one
    `result` event."""
    out = StreamTimes()
    pending = ""
    for received, event in events:
        kind = event.get("event")
        if not isinstance(kind, str):
            raise RuntimeError(f"not a stream event: {str(event)[:300]}")
        if out.result is not None:
            raise RuntimeError(f"a {kind!r} event after the result event")
        out.events[kind] = out.events.get(kind, 0) + 1
        if kind == "stdout":
            out.stdout_events += 1
            pending += str(event["text"])
            end = 0
            for match in STAMP.finditer(pending):
                printed = float(match.group(1))
                out.printed.append(printed)
                out.latencies.append(received - printed)
                end = match.end()
            pending = pending[end:]
        elif kind == "result":
            out.result = event["result"]
            out.result_received = received
    if out.result is None:
        raise RuntimeError("the stream ended without a result event")
    return out


def read_stream(client: httpx.Client, payload: bytes) -> list[tuple[float, dict[str, Any]]]:
    """POST /execute (a body with `"stream": true`) and read its NDJSON lines as they come,
    each with its receive time (CLOCK_MONOTONIC, read as soon as httpx yields the line)."""
    events: list[tuple[float, dict[str, Any]]] = []
    with client.stream("POST", "/execute", content=payload, headers=JSON_HEADERS) as resp:
        resp.raise_for_status()
        kind = resp.headers.get("content-type", "")
        if not kind.startswith(NDJSON):
            body = resp.read()[:300]
            raise RuntimeError(f"stream: true answered {kind!r}, not {NDJSON}: {body!r}")
        for line in resp.iter_lines():
            received = monotonic()
            if line.strip():
                events.append((received, json.loads(line)))
    return events


def _round_trip(client: httpx.Client, payload: bytes, streaming: bool) -> float:
    """One /execute of `x = 1`, in ms: to the response, or to the stream's result event."""
    t0 = monotonic()
    if streaming:
        result = stream_times(read_stream(client, payload)).result or {}
    else:
        resp = client.post("/execute", content=payload, headers=JSON_HEADERS)
        resp.raise_for_status()
        result = resp.json()
    elapsed = (monotonic() - t0) * 1000
    if not result.get("success"):
        raise RuntimeError(f"/execute of `{CODE}` failed: {result.get('error')}")
    return elapsed


def streaming(env: Env, cfg: Config) -> list[Result]:
    """15: A, a streaming `/execute` (`"stream": true`) of code that prints its
    CLOCK_MONOTONIC `stream_prints` times, 50 ms apart; for each print, the time from it
    until the client received the stdout event that carried it. B, interleaved: the median
    of 5 non-streaming `/execute`s of `x = 1` (and, untimed by the goal, of 5 streaming ones,
    to their result event). One warm-up pair first. httpx, keep-alive, as `KernelClient`."""
    svc = env.service
    _adopt(svc, STREAM_FLOW)
    n = cfg.stream_prints
    code = stamp_code(n)
    stamped = json.dumps(
        {"node_id": "nb_stream", "code": code, "flow_id": STREAM_FLOW, "stream": True}
    ).encode()
    trivial = {"node_id": "nb_trivial", "code": CODE, "flow_id": STREAM_FLOW}
    plain = json.dumps(trivial).encode()
    plain_stream = json.dumps({**trivial, "stream": True}).encode()
    client = httpx.Client(base_url=f"http://127.0.0.1:{svc.http_port}", timeout=600.0)
    runs: list[StreamTimes] = []
    baseline: list[float] = []
    baseline_stream: list[float] = []
    warmup = 1
    for i in range(warmup + cfg.stream_execs):
        times = stream_times(read_stream(client, stamped))
        if not (times.result or {}).get("success"):
            raise RuntimeError(f"the streaming execution failed: {(times.result or {})}")
        if len(times.latencies) != n:
            raise RuntimeError(f"{len(times.latencies)} of {n} printed stamps were streamed")
        plain_ms = [_round_trip(client, plain, False) for _ in range(BASELINE_CALLS)]
        stream_ms = [_round_trip(client, plain_stream, True) for _ in range(BASELINE_CALLS)]
        if i >= warmup:
            runs.append(times)
            baseline.append(statistics.median(plain_ms))
            baseline_stream.append(statistics.median(stream_ms))
    client.close()

    every = [lat * 1000 for t in runs for lat in t.latencies]
    p50s = [percentile([lat * 1000 for lat in t.latencies], 50) for t in runs]
    maxima = [max(t.latencies) * 1000 for t in runs]
    firsts = [t.latencies[0] * 1000 for t in runs]
    ends = [(t.result_received - t.printed[-1]) * 1000 for t in runs]
    events = [t.stdout_events for t in runs]
    worst = max(every)
    base = Side(
        f"non-streaming /execute of `{CODE}` (median of {BASELINE_CALLS})",
        Spread.of(baseline),
        "ms",
    )
    plain_p50 = statistics.median(baseline)
    details = [
        f"15: flow {STREAM_FLOW} (its kernel adopted and the next spare ready first); "
        f"{cfg.stream_execs} streaming /executes after {warmup} warm-up, each of code printing "
        f"`t=<time.clock_gettime(CLOCK_MONOTONIC)>;` {n} times {PAUSE_S * 1000:g} ms apart "
        "(the kernel and the client read the same system-wide clock), read with httpx "
        "(`client.stream`, `iter_lines`, keep-alive); a print's latency: the client's "
        "CLOCK_MONOTONIC when `iter_lines` yielded the event that completed its stamp, minus "
        f"the stamp; {len(every)} prints in all: p50 {percentile(every, 50):.2f} ms, p99 "
        f"{percentile(every, 99):.2f} ms, max {worst:.2f} ms; the first print of an execution "
        f"{statistics.median(firsts):.2f} ms (median; {min(firsts):.2f} to {max(firsts):.2f}); "
        f"stdout events per execution: {min(events)} to {max(events)} for {n} prints "
        "(a print may be cut into several, or several coalesced into one)",
        f"15: interleaved with each streaming execution: the median of {BASELINE_CALLS} "
        f"non-streaming /executes of `{CODE}` in the same flow, round trip {plain_p50:.2f} ms "
        f"(median over pairs; {min(baseline):.2f} to {max(baseline):.2f}), and of "
        f"{BASELINE_CALLS} streaming ones to their result event "
        f"{statistics.median(baseline_stream):.2f} ms ({min(baseline_stream):.2f} to "
        f"{max(baseline_stream):.2f}); from the last print until its result event arrived: "
        f"{statistics.median(ends):.2f} ms (median; {min(ends):.2f} to {max(ends):.2f})",
    ]
    return [
        Result(
            "15",
            "streaming /execute: from a print in user code until the client received its stdout "
            f"event, p50 (over {n} prints 50 ms apart)",
            Spread.of(p50s),
            "ms",
            "≤",
            100.0,
            Side("print → stdout event p50", Spread.of(p50s), "ms"),
            base,
            details,
        ),
        Result(
            "15 max",
            "streaming /execute: from a print in user code until the client received its stdout "
            f"event, max over all {len(every)} prints",
            Spread(worst, worst, worst, 1),
            "ms",
            "≤",
            100.0,
            Side("print → stdout event, max per execution", Spread.of(maxima), "ms"),
            base,
        ),
    ]
