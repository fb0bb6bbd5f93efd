"""The critique builder: a round's SFT data from the model's own rollouts and a judge's verdicts.

For each rolled-out trajectory the judge looks at every sketch in order. The first wrong step becomes
a critique trace (paper §3.2): the model's own prefix, its own wrong step (its wrong sketch kept as
context with no loss on it; a plan that contradicts the prompt gets no loss either), the judge's
inspection naming the conflict, `<refine>` with the judge's corrective instruction, the corrected
state, and an exact continuation to a scene that satisfies the prompt. The corrected state is exact
when the judge can give it (the oracle); otherwise the policy re-sketches under the correction and
the judge must accept that sketch, or the example is dropped and counted. Steps the model flagged
but the judge found fine teach the model not to raise false alarms; fully correct rollouts are kept
as confirmations. `symbolic` mode (the paper's Table 6 baseline) instead takes corrections from
scene-graph perturbations of the same prompts.
"""

from __future__ import annotations

import math
import random
from collections import Counter
from dataclasses import dataclass, field, replace
from typing import Callable, ClassVar

import numpy as np

from judges.oracle import edit_items
from strokes.config_loader import require
from strokes.data.continuation import continuation
from strokes.data.pipelines import PipelineConfig, TrajectoryMaker, aligned_inspection
from strokes.language import description_text, inspection_text, parse_description, parse_instruction
from strokes.records import PromptRecord
from strokes.shapeworld import Scene, detect, render
from strokes.shapeworld.queries import missing_parts
from strokes.shapeworld.render import detections_to_scene
from strokes.trajectory import Refinement, Step, Trajectory
from strokes.verdict import StepContext, Verdict


@dataclass
class CritiqueConfig:
    """How a round's training data is assembled."""

    SECTION: ClassVar[str] = "critique"

    mode: str = "self"
    """"self": the model's own errors; "symbolic": scene-graph perturbations."""
    replay_ratio: float = 1.0
    """Base-data rows mixed in per critique row."""
    min_replay: int = 32
    """Base-data rows mixed in at least, so a round with few traces still trains."""
    confirmations: float = 1.0
    """Share of fully correct rollouts kept (fewer skews the inspect prior to "conflict")."""
    confirmations_per_prompt: int = 0
    """At most this many confirmations of one prompt (0: no cap); with several samples per prompt a
    cap of 1 weights prompts the model rarely gets right as much as easy ones."""
    max_refines: int = 2
    """Corrections chained on one wrong step before the example is dropped."""
    learn_own_steps: bool = False
    """Also train on the plans and sketches of the model's own judged-correct steps (rejection-sampling
    fine-tuning); False keeps them as context and trains only their inspections."""
    error_traces: bool = True
    """Make a critique trace of each rollout's first wrong step; False keeps only rollouts the judge
    found right throughout (confirmations, false alarms, completions): with `learn_own_steps`,
    rejection-sampling fine-tuning on the policy's own accepted steps alone."""
    train_repairs: bool = True
    """Train each error trace's <refine> chain and exact continuation; False keeps them as context, so
    the trace trains inspections only, above all the one naming the model's own mistake (for inference
    with rollout.retries, which redraws a flagged step instead of repairing it)."""
    label_every_state: bool = False
    """Also keep each rollout with a wrong sketch as it was drawn, every sketch's inspection replaced
    by the judge's and everything else kept as context: the error trace stops at the first mistake,
    so without this the model's later mistakes in the same rollout are never labelled."""
    weighting: str = "uniform"
    """How often each rollout the judge accepted is trained. "uniform": once. "advantage": as often as
    GRPO's advantage of a right sample weights it, sqrt((1 - p) / p) for a prompt the policy gets right
    with rate p (its share of the round's rollouts of that prompt text the judge accepted whole), scaled
    so the kept rows keep their number: prompts always drawn right are dropped, rarely right ones
    repeated (fractional weights by a seeded coin)."""
    seed: int = 0
    """Seed of the builder's choices (plus the round number)."""

    def __post_init__(self) -> None:
        require(self, "mode", self.mode in ("self", "symbolic"), "must be 'self' or 'symbolic'")
        require(self, "weighting", self.weighting in ("uniform", "advantage"), "must be 'uniform' or 'advantage'")


