"""The run's judge over a policy: `judges.make_judge` (the one factory) with, for the self judge,
the policy's own Inspect through the rollout engine, so it inspects exactly as it does in a rollout."""

from __future__ import annotations

import dataclasses
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Iterator

from judges import JudgeConfig, make_judge
from judges.messages import load_prompts
from judges.server import JudgeServer
from rollout import Engine, RolloutConfig
from strokes.model.policy import Policy, checkpoint_image_side

if TYPE_CHECKING:
    from .config import RunConfig


def policy_judge(cfg: JudgeConfig, checkpoint: str | Path, rollout_cfg: RolloutConfig):
    """The judge `cfg` names; the self judge inspects with the policy at `checkpoint`."""
    if cfg.kind != "self":
        return make_judge(cfg)
    inspect_fn = Engine(Policy.from_pretrained(checkpoint), rollout_cfg).inspect
    return make_judge(cfg, inspect_fn, checkpoint_image_side(checkpoint))


@contextmanager
def served_judge(cfg: RunConfig, log: Callable[[str], None] = print) -> Iterator[RunConfig]:
    """`cfg` with its judge reachable. When `judge.serve` names one of our judges, that judge runs
    behind the judge server on a free loopback port for the block, and the GPT judge of the config
    yielded points at it: every verdict crosses the OpenAI API as a remote endpoint's would. A served
    self judge is `loop.base_checkpoint`'s Inspect, its verdict word decided by its P(conflict) at
    `rollout.inspect_threshold` rather than sampled: asked twice, a judge answers the same."""
    j = cfg.judge
    if not j.serve:
        yield cfg
        return
    decided = dataclasses.replace(cfg.rollout, inspect="threshold")
    inner = policy_judge(dataclasses.replace(j, kind=j.serve, serve=""), cfg.loop.base_checkpoint, decided)
    with JudgeServer(inner, port=0, prompts=load_prompts(j.prompts_file), max_batch=j.concurrency) as server:
        what = f"{j.serve} judge (profile {j.profile}, seed {j.profile_seed})" if j.serve == "vlm" else f"{j.serve} judge"
        log(f"judge: the {what} behind the judge server on {server.base_url}")
        try:
            yield dataclasses.replace(cfg, judge=dataclasses.replace(j, base_url=server.base_url, model=server.model))
        finally:
            log(f"judge server on {server.base_url} answered {server.served} requests")
