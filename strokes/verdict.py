"""The verdict schema shared by every judge, the checker, the judge server and the critique builder.

A verdict says whether one trajectory step is aligned, lists the conflicts found (of the paper's two
sources: the image against its instruction, or the instruction against the prompt) and gives the
corrective instruction for the `<refine>` segment. It is a Pydantic model so a GPT judge can be asked
for it as strict structured output and a server can validate it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum
from typing import Literal, Protocol, runtime_checkable

import numpy as np
from pydantic import BaseModel, ConfigDict


class ConflictKind(str, Enum):
    missing_object = "missing_object"
    extra_object = "extra_object"
    wrong_count = "wrong_count"
    wrong_color = "wrong_color"
    wrong_shape = "wrong_shape"
    wrong_relation = "wrong_relation"


class Conflict(BaseModel):
    """One precise disagreement. Objects are named by phrases ('a red circle')."""

    model_config = ConfigDict(frozen=True)

    kind: ConflictKind
    source: Literal["image", "instruction"]  # image vs its instruction, or instruction vs the prompt
    subject: str  # the object at fault, as it should be: 'a red circle'
    expected: str  # what should hold: 'red', 'left of a blue square', 'three circles'
    found: str  # what holds instead: 'blue', 'right of it', 'two circles', '' when absent

    def sentence(self) -> str:
        """The conflict as one plain sentence, for inspection texts."""
        k = self.kind
        planned = self.source == "instruction"
        if k is ConflictKind.missing_object:
            return f"{self.subject} is {'not planned' if planned else 'missing'}"
        if k is ConflictKind.extra_object:
            return f"there is an extra {self.found.split(' ', 1)[-1]} that should not be there"
        if k is ConflictKind.wrong_count:
            return f"there should be {self.expected} but there are {self.found}"
        if k is ConflictKind.wrong_color:
            verb = "is" if self.subject.split(" ", 1)[0] in ("a", "an") else "are"  # 'two red squares are'
            return f"{self.subject} {verb} {'planned ' if planned else ''}{self.found} instead of {self.expected}"
        if k is ConflictKind.wrong_shape:
            return f"{self.subject} is {'planned' if planned else 'drawn'} as {self.found}"
        return f"{self.subject} should be {self.expected} but is {'planned ' if planned else ''}{self.found}"


class Verdict(BaseModel):
    """A judge's answer about one step."""

    aligned: bool
    conflicts: list[Conflict]
    correction: str  # the corrective instruction for <refine>; '' when aligned
    missing: list[str] = []  # what the prompt still needs after this step ('a blue square'); aligned only


@dataclass
class StepContext:
    """What a judge sees of one step: the prompt (and its record when known), the steps before it,
    and this step's plan and sketch. `image` is the visual state to judge (a sketch or a refined state)."""

    prompt: str
    instruction: str
    description: str
    image: np.ndarray
    record: dict | None = None
    history: list = field(default_factory=list)  # earlier `trajectory.Step`s, in order
    previous_image: np.ndarray | None = None


@runtime_checkable
class Judge(Protocol):
    """Anything that turns a batch of step contexts into verdicts (oracle, GPT, self, a server)."""

    def judge(self, contexts: list[StepContext]) -> list[Verdict]: ...


Graded = tuple[Verdict | None, float | None]
"""A verdict (None: the judge could not judge the step) with the judge's P(conflict), None where it
cannot say how sure it is."""


def graded_verdicts(judge: Judge, contexts: list[StepContext]) -> list[Graded]:
    """Each verdict with the judge's P(conflict). A judge that can say how sure it is has
    `judge_graded` (the stand-in VLM judge; a GPT endpoint that returns token log-probabilities);
    for any other the probability is None and the verdict stands alone."""
    if hasattr(judge, "judge_graded"):
        return list(judge.judge_graded(contexts))
    return [(v, None) for v in judge.judge(contexts)]
