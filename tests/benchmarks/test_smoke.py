"""The benchmark code runs end to end at tiny sizes: every figure is produced (no thresholds)."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from benchmarks.run import run
from benchmarks.suite import ORDER, TIMES

pytestmark = pytest.mark.e2e  # starts the real `kernel-runtime serve` and the baselines


def test_every_figure_is_produced(tmp_path: Path) -> None:
    results = run("tiny", out_dir=tmp_path, name="smoke")

    assert {"10", "11"} <= set(ORDER)  # get_table vs do_get, persisted after publish
    assert {"12", "13", "13b"} <= set(ORDER)  # a new flow's first execution, idle kernels
    assert {"14", "15", "15 max"} <= set(ORDER)  # notebook mode: namespaces, streaming
    assert [r.key for r in results] == ORDER
    by_key = {r.key: r for r in results}
    assert "extrapolated to 20" in by_key["13b"].title  # tiny: 2 idle kernels, not 20
    for r in results:
        assert math.isfinite(r.value.median), r.key
        sides = [s for s in (r.service, r.baseline) if s is not None]
        assert sides, r.key
        assert all(s.spread.median > 0 for s in sides), r.key
        if r.unit in (TIMES, "ms") and r.key != "8":  # ratios and latencies; 8 is a difference
            assert r.value.median > 0, r.key
    report = (tmp_path / "smoke.md").read_text()
    assert all(f"| {key} |" in report for key in ORDER)
    assert (tmp_path / "smoke.png").exists() == _has_matplotlib()


def _has_matplotlib() -> bool:
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        return False
    return True
