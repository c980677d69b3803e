"""The spool: what an execution printed, readable after its kernel died."""

from __future__ import annotations

import os
from pathlib import Path

from flight_kernel import spool
from flight_kernel.context import CappedBuffer
from flight_kernel.spool import SpoolFile


def _buffer(directory: Path, stream: str = "stdout", limit: int = 1024) -> CappedBuffer:
    return CappedBuffer(limit, lambda: SpoolFile(str(directory), "e1", stream, limit))


def test_what_a_stream_kept_is_readable_while_the_execution_runs(tmp_path: Path) -> None:
    out, err = _buffer(tmp_path), _buffer(tmp_path, "stderr")
    out.write("published, ")
    out.write("then died ✓\n")
    err.write("Traceback: nothing\n")

    assert spool.read(str(tmp_path), "e1", 1024) == (
        "published, then died ✓\n",
        "Traceback: nothing\n",
    )
    assert out.getvalue() == "published, then died ✓\n"


def test_a_stream_never_written_has_no_file_and_reads_empty(tmp_path: Path) -> None:
    out = _buffer(tmp_path)

    assert os.listdir(tmp_path) == []
    assert out.getvalue() == ""
    assert spool.read(str(tmp_path), "e1", 1024) == ("", "")


def test_the_cap_and_its_marker_are_the_live_answers(tmp_path: Path) -> None:
    out = _buffer(tmp_path, limit=10)
    out.write("0123456789abcdef")

    stdout, _ = spool.read(str(tmp_path), "e1", 10)

    assert stdout == out.getvalue()
    assert stdout.startswith("0123456789\n[output truncated: 6 bytes dropped beyond the 10-byte")


def test_an_ended_execution_leaves_no_file(tmp_path: Path) -> None:
    out = _buffer(tmp_path)
    out.write("done\n")

    out.close()
    out.write("a thread that outlived it\n")

    assert os.listdir(tmp_path) == []
    assert spool.read(str(tmp_path), "e1", 1024) == ("", "")


def test_a_buffer_without_spool_writes_no_file(tmp_path: Path) -> None:
    out = CappedBuffer(1024)
    out.write("only in memory\n")

    assert out.getvalue() == "only in memory\n"
    assert os.listdir(tmp_path) == []
