"""`/memory`'s readings: cgroup v2 and v1 limits, and a process's private memory."""

from __future__ import annotations

import os
from pathlib import Path

from control import memory


def _write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text + "\n")


def test_cgroup_v2_use_and_limit(tmp_path: Path) -> None:
    _write(tmp_path / "memory.current", "1048576")
    _write(tmp_path / "memory.max", "4294967296")

    assert memory.cgroup_memory(str(tmp_path)) == (1048576, 4294967296)


def test_cgroup_v2_without_a_limit_says_zero(tmp_path: Path) -> None:
    _write(tmp_path / "memory.current", "2048")
    _write(tmp_path / "memory.max", "max")

    assert memory.cgroup_memory(str(tmp_path)) == (2048, 0)


def test_cgroup_v1_use_and_limit(tmp_path: Path) -> None:
    _write(tmp_path / "memory" / "memory.usage_in_bytes", "4096")
    _write(tmp_path / "memory" / "memory.limit_in_bytes", "536870912")

    assert memory.cgroup_memory(str(tmp_path)) == (4096, 536870912)


def test_cgroup_v1_without_a_limit_says_zero(tmp_path: Path) -> None:
    _write(tmp_path / "memory" / "memory.usage_in_bytes", "4096")
    _write(tmp_path / "memory" / "memory.limit_in_bytes", "9223372036854771712")

    assert memory.cgroup_memory(str(tmp_path)) == (4096, 0)


def test_no_cgroup_accounting_gives_no_use_and_no_limit(tmp_path: Path) -> None:
    assert memory.cgroup_memory(str(tmp_path)) == (None, 0)


def test_a_processs_private_memory_is_within_its_resident_memory() -> None:
    rss, uss = memory.process_memory(os.getpid())

    assert rss >= uss > 0


def test_a_gone_process_has_no_memory() -> None:
    assert memory.process_memory(2**22 + 12345) == (0, 0)


def test_the_report_lists_kernels_that_run_and_skips_those_not_started() -> None:
    body = memory.report(123, [(1, os.getpid()), (None, None)])

    assert body["store_bytes"] == 123
    assert [(k["flow_id"], k["pid"]) for k in body["kernels"]] == [(1, os.getpid())]
    assert body["used_bytes"] > 0
    assert body["limit_bytes"] >= 0
    assert 0 < body["usage_percent"] <= 100
