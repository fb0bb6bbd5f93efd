"""Reproduces docs/loop.md's self-judged-round tables ("Self-judged GRPO rounds").

    python benchmarks/self_judge_probe.py readings  runs/<run>/round_000/validate/process [--checkpoint checkpoints/base]
    python benchmarks/self_judge_probe.py hacking   runs/<run>/round_001/checkpoint [--block 5]

`readings`: how well a checkpoint's P(conflict) ranks wrong finished pictures (ROC AUC against the
exact judge, per task) on a validation stage's process rollouts, read four ways: its last inspection
in place, refined steps folded (`self_reading.folded`, what the GRPO self judge reads), and one step
holding the final picture with the prompt, or the last `<des>`, as its description.
`hacking`: per block of GRPO steps, from a stage's kept trajectories, the share of final pictures the
training judge called right against the share the exact judge calls right (recomputed from the
images), and the share of rollouts with a refinement.
"""

from __future__ import annotations

import argparse
import base64
from pathlib import Path

import numpy as np
import torch
from sklearn.metrics import roc_auc_score

from rollout.decoder import InspectRule
from selfplay.inspect_head import verdict_logits
from selfplay.run_dir import read_step_trajectories
from selfplay.self_reading import folded
from strokes.model.policy import Policy
from strokes.records import PromptRecord
from strokes.shapeworld import is_correct
from strokes.trajectory import Step, Trajectory, from_row, read_jsonl

TASKS = ("counting", "position", "color_attr")


def readings(folder: Path, checkpoint: str) -> None:
    torch.set_num_threads(1)
    policy = Policy.from_pretrained(checkpoint)
    rule = InspectRule(*(policy.processor.text_ids_of(w)[0] for w in ("conflict", "aligned")))
    ts = [t for f in sorted(folder.rglob("trajectories.jsonl")) for t in read_jsonl(f.parent)
          if t.steps and t.record is not None and t.meta.get("inspect_scores")]

    def last_p(trajectories: list[Trajectory]) -> np.ndarray:
        return np.array([float(rule.p_conflict(torch.from_numpy(rows[-1:]))[0])
                         for rows in verdict_logits(policy, trajectories)])

    def one_step(t: Trajectory, description: str) -> Trajectory:
        return Trajectory(t.prompt, [Step("", description, t.final_image, "")], t.record, t.source)

    arms = {"its last inspection in place": last_p(ts),
            "refined steps folded": last_p([folded(t) for t in ts]),
            "one step, the prompt as description": last_p([one_step(t, t.prompt) for t in ts]),
            "one step, the last <des>": last_p([one_step(t, t.steps[-1].description) for t in ts])}
    records = [PromptRecord.from_json(t.record) for t in ts]
    wrong = np.array([not is_correct(r, t.final_image) for r, t in zip(records, ts)])
    tasks = np.array([r.tag for r in records])
    print(f"{len(ts)} trajectories, {wrong.mean():.0%} wrong")
    print("| reading | " + " | ".join(TASKS) + " | all tasks |")
    for name, p in arms.items():
        cells = []
        for task in (*TASKS, "all"):
            sel = tasks == task if task != "all" else np.ones(len(ts), bool)
            ok = 0 < wrong[sel].sum() < sel.sum()
            cells.append(f"{roc_auc_score(wrong[sel], p[sel]):.2f}" if ok else "-")
        print(f"| {name} | " + " | ".join(cells) + " |")


def hacking(stage: Path, block: int) -> None:
    kept = read_step_trajectories(stage)
    print("| steps | trajectories | with a refinement | judge: final right | exact: final right |")
    for start in range(1, max(kept) + 1, block):
        rows = [row for step in range(start, start + block) for row in kept.get(step, [])
                if not row["judged"]["broken"]]
        ts = [from_row({**row, "images": [base64.b64decode(x) for x in row["images"]]}) for row in rows]
        if not ts:
            continue
        judge = np.mean([bool(row["judged"]["final"]) for row in rows])
        exact = np.mean([is_correct(PromptRecord.from_json(t.record), t.final_image) for t in ts])
        refined = np.mean([any(s.refinements for s in t.steps) for t in ts])
        print(f"| {start}-{start + block - 1} | {len(ts)} | {refined:.0%} | {judge:.0%} | {exact:.0%} |")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("what", choices=("readings", "hacking"))
    parser.add_argument("folder", type=Path)
    parser.add_argument("--checkpoint", default="checkpoints/base")
    parser.add_argument("--block", type=int, default=5)
    args = parser.parse_args()
    readings(args.folder, args.checkpoint) if args.what == "readings" else hacking(args.folder, args.block)
