"""The bodies of a round's training-side stages: the base policy, the round's data, its training,
the control arm and the Inspect head. (Evaluation stages are in `evaluation.py`; the loop that runs
them in order, resumably, is `loop.py`.)

Each writes into the folder it is given (the loop hands it `<stage>.tmp/` and renames it when the
stage returns) and logs through `selfplay.run_dir.write_event`.
"""

from __future__ import annotations

import dataclasses
import json
import os
import random
import shutil
from pathlib import Path

from judges.unjudged import require_verdicts
from rollout import RolloutFleet
from rollout.cluster import connect
from strokes.data.build import build, load
from strokes.errors import InputError
from strokes.model.checkpoint_check import check_checkpoint
from strokes.model.inspect_head import FILE as HEAD_FILE
from strokes.model.policy import Policy, check_kind
from strokes.records import TASKS, PromptRecord
from strokes.trajectory import Trajectory, to_dataset, write_jsonl
from trainer.distributed import fit
from trainer.sft import train

from .config import RunConfig, load_config
from .critique import build_self_critique, build_symbolic_critique
from .evaluation import rollout_stage, sampled_verdicts, training_suite
from .grpo import grpo_on_ray, grpo_prompts, grpo_stage
from .inspect_head import fit_inspect_head
from .judging import grpo_judge, policy_judge
from .run_dir import write_event
from .world import make_world


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
        check_checkpoint(source)  # every file and checksum, before the run builds on it
        check_kind(source, cfg.model.kind)
        shutil.copytree(source, out / "checkpoint")


def round_suite(cfg: RunConfig, rnd: int) -> list[PromptRecord]:
    """The training prompts an SFT round rolls out: `loop.prompts_per_round` records of `loop.tasks`,
    each `loop.samples_per_prompt` times."""
    per_prompt = cfg.loop.samples_per_prompt
    suite = training_suite(cfg, cfg.loop.prompts_per_round, cfg.loop.seed * 1000 + rnd, tuple(cfg.loop.tasks or TASKS))
    return (suite * per_prompt)[: cfg.loop.prompts_per_round * per_prompt]


def data_rollout_config(cfg: RunConfig) -> RunConfig:
    """The config an SFT round's data rollouts sample with: `loop.data_temperature` when set (T=1
    samples carry sampling noise into the image codes the round then trains on) and
    `loop.data_retries`; everything else as configured."""
    rollout = cfg.rollout
    if cfg.loop.data_temperature is not None:
        rollout = dataclasses.replace(rollout, temperature=cfg.loop.data_temperature)
    if cfg.loop.data_mode == "judge":
        rollout = dataclasses.replace(rollout, retries=cfg.loop.data_retries)
    return cfg if rollout is cfg.rollout else dataclasses.replace(cfg, rollout=rollout)


def data_rollouts_stage(cfg: RunConfig, rnd: int, checkpoint: Path, out: Path,
                        fleet: RolloutFleet | None = None) -> list[Trajectory]:
    """An SFT round's rollouts of `checkpoint` on its training prompts (`round_suite`), the ones its
    data is built from: the policy alone, or with `loop.data_mode: judge` the round's judge inspecting
    every sketch as it is drawn (in this process: the judge is not shipped to actors)."""
    data_cfg = data_rollout_config(cfg)
    seed = cfg.loop.seed * 7 + rnd
    if cfg.loop.data_mode == "judge":
        judge = policy_judge(cfg.judge, checkpoint, cfg.rollout)
        return rollout_stage(data_cfg, checkpoint, round_suite(cfg, rnd), "judge", seed, out, judge=judge)
    return rollout_stage(data_cfg, checkpoint, round_suite(cfg, rnd), "process", seed, out, fleet=fleet)


