"""The model's own understanding answering a prompt's atomic questions (issue 27): a copy of the
policy trained to inspect, asked what a VLM judge is asked.

GRPO uses only the order of a prompt's own pictures, and the base's own inspection cannot give it:
read at the verdict word, by a linear or an attention head, the base's hidden states rank a prompt's
pictures at AUC 0.57-0.72 (docs/loop.md): they know which prompts it gets wrong, not which of its
pictures. A VLM judge is asked simpler things instead, one atomic question at a time ("two
circles?", "the square left of the circle?", selfplay/questions.py). The judge here is the same
model asked the same way: a question is a one-step trajectory, the question as its prompt and
description and the picture as its sketch, and the answer is the model's P(conflict) at
`<inspect>`, read as its Inspect is read everywhere else. The base has never seen a question (its
AUC on them is 0.37, below chance), so `selfplay fit-judge` trains a copy on them first: the
base's own pictures of training-split prompts and other prompts' questions about them (optionally
each picture's near misses: one object dropped, copied, moved, recoloured or reshaped), every
answer labelled by the run's judge (ShapeWorld's exact one; a team's VLM endpoint). Only the judge copy changes: the policy GRPO trains never is, so it
cannot learn to please itself by moving its judge, only by finding what the copy misreads, which
the agreement table shows. Measured on ShapeWorld it does: the copy ranks the base's groups about as
the typical stand-in VLM does, yet a round drifts into what it passes and ends below its control
(docs/loop.md, "Self-judged rounds on atomic questions").

A judge folder (`selfplay fit-judge --out DIR`) is a `selfplay train` output folder whose
`checkpoint/` is the judge copy, plus `judge.json`: the checkpoint it was trained from, its
threshold and its held-out figures.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from strokes.errors import InputError
from strokes.io import write_atomic
from strokes.language import inspection_text
from strokes.model.policy import Policy
from strokes.trajectory import Step, Trajectory
from strokes.verdict import Graded, StepContext, Verdict

from .inspect_head import verdict_positions

META = "judge.json"
BATCH = 64  # questions per forward pass


def asked(context: StepContext, inspection: str = "aligned") -> Trajectory:
    """A question (or any judge context) as the one-step trajectory the judge copy reads: its prompt,
    plan and picture, then `inspection` (its verdict is what the copy predicts)."""
    return Trajectory(context.prompt, [Step(context.instruction, context.description, context.image, inspection,
                                            context=True)], context.record, "questions")


def question_of(row: Trajectory) -> StepContext:
    """The question a row made by `asked` puts (its inverse: the labelled verdict is the row's inspection)."""
    s = row.steps[0]
    return StepContext(row.prompt, s.instruction, s.description, s.image, row.record)


def question_rows(contexts: list[StepContext], verdicts: list[Verdict | None]) -> list[Trajectory]:
    """Training rows for a judge copy: each question with its labelled verdict as the inspection to
    learn (only the inspection carries loss: the plan and the picture are context). A question the
    judge could not answer is left out."""
    return [asked(c, inspection_text(v)) for c, v in zip(contexts, verdicts) if v is not None]


class QuestionJudge:
    """A frozen judge copy answering questions by its P(conflict) at `<inspect>`: a verdict (conflict
    at or above `threshold`) and, graded, that probability (`judge_graded`, as an endpoint's
    log-probabilities are read). Right-padded batches give every question exactly the logits it
    gets alone: the model is causal, so padding after the verdict position cannot reach it."""

    name = "self"

    def __init__(self, policy: Policy, threshold: float = 0.5, meta: dict | None = None) -> None:
        self.policy, self.threshold, self.meta = policy, threshold, meta or {}
        policy.model.eval()
        conflict, aligned = (policy.processor.text_ids_of(w)[0] for w in ("conflict", "aligned"))
        self.ids = (conflict, aligned)

    @classmethod
    def load(cls, folder: str | Path) -> QuestionJudge:
        """The judge `selfplay fit-judge` wrote to `folder`; a folder without one is refused in one line."""
        folder = Path(folder)
        if not (folder / META).is_file():
            raise InputError(f"{folder}: not a judge folder (no {META}; make one with `selfplay fit-judge`)")
        meta = json.loads((folder / META).read_text())
        return cls(Policy.from_pretrained(folder / "checkpoint"), float(meta["threshold"]), meta)

    def save_meta(self, folder: str | Path) -> Path:
        return write_atomic(Path(folder) / META, json.dumps({**self.meta, "threshold": self.threshold}, indent=2))

    def p_conflict(self, contexts: list[StepContext]) -> np.ndarray:
        """Its P(conflict) for each context."""
        p = self.policy.processor
        encoded = [p.encode(asked(c), with_eos=False).input_ids for c in contexts]
        where = [verdict_positions(p, ids)[0] for ids in encoded]
        out = np.empty(len(contexts))
        device = self.policy.model.device
        with torch.no_grad():
            for start in range(0, len(contexts), BATCH):
                rows = encoded[start: start + BATCH]
                width = max(map(len, rows))
                ids = torch.tensor([r + [r[-1]] * (width - len(r)) for r in rows], device=device)
                logits = self.policy.model(input_ids=ids).logits.float()
                at = logits[torch.arange(len(rows)), torch.tensor(where[start: start + BATCH])]
                out[start: start + len(rows)] = torch.sigmoid(at[:, self.ids[0]] - at[:, self.ids[1]]).cpu().numpy()
        return out

    def judge_graded(self, contexts: list[StepContext]) -> list[Graded]:
        return [(Verdict(aligned=bool(p < self.threshold), conflicts=[], correction=""), float(p))
                for p in self.p_conflict(contexts)]

    def judge(self, contexts: list[StepContext]) -> list[Verdict | None]:
        return [v for v, _ in self.judge_graded(contexts)]
