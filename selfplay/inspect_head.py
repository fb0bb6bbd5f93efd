"""Fitting the policy's Inspect head (`strokes/model/inspect_head.py`) on its own labelled sketches.

The policy rolls out on training-split prompts; every visual state it drew is labelled by the judge
(`inspect_eval.label_states`); a teacher-forced forward of each trajectory gives the next-token
logits at every `<inspect>` (the position whose next token is the verdict); a class-balanced
logistic regression on those logits is fitted on two thirds of the trajectories, and the threshold
for the target false-alarm rate is picked on the held-out third, whose AUC and recall are saved
with the head. scikit-learn does the fitting: a few hundred states and a few hundred features fit in
about a second on CPU.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import ClassVar

import numpy as np

from strokes.config_loader import require
from strokes.language import checklist_text, split_checklist
from strokes.model.inspect_head import InspectHead
from strokes.trajectory import Trajectory

from .inspect_eval import LabelledState, label_states, recall_at


@dataclass
class InspectHeadConfig:
    """Whether and how each evaluated checkpoint gets an Inspect head fitted on its own sketches."""

    SECTION: ClassVar[str] = "inspect_head"

    enabled: bool = False
    """Fit a head for every checkpoint the loop evaluates (round 0, each round and its control); the
    head is saved with a copy of the checkpoint, which the round then evaluates and promotes."""
    prompts: int = 600
    """Training-split prompts the checkpoint rolls out to collect its own labelled states."""
    false_alarm: float = 0.10
    """The false-alarm rate on held-out states that the head's threshold is chosen for."""
    held_out: float = 1 / 3
    """Share of the rollouts (whole trajectories) kept out of fitting to choose the threshold."""
    l2: float = 10.0
    """L2 strength of the logistic regression (scikit-learn's C = 1 / l2), on standardised logits."""
    seed: int = 0
    """Seed of the prompts (plus the round) and of the fit/held-out split."""

    def __post_init__(self) -> None:
        require(self, "prompts", self.prompts >= 6, "must be >= 6 (one per task)")
        require(self, "false_alarm", 0 < self.false_alarm < 1, "must be in (0, 1)")
        require(self, "held_out", 0 < self.held_out < 1, "must be in (0, 1)")
        require(self, "l2", self.l2 > 0, "must be > 0")


def verdict_logits(policy, trajectories: list[Trajectory]) -> list[np.ndarray]:
    """Per trajectory, the teacher-forced next-token logits at each inspection's verdict position
    (the position whose next token is the verdict: its `<inspect>`, or the last word of its check
    list), one row per visual state in drawing order."""
    import torch

    p = policy.processor
    out = []
    with torch.no_grad():
        for t in trajectories:
            ids = p.encode(t).input_ids
            logits = policy.model(input_ids=torch.tensor([ids], device=policy.model.device)).logits[0].float()
            out.append(logits[verdict_positions(p, ids)].cpu().numpy())
    return out


def verdict_positions(processor, ids: list[int]) -> list[int]:
    """Per inspection in `ids`, the position whose next token is its verdict: its `<inspect>`, or the
    last token of the check list it opens with (`strokes.language.split_checklist`)."""
    specials = set(processor.special.values())
    out = []
    for i, x in enumerate(ids):
        if x != processor.special["<inspect>"]:
            continue
        end = next((j for j in range(i + 1, len(ids)) if ids[j] in specials), len(ids))
        checks = split_checklist(processor.words(ids[i + 1:end]))[0]
        out.append(i + (len(processor.text_ids_of(checklist_text(checks))) if checks else 0))
    return out


def state_features(policy, trajectories: list[Trajectory], states: list[LabelledState]) -> np.ndarray:
    """The verdict logits of each labelled state, one row per state."""
    sources = sorted({s.source for s in states})
    rows = dict(zip(sources, verdict_logits(policy, [trajectories[k] for k in sources])))
    return np.stack([rows[s.source][s.index] for s in states])


def fit_inspect_head(policy, trajectories: list[Trajectory], judge, cfg: InspectHeadConfig) -> InspectHead:
    """A head fitted on the policy's own labelled states of `trajectories` (see the module docstring)."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import roc_auc_score

    states, _ = label_states(trajectories, judge)
    wrong = np.array([s.wrong for s in states])
    if len(states) < 10 or wrong.all() or not wrong.any():
        raise ValueError(f"an Inspect head needs right and wrong states; got {len(states)} states, {wrong.sum()} wrong")
    x = state_features(policy, trajectories, states)
    sources = sorted({s.source for s in states})
    held = set(random.Random(cfg.seed).sample(sources, max(1, int(round(cfg.held_out * len(sources))))))
    test = np.array([s.source in held for s in states])
    if wrong[~test].all() or not wrong[~test].any() or wrong[test].all() or not wrong[test].any():
        test = np.arange(len(states)) % 3 == 0  # too few trajectories to split whole ones: split states
    scale = x[~test].std(0) + 1e-6
    mean = x[~test].mean(0)
    model = LogisticRegression(C=1.0 / cfg.l2, class_weight="balanced", max_iter=5000)
    model.fit((x[~test] - mean) / scale, wrong[~test])
    weight = model.coef_[0] / scale
    bias = float(model.intercept_[0] - (mean * weight).sum())
    scores = 1 / (1 + np.exp(-(x[test] @ weight + bias)))
    recall, threshold = recall_at(wrong[test], scores, cfg.false_alarm)
    held_out = {"states": int(test.sum()), "wrong": int(wrong[test].sum()), "recall": recall,
                "false_alarm": float((scores[~wrong[test]] >= threshold).mean()),
                "auc": float(roc_auc_score(wrong[test], scores)), "fitted_states": int((~test).sum())}
    return InspectHead(weight.tolist(), bias, threshold, cfg.false_alarm, held_out)
