"""The self-improvement loop (DESIGN.md §1), one round after another, resumable at every stage.

    round 0   the base checkpoint (shipped, or trained with --from-scratch) -> eval
    round r   rollouts of the current policy on training prompts
              -> judge every step, build critique traces, mix in base-data replay -> data/
              -> SFT the next policy (from the current one or from the base) -> checkpoint/
              -> evaluate in process and single-pass mode on the held-out suite -> eval/
              -> roll out on the validation split: its score and the inspection table -> validate/
              -> [control: the same steps on base data only, continuing the control of the
                  round the parent came from -> control/, control_eval/, control_validate/]
              -> promote the new policy unless its validation score regressed beyond the tolerance

Each stage writes into `<stage>.tmp/` and renames it when complete, then records itself in
`state.json`; a killed run resumes at the first incomplete stage and, with the same seed, makes the
same data and metrics. Events go to each stage's `events.jsonl`; the run's `metrics.jsonl` is rebuilt
from them, in the order of `STAGES`, so a resumed run never logs twice.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import random
import shutil
import time
from pathlib import Path
from typing import Callable

from judges import OracleJudge, corrected_scene
from judges import make_judge as build_judge
from rollout import Engine, RolloutDir, RolloutFleet, rollout, write_geneval
from strokes import console
from strokes.config_loader import dump
from strokes.data.build import build, load, make_rows
from strokes.errors import InputError
from strokes.geneval import score_dir
from strokes.io import atomic_path, write_atomic
from strokes.model.inspect_head import FILE as HEAD_FILE
from strokes.model.tiny import Policy
from strokes.shapeworld import PromptRecord, make_suite
from strokes.trajectory import Trajectory, from_row, read_jsonl, to_dataset, write_jsonl
from trainer.distributed import fit
from trainer.sft import train

from .config import RunConfig, load_config
from .critique import build_self_critique, build_symbolic_critique
from .grpo import grpo_prompts, grpo_stage
from .inspect_eval import inspection_table, label_states, summary_event
from .inspect_head import fit_inspect_head
from .oracle_planner import planner_rollout
from .report import gap, write_report
from .run_state import (CHECKPOINT, CONTROL, CONTROL_EVAL, CONTROL_INSPECT_HEAD, CONTROL_VALIDATE, DATA, EVAL,
                        INSPECT_HEAD, PROMOTE, ROLLOUTS, STAGES, VALIDATE, RunState, round_dir)
from .tracking import Tracker
from .visualize import captions, strip_image

Log = Callable[[str], None]


def stage(state: RunState, run_dir: Path, rnd: int, name: str, fn: Callable[[Path], object], log: Log = print,
          about: str = "") -> Path:
    """Run `fn(tmp)` unless the stage is complete, then rename tmp into place and record it. A line
    when it starts (`about`: what it does, how much) and when it ends, so a long stage is never silent."""
    if name not in STAGES:
        raise ValueError(f"stage {name!r} is not in STAGES")
    final = round_dir(run_dir, rnd) / name
    if state.is_done(rnd, name) and final.exists():
        return final
    shutil.rmtree(final, ignore_errors=True)
    log(f"round {rnd}: {name} ..." + (f" {about}" if about else ""))
    t0 = time.time()
    with atomic_path(final, folder=True) as tmp:
        fn(tmp)
        write_event(tmp, {"event": "stage", "round": rnd, "stage": name, "seconds": round(time.time() - t0, 2)})
    state.mark(rnd, name)
    log(f"round {rnd}: {name} done in {time.time() - t0:.0f}s")
    return final


def about(cfg: RunConfig, rnd: int, name: str) -> str:
    """What stage `name` of round `rnd` does and how much work it is, for its start line."""
    loop = cfg.loop
    evals = 6 * loop.eval_per_task * loop.eval_samples
    validation = 6 * loop.validation_per_task * (2 if cfg.rollout.retries else 1)
    steps = f"{cfg.train.max_steps} steps" if cfg.train.max_steps > 0 else f"{cfg.train.epochs:g} epoch(s)"
    grpo = rnd > 0 and cfg.train.round_method(rnd) == "grpo"
    g = cfg.train.grpo
    return {
        CHECKPOINT: "the base policy" if rnd == 0 else
        f"GRPO ({g.steps} steps of {g.prompts_per_step} prompts x {g.generations} trajectories, "
        f"{cfg.judge.kind} judge rewards)" if grpo else f"SFT on the round's data ({steps})",
        ROLLOUTS: f"{loop.prompts_per_round * loop.samples_per_prompt} process-mode rollouts on training prompts",
        DATA: f"{g.prompts} training prompts for GRPO" if grpo else
        f"{cfg.judge.kind} judge on every step -> critique traces + base-data replay",
        INSPECT_HEAD: f"Inspect head fitted on {cfg.inspect_head.prompts} rollouts' own sketches",
        EVAL: f"{evals} rollouts per mode ({', '.join(loop.eval_modes)}) on the held-out suite"
              f" + {len(loop.strip_prompts)} strip(s)",
        VALIDATE: f"{validation} process-mode rollouts on the validation split",
        CONTROL: "control arm: SFT on base data only (the policy's step count)",
        CONTROL_INSPECT_HEAD: f"control's Inspect head on {cfg.inspect_head.prompts} rollouts",
        CONTROL_EVAL: f"control: {evals} rollouts per mode on the held-out suite",
        CONTROL_VALIDATE: f"control: {validation} process-mode rollouts on the validation split",
    }.get(name, "")


def write_event(folder: Path, event: dict) -> None:
    with open(folder / "events.jsonl", "a") as f:
        f.write(json.dumps(event, default=float) + "\n")


def rebuild_metrics(run_dir: Path) -> None:
    """`metrics.jsonl` = every completed stage's events, in round and `STAGES` order."""
    lines = []
    for folder in sorted(run_dir.glob("round_[0-9][0-9][0-9]")):
        for name in STAGES:
            events = folder / name / "events.jsonl"
            if events.exists():
                lines.extend(events.read_text().splitlines())
    write_atomic(run_dir / "metrics.jsonl", "".join(line + "\n" for line in lines))


