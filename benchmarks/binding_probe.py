"""Benchmark: does a checkpoint bind a colour-attribute prompt's colours to their shapes when it plans?

For "a red circle and a blue square" the first instruction is "add a <colour> <shape>". Teacher-forced
on base trajectories of colour-attribute prompts (`data.pipelines.plan_order` as given), this reads
the model's next-word probabilities at the shape of the first instruction and prints P(the shape the
prompt binds to the instruction's colour) against the prompt's other shape, renormalised over the
two: 0.5 is a model that knows which shapes the prompt names but not which colour goes with which.
Rows split by whether the instruction's colour is the prompt's first or second, and by prompt split
(train: colour pairs the base data trains on; test: the held-out pairs the suite scores). The base
before 2026-12-05 (plans in any order) reads 0.49-0.51 everywhere; the shipped base, continued in
the prompt's word order, 0.999 (docs/data.md, "Plan order"). Not a test; run it by hand:

    python benchmarks/binding_probe.py [--checkpoint checkpoints/base] [--plan-order prompt|random] [--n 300]
"""

from __future__ import annotations

import argparse
import random

import numpy as np
import torch

from strokes.data.pipelines import PLAN_ORDERS, PipelineConfig, TrajectoryMaker
from strokes.model.policy import Policy
from strokes.shapeworld import sample_record


def bound_shape_probabilities(policy: Policy, plan_order: str, split: str, n: int, seed: int = 0) -> dict[str, list[float]]:
    """P(bound shape | the two shapes) at each of `n` prompts' first instruction, keyed by which of
    the prompt's colours that instruction names ('first' or 'second')."""
    p, maker, rng = policy.processor, TrajectoryMaker(PipelineConfig(plan_order=plan_order)), random.Random(seed)
    word = lambda w: p.text_ids_of(w)[0]  # noqa: E731 - every colour and shape is one word token
    add, found = word("add"), {"first": [], "second": []}
    for _ in range(n):
        rec = sample_record("color_attr", rng, split)
        ids = p.encode(maker.make("scene_graph", rec, rng)).input_ids
        k = ids.index(add)  # "add a <colour> <shape>": the first instruction
        (s1, c1), (s2, c2) = [(r.shape, r.color) for r in rec.include]
        first = ids[k + 2] == word(c1)
        bound, other = (s1, s2) if first else (s2, s1)
        with torch.no_grad():
            logits = policy.model(input_ids=torch.tensor([ids[:k + 3]])).logits[0, -1].float()
        pair = torch.softmax(logits[[word(bound), word(other)]], 0)
        found["first" if first else "second"].append(pair[0].item())
    return found


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--checkpoint", default="checkpoints/base")
    ap.add_argument("--plan-order", choices=PLAN_ORDERS, default="prompt")
    ap.add_argument("--n", type=int, default=300, help="prompts per split")
    args = ap.parse_args()
    policy = Policy.from_pretrained(args.checkpoint)
    print(f"{args.checkpoint}, plans in {args.plan_order} order, teacher-forced at the first instruction's shape\n")
    print("| prompt split | instruction's colour | prompts | mean P(bound shape) | share above 0.5 |")
    print("|---|---|---|---|---|")
    for split in ("train", "test"):
        for which, values in bound_shape_probabilities(policy, args.plan_order, split, args.n).items():
            v = np.array(values)
            row = f"{v.mean():.3f} | {(v > 0.5).mean():.2f}" if len(v) else "- | -"
            print(f"| {split} | the prompt's {which} | {len(v)} | {row} |")


if __name__ == "__main__":
    main()
