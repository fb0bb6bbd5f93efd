"""How the model's own Inspect and Refine behaved on rollouts, step by step, against an exact judge.

A self-critique round can only pay off through these numbers: the share of its wrong sketches the
model flags (recall; split by plan errors, where its `<ins>`/`<des>` already contradict the prompt,
and image errors, where the sketch misdraws a right plan), the share of its right sketches it flags
anyway (false alarms, each one a refinement that can break a correct scene), and the share of
flagged wrong sketches its refinement actually fixes. The report shows them per round so a run that does not improve says why.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from strokes.trajectory import Trajectory
from strokes.verdict import StepContext

from .critique import step_contexts


@dataclass
class InspectStats:
    steps: int = 0
    wrong: int = 0  # sketches the judge finds wrong
    wrong_flagged: int = 0  # ... that the model refined
    plan_errors: int = 0  # wrong sketches whose plan already contradicts the prompt (the rest misdraw their plan)
    plan_errors_flagged: int = 0
    fixed: int = 0  # ... whose last refinement the judge accepts
    right: int = 0
    right_flagged: int = 0  # false alarms

    def to_json(self) -> dict:
        def share(a: int, b: int) -> float | None:
            return a / b if b else None

        return {**asdict(self), "recall": share(self.wrong_flagged, self.wrong),
                "plan_recall": share(self.plan_errors_flagged, self.plan_errors),
                "image_recall": share(self.wrong_flagged - self.plan_errors_flagged, self.wrong - self.plan_errors),
                "false_alarm_rate": share(self.right_flagged, self.right),
                "fix_rate": share(self.fixed, self.wrong_flagged)}


def inspect_stats(trajectories: list[Trajectory], judge) -> InspectStats:
    """Judge every first sketch of every process-mode trajectory, and the last refinement of each
    flagged wrong one (with the same context: the refinement must satisfy the step's description)."""
    trajs = [t for t in trajectories if t.steps and not t.single_pass and t.record is not None]
    contexts = [c for t in trajs for c in step_contexts(t)]
    steps = [s for t in trajs for s in t.steps]
    verdicts = judge.judge(contexts) if contexts else []
    st = InspectStats(steps=len(steps))
    retries: list[StepContext] = []
    for s, c, v in zip(steps, contexts, verdicts):
        if v is None:
            continue
        if v.aligned:
            st.right += 1
            st.right_flagged += bool(s.refinements)
            continue
        st.wrong += 1
        plan_error = any(x.source == "instruction" for x in v.conflicts)
        st.plan_errors += plan_error
        if s.refinements:
            st.wrong_flagged += 1
            st.plan_errors_flagged += plan_error
            r = s.refinements[-1]
            retries.append(StepContext(c.prompt, r.instruction, c.description, r.image, c.record, c.history, c.image))
    st.fixed = sum(v is not None and v.aligned for v in (judge.judge(retries) if retries else []))
    return st
