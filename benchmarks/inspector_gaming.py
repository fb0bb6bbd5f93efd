"""Benchmark: do attention Inspect heads see the mistakes in a GRPO run's own finished pictures, and
does what fooled one head fool the others (issue 27)? Not a test; run it by hand on a finished run:

    OMP_NUM_THREADS=1 python benchmarks/inspector_gaming.py runs/NAME HEAD_DIR [HEAD_DIR ...] [--blocks 1-20 41-60]

It reads the trajectories each GRPO round kept (`round_00N/checkpoint/trajectories`), scores every
finished picture with the world's exact judge and with each head (`selfplay fit-inspector`'s
folders, each read by the checkpoint it was fitted on, as a self-judged round reads it), and prints
per round and block of steps: the share the exact judge calls right and, per head, the share it
calls right at its own threshold and its ROC AUC on these pictures. A head that judged the run and
calls ever more pictures right while the exact share falls is being gamed; heads fitted apart that
follow it share its blind spot (docs/loop.md, "An attention Inspect head").
"""

from __future__ import annotations

import argparse
import base64
import os
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", help="a run folder with GRPO rounds")
    parser.add_argument("heads", nargs="+", help="fitted inspector folders")
    parser.add_argument("--blocks", nargs="+", default=["1-20", "41-60"], help="step ranges, first-last")
    args = parser.parse_args()

    import numpy as np
    from sklearn.metrics import roc_auc_score

    from selfplay.inspector import Inspector
    from selfplay.run_dir import read_step_trajectories
    from selfplay.self_reading import TrajectoryReader
    from strokes.records import PromptRecord
    from strokes.shapeworld import is_correct
    from strokes.trajectory import from_row

    readers = {Path(folder).name: TrajectoryReader.with_inspector(Inspector.load(folder)) for folder in args.heads}
    run = Path(args.run)
    rounds = sorted(run.glob("round_*/checkpoint/trajectories"))
    if not rounds:
        raise SystemExit(f"{run}: no kept GRPO trajectories (round_*/checkpoint/trajectories)")
    print("| round | steps | pictures | exact: right | " + " | ".join(f"{n}: called right / AUC" for n in readers) + " |")
    print("|---|---|---|---|" + "---|" * len(readers))
    for folder in rounds:
        steps = read_step_trajectories(folder.parent)
        for block in args.blocks:
            lo, hi = (int(x) for x in block.split("-"))
            rows = [r for s, kept in steps.items() if lo <= s <= hi for r in kept]
            trajectories = [from_row({**r, "images": [base64.b64decode(x) for x in r["images"]]}) for r in rows]
            trajectories = [t for t in trajectories if t.steps and "failed" not in t.meta]
            if not trajectories:
                continue
            exact = np.array([is_correct(PromptRecord.from_json(t.record), t.final_image) for t in trajectories])
            cells = []
            for reader in readers.values():
                readings = reader.read(trajectories)
                read = [k for k, r in enumerate(readings) if r is not None]
                p = np.array([readings[k].p_conflict[-1] for k in read])
                right = exact[read]
                auc = roc_auc_score(~right, p) if 0 < right.mean() < 1 else float("nan")
                cells.append(f"{100 * (p < reader.threshold).mean():.0f} % / {auc:.2f}")
            print(f"| {folder.parent.parent.name} | {block} | {len(trajectories)} | {100 * exact.mean():.0f} % | "
                  + " | ".join(cells) + " |", flush=True)


if __name__ == "__main__":
    main()
