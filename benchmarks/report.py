"""The results as markdown (`<name>.md`) and, with matplotlib installed, a chart (`<name>.png`)."""

from __future__ import annotations

import os
import platform
import subprocess
from dataclasses import dataclass
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path

import psutil

from benchmarks.bounds import BOUNDS
from benchmarks.harness import Spread
from benchmarks.model import TIMES, Config, Result, Side

DASH = "\u2013"
BARE_UNITS = (TIMES, "%")  # written without a space after the number

PACKAGES = ("pyarrow", "polars", "fastapi", "uvicorn", "numpy", "kernel-runtime")


@dataclass(frozen=True)
class RunInfo:
    """What the run was and where it ran."""

    config: Config
    started: datetime
    seconds: float
    command: str

    @staticmethod
    def versions() -> str:
        parts = [f"Python {platform.python_version()}"]
        for name in PACKAGES:
            try:
                parts.append(f"{name} {metadata.version(name)}")
            except metadata.PackageNotFoundError:
                parts.append(f"{name} (not installed)")
        return ", ".join(parts)

    @staticmethod
    def machine() -> str:
        cores = os.cpu_count()
        physical = psutil.cpu_count(logical=False)
        ram = psutil.virtual_memory().total / (1 << 30)
        cpu = platform.processor() or platform.machine()
        return f"{cores} cores ({physical} physical), {ram:.0f} GiB RAM, {cpu}, {platform.system()}"

    @staticmethod
    def revision() -> str:
        try:
            sha = subprocess.run(
                ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=True
            ).stdout.strip()
            dirty = subprocess.run(
                ["git", "status", "--porcelain", "--", "flight_kernel", "control"],
                capture_output=True,
                text=True,
                check=True,
            ).stdout.strip()
        except (OSError, subprocess.CalledProcessError):
            return "unknown"
        return f"{sha}{' with uncommitted changes to flight_kernel/ or control/' if dirty else ''}"


def _num(x: float) -> str:
    a = abs(x)
    if a >= 100:
        return f"{x:,.0f}"
    if a >= 10:
        return f"{x:.1f}"
    if a >= 1:
        return f"{x:.2f}"
    return f"{x:.3f}"


def fmt(spread: Spread, unit: str) -> str:
    """`1.23 ms [1.10 - 1.40]` (min and max when there was more than one repetition)."""
    sep = "" if unit in BARE_UNITS else " "
    text = f"{_num(spread.median)}{sep}{unit}"
    if spread.n > 1 or spread.lo != spread.hi:
        text += f" [{_num(spread.lo)} {DASH} {_num(spread.hi)}]"
    return text


def _side(side: Side | None) -> str:
    return f"{side.label}: {fmt(side.spread, side.unit)}" if side is not None else ""


