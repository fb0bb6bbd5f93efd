"""A GRPO round (`train.method: grpo`): the policy samples groups of whole trajectories on training
prompts with the rollout engine, the judge labels them (`rewards.py`), TRL's `GRPOTrainer` updates
the weights (`trainer/grpo.py`), and the next step samples from the updated weights.

Rollouts here are process mode with the policy's own sampled verdicts and no redraws
(`rollout.retries` is for evaluation): what the model writes is what it is rewarded for, and every
token it chose is in the trajectory the trainer sees. They run in the trainer's process on its live
weights, or with `rollout.actors: N` on the run's Ray fleet, which gets each step's weights through
the object store (`rollout/steps.py`); the judge runs here either way.

Each step keeps a sample of its trajectories (whole groups, up to `KEEP_PER_STEP`) with their reward
components and the judge's findings in the stage folder (`selfplay.run_dir.write_step_trajectories`),
so what the reward paid for can be read afterwards (the report shows a few): reward hacking shows in
the trajectories, not in the curves.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import time
from dataclasses import asdict
from pathlib import Path
from typing import Callable, Sequence

from judges.unjudged import judge_stats, require_verdicts
from rollout import Engine, RolloutFleet
from rollout.engine import Sampled
from rollout.steps import FleetRollouts
from rollout.sync import WeightPublisher
from strokes.errors import InputError
from strokes.model.policy import Policy
from strokes.records import PromptRecord
from strokes.trajectory import Trajectory, to_row
from trainer.grpo import SampleFn, train_grpo
from trainer.trl_common import peft_config

from .config import RunConfig
from .evaluation import sampled_verdicts, training_suite
from .inspect_head import verdict_positions
from .judging import JudgeMeter
from .rewards import ExactCheck, Judged, judge_rollouts, reward_functions, verdict_advantages
from .run_dir import write_step_trajectories
from .world import make_world

KEEP_PER_STEP = 16
"""Trajectories kept of each GRPO step (whole groups, the first ones TRL handed over: its sampler
shuffles the prompts): about 40 kB a step compressed, with every visual state as PNG."""

Keep = Callable[[list[Trajectory], list[Judged]], None]
"""Called with each step's trajectories and what the judge found in them, in TRL's order."""


def grpo_prompts(cfg: RunConfig, rnd: int) -> list[str]:
    """The round's training prompts: `train.grpo.prompts` training-split records of `train.grpo.tasks`
    as JSON strings (the rollout function reads the record back, so the judge knows what the prompt
    asks). TRL's sampler shuffles them."""
    g = cfg.train.grpo
    suite = training_suite(cfg, g.prompts, cfg.loop.seed * 1000 + rnd, tuple(g.tasks))[: g.prompts]
    return [json.dumps(r.to_json()) for r in suite]


Draw = Callable[[Sequence[PromptRecord], int, int, Sequence[tuple[Sequence[PromptRecord], int]]], list[Sampled]]
"""records, seed, step, the next steps' (records, seed) -> one `Sampled` per record: where a step's
rollouts come from (the next steps' may start early: `FleetRollouts`)."""


