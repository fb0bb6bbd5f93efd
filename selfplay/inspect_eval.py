"""Inspection measured on the model's own sketches: how well its P(conflict) separates its wrong
visual states from its right ones, against an exact judge.

A self-critique round can only pay off through the model's own Inspect: a flagged state is redrawn
(`rollout.retries`) or refined, so what matters is how many of its mistakes it flags at a false-alarm
rate it can afford. The decoder records the model's P(conflict) at every inspection it writes
(`meta["inspect_scores"]`, `rollout/decoder.py`); here every visual state of every process-mode
trajectory (first sketches and refined states; a failed repair is a wrong state) is labelled by the
judge, and the table gives the ROC AUC (threshold-free), the recall at 5% and 10% false alarms with
the thresholds that give them (`rollout.inspect: threshold`), split by plan errors (the step's
`<ins>`/`<des>` already contradict the prompt) and image errors (the sketch misdraws a right plan)
and by task, each with a bootstrap standard error. A `StateScorer` (an attention head, a transcriber)
rewrites the scores before the table is made (`selfplay inspect-eval --inspector`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

import numpy as np
from sklearn.metrics import auc, roc_curve

from judges.oracle import edit_items
from strokes.language import description_text, parse_description, parse_instruction
from strokes.records import PromptRecord
from strokes.trajectory import Refinement, Trajectory
from strokes.verdict import StepContext, Verdict, graded_verdicts

from .critique import step_contexts

FALSE_ALARMS = (0.05, 0.10)
"""The false-alarm rates the table reports recall (and a threshold) at."""


@dataclass
class LabelledState:
    """One visual state the model drew and inspected, its score and the judge's label."""

    score: float
    """The model's P(conflict) at its inspection of this state."""
    kind: str
    """"right", or the judge's reason it is wrong: "plan" or "image"."""
    task: str
    """The prompt's task (its record's tag)."""
    refined: bool
    """A refinement's state rather than a step's first sketch."""
    source: int = 0
    """The index of its trajectory in the list it was labelled from."""
    index: int = 0
    """Its place among the trajectory's visual states, in drawing order."""
    p_conflict: float | None = None
    """The judge's P(conflict) for it, where the judge said how sure it is (`label_states(graded=True)`)."""

    @property
    def wrong(self) -> bool:
        return self.kind != "right"


class StateScorer(Protocol):
    """What scores every visual state of a policy's trajectories in place of the verdict word it wrote:
    an attention head on its hidden states (`selfplay/inspector.py`) or a transcriber reading each
    sketch (`selfplay/question_judge.py`)."""

    threshold: float
    """The P(conflict) at or above which it flags a state."""

    def scored(self, trajectories: list[Trajectory]) -> list[Trajectory]:
        """`trajectories` with its P(conflict) of each visual state as `meta["inspect_scores"]`."""
        ...


def visual_states(t: Trajectory) -> int:
    """How many visual states a trajectory holds: each step's sketch and its refinements."""
    return sum(1 + len(s.refinements) for s in t.steps)


def _plan_error(v: Verdict) -> bool:
    return any(c.source == "instruction" for c in v.conflicts)


def _refined_context(before: StepContext, verdict: Verdict, r: Refinement) -> StepContext:
    """What the judge sees of a refined state: the step's plan, or, when the state it refines had a
    plan error, the plan the refinement's instruction turns it into (as the critique builder judges
    corrections); the state before it as the previous image."""
    description = before.description
    items, edit = parse_description(description), parse_instruction(r.instruction)
    if _plan_error(verdict) and items is not None and edit is not None:
        description = description_text(edit_items(items, edit))
    return StepContext(before.prompt, r.instruction, description, r.image, before.record, before.history,
                       before.image)


Ask = Callable[[list[StepContext]], list[tuple[Verdict | None, float | None]]]
"""A judge asked about many step contexts at once: per context its verdict (None: it cannot say) and
its P(conflict) where it gives one."""


