"""`python -m benchmarks [--quick | --tiny]`: start everything, measure, write the report."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import pyarrow.flight as flight

from benchmarks import report
from benchmarks.baselines import Baseline
from benchmarks.harness import Service
from benchmarks.suite import CONFIGS, FIGURES, ORDER, Env, Result

RESULTS = Path(__file__).parent / "results"
README = Path(__file__).parent.parent / "README.md"


def run(
    config: str = "full",
    only: list[str] | None = None,
    out_dir: Path = RESULTS,
    name: str | None = None,
    command: str = "python -m benchmarks",
    readme: Path | None = None,
) -> list[Result]:
    """Run the figures (all, or `only` those groups) and write `<name>.md` / `.png`."""
    cfg = CONFIGS[config]
    groups = only or list(FIGURES)
    unknown = set(groups) - set(FIGURES)
    if unknown:
        raise SystemExit(f"unknown figure groups {sorted(unknown)} (known: {', '.join(FIGURES)})")
    started = report.now()
    t0 = time.perf_counter()
    results: list[Result] = []
    print(f"benchmarks ({cfg.name}): starting the service and the baselines", flush=True)
    with (
        Service() as svc,
        Baseline("flight") as bare,
        Baseline("http", f"grpc://127.0.0.1:{bare.port}") as noop,
        flight.connect(f"grpc://127.0.0.1:{bare.port}") as bare_client,
    ):
        env = Env(svc, bare_client, noop.port, log=lambda m: print(m, flush=True))
        print(
            f"  service http :{svc.http_port} flight :{svc.flight_port}; bare Flight "
            f":{bare.port}; no-op FastAPI :{noop.port}",
            flush=True,
        )
        for group in groups:
            g0 = time.perf_counter()
            print(f"- {group}", flush=True)
            found = FIGURES[group](env, cfg)
            for r in found:
                print(
                    f"  {r.key}: {report.fmt(r.value, r.unit)} (goal {r.goal_op} {r.goal:g}) "
                    f"{'holds' if r.holds else 'DOES NOT HOLD'}",
                    flush=True,
                )
            print(f"  ({time.perf_counter() - g0:.1f} s)", flush=True)
            results.extend(found)
    results.sort(key=lambda r: ORDER.index(r.key) if r.key in ORDER else len(ORDER))
    info = report.RunInfo(cfg, started, time.perf_counter() - t0, command)
    md = report.write(results, info, out_dir, name or ("latest" if config == "full" else config))
    print(f"wrote {md} ({info.seconds:.0f} s)", flush=True)
    if readme is not None:
        if report.update_readme(readme, results, info):
            print(f"updated the table in {readme}", flush=True)
        else:
            print(f"no benchmark markers in {readme}: left as it is", flush=True)
    return results


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__)
    size = parser.add_mutually_exclusive_group()
    size.add_argument(
        "--quick",
        action="store_true",
        help="smaller sizes, fewer repetitions (about 2 minutes); writes quick.md",
    )
    size.add_argument(
        "--tiny",
        action="store_true",
        help="a few thousand rows, one repetition (the CI smoke test)",
    )
    parser.add_argument("--only", help=f"comma-separated groups of: {', '.join(FIGURES)}")
    parser.add_argument("--out", type=Path, default=RESULTS, help="results directory")
    parser.add_argument(
        "--name",
        help="report file name without suffix (default: latest for a full run, else quick / tiny)",
    )
    parser.add_argument(
        "--readme",
        action="store_true",
        help="also put the table in README.md's Performance section",
    )
    args = parser.parse_args(argv)
    config = "quick" if args.quick else "tiny" if args.tiny else "full"
    only = [g.strip() for g in args.only.split(",")] if args.only else None
    command = " ".join(["python -m benchmarks", *(argv if argv is not None else sys.argv[1:])])
    run(config, only, args.out, args.name, command.strip(), README if args.readme else None)


if __name__ == "__main__":
    main()
