"""Benchmark: how much a linear Inspect head on the policy's own verdict position adds over the verdict
the language model head writes.

At the first word of every inspection the model's next-token logits hold its verdict: the LM verdict
is P(conflict) = softmax over the logits of "conflict" and "aligned". A linear head reads the whole
logit vector instead, which spans exactly the linear functions of the final hidden state (the LM
head has no bias and more rows than the hidden size). The head is a class-balanced logistic
regression fitted on the model's own labelled states from training-split rollouts; both are scored
on validation-split rollouts by ROC AUC and recall at 5% / 10% false alarms. Not a test; run it by
hand (about two minutes for the defaults on two idle cores):

    OMP_NUM_THREADS=1 python benchmarks/inspect_head_probe.py [--checkpoint checkpoints/base]
        [--train-per-task 150] [--val-per-task 50]
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch
from sklearn.linear_model import LogisticRegression

from judges import OracleJudge
from rollout import Engine, RolloutConfig
from selfplay.inspect_eval import LabelledState, format_table, inspection_table, label_states
from strokes.model.tiny import Policy
from strokes.shapeworld import make_suite
from strokes.trajectory import Trajectory


def verdict_logits(policy, trajectories: list[Trajectory]) -> list[np.ndarray]:
    """Per trajectory, the teacher-forced logits at each `<inspect>` (the position whose next token is
    the verdict), in the order the states were drawn."""
    p, inspect_id = policy.processor, policy.processor.special["<inspect>"]
    out = []
    with torch.no_grad():
        for t in trajectories:
            ids = p.encode(t).input_ids
            logits = policy.model(input_ids=torch.tensor([ids])).logits[0].float()
            out.append(logits[[i for i, x in enumerate(ids) if x == inspect_id]].numpy())
    return out


def own_states(policy, per_task: int, seed: int) -> tuple[list[LabelledState], np.ndarray]:
    """The model's labelled states on a training-split suite and the logits at each one's verdict."""
    engine = Engine(policy, RolloutConfig(max_steps=6, max_refines=1, batch_size=64, seed=seed))
    trajectories = engine.run(make_suite("train", per_task, seed))
    states, _ = label_states(trajectories, OracleJudge())
    scored = [t for t in trajectories if t.steps and "failed" not in t.meta and not t.meta.get("retries")]
    features = np.concatenate(verdict_logits(policy, scored))
    if len(features) != len(states):
        raise RuntimeError(f"{len(features)} verdict positions for {len(states)} labelled states")
    return states, features


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--checkpoint", default="checkpoints/base")
    ap.add_argument("--train-per-task", type=int, default=150)
    ap.add_argument("--val-per-task", type=int, default=50)
    ap.add_argument("--C", type=float, default=0.1, help="inverse L2 strength of the head")
    args = ap.parse_args()
    torch.manual_seed(0)
    policy = Policy.from_pretrained(args.checkpoint)
    policy.model.eval()
    t0 = time.time()
    train, x_train = own_states(policy, args.train_per_task, seed=7)
    val, x_val = own_states(policy, args.val_per_task, seed=500)
    y = np.array([s.wrong for s in train])
    scale = x_train.std(0) + 1e-6
    head = LogisticRegression(C=args.C, class_weight="balanced", max_iter=2000).fit(x_train / scale, y)
    head_scores = head.predict_proba(x_val / scale)[:, 1]
    print(f"{len(train)} training states ({int(y.sum())} wrong), {len(val)} validation states, "
          f"{time.time() - t0:.0f} s\n")
    for name, states in (("LM verdict P(conflict)", val),
                         ("linear Inspect head on the verdict logits",
                          [LabelledState(float(x), s.kind, s.task, s.refined) for s, x in zip(val, head_scores)])):
        table = inspection_table(states)
        print(f"{name}\n{format_table({k: v for k, v in table.items() if not k.startswith('task/')})}\n")


if __name__ == "__main__":
    main()
