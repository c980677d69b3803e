"""What bounds each figure when its goal does not hold: found by profiling, kept with the code.

`report.py` prints the note of every figure that misses its goal in a run. The figures in
these notes come from the profiles taken when they were written (2 cores, pyarrow 26,
polars 2.1, py-spy 0.4); the live decomposition of each run is in its "Details". Those of
1, 2, 4-6b predate the mapped store (SPEC §8).
"""

from __future__ import annotations

from benchmarks.model import TIMES

_TRANSFER = (
    "the service moves the bytes with the same pyarrow C++ path as the bare server: py-spy "
    "(--native) of the kernel during back-to-back 1 GiB do_puts shows 67% in "
    "`FlightDataDeserialize` (memcpy of gRPC slices into one buffer), 27% waiting on gRPC, "
    "4.5% munmap of the replaced table and < 0.1% Python (`normalize`, `views_schema`); "
    "do_get streams the stored batches with `RecordBatchStream`, as the bare server does. "
    "Alternating 12 do_puts of 128 MiB to each gave 0.98 in isolation; six full runs of the "
    "same code gave 0.84 to 1.02 for do_get and 0.72 to 1.11 for do_put (per-pair ratios "
    "0.36 to 2.1), because every transfer writes into freshly "
    "allocated memory and on this VM first-touch page faults cost 0.1 to 1.5 s per 640 MB "
    "depending on whether the host still backs the pages (`np.ones(80_000_000)` took 114, "
    "1450 and 154 ms in three fresh processes). Nothing in the service to fix; read the "
    "per-pair range, or rerun on a quiet machine."
)