def make_sampler(engine: Engine, judge, exact: ExactCheck | None = None, verdict_weight: float = 0.0,
                 keep: Keep | None = None, meter: JudgeMeter | None = None, questions: bool = False,
                 draw: Draw | None = None, draw_metrics: Callable[[], dict] | None = None,
                 graded_steps: bool = False) -> SampleFn:
    """The rollout function TRL calls: trajectories for the prompts, their tokens, log-probs and legal
    sets (`legal`), the mask of tokens the model chose (`env_mask`), the judge's findings (`judged`) and, with a
    `verdict_weight`, each verdict word's own advantage (`token_advantages`, `verdict_advantages`), and
    `metrics` for the trainer's log (`rollout/seconds`, `judge/seconds`, `draw_metrics()`). The rollouts are
    `engine`'s in this process, or `draw`'s (the fleet's: `FleetRollouts`, which also starts the
    `upcoming` steps' rollouts, given with `train.grpo.max_staleness`). `questions`: the final
    reward from the judge's answers to the prompt's atomic questions (`judge.final_reward`);
    `graded_steps`: the step credit from the judge's P(conflict) per state (`judge.graded_steps`). `keep`
    sees every step's trajectories and findings (`step_keeper`). With a `meter`, the step's judge
    cost and agreement join `metrics` (`JudgeMeter.step`), and a step whose missing verdicts exceed
    `judge.max_unjudged` stops the round
    (`judges.unjudged.require_verdicts`) instead of training on zero advantages."""
    eos = engine.processor.special["<eos>"]

    def records_of(prompts: list[str]) -> list[PromptRecord]:
        return [PromptRecord.from_json(json.loads(p)) for p in prompts]

    def sample(prompts: list[str], seed: int, step: int = 0, upcoming: Sequence[tuple[list[str], int]] = ()) -> dict:
        records = records_of(prompts)
        t0 = time.perf_counter()
        rolled = draw(records, seed, step, [(records_of(p), s) for p, s in upcoming]) if draw is not None \
            else engine.sample(records, seed)
        t1 = time.perf_counter()
        judged = judge_rollouts([s.trajectory for s in rolled], judge, exact, questions, graded_steps)
        t2 = time.perf_counter()
        if keep is not None:
            keep([s.trajectory for s in rolled], judged)
        metrics = {"rollout/seconds": t1 - t0, "judge/seconds": t2 - t1, **(draw_metrics or dict)()}
        if meter is not None:
            missing, asked = sum(j.unjudged for j in judged), sum(j.asked for j in judged)
            metrics.update(meter.step([s.trajectory for s in rolled], judged, t1 - t0, t2 - t1))
            require_verdicts(meter.cfg, missing, asked, f"GRPO step {len(meter.steps)}'s rollouts", judge)
        out = {"prompt_ids": [], "completion_ids": [], "logprobs": [], "env_mask": [], "legal": [], "judged": judged,
               "metrics": metrics}
        for s in rolled:
            empty = not s.completion_ids  # refused at admission: one inert token keeps TRL's shapes
            out["prompt_ids"].append(s.prompt_ids)
            out["completion_ids"].append([eos] if empty else s.completion_ids)
            out["logprobs"].append([0.0] if empty else s.logprobs)
            out["env_mask"].append([0] if empty else s.chosen)
            out["legal"].append([] if empty else s.legal)
        if verdict_weight:
            out["token_advantages"] = []
            for s, credit in zip(rolled, verdict_advantages(judged, verdict_weight)):
                # each inspection's verdict word (its first, or the first after its check list), one
                # per visual state, in drawing order
                words = [k + 1 for k in verdict_positions(engine.processor, s.completion_ids)
                         if k + 1 < len(s.completion_ids)]
                out["token_advantages"].append([(words[n], a) for n, a in credit if n < len(words)])
        return out

    return sample


