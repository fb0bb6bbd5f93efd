"""Benchmark: how fast the base dataset builds (the issue's target: 10K trajectories in under a minute
on 2 cores). Not a test, because a shared CI machine makes wall-clock assertions flaky; run it by hand:

    OMP_NUM_THREADS=1 python benchmarks/data_build.py [--size 10000] [--workers 2]

It builds into a temporary folder (removed afterwards) with the default mixture and prints a table.
CPU seconds are printed beside wall seconds, since a busy shared machine stretches wall time.
"""

from __future__ import annotations

import argparse
import os
import resource
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=10000)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    import datasets

    from strokes.data.build import DataConfig, build

    datasets.disable_progress_bars()
    cfg = DataConfig(size=args.size, workers=args.workers, seed=args.seed)
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        summary = build(cfg, Path(tmp) / "base", progress=False)
        wall = time.perf_counter() - t0
        cpu = sum(resource.getrusage(who).ru_utime + resource.getrusage(who).ru_stime
                  for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN))
        size_mb = sum(p.stat().st_size for p in (Path(tmp) / "base").iterdir()) / 2**20
    rows = [
        ("trajectories", f"{summary['trajectories']}"),
        ("workers", f"{args.workers} (of {os.cpu_count()} CPUs)"),
        ("seconds making", f"{summary['seconds_to_make']:.1f}"),
        ("seconds total (with saving)", f"{wall:.1f}"),
        ("traj/s", f"{summary['trajectories'] / wall:.0f}"),
        # CPU seconds do not depend on what else the machine runs: cpu / workers is the wall time the
        # build would take with its cores to itself.
        ("CPU seconds (all processes)", f"{cpu:.1f}"),
        ("CPU ms per trajectory", f"{1000 * cpu / summary['trajectories']:.2f}"),
        (f"wall s on {args.workers} idle cores (CPU/workers)", f"{cpu / args.workers:.1f}"),
        ("dataset on disk (MiB)", f"{size_mb:.1f}"),
        ("tokens total", f"{summary['tokens']['total']}"),
    ]
    width = max(len(k) for k, _ in rows)
    for k, v in rows:
        print(f"{k.ljust(width)}  {v}")


if __name__ == "__main__":
    main()
