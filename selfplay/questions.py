"""A finished picture scored by atomic questions instead of one holistic verdict (TIFA / Davidsonian
Scene Graph scoring), GRPO's final reward with a judge that makes mistakes.

One holistic verdict per picture turns any single mistake of the judge into the whole reward: a
missed count or a misread relation scores a wrong picture 1, a false alarm scores a right one 0.
Asked instead one question per part of the prompt ("two circles?", "a red square?", "the square
left of the circle?"), with a relation asked only after the two objects it relates and counted
yes only when both are (DSG's dependencies), the reward is the share of yes answers: one mistake
moves it by one question's share, a picture that gets more of the prompt right scores more even
when the judge misses something, and each question is of the simplest task it can be (presence,
colour, count, relation), the kind a VLM answers best. Where the judge says how sure it is (an
endpoint's token log-probabilities, `judge.logprobs`), each answer is its P(yes) (as VQAScore
scores a picture): a mistake is mostly an unsure answer, and an unsure yes earns less than a sure
one. `docs/judges.md` has the measurement that chose it (`benchmarks/robust_reward.py`).

A question is put to the judge the way an eval image is: a context with no instruction whose
description is the question's prompt, with the question's own record (an exact judge answers it
by GenEval's rule for that record).
"""

from __future__ import annotations

import math

from strokes.records import PromptRecord, Requirement
from strokes.trajectory import Trajectory
from strokes.verdict import StepContext


def atomic_questions(rec: PromptRecord) -> list[tuple[PromptRecord, tuple[int, ...]]]:
    """(question, the questions it depends on) for each include group of `rec`, in order: the
    presence of each group (with its count and colour; a count keeps the record's exclusion of that
    class, so "exactly" stays exact), then each relation after the two groups it relates. A record
    without include groups (free text) has none."""
    presence: list[tuple[PromptRecord, tuple[int, ...]]] = []
    relations: list[tuple[PromptRecord, tuple[int, ...]]] = []
    for i, r in enumerate(rec.include):
        bare = Requirement(r.shape, r.count, r.color)
        tag = "colors" if r.color else "counting" if r.count > 1 else "single_object"
        exclude = tuple(e for e in rec.exclude if e.shape == r.shape)
        presence.append((PromptRecord(tag, (bare,), exclude), ()))
        if r.position is not None:
            rel, k = r.position
            ref = rec.include[k]
            question = PromptRecord("position", (Requirement(ref.shape, ref.count, ref.color),
                                                 Requirement(r.shape, r.count, r.color, (rel, 0))))
            relations.append((question, (k, i)))
    return presence + relations


def question_contexts(t: Trajectory) -> list[StepContext]:
    """The questions of a trajectory's record, about its final image, as judge contexts."""
    rec = PromptRecord.from_json(t.record)
    return [StepContext(q.text, "", q.text, t.final_image, q.to_json()) for q, _ in atomic_questions(rec)]


def question_score(rec: PromptRecord, answers: list[bool | float | None]) -> float | None:
    """The share of questions answered yes, a relation counting yes only when both objects it
    relates are; None when any answer is missing (the judge could not say). An answer may be the
    judge's P(yes) (its token log-probabilities): the question then scores P(yes) times its
    parents', the chance that all of them are yes, and the share is graded."""
    if any(a is None for a in answers):
        return None
    questions = atomic_questions(rec)
    yes = [float(a) * math.prod(float(answers[p]) for p in parents) for a, (_, parents) in zip(answers, questions)]
    return sum(yes) / len(yes)