def judged_states(trajectories: list[Trajectory], ask: Ask) -> list[list[tuple[Verdict | None, float | None]]]:
    """Every visual state of each trajectory judged, in drawing order: level by level (every first
    sketch in one call of `ask`, then every first refinement, ...), each refinement against the plan
    before it. A state after one the judge could not say about is (None, None)."""
    contexts = {(i, j, 0): c for i, t in enumerate(trajectories) for j, c in enumerate(step_contexts(t))}
    judged: dict[tuple[int, int, int], tuple[Verdict | None, float | None]] = {}
    level = list(contexts)
    while level:
        judged.update(zip(level, ask([contexts[k] for k in level])))
        deeper = []
        for i, j, d in level:
            refinements, v = trajectories[i].steps[j].refinements, judged[(i, j, d)][0]
            if v is not None and d < len(refinements):
                contexts[(i, j, d + 1)] = _refined_context(contexts[(i, j, d)], v, refinements[d])
                deeper.append((i, j, d + 1))
        level = deeper
    return [[judged.get((i, j, d), (None, None)) for j, s in enumerate(t.steps) for d in range(1 + len(s.refinements))]
            for i, t in enumerate(trajectories)]


def label_states(trajectories: list[Trajectory], judge,
                 graded: bool = False) -> tuple[list[LabelledState], int]:
    """The labelled states of every process-mode trajectory whose scores cover its states, and how
    many trajectories were left out (failed, single-pass, or retried: a redrawn step's inspections
    are not in the trajectory). `graded`: ask for each verdict's P(conflict) too (`graded_verdicts`;
    None from a judge that cannot say)."""
    usable, skipped = [], 0
    for k, t in enumerate(trajectories):
        ok = t.steps and t.record is not None and not t.single_pass and "failed" not in t.meta
        if not ok or t.meta.get("retries") or len(t.meta.get("inspect_scores", [])) != visual_states(t):
            skipped += 1
            continue
        usable.append((k, t))

    def ask(contexts: list[StepContext]) -> list[tuple[Verdict | None, float | None]]:
        return graded_verdicts(judge, contexts) if graded else [(v, None) for v in judge.judge(contexts)]
    out = []
    for (k, t), states in zip(usable, judged_states([t for _, t in usable], ask)):
        task = PromptRecord.from_json(t.record).tag
        refined = [d > 0 for s in t.steps for d in range(1 + len(s.refinements))]
        for n, ((v, sure), score) in enumerate(zip(states, t.meta["inspect_scores"])):
            if v is not None:
                kind = "right" if v.aligned else "plan" if _plan_error(v) else "image"
                out.append(LabelledState(float(score), kind, task, refined[n], k, n, sure))
    return out, skipped


def recall_at(wrong: np.ndarray, scores: np.ndarray, false_alarm: float) -> tuple[float, float]:
    """The best recall whose false-alarm rate is at most `false_alarm`, and the threshold giving it
    (say conflict when P(conflict) >= threshold)."""
    return _best_recall(*roc_curve(wrong, scores), false_alarm)


def _best_recall(fpr: np.ndarray, tpr: np.ndarray, thresholds: np.ndarray, false_alarm: float) -> tuple[float, float]:
    ok = np.nonzero(fpr <= false_alarm)[0]
    best = ok[np.argmax(tpr[ok])]
    return float(tpr[best]), float(min(thresholds[best], 1.0))


def _curve(wrong: np.ndarray, scores: np.ndarray) -> tuple[float, list[tuple[float, float]]]:
    """AUC and (recall, threshold) at each of `FALSE_ALARMS`, from one ROC curve: what
    `roc_auc_score` and `recall_at` give, for a third of the calls (the bootstrap makes thousands)."""
    fpr, tpr, thresholds = roc_curve(wrong, scores)
    return float(auc(fpr, tpr)), [_best_recall(fpr, tpr, thresholds, f) for f in FALSE_ALARMS]


