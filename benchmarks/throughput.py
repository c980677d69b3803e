"""Goals 1-3, 10: moving a big table (do_get, do_put), a pass-through node (Flight vs
parquet), a same-host read of an output (`KernelClient.get_table` vs bare do_get)."""

from __future__ import annotations

import math
import os
import statistics
import tempfile
import time
from collections.abc import Callable

import polars as pl
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.flight as flight
import pyarrow.parquet as pq

from benchmarks import data
from benchmarks.harness import flight_get, flight_put, interleave, timed
from benchmarks.model import (
    TIMES,
    Config,
    Env,
    Result,
    Side,
    gb_s,
    ratio_of,
    size_text,
    spread_ms,
)
from flight_kernel.client import KernelClient

# -- 1, 2: do_put / do_get of a big numeric table -------------------------------------------


def transfer(env: Env, cfg: Config) -> list[Result]:
    svc = env.service
    assert svc.flight is not None
    table = data.numeric_table(data.numeric_rows_for(cfg.table_bytes))
    nbytes = table.nbytes
    env.log(
        f"  table: {table.num_rows:,} rows x {table.num_columns} float64 "
        f"= {size_text(nbytes)} in {len(table.to_batches())} batches"
    )

    put = interleave(
        cfg.transfer_reps,
        lambda: timed(lambda: flight_put(svc.flight, ["tables", "bench"], table)),
        lambda: timed(lambda: flight_put(env.bare, ["tables", "bench"], table)),
    )

    def get(client: flight.FlightClient) -> float:
        t0 = time.perf_counter()
        got = flight_get(client, "tables/bench")
        elapsed = time.perf_counter() - t0
        assert got.num_rows == table.num_rows
        return elapsed

    got = interleave(cfg.transfer_reps, lambda: get(svc.flight), lambda: get(env.bare))
    list(env.bare.do_action(flight.Action("clear", b"")))
    size = size_text(nbytes)
    return [
        Result(
            "1",
            f"do_get of a stored {size} numeric table / bare Flight do_get",
            ratio_of(got, invert=True),
            TIMES,
            "≥",
            0.9,
            Side("service do_get", gb_s(nbytes, got.a), "GB/s"),
            Side("bare Flight do_get", gb_s(nbytes, got.b), "GB/s"),
        ),
        Result(
            "2",
            "do_put of the same / bare Flight do_put",
            ratio_of(put, invert=True),
            TIMES,
            "≥",
            0.9,
            Side("service do_put", gb_s(nbytes, put.a), "GB/s"),
            Side("bare Flight do_put", gb_s(nbytes, put.b), "GB/s"),
        ),
    ]


# -- 3: pass-through node, Flight vs parquet --------------------------------------------------

PASS_THROUGH = "flowfile.publish_output(flowfile.read_input().collect())"


def passthrough(env: Env, cfg: Config) -> list[Result]:
    """Each repetition reads a fresh input: the Flight side uploads it again (untimed) just
    as the parquet side reads a file no execution has read before (from the page cache)."""
    svc = env.service
    assert svc.flight is not None
    table = data.numeric_table(cfg.passthrough_rows)
    rows = table.num_rows
    inputs = {"main": ["flight:///tables/pt"]}
    with tempfile.TemporaryDirectory(prefix="kernel-bench-") as tmp:
        src = os.path.join(tmp, "input.parquet")
        pl.DataFrame(table).write_parquet(src)  # as an upstream node of the service writes it
        out_dir = os.path.join(tmp, "out")
        parts: dict[str, list[tuple[float, float]]] = {"flight": [], "parquet": [], "again": []}

        def flight_node(kind: str) -> float:
            t0 = time.perf_counter()
            res = svc.execute(PASS_THROUGH, node_id="pt_flight", inputs=inputs)
            t1 = time.perf_counter()
            uri = str(res["output_paths"][0])
            got = flight_get(svc.flight, uri.removeprefix("flight:///"))
            t2 = time.perf_counter()
            assert got.num_rows == rows
            parts[kind].append((t1 - t0, t2 - t1))
            return t2 - t0

        def via_flight() -> float:
            flight_put(svc.flight, ["tables", "pt"], table)  # a fresh input, not timed
            elapsed = flight_node("flight")
            flight_node("again")  # the same input read a second time: for the details only
            return elapsed

        def via_parquet() -> float:
            t0 = time.perf_counter()
            res = svc.execute(
                PASS_THROUGH, node_id="pt_parquet", inputs={"main": [src]}, output_dir=out_dir
            )
            t1 = time.perf_counter()
            got = pq.read_table(str(res["output_paths"][0]))
            t2 = time.perf_counter()
            assert got.num_rows == rows
            parts["parquet"].append((t1 - t0, t2 - t1))
            return t2 - t0

        runs = interleave(cfg.passthrough_reps, via_flight, via_parquet)
    svc.clear()

    def split(kind: str) -> str:
        measured = parts[kind][1:] or parts[kind]  # the first was the warm-up
        ex = statistics.median(p[0] for p in measured) * 1000
        rd = statistics.median(p[1] for p in measured) * 1000
        return f"execute {ex:,.0f} ms + read the output {rd:,.0f} ms"

    again = statistics.median(sum(p) for p in parts["again"][1:] or parts["again"])
    return [
        Result(
            "3",
            f"pass-through node, {rows / 1e6:g}M rows x 8 float64: parquet in/out time "
            "/ Flight in/out time",
            ratio_of(runs, invert=True),
            TIMES,
            "≥",
            4.0,
            Side("Flight in/out", spread_ms(runs.a), "ms"),
            Side("parquet in/out", spread_ms(runs.b), "ms"),
            [
                f"3: code `{PASS_THROUGH}`; medians: Flight {split('flight')}; parquet "
                f"{split('parquet')}. Flight input uploaded by do_put before each repetition "
                "(untimed), so the execution is its first read; the same node on an input it has "
                f"read before: {split('again')} "
                f"({statistics.median(runs.b) / again:.1f}{TIMES} faster than parquet)"
            ],
        )
    ]