def table(results: list[Result]) -> str:
    """The results table (also what the README shows)."""
    lines = [
        "| # | figure | service | baseline | result | goal | holds |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in results:
        sep = "" if r.unit in BARE_UNITS else " "
        goal = f"{r.goal_op} {r.goal:g}{sep}{r.unit}"
        lines.append(
            f"| {r.key} | {r.title} | {_side(r.service)} | {_side(r.baseline)} | "
            f"**{fmt(r.value, r.unit)}** | {goal} | {'yes' if r.holds else '**no**'} |"
        )
    return "\n".join(lines)


def markdown(results: list[Result], info: RunInfo, chart: str | None) -> str:
    cfg = info.config
    held = sum(r.holds for r in results)
    out = [
        f"# Benchmark results ({cfg.name})",
        "",
        f"`{info.command}` on {info.started:%Y-%m-%d %H:%M} UTC, {info.seconds:,.0f} s. "
        f"{held} of {len(results)} goals hold.",
        "",
        f"* Machine: {info.machine()}",
        f"* Versions: {info.versions()}",
        f"* Revision: {info.revision()}",
        "* Method: each figure compares the service (the real `kernel-runtime serve` and its "
        "kernel, started as child processes on free ports) with a baseline run beside it in "
        "the same process tree on the same data: a bare `pyarrow.flight` server (tables in a "
        "dict, `RecordBatchStream`), a no-op FastAPI POST under uvicorn with the service's "
        "settings, or the service's own parquet path. The two are measured interleaved "
        f"(A B A B …); values are medians over the repetitions with [min {DASH} max]; a ratio "
        f"is the ratio of the medians with [min {DASH} max] of the per-pair ratios. Kernel "
        "memory (the measured flow's kernel, pid from `/health`'s kernels) is its private "
        "memory, `RssAnon` of /proc/<pid>/status (pages of the store's mapped files are "
        "shared, not counted), for 7 and 7b, and its RSS for 9; 13 and 13b count USS "
        "(`Private_Clean` + `Private_Dirty` of /proc/<pid>/smaps_rollup, as `/memory` does). "
        "12, 13 and 13b run on services of their own (`KERNEL_ISOLATION=flow`, "
        "`KERNEL_MAX_KERNELS` above the flows they make, so no kernel is retired).",
        "",
        table(results),
        "",
        "## Details",
        "",
    ]
    out += [f"* {d}" for r in results for d in r.details]
    failing = [r for r in results if not r.holds]
    if failing:
        out += ["", "## What bounds it", ""]
        for r in failing:
            note = BOUNDS.get(r.key) or BOUNDS.get(r.key.split()[0], "not analysed yet.")
            out.append(
                f"* **{r.key}** ({fmt(r.value, r.unit)}, goal {r.goal_op} {r.goal:g}): {note}"
            )
    if chart:
        out += ["", f"![ratios against goals]({chart})"]
    return "\n".join(out) + "\n"


FLOOR = 1e-3  # the chart's left edge: figures below a thousandth of their goal sit on it


def normalized(r: Result) -> tuple[float, float, float]:
    """The figure as a fraction of its goal (1 = on the goal, below 1 = holds): median, lo, hi."""
    v = r.value
    if r.goal_op == "≥":
        vals = [r.goal / x if x > 0 else float("inf") for x in (v.median, v.hi, v.lo)]
    else:
        vals = [x / r.goal for x in (v.median, v.lo, v.hi)]
    mid, lo, hi = (min(max(x, FLOOR), 1e3) for x in vals)
    return mid, lo, hi


def chart(results: list[Result], path: Path) -> bool:
    """A horizontal bar per figure: value against goal; False when matplotlib is missing."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    rows = list(reversed(results))
    mids, los, his = zip(*(normalized(r) for r in rows), strict=True)
    fig, ax = plt.subplots(figsize=(10, 0.5 * len(rows) + 1.5))
    colors = ["#3a9d5d" if r.holds else "#d1495b" for r in rows]
    ys = range(len(rows))
    ax.barh(
        ys,
        [m - FLOOR for m in mids],
        left=FLOOR,
        color=colors,
        height=0.6,
        # a ratio of medians may lie outside the range of the per-pair ratios
        xerr=[
            [max(0.0, m - lo) for m, lo in zip(mids, los, strict=True)],
            [max(0.0, hi - m) for m, hi in zip(mids, his, strict=True)],
        ],
        error_kw={"ecolor": "#333", "capsize": 3, "lw": 1},
    )
    ax.axvline(1.0, color="black", ls="--", lw=1)
    ax.set_xscale("log")
    ax.set_xlim(FLOOR, max(3.0, *his) * 1.5)
    labels = [
        f"{r.key}: {fmt(r.value, r.unit).split(' [')[0]} (goal {r.goal_op} "
        f"{r.goal:g}{'' if r.unit in BARE_UNITS else ' '}{r.unit})"
        for r in rows
    ]
    ax.set_yticks(list(ys), labels, fontsize=8)
    ax.set_xlabel(
        "figure relative to its goal (≤ 1 holds; log scale, clipped at 0.001; "
        f"bars: median, whiskers: min{DASH}max)"
    )
    ax.set_title("kernel runtime benchmarks: each figure against its goal")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def write(results: list[Result], info: RunInfo, out_dir: Path, name: str) -> Path:
    """Write `<name>.md` (and `<name>.png`); returns the markdown's path."""
    out_dir.mkdir(parents=True, exist_ok=True)
    png = out_dir / f"{name}.png"
    has_chart = chart(results, png)
    md = out_dir / f"{name}.md"
    md.write_text(markdown(results, info, png.name if has_chart else None))
    return md


README_START = "<!-- benchmarks: latest table (written by `make bench`) -->"
README_END = "<!-- benchmarks: end -->"


def update_readme(readme: Path, results: list[Result], info: RunInfo) -> bool:
    """Replace the table between the README's markers; False when the markers are missing."""
    text = readme.read_text()
    start, end = text.find(README_START), text.find(README_END)
    if start < 0 or end < start:
        return False
    held = sum(r.holds for r in results)
    block = "\n".join(
        [
            README_START,
            f"{held} of {len(results)} goals hold ({info.started:%Y-%m-%d}, {info.machine()}; "
            f"{info.versions()}).",
            "",
            table(results),
            "",
            "",
        ]
    )
    readme.write_text(text[:start] + block + text[end:])
    return True


def now() -> datetime:
    return datetime.now(UTC)