# ---- stages -------------------------------------------------------------------------------------------

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


def evaluate(cfg: RunConfig, checkpoint: Path, out: Path, rnd: int, arm: str = "policy",
             fleet: RolloutFleet | None = None) -> dict:
    """Held-out suite in every eval mode, `loop.eval_samples` images per record (sampling at T=1 makes
    one image per record a noisy estimate); GenEval layout per mode plus `scores.json`."""
    suite = make_suite("test", cfg.loop.eval_per_task, cfg.loop.eval_seed)
    scores = {}
    for mode in cfg.loop.eval_modes:
        trajectories = eval_rollouts(cfg, checkpoint, suite, mode, cfg.loop.eval_seed, out / mode, fleet)
        write_geneval(trajectories, suite, out / mode / "geneval")
        score = score_dir(out / mode / "geneval")
        failed = sum("failed" in t.meta for t in trajectories)
        scores[mode] = {**score.to_json(), "failed": failed}
        write_event(out, {"event": "eval", "round": rnd, "arm": arm, "mode": mode, "overall": score.overall,
                          "overall_se": score.standard_error(),
                          **{f"task/{k}": v for k, v in score.per_task.items()}, "failed": failed})
    (out / "scores.json").write_text(json.dumps(scores, indent=2))
    _strips(cfg, checkpoint, out / "strips", fleet)
    return scores


def eval_rollouts(cfg: RunConfig, checkpoint: Path, suite: list, mode: str, seed: int, out: Path,
                  fleet: RolloutFleet | None = None) -> list[Trajectory]:
    """`loop.eval_samples` trajectories per suite record in one eval mode, saved under `out`.

    process / single_pass: the policy alone (on the fleet if there is one); judge: the configured judge
    writes every inspection and correction (paper Table 4's external inspector); planner: the oracle
    writes every plan (Table 4's external planner)."""
    if mode == "planner":
        return planner_rollout(cfg, checkpoint, suite, seed, out, samples=cfg.loop.eval_samples)
    judge = make_judge(cfg, checkpoint) if mode == "judge" else None
    return rollout_stage(cfg, checkpoint, suite, mode, seed, out, judge=judge, samples=cfg.loop.eval_samples,
                         fleet=None if judge else fleet)