# -- 10: same-host read of a published output, KernelClient vs bare do_get ---------------------


def column_sums(table: pa.Table) -> float:
    """A sum over every column: reads every byte, so a lazy map is not free."""
    return float(sum(pc.sum(col).as_py() for col in table.columns))


def read(env: Env, cfg: Config) -> list[Result]:
    """The output of a pass-through execution (output_dir ""), read by `get_table` of a
    `KernelClient` in this process (which maps the endpoint's `file://` location when it can
    see it), against bare do_get of the same table from the bare Flight server."""
    svc = env.service
    assert svc.flight is not None
    table = data.numeric_table(data.numeric_rows_for(cfg.table_bytes))
    nbytes, rows = table.nbytes, table.num_rows
    flight_put(svc.flight, ["tables", "read"], table)
    res = svc.execute(
        PASS_THROUGH,
        node_id="read_out",
        flow_id=10,
        inputs={"main": ["flight:///tables/read"]},
        output_dir="",
    )
    uri = str(res["output_paths"][0])
    flight_put(env.bare, ["tables", "read"], table)
    expected = column_sums(table)
    del table
    path = uri.removeprefix("flight:///").split("/")
    info = svc.flight.get_flight_info(flight.FlightDescriptor.for_path(*path))
    locations = [loc.uri.decode() for e in info.endpoints for loc in e.locations]
    phases: dict[str, list[tuple[float, float]]] = {"client": [], "bare": []}
    allocated: list[int] = []

    def summed(kind: str, get: Callable[[], pa.Table]) -> float:
        pool0 = pa.total_allocated_bytes()
        t0 = time.perf_counter()
        got = get()
        t1 = time.perf_counter()
        total = column_sums(got)
        t2 = time.perf_counter()
        if kind == "client":
            allocated.append(pa.total_allocated_bytes() - pool0)
        assert got.num_rows == rows and math.isclose(total, expected, rel_tol=1e-9), kind
        phases[kind].append((t1 - t0, t2 - t1))
        del got
        return t2 - t0

    with KernelClient(f"http://127.0.0.1:{svc.http_port}", svc.location) as kc:
        runs = interleave(
            cfg.transfer_reps,
            lambda: summed("client", lambda: kc.get_table(uri)),
            lambda: summed("bare", lambda: flight_get(env.bare, "tables/read")),
        )
    list(env.bare.do_action(flight.Action("clear", b"")))
    svc.clear()

    def split(kind: str) -> str:
        measured = phases[kind][1:] or phases[kind]  # the first was the warm-up
        got = statistics.median(p[0] for p in measured) * 1000
        add = statistics.median(p[1] for p in measured) * 1000
        return f"{got:,.1f} ms to the table + {add:,.1f} ms to sum it"

    mapped = statistics.median(allocated) < nbytes / 2
    return [
        Result(
            "10",
            f"same-host read of a published {size_text(nbytes)} output, each up to a sum over "
            "every column: bare Flight do_get time / `KernelClient.get_table` time",
            ratio_of(runs, invert=True),
            TIMES,
            "≥",
            3.0,
            Side("get_table + sum", gb_s(nbytes, runs.a), "GB/s"),
            Side("bare Flight do_get + sum", gb_s(nbytes, runs.b), "GB/s"),
            [
                f"10: {rows:,} rows x 8 float64, uploaded by do_put and published by "
                f'`{PASS_THROUGH}` with output_dir "" as {uri}; its endpoint\'s locations: '
                f"{', '.join(locations)}; {cfg.transfer_reps} interleaved pairs, medians: "
                f"get_table {split('client')}, bare do_get {split('bare')}; get_table "
                f"{'mapped the file' if mapped else 'streamed it (do_get)'} (pyarrow's pool "
                f"grew by {statistics.median(allocated) / (1 << 20):,.1f} MiB per read)"
            ],
        )
    ]
