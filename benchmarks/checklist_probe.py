"""Benchmark: how right a check-list policy's own check lists are, and whether it flags a swapped
colour binding when it is shown one (docs/loop.md, "Inspection by enumeration").

Reads the process-mode trajectories a checkpoint rolled out (`selfplay inspect-eval CKPT --set
rollout.checklist=true --out DIR` writes them to DIR/process/trajectories) and prints:
- per field (planned, drawn), the model's own list against `item_checks` on its own description and
  sketch, and how its verdict follows its list;
- teacher-forced P("not planned") at every object that is truly not planned: in those trajectories
  with the exact list written in (the model's own swapped objects), and in the pipeline's swapped
  bindings of the same colour-attribute prompts (`data.pipelines.swapped_colors`).

    python benchmarks/checklist_probe.py CKPT DIR/process/trajectories
"""

from __future__ import annotations

import argparse
import random

import numpy as np
import torch

from strokes.data.pipelines import PipelineConfig, TrajectoryMaker
from strokes.language import checklist_text, parse_description, says_conflict, split_checklist
from strokes.model.policy import Policy
from strokes.records import PromptRecord
from strokes.shapeworld import detect
from strokes.shapeworld.check import item_checks
from strokes.trajectory import read_jsonl


def own_lists(trajectories) -> None:
    """The model's lists against the exact ones, and its verdict against its list."""
    table = {k: np.zeros((2, 2), int) for k in ("planned", "drawn")}  # [truth][listed]
    follows = np.zeros((2, 2), int)  # [list flags an object][verdict says conflict]
    for t in trajectories:
        rec = PromptRecord.from_json(t.record)
        for s in t.steps:
            listed, items = split_checklist(s.inspection)[0], parse_description(s.description)
            if items is None or len(listed) != len(items):
                continue
            for said, truth in zip(listed, item_checks(rec, items, detect(s.image))):
                for k, m in table.items():
                    m[int(getattr(truth, k)), int(getattr(said, k))] += 1
            follows[int(any(not (c.planned and c.drawn) for c in listed)), int(says_conflict(s.inspection))] += 1
    for k, m in table.items():
        print(f"truly not {k}: listed 'not {k}' {m[0, 0]} of {m[0].sum()}; truly {k}: listed 'not {k}' "
              f"{m[1, 0]} of {m[1].sum()}")
    print(f"lists that flag an object: verdict conflict {follows[1, 1]} of {follows[1].sum()}; "
          f"lists that flag none: verdict conflict {follows[0, 1]} of {follows[0].sum()}")


def p_not_planned(policy: Policy, t) -> list[float]:
    """Teacher-forced P("not" | colour shape) at every "not planned" of the trajectory's lists."""
    p = policy.processor
    not_id, planned_id = p.text_ids_of("not")[0], p.text_ids_of("planned")[0]
    ids = p.encode(t).input_ids
    with torch.no_grad():
        logits = policy.model(input_ids=torch.tensor([ids])).logits[0].float()
    return [torch.softmax(logits[i - 1, [not_id, planned_id]], 0)[0].item()
            for i in range(1, len(ids) - 1) if ids[i] == not_id and ids[i + 1] == planned_id]


def exact_lists(t) -> bool:
    """Rewrite each step's list as `item_checks` says (the verdict kept); False when a description
    does not parse."""
    rec = PromptRecord.from_json(t.record)
    for s in t.steps:
        items = parse_description(s.description)
        if items is None:
            return False
        s.inspection = f"{checklist_text(item_checks(rec, items, detect(s.image)))} {split_checklist(s.inspection)[1]}".strip()
    return True


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("checkpoint")
    ap.add_argument("trajectories", help="a folder with trajectories.jsonl (process mode)")
    ap.add_argument("--synthetic", type=int, default=200, help="cap on synthetic swapped objects")
    args = ap.parse_args()
    policy = Policy.from_pretrained(args.checkpoint)
    trajectories = [t for t in read_jsonl(args.trajectories) if not t.single_pass and "failed" not in t.meta]
    own_lists(trajectories)
    maker = TrajectoryMaker(PipelineConfig(conflict_negative=1.0, swapped_colors=1.0, checklist=True))
    rng, own, synthetic = random.Random(0), [], []
    for t in trajectories:
        rec = PromptRecord.from_json(t.record)
        if not exact_lists(t) or not (found := p_not_planned(policy, t)):
            continue
        own += found
        if rec.tag == "color_attr" and len(synthetic) < args.synthetic:
            synthetic += p_not_planned(policy, maker.make("conflict", rec, rng))
    for name, values in (("its own not-planned objects", own), ("the pipeline's swaps, same prompts", synthetic)):
        v = np.array(values)
        print(f"{name}: n={len(v)}, mean P('not planned') {v.mean():.3f}, above 0.5: {(v > 0.5).sum()}")


if __name__ == "__main__":
    main()