BOUNDS: dict[str, str] = {
    "1": _TRANSFER,
    "2": _TRANSFER,
    "3": (
        "the do_get of the output. The first-read alignment copy is gone with the mapped "
        "store: the execution takes about as long on a fresh upload as on an input read "
        "before (quick runs: 32 to 33 ms and 30 to 32 ms for 1M rows), and what is left is "
        "streaming the 64 MB output at this machine's bare Flight rate (about 70 ms, 0.9 GB/s),"
        " against which the parquet side (write and read, about 290 ms) caps the ratio near 4.2 "
        "even if the execution were free. The figure reads the output with bare `do_get`; "
        "`KernelClient.get_table` maps it instead (see 10). Not profiled further."
    ),
    "4": (
        "the architecture's floor is above the goal. /execute is a no-op POST + a hop to a "
        "worker thread (`run_in_threadpool`) + one Flight do_action round trip to the kernel "
        "+ the kernel's work; the `/noop_flight` probe (the no-op endpoint plus that hop and "
        f"a round trip to the bare Flight server, see Details) is already 1.9 to 2.8{TIMES} the "
        f"no-op POST, so /execute cannot reach 1.6{TIMES} while SPEC §4 has the control plane use "
        "the Flight actions. Steps in one probe (p50, httpx): no-op 0.80 ms, + thread hop "
        "0.94 ms, + Flight round trip 1.53 ms, /execute 1.75 ms; the round trip costs "
        "0.25 ms from a plain client but 0.6 to 0.76 ms from uvicorn's worker thread (two cores "
        "shared by the client, the event loop, the worker, gRPC's threads and the server). "
        "pydantic validation + model_dump + json.dumps of the body: 5 µs, not the bound. "
        "Proposed fix: an HTTP→kernel channel awaited on the event loop with no thread hop, "
        "e.g. length-prefixed JSON over a Unix socket (an asyncio round trip measured "
        "85 µs p50 here, against 0.25 ms for a Flight action plus 0.15 ms for the hop), "
        "keeping the Flight actions for Flight-only clients; this needs SPEC §4's "
        '"the control plane uses exactly these" relaxed.'
    ),
    "4 p99": (
        "as for 4 (the same extra hops), plus scheduling noise: with five runnable threads "
        "on two shared cores the tail follows the machine's other load."
    ),
    "5": (
        "the relay. Since the data plane moved to the control process (SPEC §8), the execute "
        "action of the service's Flight port goes client → `DataPlane.do_action` → "
        "`Service.action` (parse, `Service.execute`) → the kernel's own execute action: two "
        "Flight round trips and a JSON re-encoding. Quick run: p50 0.96 ms, where the bare "
        "round trip is 0.28 ms and the relay adds 0.68 ms (the kernel's server alone added "
        "0.16 ms before: 0.52 ms, 0.82x). Not profiled further. What follows predates it: "
        "a bare pyarrow do_action round trip is already 0.19 to 0.41 ms here, 0.26 to "
        f"0.46{TIMES} the no-op POST (see Details), and the kernel's execute action adds 0.14 to"
        " 0.23 ms to it. Of that, the kernel's Python, timed inside its do_action: 85 µs for "
        "`execute` and 54 µs even for `health` (the same code costs 24 and 10 µs in a tight "
        "in-process loop, 50 and 25 µs when each call comes on a new thread as Flight's handler"
        " calls do); a do_action of the kernel's server that returns at once costs what the "
        "bare one does, so the server itself adds nothing. py-spy --gil of the kernel after "
        "c02111d (compiled code cached, linecache only for tracebacks): no hot spot left, JSON "
        "decode and encode 20%, `ExecuteRequest.from_json` 5%, `Executor._response` 3%, the "
        "clears 3%; the rest is spread thin. Before c02111d `compile()` was 30% of it; the "
        "cache saved 5 to 15 µs a call. So the goal holds only when the machine is quiet "
        f"(0.48{TIMES} in one quick run) and the lever left is pyarrow's per-call cost: a Flight"
        " action costs 0.2 to 0.4 ms against 85 µs for an asyncio round trip over a Unix socket"
        " (see 4)."
    ),
    "6": (
        "nothing serializes the two flows (each runs in its own Flight handler thread, polars "
        "without the GIL), but they share polars' one pool of two threads on two cores, so at "
        "best they take as long together as one after the other; together they also hold two "
        "1M-group hash tables at once (more cache misses), while the serial pair pays one more "
        f"request round trip. Full runs gave 0.86 to 1.09{TIMES} with per-pair ratios from 0.56 "
        "to 1.20: the 5% of headroom is inside this machine's noise. Not analysed further."
    ),
    "7": (
        "the held result and the filter's own buffers: the filter keeps 1% of the rows "
        "(1.3 MiB of a 128 MiB table, held as an artifact), and the peak was 1.8 to 1.9 MiB "
        "(quick runs); reading maps the file (a second `read_input()` alone: 0.0 MiB of "
        "private memory). At the quick size the goal leaves 1.3 MiB beside the result."
    ),
    "7b": (
        "the cast to string views. The store keeps an upload as the client sent it "
        "(`string`), and every read casts it `for_polars` (`flight_kernel/tables.py`): the cast "
        "shares the mapped character data but allocates 16 bytes a row per string column in "
        "pyarrow's pool, 70 MiB for 1.1M rows x 4 columns of a 126 MiB table (56%), on each "
        "read; mimalloc keeps the pages after the frame is gone (RssAnon did not fall in an "
        "in-process probe). Also, the filtered frame's views point into the whole mapped "
        "character buffers, so 1% of the rows kept as an artifact keeps the whole file mapped "
        "(RSS still up by the file's size after the execution; shared pages, not private). "
        "Measured in a probe (same table, written to /dev/shm, read as the kernel reads it): "
        "an IPC file that holds the columns as `string_view` maps with 0.05 MiB of private "
        "memory and 1.4 MiB (1.1%) after the filter, for a file of 176 MiB instead of 126; "
        "do_get would then need the cast to `large_string` for clients (or a second form)."
    ),
    "8": "not reproduced: publish_artifact stores a reference; timed inside the kernel, 25-50 µs.",
    "9": "not reproduced: 10,000 executions grew the kernel by < 0.1 MB.",
    "10": (
        "not reproduced: at 128 MiB the mapped read takes 2 ms to the table (get_flight_info, "
        "map, footer) and 17 to 19 ms to sum it (12 ms for the same table in heap memory: the "
        "difference is faulting in the mapped pages), against 120 to 180 ms for bare do_get."
    ),
    "11": (
        "not reproduced: the write-behind of a 10 MB array reads persisted 1 to 6 ms after "
        "the /execute response (quick run)."
    ),
    "12": (
        "not reproduced since the kernel sets PR_SET_PDEATHSIG itself (flight_kernel/parent.py) "
        "and Popen vforks: 3.8 ms p50 in a quick run, against 17 to 23 ms when Popen needed a "
        "`preexec_fn` and so forked the whole control process (32 ms per spawn in a probe, "
        "stalling its other threads). What is left over an existing flow's 1.7 ms is the "
        "`adopt` round trip, a fresh kernel's first call and the next spare's spawn."
    ),
    "13": (
        "not reproduced: an idle flow kernel is 49.5 to 49.6 MB of USS after `x = 1` (quick "
        "runs), 0.3 MB more than a spare that ran nothing; of its 117 MB RSS, the rest is "
        "shared library pages (PSS 53 MB)."
    ),
    "13b": (
        "not reproduced: 20 x 49.6 MB of idle flow kernels + 69 MB of control process = "
        "1.06 GB (quick runs, extrapolated from 6 kernels); the spare adds 49 MB more."
    ),
    "6b": (
        "CPU scheduling (polars computes without the GIL): the probe's request crosses six "
        "threads in three processes (client, uvicorn loop, worker, gRPC client, kernel handler "
        "and back) while polars keeps both cores busy with threads of the same priority "
        "(`polars-*`, `async-executor-*`, `tokio-rt-worker`), so each hop may wait for a time "
        "slice; the tail is worse with short aggregations (quick sizes: 50 ms each) than long "
        "ones. Measured fix, from outside the kernel: renicing polars' compute threads to 19 "
        "gave p99 7.8 to 8.1 ms against 9.0 to 11.8 ms in alternating blocks (2M rows, 200k "
        "groups). Proposed: the kernel lowers the priority of polars' threads once they exist "
        "(`os.setpriority(os.PRIO_PROCESS, tid, 10)` per thread id from /proc/self/task), "
        "keeping its Flight handler threads at normal priority."
    ),
}