def critique_stage(cfg: RunConfig, rnd: int, rollouts: list[Trajectory], checkpoint: Path, out: Path) -> dict:
    """An SFT round's data: judge the rollouts, build critique traces, mix in base-data replay, save
    the round's dataset.

    ShapeWorld executes any judge's corrective instruction exactly (the world's `corrected_state`
    applies the edit to the detected scene), and the critique builder has the same judge accept the
    result (an open world has no SFT critique rounds: `selfplay/config.py` refuses them)."""
    world = make_world(cfg)
    judge = policy_judge(cfg.judge, checkpoint, cfg.rollout)
    critique_cfg = dataclasses.replace(cfg.critique, seed=cfg.critique.seed + rnd)
    traces, stats = build_self_critique(rollouts, judge, critique_cfg, exact=world.corrected_state)
    require_verdicts(cfg.judge, stats.steps_unjudged, stats.steps_asked, f"round {rnd}'s critique stage", judge)
    if cfg.critique.mode == "symbolic":  # as many corrections, from perturbed scene graphs instead
        records = [PromptRecord.from_json(t.record) for t in rollouts if t.record]
        traces = build_symbolic_critique(records, len(traces), critique_cfg)
    n_replay = max(int(round(cfg.critique.replay_ratio * len(traces))), cfg.critique.min_replay)
    replay = world.base_rows(max(n_replay, 1), cfg.data.seed + 7919 * rnd)[:n_replay]
    rows = traces + replay
    random.Random(cfg.loop.seed + rnd).shuffle(rows)
    save_dataset(rows, out / "dataset")
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


def save_dataset(rows: list[Trajectory], path: Path) -> None:
    """An HF dataset on disk; an empty one is a folder with an EMPTY marker, since `datasets`
    saves zero rows as zero shards that it cannot load back."""
    if not rows:
        path.mkdir(parents=True)
        (path / "EMPTY").touch()
        return
    to_dataset(rows).save_to_disk(str(path))


def train_stage(cfg: RunConfig, parent: Path, dataset_dir: Path, out: Path, rnd: int, arm: str,
                max_steps: int = -1, fleet: RolloutFleet | None = None) -> dict:
    """The round's training of `parent`: SFT on the round's dataset, in this process or on Ray Train
    workers (`train.distributed`), or with `train.method: grpo` (the policy arm) GRPO on its own
    rollouts of the round's prompts (`dataset_dir/prompts.json`), sampled on `fleet` when given; the
    checkpoint lands in `out/checkpoint`. With `train.distributed: ray` both run on Ray Train workers
    (GRPO: each samples and judges its share of every step; the fleet, if any, is not used), on the
    cluster at `rollout.ray_address` or on a local one started here."""
    if cfg.train.distributed == "ray":
        connect(cfg.rollout.ray_address, cfg.rollout.ray_cpus, cfg.rollout.object_store_mb, cfg.rollout.reserved_gpus)
    if cfg.train.round_method(rnd) == "grpo" and arm == "policy":
        prompts = json.loads((dataset_dir / "prompts.json").read_text())
        if cfg.train.distributed == "ray":
            summary = grpo_on_ray(cfg, parent, prompts, out / "train", keep_in=out)
        else:
            summary = grpo_stage(cfg, parent, prompts, out / "train", grpo_judge(cfg, parent, make_world(cfg)),
                                 keep_in=out, fleet=fleet)
        write_event(out, {"event": "judge", "round": rnd, "arm": arm, **summary["judge"]})  # the round's judge cost
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
    save_dataset(make_world(cfg).base_rows(size, cfg.data.seed + 104729 * rnd), out / "dataset")
    write_event(out, {"event": "control", "round": rnd, "parent": str(parent), "steps": steps})
    sft = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, method="sft"))  # whatever the policy's method
    train_stage(sft, parent, out / "dataset", out, rnd, "control", max_steps=steps)
    shutil.rmtree(out / "dataset")


def head_stage(cfg: RunConfig, checkpoint: Path, out: Path, rnd: int, arm: str,
               fleet: RolloutFleet | None = None) -> Path:
    """`checkpoint` with an Inspect head fitted on its own labelled sketches (`selfplay/inspect_head.py`):
    it rolls out `inspect_head.prompts` training-split prompts (sampled verdicts, no retries), the
    exact judge labels every visual state, and the head lands with a hard-linked copy of the
    checkpoint's files in `out/checkpoint`, which the round evaluates and promotes."""
    head_cfg = dataclasses.replace(cfg.inspect_head, seed=cfg.inspect_head.seed + rnd)
    seed = 1000 * (cfg.loop.seed + cfg.inspect_head.seed) + 100 + rnd  # apart from the rounds' and the validation's
    suite = training_suite(cfg, head_cfg.prompts, seed)
    plain = dataclasses.replace(cfg, rollout=sampled_verdicts(cfg.rollout))
    trajectories = rollout_stage(plain, checkpoint, suite, "process", seed, out / "rollouts", fleet=fleet)
    head = fit_inspect_head(Policy.from_pretrained(checkpoint), trajectories, make_world(cfg).label_judge(), head_cfg)
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
