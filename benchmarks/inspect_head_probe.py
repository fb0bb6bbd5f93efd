"""Benchmark: how well heads fitted on the policy's own labelled sketches see its mistakes, against the
verdict the language model head writes.

Three inspectors of the same states, each giving P(conflict):

- **LM verdict**: at the first word of every inspection, the softmax over the logits of "conflict"
  and "aligned".
- **linear head**: a class-balanced logistic regression on that position's whole logit vector, which
  spans exactly the linear functions of the final hidden state (the LM head has no bias and more
  rows than the hidden size); `selfplay.inspect_head.fit_inspect_head`, as the loop fits it.
- **attention head** (`--attention`, issue 27): attention pooling from the verdict position over the
  frozen policy's hidden states of the prompt and the current step, with each image code's place on
  the grid (`selfplay.inspector`, as `selfplay fit-inspector` fits it).

All are fitted on the model's own states from training-split rollouts labelled by the exact judge
(a one-off labelled set, as a team would label a few thousand of its model's samples) and scored on
validation-split rollouts (training-split records, seed 500: the loop's validation split) and on the
held-out test suite (held-out colour pairs, seed 1000) by ROC AUC and recall at 5% / 10% false
alarms. Not a test (it prints its own run time); run it by hand:

    OMP_NUM_THREADS=1 python benchmarks/inspect_head_probe.py [--checkpoint checkpoints/base]
        [--train-per-task 150] [--val-per-task 50] [--attention | --inspector checkpoints/base-inspector]
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from judges import OracleJudge
from rollout import Engine, RolloutConfig
from selfplay.inspect_eval import LabelledState, format_table, inspection_table, label_states
from selfplay.inspect_head import InspectHeadConfig, fit_inspect_head, state_features
from selfplay.inspector import Inspector, fit_inspector
from strokes.model.policy import Policy
from strokes.shapeworld import make_suite


def rollouts(policy, per_task: int, seed: int, split: str = "train") -> list:
    """The policy's process-mode trajectories on a suite (sampled verdicts)."""
    engine = Engine(policy, RolloutConfig(max_steps=6, max_refines=1, batch_size=64, seed=seed))
    return engine.run(make_suite(split, per_task, seed))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--checkpoint", default="checkpoints/base")
    ap.add_argument("--train-per-task", type=int, default=150)
    ap.add_argument("--val-per-task", type=int, default=50)
    ap.add_argument("--l2", type=float, default=InspectHeadConfig.l2, help="L2 strength of the linear head")
    ap.add_argument("--attention", action="store_true", help="also fit and score the attention head")
    ap.add_argument("--inspector", default="", help="score this fitted attention head (selfplay fit-inspector's "
                                                    "folder) instead of fitting one")
    args = ap.parse_args()
    torch.manual_seed(0)
    policy = Policy.from_pretrained(args.checkpoint)
    policy.model.eval()
    t0 = time.time()
    judge = OracleJudge()
    train = rollouts(policy, args.train_per_task, seed=7)
    head = fit_inspect_head(policy, train, judge, InspectHeadConfig(l2=args.l2))
    attention = Inspector.load(args.inspector) if args.inspector else None
    if args.attention and attention is None:
        states, _ = label_states(train, judge)
        attention = fit_inspector(policy, args.checkpoint, train, states)
    print(f"heads fitted on {head.held_out['fitted_states']} states (linear), {time.time() - t0:.0f} s\n")
    for name, split, seed in (("validation split", "train", 500), ("held-out test suite", "test", 1000)):
        trajectories = rollouts(policy, args.val_per_task, seed=seed, split=split)
        states, _ = label_states(trajectories, judge)
        logits = state_features(policy, trajectories, states)
        linear = 1 / (1 + np.exp(-(logits @ np.array(head.weight) + head.bias)))
        inspectors = {"LM verdict P(conflict)": {(s.source, s.index): s.score for s in states},
                      "linear head on the verdict logits": {(s.source, s.index): float(x) for s, x in zip(states, linear)}}
        if attention is not None:
            per = attention.p_conflict(policy, trajectories)
            inspectors["attention head on the prompt, the step and its sketch"] = {
                (s.source, s.index): float(per[s.source][s.index]) for s in states}
        for inspector, scores in inspectors.items():
            scored = [LabelledState(scores[(s.source, s.index)], s.kind, s.task, s.refined) for s in states]
            print(f"{inspector}, {name}\n{format_table(inspection_table(scored))}\n")
    print(f"{time.time() - t0:.0f} s in all")


if __name__ == "__main__":
    main()
