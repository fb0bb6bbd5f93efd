"""Benchmark: how much a linear Inspect head on the policy's own verdict position adds over the verdict
the language model head writes.

At the first word of every inspection the model's next-token logits hold its verdict: the LM verdict
is P(conflict) = softmax over the logits of "conflict" and "aligned". A linear head reads the whole
logit vector instead, which spans exactly the linear functions of the final hidden state (the LM
head has no bias and more rows than the hidden size). The head is a class-balanced logistic
regression fitted on the model's own labelled states from training-split rollouts
(`selfplay.inspect_head.fit_inspect_head`, as the loop fits it); both are scored on validation-split
rollouts by ROC AUC and recall at 5% / 10% false alarms. Not a test (it prints its own run time);
run it by hand:

    OMP_NUM_THREADS=1 python benchmarks/inspect_head_probe.py [--checkpoint checkpoints/base]
        [--train-per-task 150] [--val-per-task 50]
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
from strokes.model.policy import Policy
from strokes.shapeworld import make_suite


def rollouts(policy, per_task: int, seed: int) -> list:
    """The policy's process-mode trajectories on a training-split suite (sampled verdicts)."""
    engine = Engine(policy, RolloutConfig(max_steps=6, max_refines=1, batch_size=64, seed=seed))
    return engine.run(make_suite("train", per_task, seed))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--checkpoint", default="checkpoints/base")
    ap.add_argument("--train-per-task", type=int, default=150)
    ap.add_argument("--val-per-task", type=int, default=50)
    ap.add_argument("--l2", type=float, default=InspectHeadConfig.l2, help="L2 strength of the head")
    args = ap.parse_args()
    torch.manual_seed(0)
    policy = Policy.from_pretrained(args.checkpoint)
    policy.model.eval()
    t0 = time.time()
    judge = OracleJudge()
    head = fit_inspect_head(policy, rollouts(policy, args.train_per_task, seed=7), judge, InspectHeadConfig(l2=args.l2))
    val_trajectories = rollouts(policy, args.val_per_task, seed=500)
    val, _ = label_states(val_trajectories, judge)
    logits = state_features(policy, val_trajectories, val)
    head_scores = 1 / (1 + np.exp(-(logits @ np.array(head.weight) + head.bias)))
    print(f"head fitted on {head.held_out['fitted_states']} states, {len(val)} validation states, "
          f"{time.time() - t0:.0f} s\n")
    for name, states in (("LM verdict P(conflict)", val),
                         ("linear Inspect head on the verdict logits",
                          [LabelledState(float(x), s.kind, s.task, s.refined) for s, x in zip(val, head_scores)])):
        table = inspection_table(states)
        print(f"{name}\n{format_table({k: v for k, v in table.items() if not k.startswith('task/')})}\n")


if __name__ == "__main__":
    main()
