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

Ahead of training (`train.grpo.max_staleness` k > 0): a call also names the next steps' prompts and
seeds (`upcoming`); their rollouts start at once on the fleet, from the weights of the step that
sends them, while the trainer trains the current step. A later call whose prompts and seed are
those of a step already in flight takes its rollouts (each records the step whose weights drew it,
`weights_step`); one whose prompts differ (the trainer's order was not the one predicted) waits for
the stale work, discards it and samples afresh, counted in `rollout/ahead_misses`. One background
thread does the fleet's work, in order, so the actors never serve two steps' shards at once, and
shards the fleet lost are sampled in the caller's thread with the live model, never beside training.
"""

from __future__ import annotations

import math
import time
import uuid
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

from .config import RolloutConfig
from .engine import Engine, Prompt, Sampled
from .fleet import RolloutFleet
from .pool import RolloutError, run_on_fleet
from .shards import Shard, make_shards
from .sync import WeightPublisher, WeightUpdate
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
    staleness: float = 0.0
    """Mean optimizer steps between the weights that drew the step's rollouts and the step."""
    ahead_misses: int = 0
    """Steps sampled ahead whose prompts were not the ones the trainer asked for (sampled again)."""

    def metrics(self) -> dict[str, float]:
        return {"rollout/retries": self.retries, "rollout/in_process_shards": self.local_shards,
                "time/weight_sync": self.sync_seconds, "rollout/update_mb": self.update_mb,
                "rollout/staleness": self.staleness, "rollout/ahead_misses": self.ahead_misses}


@dataclass
class InFlight:
    """One step's rollouts sent to the fleet: its shards, what came back, and the background work."""

    prompts: list[Prompt]
    seed: int
    update: WeightUpdate
    shards: list[Shard]
    stats: StepStats
    done: dict[int, list[Sampled]] = field(default_factory=dict)
    future: Future | None = None


def step_shards(prompts: Sequence[Prompt], seed: int, actors: int, shard_size: int) -> list[Shard]:
    """A step's prompts in contiguous shards, at least one per actor and at most `shard_size` long."""
    size = max(1, min(shard_size, math.ceil(len(prompts) / max(actors, 1))))
    return make_shards(prompts, 1, size, seed)


class FleetRollouts:
    """`(prompts, seed, step, upcoming) -> list[Sampled]` on `fleet` for a trainer whose live model
    is `publisher.model` and whose round started from `checkpoint`; `local` is an engine on that live
    model (the fallback). `cfg` holds the decoding settings; the fleet's own config its size.
    `upcoming` (the next steps' prompts and seeds) is sampled ahead (module docstring); `close`
    waits for anything still in flight."""

    def __init__(self, fleet: RolloutFleet, cfg: RolloutConfig, checkpoint: str | Path, publisher: WeightPublisher,
                 local: Engine, on_dispatch: Callable[[int, object], None] | None = None) -> None:
        self.fleet, self.cfg, self.publisher, self.local = fleet, cfg, publisher, local
        self.checkpoint = checkpoint_path(checkpoint)
        self.setup = Setup(str(self.checkpoint), cfg, [], uuid.uuid4().hex)  # one engine per actor per round
        self.on_dispatch = on_dispatch
        self.stats = StepStats()
        self.ahead: dict[int, InFlight] = {}  # step -> its rollouts, sent before that step asked
        self._thread: ThreadPoolExecutor | None = None

    def __call__(self, prompts: Sequence[Prompt], seed: int, step: int,
                 upcoming: Sequence[tuple[Sequence[Prompt], int]] = ()) -> list[Sampled]:
        sent = self.ahead.pop(step, None)
        misses = 0
        if sent is not None and not (sent.prompts == list(prompts) and sent.seed == seed):
            self._wait(sent)  # the fleet is busy with it: let it finish, then sample what was asked
            sent, misses = None, 1
        if sent is None:
            sent = self._send(prompts, seed, step)
            self._fleet_work(sent)
        rolled = self._finish(sent, step)
        self.stats = sent.stats
        self.stats.ahead_misses = misses
        for k, (later, later_seed) in enumerate(upcoming, start=1):  # from this step's weights, while it trains
            if step + k not in self.ahead:
                self.ahead[step + k] = sent_ahead = self._send(later, later_seed, step)
                sent_ahead.future = self._background().submit(self._fleet_work, sent_ahead)
        return rolled

    def close(self) -> None:
        """Wait for (and drop) rollouts still in flight: the fleet is free for the round's eval after."""
        for sent in self.ahead.values():
            self._wait(sent)
        self.ahead.clear()
        if self._thread is not None:
            self._thread.shutdown(wait=True)
            self._thread = None

    def _background(self) -> ThreadPoolExecutor:
        if self._thread is None:
            self._thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="fleet-ahead")
        return self._thread

    def _send(self, prompts: Sequence[Prompt], seed: int, step: int) -> InFlight:
        """Publish the live weights as `step`'s and cut the shards (in the caller's thread: it owns the model)."""
        stats = StepStats()
        t0 = time.perf_counter()
        update = self.publisher.publish(step)
        stats.sync_seconds = time.perf_counter() - t0
        stats.update_mb = self.publisher.bytes / 2**20
        shards = step_shards(prompts, seed, self.fleet.cfg.actors, self.cfg.shard_size)
        return InFlight(list(prompts), seed, update, shards, stats)

    def _fleet_work(self, sent: InFlight) -> None:
        """Sample `sent`'s shards on the fleet, with retries; shards it gives up on stay missing."""
        self.fleet.hold(self.checkpoint)  # starts (or refills) the actors; a no-op once they hold it
        try:
            run_on_fleet(sent.shards, lambda shard, rolled: sent.done.__setitem__(shard.index, rolled), self.fleet,
                         lambda actor, shard: actor.sample.remote(shard, self.setup, sent.update),
                         self.cfg.max_shard_retries, sent.stats, self.on_dispatch)
        except RolloutError:  # the fleet gave up on a shard: the caller samples it
            pass

    def _wait(self, sent: InFlight) -> None:
        if sent.future is not None:
            sent.future.result()

    def _finish(self, sent: InFlight, step: int) -> list[Sampled]:
        """`sent`'s rollouts in order, the shards the fleet lost sampled here with the live model."""
        self._wait(sent)
        for shard in sent.shards:
            if shard.index not in sent.done:
                sent.done[shard.index] = sample_shard(self.local, shard, step)
                sent.stats.local_shards += 1
        rolled = [s for shard in sent.shards for s in sent.done[shard.index]]
        sent.stats.staleness = sum(step - s.trajectory.meta["weights_step"] for s in rolled) / max(len(rolled), 1)
        return rolled