def validate(cfg: RunConfig, checkpoint: Path, out: Path, rnd: int, arm: str = "policy",
             fleet: RolloutFleet | None = None, log: Log = print) -> dict:
    """Process-mode rollouts on the validation split (`loop.validation_per_task` training-split
    records, `loop.validation_seed`): their GenEval score, which promotion compares, and the table of
    how well the model's own inspection separates its wrong visual states from its right ones (every
    state labelled by the exact judge; `selfplay/inspect_eval.py`). With `rollout.retries` the
    table comes from a second rollout without retries, since a redrawn step's inspections leave the
    trajectory."""
    suite = make_suite("train", cfg.loop.validation_per_task, cfg.loop.validation_seed)
    trajectories = rollout_stage(cfg, checkpoint, suite, "process", cfg.loop.validation_seed, out / "process",
                                 fleet=fleet)
    write_geneval(trajectories, suite, out / "process" / "geneval")
    score = score_dir(out / "process" / "geneval")
    if cfg.rollout.retries:
        plain = dataclasses.replace(cfg, rollout=dataclasses.replace(cfg.rollout, retries=0))
        trajectories = rollout_stage(plain, checkpoint, suite, "process", cfg.loop.validation_seed,
                                     out / "no_retries", fleet=fleet)
    states, skipped = label_states(trajectories, OracleJudge())
    table = inspection_table(states, seed=rnd)
    (out / "scores.json").write_text(json.dumps({"process": score.to_json()}, indent=2))
    (out / "inspection.json").write_text(json.dumps({"table": table, "skipped": skipped}, indent=2))
    write_event(out, {"event": "validate", "round": rnd, "arm": arm, "overall": score.overall,
                      "overall_se": score.standard_error(), **summary_event(table)})
    headline, within = table["all"], table["within_task"]
    auc = "-" if headline["auc"] is None else f"{100 * headline['auc']:.1f} ± {100 * (headline['auc_se'] or 0):.1f}"
    log(f"round {rnd} ({arm}): validation process {100 * score.overall:.1f}; own-sketch inspection AUC {auc}"
        + ("" if within["auc"] is None else f" (within task {100 * within['auc']:.1f})")
        + ("" if headline.get("recall@0.10") is None else f", recall {100 * headline['recall@0.10']:.0f}% at 10% false alarms"))
    return table


def head_stage(cfg: RunConfig, checkpoint: Path, out: Path, rnd: int, arm: str,
               fleet: RolloutFleet | None = None) -> Path:
    """`checkpoint` with an Inspect head fitted on its own labelled sketches (`selfplay/inspect_head.py`):
    it rolls out `inspect_head.prompts` training-split prompts (sampled verdicts, no retries), the
    exact judge labels every visual state, and the head lands with a hard-linked copy of the
    checkpoint's files in `out/checkpoint`, which the round evaluates and promotes."""
    head_cfg = dataclasses.replace(cfg.inspect_head, seed=cfg.inspect_head.seed + rnd)
    seed = 1000 * (cfg.loop.seed + cfg.inspect_head.seed) + 100 + rnd  # apart from the rounds' and the validation's
    suite = make_suite("train", math.ceil(head_cfg.prompts / 6), seed)
    plain = dataclasses.replace(cfg, rollout=dataclasses.replace(cfg.rollout, retries=0, inspect="sample"))
    trajectories = rollout_stage(plain, checkpoint, suite, "process", seed, out / "rollouts", fleet=fleet)
    head = fit_inspect_head(Policy.from_pretrained(checkpoint), trajectories, OracleJudge(), head_cfg)
    shutil.copytree(checkpoint, out / "checkpoint", copy_function=_link,
                    ignore=shutil.ignore_patterns(HEAD_FILE))
    head.save(out / "checkpoint")
    shutil.rmtree(out / "rollouts")
    write_event(out, {"event": "inspect_head", "round": rnd, "arm": arm, "threshold": head.threshold,
                      **{f"held_out/{k}": v for k, v in head.held_out.items()}})
    return out / "checkpoint"


def _link(src: str, dst: str) -> None:
    """A hard link where the filesystem allows it (a checkpoint's weights are not copied), else a copy."""
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)