@dataclass
class CritiqueStats:
    """What the builder saw and made, for the round's metrics and report."""

    outcomes: Counter = field(default_factory=Counter)  # per rollout: image_error, plan_error, ...
    conflicts: Counter = field(default_factory=Counter)  # conflict kinds the judge found
    corrections_accepted: int = 0
    corrections_rejected: int = 0
    unjudged: int = 0  # rollouts with a step the judge gave no verdict (skipped)
    steps_asked: int = 0  # steps put to the judge
    steps_unjudged: int = 0  # of them, steps that got no verdict

    def to_json(self) -> dict:
        tried = self.corrections_accepted + self.corrections_rejected
        return {"outcomes": dict(self.outcomes), "conflicts": dict(self.conflicts),
                "corrections_accepted": self.corrections_accepted,
                "corrections_rejected": self.corrections_rejected,
                "acceptance_rate": self.corrections_accepted / tried if tried else None,
                "unjudged": self.unjudged}


Resketch = Callable[[list[tuple[StepContext, str]]], list[np.ndarray]]
Exact = Callable[[StepContext, Verdict], Scene | None]


def step_contexts(t: Trajectory) -> list[StepContext]:
    """One context per sketch of a rolled-out trajectory, in order."""
    out, prev = [], None
    for i, s in enumerate(t.steps):
        out.append(StepContext(t.prompt, s.instruction, s.description, s.image, t.record, t.steps[:i], prev))
        prev = s.final_image
    return out


def _aligned(rec: PromptRecord, s: Step, learn: bool) -> Step:
    """The model's own judged-correct step with the judge's positive inspection and no refinements.
    The inspection is always trained; the plan and sketch only with `learn` (else they are context:
    an unstated relation is not wrong, but it is not the base recipe either)."""
    scene = detections_to_scene(detect(s.image), s.image.shape[0])
    return Step(s.instruction, s.description, s.image, aligned_inspection(rec, scene), edit=s.edit,
                context=not learn)


def build_self_critique(rollouts: list[Trajectory], judge, cfg: CritiqueConfig, exact: Exact | None = None,
                        resketch: Resketch | None = None) -> tuple[list[Trajectory], CritiqueStats]:
    """Critique traces from the model's own rollouts (see module docstring). `exact(context, verdict)`
    gives the exact corrected scene (the oracle's `corrected_scene`); without it, `resketch` lets the
    policy draw the correction and the judge must accept it."""
    rng = random.Random(cfg.seed)
    stats = CritiqueStats()
    usable = [t for t in rollouts if t.record is not None and t.steps and not t.single_pass]
    contexts = [step_contexts(t) for t in usable]
    flat = [c for cs in contexts for c in cs]
    verdicts = judge.judge(flat) if flat else []
    stats.steps_asked, stats.steps_unjudged = len(flat), sum(v is None for v in verdicts)
    out: list[Trajectory] = []
    accepted: list[Trajectory] = []  # rows of the rollouts the judge accepted whole
    confirmed: Counter = Counter()  # confirmations kept per prompt
    tried: Counter = Counter()  # judged rollouts per prompt text
    won: Counter = Counter()  # of them, drawn right and complete
    pending: list[tuple[Trajectory, int, Verdict, StepContext]] = []
    pos = 0
    for t, cs in zip(usable, contexts):
        vs = verdicts[pos: pos + len(cs)]
        pos += len(cs)
        rec = PromptRecord.from_json(t.record)
        if any(v is None for v in vs):
            stats.unjudged += 1
            continue
        wrong = next((i for i, v in enumerate(vs) if not v.aligned), None)
        tried[t.prompt] += 1
        if wrong is None:
            kept, outcome = _positive(rec, t, stats, cfg, rng)
            won[t.prompt] += outcome in ("correct", "false_alarm")
            capped = cfg.confirmations_per_prompt and confirmed[t.prompt] >= cfg.confirmations_per_prompt
            kept = [k for k in kept if not (k.meta["outcome"] == "confirmation" and capped)]
            confirmed[t.prompt] += sum(k.meta["outcome"] == "confirmation" for k in kept)
            accepted.extend(kept)
            continue
        if cfg.label_every_state:
            stats.outcomes["every_state"] += 1
            out.append(_every_state_trace(rec, t, vs))
        v = vs[wrong]
        for c in v.conflicts:
            stats.conflicts[f"{c.source}:{c.kind.value}"] += 1
        if not cfg.error_traces:
            stats.outcomes["error_untraced"] += 1
            continue
        pending.append((t, wrong, v, cs[wrong]))
    if cfg.weighting == "advantage":
        accepted = advantage_weighted(accepted, {k: (won[k], n) for k, n in tried.items()}, rng)
    out.extend(accepted)
    # Corrected states: exact from the judge when it can give them, else re-sketched and re-judged.
    chains: list[list[tuple[str, np.ndarray, Verdict, str]] | None]
    if exact is not None:
        chains = [_exact_chain(ctx, v, judge, exact, cfg.max_refines) for _, _, v, ctx in pending]
    elif resketch is not None and pending:
        images = resketch([(ctx, v.correction) for _, _, v, ctx in pending])
        checks = judge.judge([StepContext(ctx.prompt, v.correction, ctx.description, img, ctx.record,
                                          ctx.history, ctx.image) for (_, _, v, ctx), img in zip(pending, images)])
        chains = [[(v.correction, img, ok, ctx.description)] if ok is not None and ok.aligned else None
                  for (_, _, v, ctx), img, ok in zip(pending, images, checks)]
    else:
        chains = [None] * len(pending)
    for (t, k, v, ctx), chain in zip(pending, chains):
        rec = PromptRecord.from_json(t.record)
        trace = _critique_trace(rec, t, k, v, chain, rng, cfg.learn_own_steps, cfg.train_repairs) if chain else None
        if trace is None:
            stats.corrections_rejected += 1
            continue
        stats.corrections_accepted += 1
        plan = any(c.source == "instruction" for c in v.conflicts)
        stats.outcomes["plan_error" if plan else "image_error"] += 1
        out.append(trace)
    return out, stats


