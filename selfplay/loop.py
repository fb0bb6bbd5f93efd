"""The self-improvement loop (DESIGN.md §1), one round after another, resumable at every stage.

    round 0   the base checkpoint (shipped, or trained with --from-scratch) -> eval
    round r   rollouts of the current policy on training prompts
              -> judge every step, build critique traces, mix in base-data replay -> data/
              -> SFT the next policy (from the current one or from the base) -> checkpoint/
              -> evaluate in process and single-pass mode on the held-out suite -> eval/
              -> [control: the same steps on base data only, continuing the control of the
                  round the parent came from -> control/]
              -> promote the new policy unless it regressed beyond the tolerance

Each stage writes into `<stage>.tmp/` and renames it when complete, then records itself in
`state.json`; a killed run resumes at the first incomplete stage and, with the same seed, makes the
same data and metrics. Events go to each stage's `events.jsonl`; the run's `metrics.jsonl` is rebuilt
from them, so a resumed run never logs twice.
"""

from __future__ import annotations

import json
import math
import os
import random
import shutil
import time
from pathlib import Path
from typing import Callable

from strokes.errors import InputError

# ---- run state --------------------------------------------------------------------------------------

class RunState:
    """`state.json`: which stages of which rounds are complete, and which policy is current."""

    def __init__(self, run_dir: Path) -> None:
        self.path = run_dir / "state.json"
        self.data = json.loads(self.path.read_text()) if self.path.exists() else {"done": [], "policy": None,
                                                                                   "promotions": {}}

    def done(self, rnd: int, stage: str) -> bool:
        return f"{rnd}:{stage}" in self.data["done"]

    def mark(self, rnd: int, stage: str, **extra) -> None:
        self.data["done"].append(f"{rnd}:{stage}")
        self.data.update(extra)
        self.save()

    def save(self) -> None:
        tmp = self.path.with_name("state.json.tmp")
        tmp.write_text(json.dumps(self.data, indent=2))
        os.replace(tmp, self.path)


def round_dir(run_dir: Path, rnd: int) -> Path:
    return run_dir / f"round_{rnd:03d}"