def _strips(cfg: RunConfig, checkpoint: Path, out: Path, fleet: RolloutFleet | None = None) -> None:
    """Trajectory strips of the fixed prompts, so rounds can be compared by eye, each with its captions
    (`<name>.json`: every frame's plan and inspection, the exact judge's verdict) for the report."""
    from PIL import Image

    out.mkdir(parents=True, exist_ok=True)
    trajectories = rollout_stage(cfg, checkpoint, list(cfg.loop.strip_prompts), "process", cfg.loop.eval_seed,
                                 out / "rollouts", fleet=fleet)
    for text, trajectory in zip(cfg.loop.strip_prompts, trajectories):
        if trajectory.steps:
            name = text.replace(' ', '_')
            Image.fromarray(strip_image(trajectory, 2)).save(out / f"{name}.png")
            (out / f"{name}.json").write_text(json.dumps(captions(trajectory), indent=2))
    shutil.rmtree(out / "rollouts")


def make_judge(cfg: RunConfig, checkpoint: Path):
    """The configured judge; the self judge inspects with the policy at `checkpoint`."""
    inspect_fn = None
    if cfg.judge.kind == "self":
        inspect_fn = Engine(Policy.from_pretrained(checkpoint), cfg.rollout).inspect
    return build_judge(cfg.judge, inspect_fn)


def critique_stage(cfg: RunConfig, rnd: int, rollouts: list[Trajectory], checkpoint: Path, out: Path) -> dict:
    """Judge the rollouts, build critique traces, mix in base-data replay, save the round's dataset.

    ShapeWorld executes any judge's corrective instruction exactly (`corrected_scene` applies the
    edit to the detected scene), and the critique builder has the same judge accept the result; a
    world without an exact renderer would have the policy re-sketch instead (`resketch`)."""
    judge = make_judge(cfg, checkpoint)
    critique_cfg = dataclasses.replace(cfg.critique, seed=cfg.critique.seed + rnd)
    traces, stats = build_self_critique(rollouts, judge, critique_cfg, exact=corrected_scene)
    if cfg.critique.mode == "symbolic":  # as many corrections, from perturbed scene graphs instead
        records = [PromptRecord.from_json(t.record) for t in rollouts if t.record]
        traces = build_symbolic_critique(records, len(traces), critique_cfg)
    n_replay = max(int(round(cfg.critique.replay_ratio * len(traces))), cfg.critique.min_replay)
    replay_cfg = dataclasses.replace(cfg.data, size=max(n_replay, 1), seed=cfg.data.seed + 7919 * rnd)
    replay = [from_row(row) for row in make_rows(replay_cfg, progress=False)][:n_replay]
    rows = traces + replay
    random.Random(cfg.loop.seed + rnd).shuffle(rows)
    _save_dataset(rows, out / "dataset")
    write_jsonl(traces[:50], out / "examples")
    summary = {"critique": len(traces), "replay": len(replay), **stats.to_json()}
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    judge_stats = getattr(judge, "stats", None)
    write_event(out, {"event": "data", "round": rnd, **summary,
                      **({"judge": judge_stats.to_json()} if hasattr(judge_stats, "to_json") else {})})
    return summary


def prompts_stage(cfg: RunConfig, rnd: int, out: Path) -> dict:
    """A GRPO round's data: its training prompts (`prompts.json`), drawn like the SFT rounds' ones."""
    prompts = grpo_prompts(cfg, rnd)
    (out / "dataset").mkdir()
    (out / "dataset" / "prompts.json").write_text(json.dumps(prompts))
    summary = {"prompts": len(prompts)}
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    write_event(out, {"event": "data", "round": rnd, **summary})
    return summary


def _save_dataset(rows: list[Trajectory], path: Path) -> None:
    """An HF dataset on disk; an empty one is a folder with an EMPTY marker, since `datasets`
    saves zero rows as zero shards that it cannot load back."""
    if not rows:
        path.mkdir(parents=True)
        (path / "EMPTY").touch()
        return
    to_dataset(rows).save_to_disk(str(path))