def trajectory_rows(trajectories: list[Trajectory], judged: list[Judged], group: int, step: int) -> list[dict]:
    """The rows a step keeps: whole groups of `group` trajectories, up to `KEEP_PER_STEP` (at least
    one group), each trajectory as stored elsewhere (`to_row`, its visual states as base64 PNG) with
    the step, its group, its reward components and the judge's findings."""
    import base64

    n = min(len(trajectories), max(group, KEEP_PER_STEP // group * group))
    kept, found = trajectories[:n], judged[:n]
    rewards = {name: fn([t.prompt for t in kept], None, judged=found) for name, fn in reward_functions().items()}
    rows = []
    for k, (t, j) in enumerate(zip(kept, found)):
        row = to_row(t)
        row["images"] = [base64.b64encode(png).decode() for png in row["images"]]
        rows.append({"step": step, "group": k // group, **row,
                     "rewards": {name: values[k] for name, values in rewards.items()}, "judged": asdict(j)})
    return rows


def step_keeper(folder: Path, group: int) -> Keep:
    """A `Keep` that writes each step's `trajectory_rows` into `folder` (steps numbered from 1 in
    the order TRL asks for them: the loop restarts a killed training stage from its first step)."""
    steps = itertools.count(1)

    def keep(trajectories: list[Trajectory], judged: list[Judged]) -> None:
        step = next(steps)
        write_step_trajectories(folder, step, trajectory_rows(trajectories, judged, group, step))

    return keep


def grpo_stage(cfg: RunConfig, parent: Path, prompts: list[str], out: Path, judge,
               keep_in: Path | None = None, fleet: RolloutFleet | None = None,
               on_dispatch: Callable[[int, object], None] | None = None) -> dict:
    """GRPO of `parent` for `train.grpo.steps` steps on `prompts` (`grpo_prompts`); the checkpoint
    lands in `out/checkpoint`, TRL's log lines in `out/metrics.jsonl` (as SFT's do), and with
    `keep_in` (the stage folder) a sample of each step's trajectories there. With a `fleet` (the
    run's, `rollout.actors` > 0) each step's rollouts are sampled there from that step's weights
    (`on_dispatch(shard, actor)` after each shard is sent: tests kill actors with it). Returns the training
    summary, with what the judge cost (`judge`: requests, tokens, seconds against rollout seconds, and
    its counters). A judge budget that cannot pay for another step ends the round after the last whole
    step."""
    return _train(cfg, parent, prompts, out, judge, keep_in, fleet, on_dispatch)[0]


def grpo_on_ray(cfg: RunConfig, parent: Path, prompts: list[str], out: Path, keep_in: Path | None = None) -> dict:
    """GRPO with `train.distributed: ray`: `train.workers` Ray Train workers, each a rank of TRL's
    `GRPOTrainer` that samples its share of every step's prompts with its own engine and judge, the
    ranks averaging gradients; a worker that dies restarts the group, which resumes from the last
    trainer checkpoint (`trainer/distributed.py`). Writes what `grpo_stage` writes (the first rank
    keeps its share of each step's trajectories). A judge budget is refused: each rank would spend
    and stop on its own, and a rank that stops alone leaves the others waiting."""
    from trainer.distributed import run_workers

    if cfg.judge.budget_requests or cfg.judge.budget_tokens:
        raise InputError("judge.budget_requests/budget_tokens: not with train.distributed: ray "
                         "(each worker judges its own share); leave them 0")
    out = Path(out).resolve()
    config = {"cfg": cfg, "parent": str(Path(parent).resolve()), "prompts": prompts, "out": str(out),
              "keep_in": str(Path(keep_in).resolve()) if keep_in is not None else None}
    return run_workers(_grpo_worker, config, cfg.train, out, "grpo", cfg.rollout.ray_address)


def _grpo_worker(config: dict) -> None:
    """One Ray Train worker of `grpo_on_ray`."""
    import ray.train
    import torch

    from trainer.distributed import report_summary

    from .judging import grpo_judge

    cfg: RunConfig = config["cfg"]
    torch.set_num_threads(max(cfg.train.num_threads, 1))  # one worker per core (or GPU)
    parent = Path(config["parent"])
    first = ray.train.get_context().get_world_rank() == 0
    keep_in = Path(config["keep_in"]) if config["keep_in"] and first else None
    summary, policy = _train(cfg, parent, config["prompts"], Path(config["out"]),
                             grpo_judge(cfg, parent, make_world(cfg)), keep_in)
    report_summary(summary, policy.model)


def _train(cfg: RunConfig, parent: Path, prompts: list[str], out: Path, judge, keep_in: Path | None = None,
           fleet: RolloutFleet | None = None,
           on_dispatch: Callable[[int, object], None] | None = None) -> tuple[dict, Policy]:
    """`grpo_stage`'s work; returns the summary and the trained policy."""
    rollout_cfg = dataclasses.replace(sampled_verdicts(cfg.rollout), mode="process", actors=0)
    policy = Policy.from_pretrained(parent)
    engine = Engine(policy, rollout_cfg)  # shares policy.model with the trainer: it samples the live weights
    g = cfg.train.grpo
    verdict_weight = g.reward_weights.get("inspection", 0.0) if g.verdict_credit == "token" else 0.0
    world = make_world(cfg)
    exact = world.is_correct if cfg.judge.kind == "oracle" else None
    # against a judge that is not the exact one, the world's exact judge (where it has one) labels
    # the same rollouts again: how often the training judge agrees, per task
    reference = world.label_judge() if cfg.judge.kind != "oracle" and world.exact else None
    meter = JudgeMeter(judge, cfg.judge, reference, world.is_correct if reference is not None else None)
    keep = step_keeper(keep_in, g.generations) if keep_in is not None else None
    draw = None
    if fleet is not None:
        # policy.model gets TRL's LoRA layers in place when the trainer starts: published each step
        draw = FleetRollouts(fleet, rollout_cfg, parent, WeightPublisher(policy.model, peft_config(cfg.train)), engine,
                             on_dispatch)
    sample = make_sampler(engine, judge, exact=exact, verdict_weight=verdict_weight, keep=keep, meter=meter,
                          questions=cfg.judge.asks_questions, graded_steps=cfg.judge.graded_steps, draw=draw,
                          draw_metrics=(lambda: draw.stats.metrics()) if draw else None)
    try:
        summary = train_grpo(policy, prompts, cfg.train, out, sample, reward_functions(), engine.legal_sets,
                             temperature=rollout_cfg.temperature, should_stop=meter.over_budget)
    finally:
        if draw is not None:
            draw.close()  # rollouts sampled ahead of a step that never came: the fleet evaluates next
    summary["judge"] = {**meter.totals(), "counters": judge_stats(judge)}
    return summary, policy
