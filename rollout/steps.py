"""An RL trainer's rollouts on the fleet, one step at a time (`rollout.actors` > 0 in a GRPO round).

Each call is one optimizer step: the trainer's weights of that step go out through the object store
(`sync.WeightPublisher`), the step's prompts (TRL's batch: every prompt once per generation) are cut
into contiguous shards (`step_shards`), each with a seed derived from the step's seed and its index,
and the fleet's actors sample them from the round's checkpoint with the step's weights on top. A
shard gives the same trajectories wherever it runs, so the step's trajectories do not depend on the
number of actors, on which actor took which shard, or on an actor dying.

Faults: an actor lost mid-step costs its shard a retry on another actor (`pool.run_on_fleet`, which
replaces the dead one); when the fleet can do no more, the shards left are sampled in this process
with the trainer's own model, which holds the same weights. A step therefore always returns one
rollout per prompt, and none of them stands in for a lost one. Retries, shards sampled here and the
time spent publishing weights are in `stats` after each call, for the trainer to log.
"""

from __future__ import annotations

import math
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

from .config import RolloutConfig
from .engine import Engine, Prompt, Sampled
from .fleet import RolloutFleet
from .pool import RolloutError, run_on_fleet
from .shards import Shard, make_shards
from .sync import WeightPublisher
from .weights import checkpoint_path
from .worker import Setup, sample_shard


@dataclass
class StepStats:
    """What one step's rollout cost and survived."""

    retries: int = 0
    """Shard attempts lost to actors that died or restarted."""
    local_shards: int = 0
    """Shards sampled in this process because the fleet could not."""
    sync_seconds: float = 0.0
    """Publishing the step's weights to the object store (the actors' loads of it are part of
    their shards' time)."""
    update_mb: float = 0.0
    """Size of the published update."""

    def metrics(self) -> dict[str, float]:
        return {"rollout/retries": self.retries, "rollout/in_process_shards": self.local_shards,
                "time/weight_sync": self.sync_seconds, "rollout/update_mb": self.update_mb}


def step_shards(prompts: Sequence[Prompt], seed: int, actors: int, shard_size: int) -> list[Shard]:
    """A step's prompts in contiguous shards, at least one per actor and at most `shard_size` long."""
    size = max(1, min(shard_size, math.ceil(len(prompts) / max(actors, 1))))
    return make_shards(prompts, 1, size, seed)


class FleetRollouts:
    """`(prompts, seed, step) -> list[Sampled]` on `fleet` for a trainer whose live model is
    `publisher.model` and whose round started from `checkpoint`; `local` is an engine on that live
    model (the fallback). `cfg` holds the decoding settings; the fleet's own config its size."""

    def __init__(self, fleet: RolloutFleet, cfg: RolloutConfig, checkpoint: str | Path, publisher: WeightPublisher,
                 local: Engine, on_dispatch: Callable[[int, object], None] | None = None) -> None:
        self.fleet, self.cfg, self.publisher, self.local = fleet, cfg, publisher, local
        self.checkpoint = checkpoint_path(checkpoint)
        self.setup = Setup(str(self.checkpoint), cfg, [], uuid.uuid4().hex)  # one engine per actor per round
        self.on_dispatch = on_dispatch
        self.stats = StepStats()

    def __call__(self, prompts: Sequence[Prompt], seed: int, step: int) -> list[Sampled]:
        self.stats = stats = StepStats()
        t0 = time.perf_counter()
        update = self.publisher.publish(step)
        stats.sync_seconds = time.perf_counter() - t0
        stats.update_mb = self.publisher.bytes / 2**20
        self.fleet.hold(self.checkpoint)  # starts (or refills) the actors; a no-op once they hold it
        shards = step_shards(prompts, seed, self.fleet.cfg.actors, self.cfg.shard_size)
        done: dict[int, list[Sampled]] = {}
        try:
            run_on_fleet(shards, lambda shard, rolled: done.__setitem__(shard.index, rolled), self.fleet,
                         lambda actor, shard: actor.sample.remote(shard, self.setup, update),
                         self.cfg.max_shard_retries, stats, self.on_dispatch)
        except RolloutError:  # the fleet gave up on a shard: this process has the same weights
            pass
        for shard in shards:
            if shard.index not in done:
                done[shard.index] = sample_shard(self.local, shard, step)
                stats.local_shards += 1
        return [s for shard in shards for s in done[shard.index]]