def stage(state: RunState, run_dir: Path, rnd: int, name: str, fn: Callable[[Path], None], log=print) -> Path:
    """Run `fn(tmp)` unless the stage is complete, then rename tmp into place and record it."""
    final = round_dir(run_dir, rnd) / name
    if state.done(rnd, name) and final.exists():
        return final
    tmp = final.with_name(name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    shutil.rmtree(final, ignore_errors=True)
    tmp.mkdir(parents=True)
    t0 = time.time()
    fn(tmp)
    write_event(tmp, {"event": "stage", "round": rnd, "stage": name, "seconds": round(time.time() - t0, 2)})
    os.replace(tmp, final)
    state.mark(rnd, name)
    log(f"round {rnd}: {name} done in {time.time() - t0:.0f}s")
    return final


def write_event(folder: Path, event: dict) -> None:
    with open(folder / "events.jsonl", "a") as f:
        f.write(json.dumps(event, default=float) + "\n")


def rebuild_metrics(run_dir: Path) -> None:
    """`metrics.jsonl` = every completed stage's events, in round and stage order."""
    order = ["checkpoint", "rollouts", "data", "eval", "control", "control_eval", "promote"]
    lines = []
    for rd in sorted(run_dir.glob("round_[0-9][0-9][0-9]")):
        for name in order:
            ev = rd / name / "events.jsonl"
            if ev.exists():
                lines.extend(ev.read_text().splitlines())
    tmp = run_dir / "metrics.jsonl.tmp"
    tmp.write_text("".join(line + "\n" for line in lines))
    os.replace(tmp, run_dir / "metrics.jsonl")


# ---- stages -------------------------------------------------------------------------------------------

def _policy(path: Path):
    from strokes.model.tiny import Policy

    return Policy.from_pretrained(path)


def rollout_stage(cfg, checkpoint: Path, records: list, mode: str, seed: int, out: Path, judge=None,
                  samples: int = 1, fleet=None) -> list:
    """Trajectories of one policy on `records`, saved to `out/trajectories`.

    The rollout writes shard by shard into `<out>.shards/` beside the stage folder, so a killed
    stage resumes without redoing finished shards; Ray actors are used when `rollout.actors` > 0,
    those of `fleet` (a `RolloutFleet` that lives as long as the run and reloads checkpoints in
    place) when one is given.
    """
    from rollout import RolloutDir, rollout
    from strokes.trajectory import write_jsonl

    rcfg = _with(cfg.rollout, mode=mode, seed=seed)
    shards = out.with_name(out.name.removesuffix(".tmp") + ".shards")
    rollout(records, shards, rcfg, checkpoint=checkpoint, judge=judge, samples=samples, progress=False, fleet=fleet)
    trajs = RolloutDir(shards).trajectories()
    write_jsonl(trajs, out / "trajectories")
    shutil.rmtree(shards, ignore_errors=True)
    return trajs


def _with(cfg, **changes):
    import dataclasses

    return dataclasses.replace(cfg, **changes)


def evaluate(cfg, checkpoint: Path, out: Path, rnd: int, arm: str = "policy", fleet=None) -> dict:
    """Held-out suite in every eval mode, `loop.eval_samples` images per record (sampling at T=1 makes
    one image per record a noisy estimate); GenEval layout per mode plus `scores.json`."""
    from rollout import write_geneval
    from strokes.geneval import score_dir
    from strokes.shapeworld import make_suite

    suite = make_suite("test", cfg.loop.eval_per_task, cfg.loop.eval_seed)
    scores = {}
    for mode in cfg.loop.eval_modes:
        trajs = eval_rollouts(cfg, checkpoint, suite, mode, cfg.loop.eval_seed, out / mode, fleet)
        write_geneval(trajs, suite, out / mode / "geneval")
        sc = score_dir(out / mode / "geneval")
        failed = sum("failed" in t.meta for t in trajs)
        scores[mode] = {**sc.to_json(), "failed": failed}
        write_event(out, {"event": "eval", "round": rnd, "arm": arm, "mode": mode, "overall": sc.overall,
                          "overall_se": sc.standard_error(), **{f"task/{k}": v for k, v in sc.per_task.items()},
                          "failed": failed})
    (out / "scores.json").write_text(json.dumps(scores, indent=2))
    _strips(cfg, checkpoint, out / "strips", fleet)
    return scores


def eval_rollouts(cfg, checkpoint: Path, suite: list, mode: str, seed: int, out: Path, fleet=None) -> list:
    """`loop.eval_samples` trajectories per suite record in one eval mode, saved under `out`.

    process / single_pass: the policy alone (on the fleet if there is one); judge: the configured judge
    writes every inspection and correction (paper Table 4's external inspector); planner: the oracle
    writes every plan (Table 4's external planner)."""
    if mode == "planner":
        from .oracle_planner import planner_rollout

        return planner_rollout(cfg, checkpoint, suite, seed, out, samples=cfg.loop.eval_samples)
    judge = make_judge(cfg, checkpoint) if mode == "judge" else None
    return rollout_stage(cfg, checkpoint, suite, mode, seed, out, judge=judge, samples=cfg.loop.eval_samples,
                         fleet=None if judge else fleet)


def _strips(cfg, checkpoint: Path, out: Path, fleet=None) -> None:
    """Trajectory strips of the fixed prompts, so rounds can be compared by eye."""
    from PIL import Image

    from .visualize import strip_image

    out.mkdir(parents=True, exist_ok=True)
    trajs = rollout_stage(cfg, checkpoint, list(cfg.loop.strip_prompts), "process", cfg.loop.eval_seed,
                          out / "rollouts", fleet=fleet)
    for text, t in zip(cfg.loop.strip_prompts, trajs):
        if t.steps:
            Image.fromarray(strip_image(t, 2)).save(out / f"{text.replace(' ', '_')}.png")
    shutil.rmtree(out / "rollouts")


def make_judge(cfg, checkpoint: Path):
    from judges import make_judge as build

    inspect_fn = None
    if cfg.judge.kind == "self":
        from rollout import Engine

        inspect_fn = Engine(_policy(checkpoint), cfg.rollout).inspect
    return build(cfg.judge, inspect_fn)


def critique_stage(cfg, rnd: int, rollouts: list, checkpoint: Path, out: Path) -> dict:
    """Judge the rollouts, build critique traces, mix in base-data replay, save the round's dataset."""
    from strokes.data.build import make_rows
    from strokes.shapeworld import PromptRecord
    from strokes.trajectory import from_row, write_jsonl

    from .critique import build_self_critique, build_symbolic_critique

    judge = make_judge(cfg, checkpoint)
    crit_cfg = _with(cfg.critique, seed=cfg.critique.seed + rnd)
    traces, stats = build_self_critique(rollouts, judge, crit_cfg, exact=_exact(cfg))
    if cfg.critique.mode == "symbolic":  # as many corrections, from perturbed scene graphs instead
        recs = [PromptRecord.from_json(t.record) for t in rollouts if t.record]
        traces = build_symbolic_critique(recs, len(traces), crit_cfg)
    n_replay = max(int(round(cfg.critique.replay_ratio * len(traces))), cfg.critique.min_replay)
    replay = [from_row(r) for r in make_rows(_with(cfg.data, size=max(n_replay, 1), seed=cfg.data.seed + 7919 * rnd),
                                             progress=False)][:n_replay]
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


def _save_dataset(rows: list, path: Path) -> None:
    """An HF dataset on disk; an empty one is a folder with an EMPTY marker, since `datasets`
    saves zero rows as zero shards that it cannot load back."""
    from strokes.trajectory import to_dataset

    if not rows:
        path.mkdir(parents=True)
        (path / "EMPTY").touch()
        return
    to_dataset(rows).save_to_disk(str(path))


def _exact(cfg):
    """ShapeWorld executes any judge's corrective instruction exactly (`corrected_scene` applies the
    edit to the detected scene), and the critique builder has the same judge accept the result;
    a world without an exact renderer would have the policy re-sketch instead (`resketch`)."""
    from judges import corrected_scene

    return corrected_scene


def train_stage(cfg, parent: Path, dataset_dir: Path, out: Path, rnd: int, arm: str, max_steps: int = -1) -> dict:
    """SFT of `parent` on the round's dataset, in this process or on Ray Train workers
    (`train.distributed`); the checkpoint lands in `out/checkpoint`."""
    from trainer.distributed import fit

    if (dataset_dir / "EMPTY").exists() or max_steps == 0:  # nothing to learn: the parent carries on
        shutil.copytree(parent, out / "checkpoint")
        summary = {"steps": 0, "rows": 0}
        write_event(out, {"event": "train", "round": rnd, "arm": arm, "steps": 0, "rows": 0})
        (out / "train_summary.json").write_text(json.dumps(summary))
        return summary
    tcfg = _with(cfg.train, max_steps=max_steps) if max_steps > 0 else cfg.train
    summary = fit(parent, dataset_dir, tcfg, out / "train", address=cfg.rollout.ray_address)
    shutil.move(str(out / "train" / "checkpoint"), str(out / "checkpoint"))
    for line in (out / "train" / "metrics.jsonl").read_text().splitlines():
        write_event(out, {**json.loads(line), "round": rnd, "arm": arm})
    shutil.rmtree(out / "train")
    (out / "train_summary.json").write_text(json.dumps(summary, indent=2, default=float))
    return summary


# ---- the loop ---------------------------------------------------------------------------------------------

def run(cfg, run_dir: Path, from_scratch: bool = False, log=print) -> dict:
    """Run (or resume) every round; returns the final state."""
    from strokes.config_loader import dump

    from .tracking import Tracker

    run_dir.mkdir(parents=True, exist_ok=True)
    dump(cfg, run_dir / "config.yaml")
    state = RunState(run_dir)
    tracker = Tracker(run_dir, cfg.tracking, cfg)
    fleet = _fleet(cfg)
    try:
        return _rounds(cfg, run_dir, state, tracker, fleet, from_scratch, log)
    finally:
        if fleet is not None:
            fleet.close()


def _fleet(cfg):
    """Rollout actors for the whole run (`rollout.actors` > 0): started at the first rollout, they
    reload each round's checkpoint in place instead of restarting; None rolls out in this process."""
    if not cfg.rollout.actors:
        return None
    from rollout import RolloutFleet

    return RolloutFleet(cfg.rollout)


def _rounds(cfg, run_dir: Path, state: RunState, tracker, fleet, from_scratch: bool, log) -> dict:
    from strokes.shapeworld import make_suite

    def init(tmp: Path) -> None:
        if from_scratch:
            from strokes.data.build import build, load
            from strokes.model.tiny import Policy
            from trainer.sft import train

            from .config import load_config

            base = load_config(cfg.loop.base_recipe)
            build(base.data, tmp / "data")
            train(Policy.build(base.model), load(tmp / "data"), base.train, tmp / "train")
            shutil.move(str(tmp / "train" / "checkpoint"), str(tmp / "checkpoint"))
            shutil.rmtree(tmp / "data")
        else:
            src = Path(cfg.loop.base_checkpoint)
            if not (src / "config.json").is_file():
                raise InputError(f"{src}: no base checkpoint (run with --from-scratch to train one)")
            shutil.copytree(src, tmp / "checkpoint")

    r0 = stage(state, run_dir, 0, "checkpoint", init, log)
    if state.data["policy"] is None:
        state.data["policy"] = str(r0 / "checkpoint")
        state.save()
    scores = {0: _eval_round(cfg, state, run_dir, 0, r0 / "checkpoint", tracker, log, fleet)}
    for rnd in range(1, cfg.loop.rounds + 1):
        parent = Path(state.data["policy"]) if cfg.loop.train_from == "current" else r0 / "checkpoint"
        suite = make_suite("train", math.ceil(cfg.loop.prompts_per_round / 6), cfg.loop.seed * 1000 + rnd)
        suite = (suite * cfg.loop.samples_per_prompt)[: cfg.loop.prompts_per_round * cfg.loop.samples_per_prompt]
        ro = stage(state, run_dir, rnd, "rollouts",
                   lambda tmp: rollout_stage(cfg, Path(state.data["policy"]), suite, "process",
                                             cfg.loop.seed * 7 + rnd, tmp, fleet=fleet), log)
        data = stage(state, run_dir, rnd, "data", lambda tmp: critique_stage(
            cfg, rnd, _read(ro), Path(state.data["policy"]), tmp), log)
        if fleet is not None and cfg.train.distributed == "ray":
            fleet.close()  # Ray holds a live actor's GPUs: free them for Ray Train; the next rollout restarts it
        ck = stage(state, run_dir, rnd, "checkpoint",
                   lambda tmp: train_stage(cfg, parent, data / "dataset", tmp, rnd, "policy"), log)
        scores[rnd] = _eval_round(cfg, state, run_dir, rnd, ck / "checkpoint", tracker, log, fleet)
        if cfg.loop.control:
            steps = json.loads((ck / "train_summary.json").read_text())["steps"]
            n = json.loads((data / "summary.json").read_text())
            twin = _control_parent(cfg, state, run_dir, r0)
            ctl = stage(state, run_dir, rnd, "control", lambda tmp: _control(cfg, rnd, twin, n, steps, tmp), log)
            stage(state, run_dir, rnd, "control_eval",
                  lambda tmp: evaluate(cfg, ctl / "checkpoint", tmp, rnd, "control", fleet), log)
        if not state.done(rnd, "promote"):
            _promote(cfg, state, run_dir, rnd, ck / "checkpoint", log)
        tracker.sync(rnd)
    rebuild_metrics(run_dir)
    from .report import write_report

    write_report(run_dir)
    tracker.finish()
    return state.data


def _read(folder: Path) -> list:
    from strokes.trajectory import read_jsonl

    return read_jsonl(folder / "trajectories")


def _eval_round(cfg, state, run_dir, rnd, checkpoint, tracker, log, fleet=None) -> dict:
    ev = stage(state, run_dir, rnd, "eval", lambda tmp: evaluate(cfg, checkpoint, tmp, rnd, fleet=fleet), log)
    rebuild_metrics(run_dir)
    tracker.sync(rnd)
    scores = json.loads((ev / "scores.json").read_text())
    log(f"round {rnd}: " + ", ".join(f"{m} {100 * s['overall']:.1f} ± {100 * s['overall_se']:.1f}"
                                     for m, s in scores.items()))
    return scores


def _control_parent(cfg, state: RunState, run_dir: Path, r0: Path) -> Path:
    """The control arm's twin of this round's parent: the control checkpoint of the round the parent
    came from, so that round r and its control have trained the same number of steps in all and
    differ only in what the extra steps saw (critique data vs base data)."""
    p = state.data.get("policy_round", 0) if cfg.loop.train_from == "current" else 0
    return r0 / "checkpoint" if p == 0 else round_dir(run_dir, p) / "control" / "checkpoint"


def _control(cfg, rnd: int, parent: Path, n: dict, steps: int, out: Path) -> None:
    """Same parent, same number of optimizer steps, base data only (as many rows as the round had)."""
    from strokes.data.build import make_rows
    from strokes.trajectory import from_row

    size = max(n["critique"] + n["replay"], 1)
    rows = [from_row(r) for r in make_rows(_with(cfg.data, size=size, seed=cfg.data.seed + 104729 * rnd),
                                           progress=False)]
    _save_dataset(rows, out / "dataset")
    write_event(out, {"event": "control", "round": rnd, "parent": str(parent), "steps": steps})
    train_stage(cfg, parent, out / "dataset", out, rnd, "control", max_steps=steps)
    shutil.rmtree(out / "dataset")


def _promote(cfg, state: RunState, run_dir: Path, rnd: int, checkpoint: Path, log) -> None:
    def overall(r: int) -> float:
        return json.loads((round_dir(run_dir, r) / "eval" / "scores.json").read_text())["process"]["overall"] \
            if "process" in cfg.loop.eval_modes else 0.0

    cur_round = state.data.get("policy_round", 0)
    new, old = overall(rnd), overall(cur_round)
    promoted = new >= old - cfg.loop.promote_tolerance
    decision = {"event": "promote", "round": rnd, "promoted": promoted, "new": new, "current": old,
                "current_round": cur_round, "tolerance": cfg.loop.promote_tolerance}
    folder = round_dir(run_dir, rnd) / "promote"
    folder.mkdir(exist_ok=True)
    (folder / "events.jsonl").write_text(json.dumps(decision) + "\n")
    state.data["promotions"][str(rnd)] = decision
    if promoted:
        state.data["policy"] = str(checkpoint)
        state.data["policy_round"] = rnd
    state.mark(rnd, "promote")
    log(f"round {rnd}: {'promoted' if promoted else 'kept round ' + str(cur_round)} "
        f"(process {100 * new:.1f} vs {100 * old:.1f})")