def _exact_chain(ctx: StepContext, v: Verdict, judge, exact: Exact,
                 limit: int) -> list[tuple[str, np.ndarray, Verdict, str]] | None:
    """Corrections applied one at a time to exact states, each state judged again, until the judge
    accepts one: [(correction, corrected image, its verdict, the description it was judged against),
    ...]; None when it does not converge
    within `limit` refinements (a correction fixes one conflict; a step may have several)."""
    chain = []
    for _ in range(limit):
        scene = exact(ctx, v)
        edit = parse_instruction(v.correction)
        items = parse_description(ctx.description)
        if scene is None or edit is None or items is None:
            return None
        if any(c.source == "instruction" for c in v.conflicts):
            items = edit_items(items, edit)  # the plan the correction turns the wrong plan into
        image = render(scene)
        nxt = StepContext(ctx.prompt, v.correction, description_text(items), image, ctx.record,
                          ctx.history, ctx.image)
        verdict = judge.judge([nxt])[0]
        if verdict is None:
            return None
        chain.append((v.correction, image, verdict, nxt.description))
        if verdict.aligned:
            return chain
        ctx, v = nxt, verdict
    return None


def _critique_trace(rec: PromptRecord, t: Trajectory, k: int, v: Verdict,
                    chain: list[tuple[str, np.ndarray, Verdict, str]], rng: random.Random,
                    learn_own: bool, repairs: bool = True) -> Trajectory | None:
    final = chain[-1][1]
    rest = continuation(rec, detections_to_scene(detect(final), final.shape[0]), rng)
    if rest is None:
        return None
    s = t.steps[k]
    plan = any(c.source == "instruction" for c in v.conflicts)
    wrong = Step(s.instruction, s.description, s.image, inspection_text(v), wrong_plan=plan,
                 wrong_image=not plan, edit=s.edit, context=True)
    wrong.refinements = [Refinement(fix, image, inspection_text(after), context=not repairs)
                         for fix, image, after, _ in chain]
    if not repairs:
        rest = [replace(step, context=True) for step in rest]
    steps = [_aligned(rec, p, learn_own) for p in t.steps[:k]] + [wrong] + rest
    return Trajectory(t.prompt, steps, t.record, "self", {"outcome": "plan_error" if plan else "image_error",
                                                          "tag": rec.tag, "step": k,
                                                          "refines": len(chain)})


