"""The self judge: the current policy's own Inspect stage, read as a verdict.

The policy writes an inspection in the paper's templates and, after a conflict, a corrective
instruction (`<refine>`); both come from an injected `inspect_fn` (the rollout engine provides one
over a checkpoint), so this package needs no model code. The inspection is parsed with the same
grammar the training data was written in (`parse_inspection`); one that follows neither template
but opens with a verdict word ("aligned" or "conflict": a model not yet trained on the templates,
a real model's own words after it) gives that verdict without details (counted as `verdict_only`);
one without even that is counted as unparsable and skipped, never fatal.
"""

from __future__ import annotations

from collections import Counter
from typing import Callable

from strokes.language import parse_inspection, split_checklist
from strokes.verdict import StepContext, Verdict

# (contexts) -> one (inspection text, refine text) per context; refine text is "" when aligned.
InspectFn = Callable[[list[StepContext]], list[tuple[str, str]]]


class SelfJudge:
    """Judges steps with a policy's Inspect; `stats` counts steps and unparsable inspections."""

    name = "self"

    def __init__(self, inspect_fn: InspectFn, image_side: int = 64) -> None:
        self.inspect_fn = inspect_fn
        self.image_side = image_side  # the side of the images its policy reads (a judge server refuses larger ones)
        self.stats: Counter = Counter()

    def judge(self, contexts: list[StepContext]) -> list[Verdict | None]:
        if not contexts:
            return []
        pairs = self.inspect_fn(contexts)
        if len(pairs) != len(contexts):
            raise RuntimeError(f"inspect_fn returned {len(pairs)} answers for {len(contexts)} steps")
        out: list[Verdict | None] = []
        for inspection, refine in pairs:
            self.stats["steps"] += 1
            verdict = parse_inspection(inspection)
            if verdict is None and (verdict := _verdict_word(inspection)) is not None:
                self.stats["verdict_only"] += 1
            if verdict is None:
                self.stats["unparsable"] += 1
                out.append(None)
                continue
            if not verdict.aligned:
                verdict = verdict.model_copy(update={"correction": refine.strip()})
            out.append(verdict)
        return out


def _verdict_word(inspection: str) -> Verdict | None:
    """The verdict an inspection's first word (after any check list) states, without details; None
    when it states none."""
    word = split_checklist(inspection)[1].split(" ", 1)[0].rstrip(".:,;").lower()
    if word in ("aligned", "conflict"):
        return Verdict(aligned=word == "aligned", conflicts=[], correction="")
    return None
