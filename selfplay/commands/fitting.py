"""What `selfplay fit-inspector` and `selfplay fit-judge` share: both fit something of the model's
own once, before any round, on its own rollouts of training-split prompts labelled by a judge the
team trusts (the run config's), never by the model itself."""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path
from typing import TYPE_CHECKING

from strokes.errors import InputError
from strokes.records import TASKS

if TYPE_CHECKING:
    from strokes.model.policy import Policy
    from strokes.trajectory import Trajectory

    from ..config import RunConfig


def add_arguments(p: argparse.ArgumentParser, out: str, labels: str, prompts: int, seed: int) -> None:
    """The arguments every fitting command takes: the checkpoint, where to write, the labelling config."""
    p.add_argument("checkpoint", help="policy folder (save_pretrained)")
    p.add_argument("--out", required=True, help=out)
    p.add_argument("--config", default=None, help=f"run config whose judge labels {labels} and whose rollout "
                                                   "settings to use; default: the built-in defaults (exact judge)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a config field")
    p.add_argument("--prompts", type=int, default=prompts, help="training-split prompts to roll out")
    p.add_argument("--seed", type=int, default=seed)


def labelling_config(args: argparse.Namespace, learner: str) -> RunConfig:
    """The run config whose judge labels what `learner` learns from, after checking the checkpoint
    and `--prompts` (at least 30); a self judge is refused (it would teach the model its own errors)."""
    from strokes.model.checkpoint_check import check_checkpoint

    from ..config import load_config

    check_checkpoint(Path(args.checkpoint))
    if args.prompts < 30:
        raise InputError(f"--prompts must be at least 30, got {args.prompts}")
    cfg = load_config(args.config, args.set)
    if cfg.judge.kind == "self":
        raise InputError(f"judge.kind: self cannot label what {learner} learns from; use the exact or a GPT judge")
    return cfg


def own_rollouts(cfg: RunConfig, policy: Policy, prompts: int, seed: int, tasks: tuple[str, ...] = TASKS,
                 generations: int = 1) -> list[Trajectory]:
    """`generations` process-mode rollouts of `policy` (its own sampled verdicts, no redraws) on each
    of `prompts` training-split prompts of `tasks`, in prompt order."""
    from rollout import Engine

    from ..evaluation import sampled_verdicts, training_suite

    policy.model.eval()
    engine = Engine(policy, dataclasses.replace(sampled_verdicts(cfg.rollout), mode="process", actors=0, seed=seed))
    records = training_suite(cfg, prompts, seed, tuple(tasks))[:prompts]
    return engine.run([r for r in records for _ in range(generations)])