def _every_state_trace(rec: PromptRecord, t: Trajectory, verdicts: list[Verdict]) -> Trajectory:
    """The rollout as drawn, each sketch's inspection the judge's: the only tokens it trains. A
    refinement stays context whole (its inspection included: a refinement has no per-part flags)."""
    steps = []
    for s, v in zip(t.steps, verdicts):
        scene = detections_to_scene(detect(s.image), s.image.shape[0])
        text = aligned_inspection(rec, scene) if v.aligned else inspection_text(v)
        steps.append(Step(s.instruction, s.description, s.image, text, [replace(r, context=True) for r in s.refinements],
                          edit=s.edit, context=True))
    return Trajectory(t.prompt, steps, t.record, "self", {"outcome": "every_state", "tag": rec.tag})


def advantage_weighted(rows: list[Trajectory], success: dict[str, tuple[int, int]],
                       rng: random.Random) -> list[Trajectory]:
    """`rows` (right rollouts) repeated by GRPO's advantage of a right sample, sqrt((1 - p) / p) for
    their prompt's success rate p = right / tried (`success[prompt]`; a completed scene of a prompt
    never drawn right counts half a success), scaled to keep the number of rows: the positive half
    of a GRPO update, as data. Why: plain rejection sampling trains a prompt the policy always gets
    right as much as one it rarely does, though only the second has anything to teach (docs/loop.md)."""
    rate = {k: max(right, 0.5) / tried for k, (right, tried) in success.items()}
    weights = [math.sqrt((1 - rate[t.prompt]) / rate[t.prompt]) for t in rows]  # right <= tried: rate <= 1
    total = sum(weights)
    if not total:
        return []
    out = []
    for t, w in zip(rows, weights):
        w *= len(rows) / total
        out.extend([t] * (int(w) + (rng.random() < w - int(w))))
    return out


def _positive(rec: PromptRecord, t: Trajectory, stats: CritiqueStats, cfg: CritiqueConfig,
              rng: random.Random) -> tuple[list[Trajectory], str]:
    """Every sketch was right: a false alarm to unlearn, an unfinished scene to complete, or a
    confirmation to keep. Returns the rows kept and the outcome."""
    steps = [_aligned(rec, s, cfg.learn_own_steps) for s in t.steps]
    false_alarm = any(s.refinements for s in t.steps)
    final = detections_to_scene(detect(t.steps[-1].final_image), t.steps[-1].image.shape[0])
    if missing_parts(rec, final):
        rest = continuation(rec, final, rng)
        if rest is None:
            stats.outcomes["unfinishable"] += 1
            return [], "unfinishable"
        stats.outcomes["incomplete"] += 1
        return [Trajectory(t.prompt, steps + rest, t.record, "self", {"outcome": "incomplete", "tag": rec.tag})], "incomplete"
    if false_alarm:
        stats.outcomes["false_alarm"] += 1
        return [Trajectory(t.prompt, steps, t.record, "self", {"outcome": "false_alarm", "tag": rec.tag})], "false_alarm"
    stats.outcomes["correct"] += 1
    if rng.random() < cfg.confirmations:
        return [Trajectory(t.prompt, steps, t.record, "self", {"outcome": "confirmation", "tag": rec.tag})], "correct"
    return [], "correct"


def build_symbolic_critique(records: list[PromptRecord], n: int, cfg: CritiqueConfig,
                            size: int = 64) -> list[Trajectory]:
    """The Table 6 baseline: as many corrections, made by perturbing scene graphs of the same prompts."""
    rng = random.Random(cfg.seed)
    maker = TrajectoryMaker(PipelineConfig(conflict_negative=1.0, alignment_negative=1.0), size)
    out = []
    for i in range(n):
        rec = records[i % len(records)]
        t = maker.make(rng.choice(["alignment", "conflict"]), rec, rng)
        t.source = "symbolic"
        out.append(t)
    return out