def train_stage(cfg: RunConfig, parent: Path, dataset_dir: Path, out: Path, rnd: int, arm: str,
                max_steps: int = -1) -> dict:
    """The round's training of `parent`: SFT on the round's dataset, in this process or on Ray Train
    workers (`train.distributed`), or with `train.method: grpo` (the policy arm) GRPO on its own
    rollouts of the round's prompts (`dataset_dir/prompts.json`); the checkpoint lands in
    `out/checkpoint`."""
    if cfg.train.round_method(rnd) == "grpo" and arm == "policy":
        prompts = json.loads((dataset_dir / "prompts.json").read_text())
        summary = grpo_stage(cfg, parent, prompts, out / "train", make_judge(cfg, parent))
        return _keep_training(out, summary, rnd, arm)
    if (dataset_dir / "EMPTY").exists() or max_steps == 0:  # nothing to learn: the parent carries on
        shutil.copytree(parent, out / "checkpoint")
        summary = {"steps": 0, "rows": 0}
        write_event(out, {"event": "train", "round": rnd, "arm": arm, "steps": 0, "rows": 0})
        (out / "train_summary.json").write_text(json.dumps(summary))
        return summary
    train_cfg = dataclasses.replace(cfg.train, max_steps=max_steps) if max_steps > 0 else cfg.train
    summary = fit(parent, dataset_dir, train_cfg, out / "train", address=cfg.rollout.ray_address)
    return _keep_training(out, summary, rnd, arm)


def _keep_training(out: Path, summary: dict, rnd: int, arm: str) -> dict:
    """Move a finished training's checkpoint from `out/train` to `out/checkpoint`, its log lines into
    the stage's events and its summary beside them."""
    shutil.move(str(out / "train" / "checkpoint"), str(out / "checkpoint"))
    for line in (out / "train" / "metrics.jsonl").read_text().splitlines():
        write_event(out, {**json.loads(line), "round": rnd, "arm": arm})
    shutil.rmtree(out / "train")
    (out / "train_summary.json").write_text(json.dumps(summary, indent=2, default=float))
    return summary


def control_stage(cfg: RunConfig, rnd: int, parent: Path, data_summary: dict, steps: int, out: Path) -> None:
    """Same parent, same number of optimizer steps, base data only (as many rows as the round had; a
    GRPO round has no rows, so as many as the steps take), trained by SFT whatever the policy's method."""
    size = max(data_summary.get("critique", 0) + data_summary.get("replay", 0),
               steps * cfg.train.batch_size * cfg.train.grad_accum, 1)
    control_cfg = dataclasses.replace(cfg.data, size=size, seed=cfg.data.seed + 104729 * rnd)
    rows = [from_row(row) for row in make_rows(control_cfg, progress=False)]
    _save_dataset(rows, out / "dataset")
    write_event(out, {"event": "control", "round": rnd, "parent": str(parent), "steps": steps})
    sft = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, method="sft"))  # whatever the policy's method
    train_stage(sft, parent, out / "dataset", out, rnd, "control", max_steps=steps)
    shutil.rmtree(out / "dataset")


def base_stage(cfg: RunConfig, from_scratch: bool, out: Path) -> None:
    """Round 0's policy in `out/checkpoint`: the shipped base checkpoint, or (`from_scratch`) one trained
    from `loop.base_recipe` on freshly built base data."""
    if from_scratch:
        recipe = load_config(cfg.loop.base_recipe)
        build(recipe.data, out / "data")
        train(Policy.build(recipe.model), load(out / "data"), recipe.train, out / "train")
        shutil.move(str(out / "train" / "checkpoint"), str(out / "checkpoint"))
        shutil.rmtree(out / "data")
    else:
        source = Path(cfg.loop.base_checkpoint)
        if not (source / "config.json").is_file():
            raise InputError(f"{source}: no base checkpoint (run with --from-scratch to train one)")
        shutil.copytree(source, out / "checkpoint")


# ---- the loop ---------------------------------------------------------------------------------------------

def run(cfg: RunConfig, run_dir: Path, from_scratch: bool = False, log: Log = print) -> RunState:
    """Run (or resume) every round; returns the final state."""
    run_dir.mkdir(parents=True, exist_ok=True)
    dump(cfg, run_dir / "config.yaml")
    state = RunState.load(run_dir)
    tracker = Tracker(run_dir, cfg.tracking, cfg)
    fleet = _fleet(cfg)
    try:
        _rounds(cfg, run_dir, state, tracker, fleet, from_scratch, log)
    finally:
        if fleet is not None:
            fleet.close()
    rebuild_metrics(run_dir)
    write_report(run_dir)
    tracker.finish()
    return state


