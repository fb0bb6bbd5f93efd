"""GRPO rewards: a judge's verdicts on the policy's own trajectories, one number per component.

Every visual state of a process-mode trajectory (first sketches and refined states) is labelled by
the judge exactly as the inspection table labels them (`inspect_eval.label_states`), and set against
the verdict the model wrote for it (the first word of its inspection). From that:

    final       1 when the last image satisfies the prompt (the exact judge: the GenEval rule the
                eval scores with; another judge: its verdict on the last state, aligned with nothing
                missing), else 0; or, with `questions` (a judge that makes mistakes: on by default
                for a GPT or stand-in VLM judge, `judge.final_reward`), the share of the prompt's
                atomic questions the judge answers yes about the last image (selfplay/questions.py),
                each graded by the judge's P(yes) where it says how sure it is of every answer
                (an endpoint's token log-probabilities, `judge.logprobs`)
    inspection  (right verdicts - wrong verdicts) / labelled states: a caught mistake earns, a
                false alarm or a missed mistake costs, and a right state called right earns as much
                as a wrong one caught
    refine      minus the steps left wrong: steps whose last visual state (the sketch, or its last
                refinement) is wrong. A repair earns back what the mistake cost, against leaving it
    steps       minus the steps beyond the scene's object count

With `graded_steps` (a judge that says how sure it is: `judge.graded_steps`) each state's label is
the judge's P(conflict) instead of its verdict: a verdict's credit is its expectation under that
label (+1 right, -1 wrong) and refine counts the steps left wrong in expectation, so an unsure label,
where a VLM's mistakes are, moves the advantages less than a sure one.

No component pays for making a mistake: a step drawn right scores at least as much on each as a
wrong one caught and repaired. (An earlier version paid +1 per repair and counted only caught
mistakes; under it round 2 drew more wrong first sketches than round 1, 377 against 228, and
repaired them. Under this one they fall each round: 297, 221, 197.)

A trajectory the model broke (no steps, out of budget) scores the worst on each: final 0,
inspection -1, every object of the scene a step left wrong. A state the judge could not
label is left out and counted; a final verdict the judge could not give is None, which TRL leaves
out of the group's baseline rather than scoring as 0.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field, replace
from typing import Callable

import numpy as np

from strokes.language import says_conflict
from strokes.records import PromptRecord
from strokes.trajectory import Trajectory
from strokes.verdict import StepContext, graded_verdicts

from .inspect_eval import label_states, visual_states
from .questions import question_contexts, question_score
from .self_reading import Reading, TrajectoryReader


@dataclass
class Judged:
    """What the judge found in one trajectory, as the reward components read it."""

    final: bool | None
    """The last image satisfies the prompt (None: the judge gave no verdict)."""
    final_score: float | None = None
    """With atomic questions: the share answered yes (the final reward); None: `final` is the reward."""
    task: str = ""
    """The prompt's task (its record's tag)."""
    broken: bool = False
    """The model broke the trajectory (no steps, out of budget): nothing in it was judged."""
    left_wrong: float = 0
    """Steps whose last visual state is wrong (a wrong sketch that no refinement repaired); with
    graded step labels, in expectation (the sum of the judge's P(conflict) over those states)."""
    extra_steps: int = 0
    """Steps beyond the scene's object count."""
    unjudged: int = 0
    """Visual states (and final verdicts) the judge could not give a verdict on."""
    asked: int = 0
    """Verdicts asked of the judge: every visual state, and the final one unless the exact check gave it."""
    verdicts: list[tuple[int, bool, bool]] = field(default_factory=list)
    """Per labelled state: (its index among the visual states, judged wrong, the model said conflict)."""
    p_wrong: list[float] = field(default_factory=list)
    """With graded step labels, per labelled state: the judge's P(conflict) (its verdict, 1.0 or
    0.0, where it gave none); empty with verdict labels (`labels`)."""

    @property
    def states(self) -> int:
        """Visual states the judge labelled."""
        return len(self.verdicts)

    @property
    def labels(self) -> list[float]:
        """Per labelled state, its label as the step credit reads it: P(wrong) (`p_wrong`), or 1.0
        for judged wrong and 0.0 for right."""
        return self.p_wrong or [float(wrong) for _, wrong, _ in self.verdicts]

    @property
    def right_verdicts(self) -> int:
        """States whose verdict agrees with the judge's label."""
        return sum(wrong == said for _, wrong, said in self.verdicts)


def flagged(t: Trajectory) -> list[bool]:
    """Whether the model said "conflict" at each visual state, in drawing order."""
    texts = [x for s in t.steps for x in (s.inspection, *(r.inspection for r in s.refinements))]
    return [says_conflict(x) for x in texts]


ExactCheck = Callable[[PromptRecord, np.ndarray], bool]
"""An exact GenEval check of an image against its record (ShapeWorld's `is_correct`)."""


def judge_rollouts(trajectories: list[Trajectory], judge, exact: ExactCheck | None = None,
                   questions: bool = False, graded_steps: bool = False) -> list[Judged]:
    """One `Judged` per trajectory. `exact`: the world's exact GenEval check, used for the final image
    when the judge is the exact one (else the judge's verdict on the last state decides, or with
    `questions` its answers to the prompt's atomic questions about the last image). `graded_steps`:
    each state's label for the step credit is the judge's P(conflict) where it gives one."""
    # labelled with the verdict the model wrote as each state's score (1: it said conflict)
    said = [replace(t, meta={**t.meta, "inspect_scores": [float(f) for f in flagged(t)]}) for t in trajectories]
    if isinstance(judge, TrajectoryReader):  # the frozen parent reads each trajectory whole
        states, readings = judge.label(said)
        if judge.questions is not None:  # a judge copy answers the atomic questions about the picture
            finals, scores, asked = _finals(trajectories, judge.questions, None, True)
        else:
            finals, scores, asked = _read_finals(readings, judge.graded)
    else:
        states, _ = label_states(said, judge, graded_steps)
        finals, scores, asked = _finals(trajectories, judge, exact, questions)
    by_source: dict[int, list] = {}
    for s in states:
        by_source.setdefault(s.source, []).append(s)
    out = []
    for k, t in enumerate(trajectories):
        record = PromptRecord.from_json(t.record) if t.record is not None else None
        task = record.tag if record is not None else ""
        if not t.steps or "failed" in t.meta or record is None:
            objects = sum(r.count for r in record.include) if record is not None else 1
            out.append(Judged(final=False, task=task, broken=True, left_wrong=objects))
            continue
        mine = by_source.get(k, [])
        last = {n - 1 for n in itertools.accumulate(1 + len(s.refinements) for s in t.steps)}  # each step's last state
        labels = [float(s.wrong) if s.p_conflict is None else s.p_conflict for s in mine]  # hard unless graded
        left_wrong = sum(p for s, p in zip(mine, labels) if s.index in last)
        out.append(Judged(final=finals[k], final_score=scores[k], task=task, left_wrong=left_wrong,
                          extra_steps=max(0, len(t.steps) - sum(r.count for r in record.include)),
                          unjudged=visual_states(t) - len(mine) + asked[k][1],
                          asked=visual_states(t) + asked[k][0],
                          verdicts=[(s.index, s.wrong, bool(s.score)) for s in mine],
                          p_wrong=labels if graded_steps else []))
    return out


def _finals(trajectories: list[Trajectory], judge, exact: ExactCheck | None,
            questions: bool) -> tuple[list[bool | None], list[float | None], list[tuple[int, int]]]:
    """Whether each trajectory's last image satisfies its prompt; with `questions`, the share of its
    atomic questions answered yes (else None); and per trajectory the verdicts it asked of the judge
    and how many of them did not come."""
    usable = [k for k, t in enumerate(trajectories) if t.steps and t.record is not None and "failed" not in t.meta]
    finals: list[bool | None] = [False] * len(trajectories)
    scores: list[float | None] = [None] * len(trajectories)
    asked = [(0, 0)] * len(trajectories)
    if exact is not None:
        for k in usable:
            finals[k] = exact(PromptRecord.from_json(trajectories[k].record), trajectories[k].final_image)
        return finals, scores, asked
    # with questions, each trajectory's atomic questions (a free-text record has none: one verdict)
    per = {k: question_contexts(trajectories[k]) if questions else [] for k in usable}
    contexts = []
    for k in usable:
        t = trajectories[k]
        if per[k]:
            contexts += per[k]
            continue
        last = t.steps[-1]
        previous = t.steps[-2].final_image if len(t.steps) > 1 else None
        contexts.append(StepContext(t.prompt, last.instruction, last.description, t.final_image, t.record,
                                    t.steps[:-1], previous))
    verdicts = iter(graded_verdicts(judge, contexts) if contexts else [])
    for k in usable:
        if per[k]:
            got = list(itertools.islice(verdicts, len(per[k])))
            answers = [None if v is None else v.aligned for v, _ in got]
            asked[k] = (len(answers), sum(a is None for a in answers))
            record = PromptRecord.from_json(trajectories[k].record)
            yes = question_score(record, answers)
            finals[k] = None if yes is None else yes == 1.0
            # graded where the judge says how sure it is of every answer: its P(yes) per question
            sure = [None if v is None or p is None else 1.0 - p for v, p in got]
            scores[k] = yes if None in sure else question_score(record, sure)
        else:
            v, _ = next(verdicts)
            asked[k] = (1, int(v is None))
            finals[k] = None if v is None else bool(v.aligned and not v.missing)
    return finals, scores, asked


def _read_finals(readings: list[Reading | None],
                 graded: bool) -> tuple[list[bool | None], list[float | None], list[tuple[int, int]]]:
    """`_finals` from a `TrajectoryReader`'s readings: the last state's label is the verdict on the
    finished picture (no verdict asked beyond the states'), and with `graded` 1 - its P(conflict)
    the final reward."""
    finals = [None if r is None else not r.wrong[-1] for r in readings]
    scores = [None if r is None or not graded else 1.0 - r.p_conflict[-1] for r in readings]
    return finals, scores, [(0, 0)] * len(readings)


def verdict_credit(said_conflict: bool, p_wrong: float) -> float:
    """A verdict's credit against a label p = P(wrong): its expectation of +1 right, -1 wrong (2p - 1
    for saying conflict, 1 - 2p for not); ±1 against a yes/no label."""
    return (2.0 * p_wrong - 1.0) * (1.0 if said_conflict else -1.0)


def verdict_advantages(judged: list[Judged], weight: float) -> list[list[tuple[int, float]]]:
    """Per trajectory, (visual-state index, advantage) of each verdict the model wrote: `weight` times
    (+1 for a right verdict, -1 for a wrong one; with a graded label p = P(wrong), the expectation:
    2p - 1 for saying conflict, 1 - 2p for not) minus the batch's mean of that over the states of the
    same label. A per-label baseline, because right states outnumber wrong ones several times: a
    caught mistake earns much more than a routine "aligned", a false alarm costs much more than a
    miss's share, and each label's advantages sum to zero."""
    scores: dict[bool, list[float]] = {True: [], False: []}
    for j in judged:
        for (_, wrong, said), p in zip(j.verdicts, j.labels):
            scores[wrong].append(verdict_credit(said, p))
    mean = {label: sum(v) / len(v) if v else 0.0 for label, v in scores.items()}
    return [[(index, weight * (verdict_credit(said, p) - mean[wrong])) for (index, wrong, said), p in zip(j.verdicts, j.labels)]
            for j in judged]


def reward_functions(key: str = "judged") -> dict[str, Callable[..., list]]:
    """TRL reward functions, one per component, reading the `Judged` the rollout function passed in
    the extra field `key`. The final reward also logs (`log_metric`) each step's judge failures,
    how many groups had at least one / all trajectories right, and the share right per task."""

    def final(prompts, completions, **kw) -> list:
        judged = kw[key]
        if "log_metric" in kw:
            log = kw["log_metric"]
            log("judge/unjudged", float(sum(j.unjudged for j in judged)))
            groups: dict[str, list[bool]] = {}
            tasks: dict[str, list[bool]] = {}
            for p, j in zip(prompts, judged):
                groups.setdefault(p, []).append(bool(j.final))
                tasks.setdefault(j.task, []).append(bool(j.final))
            log("groups/any_right", sum(any(g) for g in groups.values()) / len(groups))
            log("groups/all_right", sum(all(g) for g in groups.values()) / len(groups))
            for task, right in tasks.items():
                if task:
                    log(f"final/{task}", sum(right) / len(right))
        return [None if j.final is None else j.final_score if j.final_score is not None else float(j.final)
                for j in judged]

    def inspection(prompts, completions, **kw) -> list:
        return [-1.0 if j.broken else (2 * j.right_verdicts - j.states) / j.states if j.states else 0.0
                for j in kw[key]]

    def refine(prompts, completions, **kw) -> list:
        return [-float(j.left_wrong) for j in kw[key]]

    def steps(prompts, completions, **kw) -> list:
        return [-float(j.extra_steps) for j in kw[key]]

    return {"final": final, "inspection": inspection, "refine": refine, "steps": steps}