def _with_se(wrong: np.ndarray, scores: np.ndarray, boot: int, rng: np.random.Generator) -> dict:
    """AUC and recall at each false-alarm rate of one set of states, with bootstrap standard errors."""
    row: dict = {"states": int(len(wrong)), "wrong": int(wrong.sum()), "auc": None, "auc_se": None}
    if not 0 < wrong.sum() < len(wrong):
        return row
    row["auc"], at = _curve(wrong, scores)
    samples: dict[str, list[float]] = {"auc": [], **{f"recall@{f:.2f}": [] for f in FALSE_ALARMS}}
    for f, (recall, threshold) in zip(FALSE_ALARMS, at):
        row[f"recall@{f:.2f}"], row[f"threshold@{f:.2f}"] = recall, threshold
    for _ in range(boot):
        i = rng.integers(0, len(wrong), len(wrong))
        if not 0 < wrong[i].sum() < len(i):
            continue
        area, at = _curve(wrong[i], scores[i])
        samples["auc"].append(area)
        for f, (recall, _) in zip(FALSE_ALARMS, at):
            samples[f"recall@{f:.2f}"].append(recall)
    for name, values in samples.items():
        row[f"{name}_se"] = float(np.std(values)) if len(values) > 1 else None
    return row


def inspection_table(states: list[LabelledState], boot: int = 200, seed: int = 0) -> dict:
    """The inspection table: rows "all", "plan" (plan errors against every right state), "image",
    "refined" (refined states only), "task/<tag>", each {states, wrong, auc, auc_se, recall@0.05,
    threshold@0.05, ..., *_se}, and "within_task" (the per-task AUCs averaged)."""
    rng = np.random.default_rng(seed)

    def row(keep) -> dict:
        chosen = [s for s in states if keep(s)]
        wrong = np.array([s.wrong for s in chosen], dtype=bool)
        return _with_se(wrong, np.array([s.score for s in chosen], dtype=float), boot, rng)

    table = {"all": row(lambda s: True),
             "plan": row(lambda s: s.kind in ("right", "plan")),
             "image": row(lambda s: s.kind in ("right", "image")),
             "refined": row(lambda s: s.refined)}
    for task in sorted({s.task for s in states}):
        table[f"task/{task}"] = row(lambda s, task=task: s.task == task)
    table["within_task"] = _within_task(table)
    return table


def _within_task(table: dict) -> dict:
    """The per-task AUCs averaged, weighted by states (tasks with both right and wrong states only).
    The pooled AUC also rewards knowing which tasks are hard, which a threshold shared by all tasks
    cannot use to find the wrong states of one task; this row measures only what it can."""
    rows = [r for name, r in table.items() if name.startswith("task/") and r.get("auc") is not None]
    n = sum(r["states"] for r in rows)
    if not n:
        return {"states": 0, "wrong": 0, "auc": None, "auc_se": None}
    auc = sum(r["auc"] * r["states"] for r in rows) / n
    se = sum((r["auc_se"] or 0.0) ** 2 * r["states"] ** 2 for r in rows) ** 0.5 / n
    return {"states": n, "wrong": sum(r["wrong"] for r in rows), "auc": auc, "auc_se": se}


def format_table(table: dict) -> str:
    """The table as Markdown, AUC and recall in percent with ± one bootstrap SE."""
    def pct(r: dict, key: str) -> str:
        if r.get(key) is None:
            return "–"
        se = r.get(f"{key}_se")
        return f"{100 * r[key]:.1f}" + (f" ± {100 * se:.1f}" if se is not None else "")

    lines = ["| states | n | wrong | ROC AUC | recall @5% FA | recall @10% FA | threshold @10% FA |",
             "|---|---|---|---|---|---|---|"]
    for name, r in table.items():
        thr = r.get("threshold@0.10")
        lines.append(f"| {name} | {r['states']} | {r['wrong']} | {pct(r, 'auc')} | {pct(r, 'recall@0.05')} | "
                     f"{pct(r, 'recall@0.10')} | {'–' if thr is None else f'{thr:.3f}'} |")
    return "\n".join(lines)


def summary_event(table: dict) -> dict:
    """The headline numbers of a table, flat, for metrics.jsonl and wandb."""
    out = {}
    for name in ("all", "plan", "image", "refined", "within_task"):
        r = table.get(name, {})
        prefix = "inspect" if name == "all" else f"inspect/{name}"
        for key in ("auc", "auc_se", "recall@0.05", "recall@0.10", "threshold@0.10"):
            if r.get(key) is not None:
                out[f"{prefix}/{key}"] = r[key]
    return out