def _fleet(cfg: RunConfig) -> RolloutFleet | None:
    """Rollout actors for the whole run (`rollout.actors` > 0): started at the first rollout, they
    reload each round's checkpoint in place instead of restarting; None rolls out in this process."""
    return RolloutFleet(cfg.rollout) if cfg.rollout.actors else None


def _rounds(cfg: RunConfig, run_dir: Path, state: RunState, tracker: Tracker, fleet: RolloutFleet | None,
            from_scratch: bool, log: Log) -> None:
    base_dir = stage(state, run_dir, 0, CHECKPOINT, lambda tmp: base_stage(cfg, from_scratch, tmp), log,
                     about(cfg, 0, CHECKPOINT))
    base_checkpoint = base_dir / "checkpoint"
    evaluated = _eval_round(cfg, state, run_dir, 0, base_checkpoint, tracker, log, fleet)
    if state.policy is None:
        state.policy = str(evaluated)
        state.save()
    for rnd in range(1, cfg.loop.rounds + 1):
        current = Path(state.policy)  # the policy this round samples from and judges with
        parent = current if cfg.loop.train_from == "current" else base_checkpoint
        per_prompt = cfg.loop.samples_per_prompt
        suite = make_suite("train", math.ceil(cfg.loop.prompts_per_round / 6), cfg.loop.seed * 1000 + rnd)
        suite = (suite * per_prompt)[: cfg.loop.prompts_per_round * per_prompt]
        if cfg.train.round_method(rnd) == "grpo":  # GRPO rolls out inside training, on each step's weights
            data_dir = stage(state, run_dir, rnd, DATA, lambda tmp: prompts_stage(cfg, rnd, tmp), log,
                             about(cfg, rnd, DATA))
        else:
            rollouts_dir = stage(state, run_dir, rnd, ROLLOUTS, lambda tmp: rollout_stage(
                cfg, current, suite, "process", cfg.loop.seed * 7 + rnd, tmp, fleet=fleet), log,
                about(cfg, rnd, ROLLOUTS))
            data_dir = stage(state, run_dir, rnd, DATA, lambda tmp: critique_stage(
                cfg, rnd, read_jsonl(rollouts_dir / "trajectories"), current, tmp), log, about(cfg, rnd, DATA))
        if fleet is not None and (cfg.train.distributed == "ray" or cfg.train.round_method(rnd) == "grpo"):
            fleet.close()  # Ray holds a live actor's GPUs: free them for training; the next rollout restarts it
        trained_dir = stage(state, run_dir, rnd, CHECKPOINT, lambda tmp: train_stage(
            cfg, parent, data_dir / "dataset", tmp, rnd, "policy"), log, about(cfg, rnd, CHECKPOINT))
        evaluated = _eval_round(cfg, state, run_dir, rnd, trained_dir / "checkpoint", tracker, log, fleet)
        if cfg.loop.control:
            steps = json.loads((trained_dir / "train_summary.json").read_text())["steps"]
            data_summary = json.loads((data_dir / "summary.json").read_text())
            twin = _control_parent(cfg, state, run_dir, base_checkpoint)
            control_dir = stage(state, run_dir, rnd, CONTROL, lambda tmp: control_stage(
                cfg, rnd, twin, data_summary, steps, tmp), log, about(cfg, rnd, CONTROL))
            control = _with_head(cfg, state, run_dir, rnd, control_dir / "checkpoint", "control", log, fleet)
            control_eval = stage(state, run_dir, rnd, CONTROL_EVAL, lambda tmp: evaluate(
                cfg, control, tmp, rnd, "control", fleet), log, about(cfg, rnd, CONTROL_EVAL))
            log(control_line(rnd, run_dir, control_eval))
            stage(state, run_dir, rnd, CONTROL_VALIDATE, lambda tmp: validate(
                cfg, control, tmp, rnd, "control", fleet, log), log, about(cfg, rnd, CONTROL_VALIDATE))
        if not state.is_done(rnd, PROMOTE):
            _promote(cfg, state, run_dir, rnd, evaluated, log)
        tracker.sync(rnd)


