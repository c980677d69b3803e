"""Executions running at the same time keep their own stdout, stderr and flowfile context.

Each execution waits on a `threading.Barrier` shared through an artifact of its flow, so
the three truly run interleaved: none can print its next block of lines before the
others have printed theirs.
"""

from __future__ import annotations

import json
import threading
from concurrent.futures import ThreadPoolExecutor

import pyarrow as pa
import pyarrow.flight as flight
import pytest

FLOWS = (1, 2, 3)
LINES = 600
EVERY = 50  # lines between two barrier meetings

PRINTING = """\
import sys
barrier = flowfile.read_artifact("barrier")
for i in range({lines}):
    if i % {every} == 0:
        barrier.wait(10)
    print(f"flow {flow} out {{i}}")
    print(f"flow {flow} err {{i}}", file=sys.stderr)
"""

CONTEXT = """\
import json
barrier = flowfile.read_artifact("barrier")
barrier.wait(10)
frame = flowfile.read_input().collect()
barrier.wait(10)
flowfile.publish_output(frame)
flowfile.publish_artifact("mine", {flow})
barrier.wait(10)
print(json.dumps({{
    "seen_flows": sorted({{r["flow_id"] for r in flowfile.list_artifacts()}}),
    "artifacts": sorted(r["name"] for r in flowfile.list_artifacts()),
    "mine": flowfile.read_artifact("mine"),
    "rows": frame["v"].to_list(),
}}))
"""


@pytest.fixture
def barrier(kernel_server) -> threading.Barrier:
    shared = threading.Barrier(len(FLOWS))
    for flow in FLOWS:
        kernel_server.kernel.artifacts.publish(flow, None, "barrier", shared)
    return shared


def _execute_all(kernel_location: str, bodies: dict[int, dict]) -> dict[int, dict]:
    """Run one execution per flow, all at once, each from its own thread and connection."""

    def execute(body: dict) -> dict:
        with flight.connect(kernel_location) as client:
            action = flight.Action("execute", json.dumps(body).encode())
            return json.loads(next(iter(client.do_action(action))).body.to_pybytes())

    with ThreadPoolExecutor(len(bodies)) as pool:
        futures = {flow: pool.submit(execute, body) for flow, body in bodies.items()}
        return {flow: future.result(timeout=60) for flow, future in futures.items()}


def test_each_execution_captures_exactly_its_own_output(kernel_location, barrier):
    bodies = {
        flow: {
            "node_id": "script",
            "flow_id": flow,
            "code": PRINTING.format(lines=LINES, every=EVERY, flow=flow),
        }
        for flow in FLOWS
    }

    results = _execute_all(kernel_location, bodies)

    for flow, result in results.items():
        assert result["success"] is True, result["error"]
        assert result["stdout"] == "".join(f"flow {flow} out {i}\n" for i in range(LINES))
        assert result["stderr"] == "".join(f"flow {flow} err {i}\n" for i in range(LINES))


def test_each_execution_sees_its_own_flowfile_context(
    kernel_server, kernel_location, barrier, flight_client
):
    for flow in FLOWS:
        table = pa.table({"v": [flow * 10 + i for i in range(flow)]})
        writer, _ = flight_client.do_put(
            flight.FlightDescriptor.for_path("tables", f"input_{flow}"), table.schema
        )
        writer.write_table(table)
        writer.close()
    bodies = {
        flow: {
            "node_id": "script",
            "flow_id": flow,
            "code": CONTEXT.format(flow=flow),
            "input_paths": {"main": [f"flight:///tables/input_{flow}"]},
        }
        for flow in FLOWS
    }

    results = _execute_all(kernel_location, bodies)

    for flow, result in results.items():
        assert result["success"] is True, result["error"]
        rows = [flow * 10 + i for i in range(flow)]
        assert json.loads(result["stdout"]) == {
            "seen_flows": [flow],
            "artifacts": ["barrier", "mine"],
            "mine": flow,
            "rows": rows,
        }
        assert result["output_paths"] == [f"flight:///outputs/{flow}/script/output_0"]
        assert result["published_artifacts"] == ["mine"]
        ticket = flight.Ticket(f"outputs/{flow}/script/output_0".encode())
        assert flight_client.do_get(ticket).read_all().column("v").to_pylist() == rows
