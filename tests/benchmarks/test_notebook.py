"""The pure helpers of figures 14-15 (no service): the stamping code and the reading of events."""

from __future__ import annotations

import contextlib
import io
from typing import Any

import pytest

from benchmarks.notebook import STAMP, stamp_code, stream_times


def test_stamp_code_prints_each_reading_of_the_monotonic_clock_apart() -> None:
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        exec(stamp_code(3, pause=0.01), {})

    lines = out.getvalue().splitlines()
    assert len(lines) == 3
    assert all(STAMP.fullmatch(line) for line in lines)
    stamps = [float(STAMP.fullmatch(line).group(1)) for line in lines]  # type: ignore[union-attr]
    assert stamps[1] - stamps[0] >= 0.01
    assert stamps[2] - stamps[1] >= 0.01


def test_each_stamp_counts_from_the_event_that_completed_it() -> None:
    result = {"success": True, "stdout": "..."}
    events: list[tuple[float, dict[str, Any]]] = [
        (10.5, {"event": "stdout", "text": "t=10.0;\n"}),
        (11.25, {"event": "stdout", "text": "t=11.0"}),  # cut: not complete yet
        (11.5, {"event": "stderr", "text": "t=1.0;\n"}),  # stderr: not a stamp of stdout
        (11.75, {"event": "stdout", "text": ";\nt=11.5;\nt=11.7;\n"}),  # its end, then two
        (11.8, {"event": "log", "record": {"message": "t=0.5;"}}),
        (12.0, {"event": "result", "result": result}),
    ]

    times = stream_times(events)

    assert times.printed == [10.0, 11.0, 11.5, 11.7]
    assert times.latencies == pytest.approx([0.5, 0.75, 0.25, 0.05])
    assert times.stdout_events == 3
    assert times.events == {"stdout": 3, "stderr": 1, "log": 1, "result": 1}
    assert times.result == result
    assert times.result_received == 12.0


def test_a_stream_must_end_with_its_result_event() -> None:
    with pytest.raises(RuntimeError, match="without a result event"):
        stream_times([(1.0, {"event": "stdout", "text": "t=0.5;"})])
    with pytest.raises(RuntimeError, match="after the result event"):
        stream_times(
            [
                (1.0, {"event": "result", "result": {"success": True}}),
                (2.0, {"event": "stdout", "text": "late"}),
            ]
        )
    with pytest.raises(RuntimeError, match="not a stream event"):  # a plain JSON answer
        stream_times([(1.0, {"success": True, "stdout": ""})])
