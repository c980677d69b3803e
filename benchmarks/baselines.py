"""The baselines every ratio is measured against, run as child processes beside the service.

* `BareFlightServer`: a minimal `FlightServerBase` keeping tables in a dict and serving
  `do_get` with `RecordBatchStream` — the fastest the data plane could be.
* `noop_app()`: a FastAPI app with one no-op POST endpoint, run under uvicorn with the
  settings `kernel-runtime serve` uses (`control/cli.py`: `access_log=False`, the same log
  level, uvicorn[standard] so uvloop + httptools) — the floor of the control plane.

`python -m benchmarks.baselines flight|http --port N` runs one of them.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.flight as flight

from benchmarks.harness import LOG_LEVEL, free_port, probe_json, stop_process, wait_until


class BareFlightServer(flight.FlightServerBase):  # type: ignore[misc]
    """Tables in a dict; `do_put` stores, `do_get` streams with `RecordBatchStream`."""

    def __init__(self, location: str) -> None:
        super().__init__(location)
        self._tables: dict[bytes, pa.Table] = {}

    def do_put(
        self,
        context: Any,
        descriptor: flight.FlightDescriptor,
        reader: flight.MetadataRecordBatchReader,
        writer: Any,
    ) -> None:
        key = "/".join(p.decode() if isinstance(p, bytes) else p for p in descriptor.path)
        self._tables[key.encode()] = reader.read_all()

    def do_get(self, context: Any, ticket: flight.Ticket) -> flight.RecordBatchStream:
        return flight.RecordBatchStream(self._tables[ticket.ticket])

    def do_action(self, context: Any, action: flight.Action) -> list[flight.Result]:
        if action.type == "clear":
            self._tables.clear()
        return [flight.Result(b"{}")]


def noop_app(flight_location: str | None = None) -> Any:
    """A FastAPI app whose POST `/noop` parses the JSON body and does nothing.

    Two more endpoints split the service's /execute into its steps, for the notes on what
    bounds it: `/noop_thread` also hops to a worker thread and back (as every route of the
    service does with `run_in_threadpool`), and `/noop_flight` also makes, in that thread,
    one Flight `do_action` round trip to the bare Flight server — the control plane of the
    service with a kernel that does nothing.
    """
    from fastapi import FastAPI
    from fastapi.concurrency import run_in_threadpool

    app = FastAPI()
    client = flight.connect(flight_location) if flight_location else None

    def nothing() -> bytes:
        return b"{}"

    def action(payload: bytes) -> bytes:
        assert client is not None
        results = list(client.do_action(flight.Action("ping", payload)))
        return bytes(results[0].body.to_pybytes())

    @app.post("/noop")
    async def noop(body: dict[str, Any]) -> dict[str, bool]:
        return {"ok": True}

    @app.post("/noop_thread")
    async def noop_thread(body: dict[str, Any]) -> dict[str, bool]:
        await run_in_threadpool(nothing)
        return {"ok": True}

    @app.post("/noop_flight")
    async def noop_flight(body: dict[str, Any]) -> dict[str, bool]:
        await run_in_threadpool(action, json.dumps(body).encode())
        return {"ok": True}

    @app.get("/health")
    async def health() -> dict[str, str]:
        return {"status": "healthy"}

    return app


class Baseline:
    """One baseline as a child process on a free port."""

    def __init__(self, kind: str, flight_location: str | None = None) -> None:
        self.kind = kind
        self.port = free_port()
        self.flight_location = flight_location
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> Baseline:
        extra = ["--flight", self.flight_location] if self.flight_location else []
        root = str(Path(__file__).resolve().parent.parent)  # importable from any cwd
        path = os.pathsep.join(p for p in (root, os.environ.get("PYTHONPATH")) if p)
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "benchmarks.baselines",
                self.kind,
                "--port",
                str(self.port),
                *extra,
            ],
            env={**os.environ, "PYTHONPATH": path},
        )
        if self.kind == "flight":

            def ready() -> bool:
                with flight.connect(f"grpc://127.0.0.1:{self.port}") as c:
                    list(c.do_action(flight.Action("ping", b"")))
                return True
        else:

            def ready() -> bool:
                return bool((probe_json(self.port, "/health") or {}).get("status") == "healthy")

        try:
            wait_until(ready, 60.0, f"{self.kind} baseline", self.proc)
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        if self.proc is not None:
            stop_process(self.proc, grace=5.0)

    def __enter__(self) -> Baseline:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.baselines")
    parser.add_argument("kind", choices=["flight", "http"])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--flight", help="bare Flight server for /noop_flight (http only)")
    args = parser.parse_args(argv)
    if args.kind == "flight":
        server = BareFlightServer(f"grpc://127.0.0.1:{args.port}")
        server.serve()  # SIGTERM's default action ends it
    else:
        import uvicorn

        # The same knobs as control/cli.py; loop/http default to uvloop/httptools.
        uvicorn.run(
            noop_app(args.flight),
            host="127.0.0.1",
            port=args.port,
            log_level=LOG_LEVEL.lower(),
            access_log=False,
        )


if __name__ == "__main__":
    main()
