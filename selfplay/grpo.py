"""A GRPO round (`train.method: grpo`): the policy samples groups of whole trajectories on training
prompts with the rollout engine, the judge labels them (`rewards.py`), TRL's `GRPOTrainer` updates
the weights (`trainer/grpo.py`), and the next step samples from the updated weights.

Rollouts here are process mode with the policy's own sampled verdicts and no redraws
(`rollout.retries` is for evaluation): what the model writes is what it is rewarded for, and every
token it chose is in the trajectory the trainer sees. They run in the trainer's process on its live
weights, or with `rollout.actors: N` on the run's Ray fleet, which gets each step's weights through
the object store (`rollout/steps.py`); the judge runs here either way.
"""

from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path
from typing import Callable, Sequence

from rollout import Engine, RolloutFleet
from rollout.engine import Sampled
from rollout.steps import FleetRollouts
from rollout.sync import WeightPublisher
from strokes.model.policy import Policy
from strokes.records import PromptRecord
from trainer.grpo import SampleFn, train_grpo
from trainer.trl_common import peft_config

from .config import RunConfig
from .evaluation import sampled_verdicts, training_suite
from .rewards import ExactCheck, judge_rollouts, reward_functions, verdict_advantages
from .world import make_world


def grpo_prompts(cfg: RunConfig, rnd: int) -> list[str]:
    """The round's training prompts: `train.grpo.prompts` training-split records of `train.grpo.tasks`
    as JSON strings (the rollout function reads the record back, so the judge knows what the prompt
    asks). TRL's sampler shuffles them."""
    g = cfg.train.grpo
    suite = training_suite(cfg, g.prompts, cfg.loop.seed * 1000 + rnd, tuple(g.tasks))[: g.prompts]
    return [json.dumps(r.to_json()) for r in suite]


Draw = Callable[[Sequence[PromptRecord], int, int], list[Sampled]]
"""records, seed, step -> one `Sampled` per record: where a step's rollouts come from."""


def make_sampler(engine: Engine, judge, exact: ExactCheck | None = None, verdict_weight: float = 0.0,
                 draw: Draw | None = None, draw_metrics: Callable[[], dict] | None = None) -> SampleFn:
    """The rollout function TRL calls: trajectories for the prompts, their tokens, log-probs and legal
    sets (`legal`), the mask of tokens the model chose (`env_mask`), the judge's findings (`judged`) and, with a
    `verdict_weight`, each verdict word's own advantage (`token_advantages`, `verdict_advantages`), and
    `metrics` for the trainer's log (rollout and judge time, and `draw_metrics()`). The rollouts are
    `engine`'s in this process, or `draw`'s (the fleet's: `FleetRollouts`)."""
    eos, inspect = engine.processor.special["<eos>"], engine.processor.special["<inspect>"]

    def sample(prompts: list[str], seed: int, step: int = 0) -> dict:
        records = [PromptRecord.from_json(json.loads(p)) for p in prompts]
        t0 = time.perf_counter()
        rolled = draw(records, seed, step) if draw is not None else engine.sample(records, seed)
        t1 = time.perf_counter()
        judged = judge_rollouts([s.trajectory for s in rolled], judge, exact)
        metrics = {"time/rollout": t1 - t0, "time/judge": time.perf_counter() - t1, **(draw_metrics or dict)()}
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
                # the verdict word follows each <inspect>, one per visual state, in drawing order
                words = [k + 1 for k, t in enumerate(s.completion_ids[:-1]) if t == inspect]
                out["token_advantages"].append([(words[n], a) for n, a in credit if n < len(words)])
        return out

    return sample


def grpo_stage(cfg: RunConfig, parent: Path, prompts: list[str], out: Path, judge,
               fleet: RolloutFleet | None = None, on_dispatch: Callable[[int, object], None] | None = None) -> dict:
    """GRPO of `parent` for `train.grpo.steps` steps on `prompts` (`grpo_prompts`); the checkpoint
    lands in `out/checkpoint`, TRL's log lines in `out/metrics.jsonl` (as SFT's do). With a `fleet`
    (the run's, `rollout.actors` > 0) each step's rollouts are sampled there from that step's weights
    (`on_dispatch(shard, actor)` after each shard is sent: tests kill actors with it). Returns the
    training summary."""
    return _train(cfg, parent, prompts, out, judge, fleet, on_dispatch)[0]


def grpo_on_ray(cfg: RunConfig, parent: Path, prompts: list[str], out: Path) -> dict:
    """GRPO with `train.distributed: ray`: `train.workers` Ray Train workers, each a rank of TRL's
    `GRPOTrainer` that samples its share of every step's prompts with its own engine and judge, the
    ranks averaging gradients; a worker that dies restarts the group, which resumes from the last
    trainer checkpoint (`trainer/distributed.py`). Writes what `grpo_stage` writes."""
    from trainer.distributed import run_workers

    return run_workers(_grpo_worker, {"cfg": cfg, "parent": str(Path(parent).resolve()), "prompts": prompts,
                                      "out": str(Path(out).resolve())},
                       cfg.train, Path(out).resolve(), "grpo", cfg.rollout.ray_address)


def _grpo_worker(config: dict) -> None:
    """One Ray Train worker of `grpo_on_ray`."""
    import torch

    from trainer.distributed import report

    from .judging import policy_judge

    cfg: RunConfig = config["cfg"]
    torch.set_num_threads(max(cfg.train.num_threads, 1))  # one worker per core (or GPU)
    parent = Path(config["parent"])
    summary, policy = _train(cfg, parent, config["prompts"], Path(config["out"]),
                             policy_judge(cfg.judge, parent, cfg.rollout))
    report(summary, policy.model)


def _train(cfg: RunConfig, parent: Path, prompts: list[str], out: Path, judge, fleet: RolloutFleet | None = None,
           on_dispatch: Callable[[int, object], None] | None = None) -> tuple[dict, Policy]:
    """`grpo_stage`'s work; returns the summary and the trained policy."""
    rollout_cfg = dataclasses.replace(sampled_verdicts(cfg.rollout), mode="process", actors=0)
    policy = Policy.from_pretrained(parent)
    engine = Engine(policy, rollout_cfg)  # shares policy.model with the trainer: it samples the live weights
    g = cfg.train.grpo
    verdict_weight = g.reward_weights.get("inspection", 0.0) if g.verdict_credit == "token" else 0.0
    exact = make_world(cfg).is_correct if cfg.judge.kind == "oracle" else None
    draw = None
    if fleet is not None:
        # policy.model gets TRL's LoRA layers in place when the trainer starts: published each step
        draw = FleetRollouts(fleet, rollout_cfg, parent, WeightPublisher(policy.model, peft_config(cfg.train)), engine,
                             on_dispatch)
    sample = make_sampler(engine, judge, exact=exact, verdict_weight=verdict_weight, draw=draw,
                          draw_metrics=(lambda: draw.stats.metrics()) if draw else None)
    summary = train_grpo(policy, prompts, cfg.train, out, sample, reward_functions(), engine.legal_sets,
                         temperature=rollout_cfg.temperature)
    return summary, policy
