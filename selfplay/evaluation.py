"""Evaluating a policy: rollouts on a suite, their GenEval layout and score, a round's held-out
eval (every eval mode, plus trajectory strips to compare rounds by eye) and its validation split
(the score promotion compares, and the own-sketch inspection table).

These are stage bodies: each writes into the folder it is given (the loop hands it `<stage>.tmp/`)
and the run folder's records through `selfplay.run_dir`.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path
from typing import Callable

from rollout import RolloutConfig, RolloutDir, RolloutFleet, rollout, write_geneval
from strokes import console
from strokes.geneval import Score
from strokes.records import TASKS, PromptRecord
from strokes.trajectory import Trajectory, write_jsonl

from .config import RunConfig
from .inspect_eval import StateScorer, inspection_table, label_states, summary_event
from .judging import policy_judge
from .oracle_planner import planner_rollout
from .run_dir import write_event, write_scores
from .visualize import captions, strip_image
from .world import make_world

Log = Callable[[str], None]


# ---- suites ---------------------------------------------------------------------------------------

def eval_suite(cfg: RunConfig) -> list[PromptRecord]:
    """The held-out suite the report shows: `loop.eval_per_task` records per task."""
    return make_world(cfg).eval_suite(cfg.loop.eval_per_task, cfg.loop.eval_seed)


def validation_suite(cfg: RunConfig) -> list[PromptRecord]:
    """The validation split promotion compares on: training prompts held out, never the test suite."""
    return make_world(cfg).validation_suite(cfg.loop.validation_per_task, cfg.loop.validation_seed)


def training_suite(cfg: RunConfig, n: int, seed: int, tasks: tuple[str, ...] = TASKS) -> list[PromptRecord]:
    """At least `n` training prompts, equal shares of `tasks` where the world has them."""
    return make_world(cfg).training_suite(n, seed, tuple(tasks))


# ---- rollouts and scores ---------------------------------------------------------------------------

def sampled_verdicts(cfg: RolloutConfig) -> RolloutConfig:
    """`cfg` with the policy's own sampled verdicts and no redraws: what the model writes is what it
    is judged on, and every inspection it wrote stays in the trajectory (GRPO's rollouts, the
    Inspect head's training sketches)."""
    return dataclasses.replace(cfg, retries=0, inspect="sample")


def rollout_stage(cfg: RunConfig, checkpoint: Path, records: list, mode: str, seed: int, out: Path, judge=None,
                  samples: int = 1, fleet: RolloutFleet | None = None) -> list[Trajectory]:
    """Trajectories of one policy on `records`, saved to `out/trajectories`.

    The rollout writes shard by shard into `<out>.shards/` beside the stage folder, so a killed
    stage resumes without redoing finished shards; Ray actors are used when `rollout.actors` > 0,
    those of `fleet` (a `RolloutFleet` that lives as long as the run and reloads checkpoints in
    place) when one is given.
    """
    rollout_cfg = dataclasses.replace(cfg.rollout, mode=mode, seed=seed)
    shards = out.with_name(out.name.removesuffix(".tmp") + ".shards")
    rollout(records, shards, rollout_cfg, checkpoint=checkpoint, judge=judge, samples=samples,
            progress=console.bars(), fleet=fleet)
    trajectories = RolloutDir(shards).trajectories()
    write_jsonl(trajectories, out / "trajectories")
    shutil.rmtree(shards, ignore_errors=True)
    return trajectories


def score_rollouts(cfg: RunConfig, trajectories: list[Trajectory], records: list[PromptRecord], folder: Path) -> Score:
    """The final images of `trajectories` in GenEval's layout under `folder/geneval` (what GenEval's
    own scorer reads), scored by the world: GenEval's rules decided exactly, by a judge, or by a scorer."""
    world = make_world(cfg)
    write_geneval(trajectories, records, folder / "geneval", world.image_size)
    return world.score(folder / "geneval")


def eval_rollouts(cfg: RunConfig, checkpoint: Path, suite: list, mode: str, seed: int, out: Path,
                  fleet: RolloutFleet | None = None) -> list[Trajectory]:
    """`loop.eval_samples` trajectories per suite record in one eval mode, saved under `out`.

    process / single_pass: the policy alone (on the fleet if there is one); judge: the configured judge
    writes every inspection and correction (paper Table 4's external inspector); planner: the oracle
    writes every plan (Table 4's external planner)."""
    if mode == "planner":
        return planner_rollout(cfg, checkpoint, suite, seed, out, samples=cfg.loop.eval_samples)
    judge = policy_judge(cfg.judge, checkpoint, cfg.rollout) if mode == "judge" else None
    return rollout_stage(cfg, checkpoint, suite, mode, seed, out, judge=judge, samples=cfg.loop.eval_samples,
                         fleet=None if judge else fleet)


def evaluate_mode(cfg: RunConfig, checkpoint: Path, suite: list, mode: str, seed: int, out: Path,
                  fleet: RolloutFleet | None = None) -> dict:
    """One eval mode on `suite`: rollouts and GenEval layout in `out/<mode>`; its scores (the
    `Score` fields and how many trajectories failed)."""
    trajectories = eval_rollouts(cfg, checkpoint, suite, mode, seed, out / mode, fleet)
    score = score_rollouts(cfg, trajectories, suite, out / mode)
    return {**score.to_json(), "failed": sum("failed" in t.meta for t in trajectories)}


# ---- the stages ------------------------------------------------------------------------------------

def evaluate(cfg: RunConfig, checkpoint: Path, out: Path, rnd: int, arm: str = "policy",
             fleet: RolloutFleet | None = None) -> dict:
    """Held-out suite in every eval mode, `loop.eval_samples` images per record (sampling at T=1 makes
    one image per record a noisy estimate); GenEval layout per mode, the scores, and the strips."""
    suite = eval_suite(cfg)
    scores = {}
    for mode in cfg.loop.eval_modes:
        scores[mode] = s = evaluate_mode(cfg, checkpoint, suite, mode, cfg.loop.eval_seed, out, fleet)
        write_event(out, {"event": "eval", "round": rnd, "arm": arm, "mode": mode, "overall": s["overall"],
                          "overall_se": s["overall_se"], **{f"task/{k}": v for k, v in s["per_task"].items()},
                          "failed": s["failed"]})
    write_scores(out, scores)
    strips(cfg, checkpoint, out / "strips", fleet)
    return scores


def validate(cfg: RunConfig, checkpoint: Path, out: Path, rnd: int, arm: str = "policy",
             fleet: RolloutFleet | None = None, log: Log = print, inspector: StateScorer | None = None) -> dict:
    """Process-mode rollouts on the validation split: their GenEval score, which promotion compares,
    and the table of how well the model's own inspection separates its wrong visual states from its
    right ones (every state labelled by the exact judge; `selfplay/inspect_eval.py`). With
    `rollout.retries` the table comes from a second rollout without retries, since a redrawn step's
    inspections leave the trajectory. With an `inspector` (an attention head or a transcriber), the
    table scores its P(conflict) of each state instead of the verdict the model wrote."""
    suite, seed = validation_suite(cfg), cfg.loop.validation_seed
    trajectories = rollout_stage(cfg, checkpoint, suite, "process", seed, out / "process", fleet=fleet)
    score = score_rollouts(cfg, trajectories, suite, out / "process")
    if cfg.rollout.retries:
        plain = dataclasses.replace(cfg, rollout=dataclasses.replace(cfg.rollout, retries=0))
        trajectories = rollout_stage(plain, checkpoint, suite, "process", seed, out / "no_retries", fleet=fleet)
    if inspector is not None:
        trajectories = inspector.scored(trajectories)
    states, skipped = label_states(trajectories, make_world(cfg).label_judge())
    table = inspection_table(states, seed=rnd)
    write_scores(out, {"process": score.to_json()})
    (out / "inspection.json").write_text(json.dumps({"table": table, "skipped": skipped}, indent=2))
    write_event(out, {"event": "validate", "round": rnd, "arm": arm, "overall": score.overall,
                      "overall_se": score.standard_error(), **summary_event(table)})
    log(validation_line(rnd, arm, score, table))
    return table


def validation_line(rnd: int, arm: str, score: Score, table: dict) -> str:
    """The console line of a validation: its score and the own-sketch inspection's headline numbers."""
    headline, within = table["all"], table["within_task"]
    auc = "-" if headline["auc"] is None else f"{100 * headline['auc']:.1f} ± {100 * (headline['auc_se'] or 0):.1f}"
    return (f"round {rnd} ({arm}): validation process {100 * score.overall:.1f}; own-sketch inspection AUC {auc}"
            + ("" if within["auc"] is None else f" (within task {100 * within['auc']:.1f})")
            + ("" if headline.get("recall@0.10") is None
               else f", recall {100 * headline['recall@0.10']:.0f}% at 10% false alarms"))


def strips(cfg: RunConfig, checkpoint: Path, out: Path, fleet: RolloutFleet | None = None) -> None:
    """Trajectory strips of the fixed prompts, so rounds can be compared by eye, each with its captions
    (`<name>.json`: every frame's plan and inspection, the exact judge's verdict) for the report."""
    from PIL import Image

    out.mkdir(parents=True, exist_ok=True)
    if not cfg.loop.strip_prompts:  # `strip_prompts: []`: no strips, e.g. for rounds evaluated elsewhere
        return
    world = make_world(cfg)
    trajectories = rollout_stage(cfg, checkpoint, list(cfg.loop.strip_prompts), "process", cfg.loop.eval_seed,
                                 out / "rollouts", fleet=fleet)
    for text, trajectory in zip(cfg.loop.strip_prompts, trajectories):
        if trajectory.steps:
            name = text.replace(' ', '_')
            Image.fromarray(strip_image(trajectory, 2)).save(out / f"{name}.png")
            (out / f"{name}.json").write_text(json.dumps(captions(trajectory, world.final_conflicts), indent=2))
    shutil.rmtree(out / "rollouts")
