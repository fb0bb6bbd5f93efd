"""The self judge of a GRPO round, read in one teacher-forced pass per trajectory.

With `judge.kind: self` a round's rewards come from the model's own understanding (issue 27). The
judge is a frozen copy of the round's parent: the policy being trained cannot move it, only draw what
it finds right. It reads each rolled-out trajectory whole, as its own inspection would read it in a
rollout, and its P(conflict) at every inspection's verdict position (the position whose next token
is "aligned" or "conflict": `inspect_head.verdict_positions`, after a check list where there is one)
labels that visual state: wrong at or above `threshold`. The last state's label is the verdict on the
finished picture, and 1 - its P(conflict) a graded final reward.

A step's last state is read as if the step had drawn it at once (`folded`), not after the policy's
own "conflict" and corrective instruction: the base learnt from data whose refinements always repair,
so after any refinement it reads the new state as right. Read in place, a self-judged round learnt to
exploit that within eight steps (draw a first sketch wrong, flag it, "repair" it: 15% of the
rollouts refined at steps 1-5, 92% at steps 11-15; the judge called 100% of the finished pictures
right, the exact judge 52%; docs/loop.md, "Self-judged GRPO rounds").

Why not ask the parent's Inspect state by state (`judges.SelfJudge` through `Engine.inspect`, as
critique rounds and judge-mode evaluation do): that re-reads the trajectory's prefix for every state
and writes inspection text GRPO never reads. On the main job's steps it took 1.4x the step's whole
rollout time; one forward per trajectory takes about what the trainer's reference log-probs take.
"""

from __future__ import annotations

import dataclasses
import itertools
from collections import Counter
from dataclasses import dataclass

import numpy as np
import torch

from rollout.decoder import InspectRule
from strokes.model.policy import Policy
from strokes.records import PromptRecord
from strokes.trajectory import Trajectory

from .inspect_eval import LabelledState, visual_states
from .inspect_head import verdict_logits
from .inspector import Inspector
from .question_judge import QuestionJudge, Transcriber


def folded(t: Trajectory) -> Trajectory:
    """`t` with every refined step drawn at once: its last state as its sketch, inspected as that
    state was, no refinements."""
    steps = [dataclasses.replace(s, image=s.final_image, inspection=s.refinements[-1].inspection, refinements=[])
             if s.refinements else s for s in t.steps]
    return dataclasses.replace(t, steps=steps)


@dataclass
class Reading:
    """What the frozen parent found in one trajectory."""

    p_conflict: list[float]
    """Its P(conflict) at each visual state, in drawing order."""
    threshold: float
    """P(conflict) at or above which a state is wrong (`rollout.inspect_threshold`)."""

    @property
    def wrong(self) -> list[bool]:
        return [p >= self.threshold for p in self.p_conflict]


class TrajectoryReader:
    """The self judge that reads whole trajectories (module docstring). `stats` counts the states
    it labelled and the trajectories it could not read (an inspection cut off before its verdict)."""

    name = "self"

    def __init__(self, policy: Policy, threshold: float, graded: bool = False, inspector: Inspector | None = None,
                 questions: QuestionJudge | Transcriber | None = None) -> None:
        self.policy, self.threshold = policy, threshold
        self.graded = graded  # the final reward is 1 - P(conflict) at the last state, not its label
        self.inspector = inspector  # an attention head on `policy`'s hidden states decides instead of its verdict word
        self.questions = questions  # a judge copy answers the final picture's atomic questions instead
        # (a transcriber labels every state too: its reading of each sketch against its step and prompt)
        policy.model.eval()
        words = [policy.processor.text_ids_of(w) for w in ("conflict", "aligned")]
        self.rule = InspectRule(words[0][0], words[1][0])  # P(conflict) as the decoder computes it
        self.stats: Counter = Counter()

    @classmethod
    def with_inspector(cls, inspector: Inspector, graded: bool = False) -> TrajectoryReader:
        """The reader an attention head judges with: a frozen copy of the checkpoint it was fitted
        on, the head deciding at its own threshold."""
        return cls(Policy.from_pretrained(inspector.checkpoint), inspector.threshold, graded, inspector)

    def read(self, trajectories: list[Trajectory]) -> list[Reading | None]:
        """One `Reading` per trajectory; None for one it cannot read whole (no steps, failed, or not
        one verdict position per visual state). Each step's last state is read as if it had been
        drawn at once (`folded`): a refined state right after the earlier steps, without the
        conflict and corrective instruction before it. With a transcriber as `questions`, its reading
        of each state decides instead (`Transcriber.scored`: a picture is read as it is, so nothing
        needs folding)."""
        usable = [k for k, t in enumerate(trajectories)
                  if t.steps and t.record is not None and not t.single_pass and "failed" not in t.meta]
        if isinstance(self.questions, Transcriber):
            read = dict(zip(usable, self.questions.scored([trajectories[k] for k in usable])))
            self.stats["unreadable"] += len(trajectories) - len(usable)
            self.stats["steps"] += sum(visual_states(t) for t in read.values())
            return [Reading(read[k].meta["inspect_scores"], self.questions.threshold) if k in read else None
                    for k in range(len(trajectories))]
        refined = [k for k in usable if any(s.refinements for s in trajectories[k].steps)]
        p = dict(zip(usable, self._p_conflict([trajectories[k] for k in usable])))
        p_folded = dict(zip(refined, self._p_conflict([folded(trajectories[k]) for k in refined])))
        out: list[Reading | None] = []
        for k, t in enumerate(trajectories):
            states = p.get(k)
            if states is None or len(states) != visual_states(t) or (k in p_folded and len(p_folded[k]) != len(t.steps)):
                self.stats["unreadable"] += 1
                out.append(None)
                continue
            if k in p_folded:  # each step's last state from the folded reading
                lasts = itertools.accumulate(1 + len(s.refinements) for s in t.steps)
                for j, n in enumerate(lasts):
                    states[n - 1] = p_folded[k][j]
                self.stats["folded"] += sum(len(s.refinements) > 0 for s in t.steps)
            self.stats["steps"] += len(states)
            out.append(Reading([float(x) for x in states], self.threshold))
        return out

    def _p_conflict(self, trajectories: list[Trajectory]) -> list[np.ndarray]:
        """P(conflict) at each inspection's verdict position, per trajectory."""
        if self.inspector is not None:
            return self.inspector.p_conflict(self.policy, trajectories)
        return [self.rule.p_conflict(torch.from_numpy(rows)).numpy() for rows in verdict_logits(self.policy, trajectories)]

    def label(self, trajectories: list[Trajectory]) -> tuple[list[LabelledState], list[Reading | None]]:
        """The labelled states of `trajectories` (as `inspect_eval.label_states` gives them, the score
        being each trajectory's `meta["inspect_scores"]`: what the policy said) and each one's reading."""
        readings = self.read(trajectories)
        states = []
        for k, (t, r) in enumerate(zip(trajectories, readings)):
            if r is None:
                continue
            task = PromptRecord.from_json(t.record).tag
            refined = [d > 0 for s in t.steps for d in range(1 + len(s.refinements))]
            said = t.meta.get("inspect_scores") or [0.0] * len(r.wrong)
            for n, (wrong, score) in enumerate(zip(r.wrong, said)):
                states.append(LabelledState(float(score), "image" if wrong else "right", task, refined[n], k, n))
        return states, readings