def _with_head(cfg: RunConfig, state: RunState, run_dir: Path, rnd: int, checkpoint: Path, arm: str, log: Log,
               fleet: RolloutFleet | None) -> Path:
    """The checkpoint an arm is evaluated and promoted as: with its own Inspect head when
    `inspect_head.enabled`, else as trained."""
    if not cfg.inspect_head.enabled:
        return checkpoint
    name = INSPECT_HEAD if arm == "policy" else CONTROL_INSPECT_HEAD
    return stage(state, run_dir, rnd, name, lambda tmp: head_stage(cfg, checkpoint, tmp, rnd, arm, fleet),
                 log, about(cfg, rnd, name)) / "checkpoint"


def _eval_round(cfg: RunConfig, state: RunState, run_dir: Path, rnd: int, checkpoint: Path, tracker: Tracker,
                log: Log, fleet: RolloutFleet | None = None) -> Path:
    """Evaluate round `rnd`'s policy (with its Inspect head when enabled); returns the checkpoint
    evaluated, the one promotion hands on."""
    checkpoint = _with_head(cfg, state, run_dir, rnd, checkpoint, "policy", log, fleet)
    eval_dir = stage(state, run_dir, rnd, EVAL, lambda tmp: evaluate(cfg, checkpoint, tmp, rnd, fleet=fleet), log,
                     about(cfg, rnd, EVAL))
    stage(state, run_dir, rnd, VALIDATE, lambda tmp: validate(cfg, checkpoint, tmp, rnd, fleet=fleet, log=log), log,
          about(cfg, rnd, VALIDATE))
    rebuild_metrics(run_dir)
    tracker.sync(rnd)
    scores = json.loads((eval_dir / "scores.json").read_text())
    log(f"round {rnd}: " + ", ".join(f"{mode} {100 * s['overall']:.1f} ± {100 * s['overall_se']:.1f}"
                                     for mode, s in scores.items()))
    return checkpoint


def control_line(rnd: int, run_dir: Path, control_eval: Path) -> str:
    """The control's held-out scores beside the policy's, with the gap (points ± SE): whether the
    round's critique data beat the same steps on base data."""
    policy = json.loads((round_dir(run_dir, rnd) / EVAL / "scores.json").read_text())
    control = json.loads((control_eval / "scores.json").read_text())
    parts = []
    for mode in (m for m in policy if m in control):
        d, se = gap(policy[mode], control[mode])
        parts.append(f"{mode} policy {100 * policy[mode]['overall']:.1f} vs control {100 * control[mode]['overall']:.1f} "
                     f"(gap {100 * d:+.1f} ± {100 * se:.1f})")
    return f"round {rnd}: " + ", ".join(parts)


def _control_parent(cfg: RunConfig, state: RunState, run_dir: Path, base_checkpoint: Path) -> Path:
    """The control arm's twin of this round's parent: the control checkpoint of the round the parent
    came from, so that round r and its control have trained the same number of steps in all and
    differ only in what the extra steps saw (critique data vs base data)."""
    parent_round = state.policy_round if cfg.loop.train_from == "current" else 0
    return base_checkpoint if parent_round == 0 else round_dir(run_dir, parent_round) / CONTROL / "checkpoint"


def _promote(cfg: RunConfig, state: RunState, run_dir: Path, rnd: int, checkpoint: Path, log: Log) -> None:
    def overall(r: int) -> float:  # on the validation split: the test suite never steers the run
        return json.loads((round_dir(run_dir, r) / VALIDATE / "scores.json").read_text())["process"]["overall"]

    current_round = state.policy_round
    new, old = overall(rnd), overall(current_round)
    promoted = new >= old - cfg.loop.promote_tolerance
    decision = {"event": "promote", "round": rnd, "promoted": promoted, "new": new, "current": old,
                "current_round": current_round, "tolerance": cfg.loop.promote_tolerance}
    folder = round_dir(run_dir, rnd) / PROMOTE
    folder.mkdir(exist_ok=True)
    (folder / "events.jsonl").write_text(json.dumps(decision) + "\n")
    state.promotions[str(rnd)] = decision
    if promoted:
        state.policy = str(checkpoint)
        state.policy_round = rnd
    state.mark(rnd, PROMOTE)
    log(f"round {rnd}: {'promoted' if promoted else 'kept round ' + str(current_round)} "
        f"(validation process {100 * new:.1f} vs {100 * old:.1f})")
