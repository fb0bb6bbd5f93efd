"""The rollout worker: computes shards with an `Engine`, in this process or as a Ray actor.

`pool.rollout` runs one in-process, or hands shards to the Ray actors of a `fleet.RolloutFleet`,
each of them a `ShardWorker`; both modules import it from here, so neither imports the other's
classes to make a worker.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from strokes.trajectory import Trajectory

from .config import RolloutConfig
from .engine import Engine, Sampled
from .shards import Shard, label
from .sync import WeightUpdate
from .weights import PolicySlot


@dataclass
class Setup:
    """What a rollout call asks of every actor: the checkpoint to hold and the engine settings.
    Each shard carries it, so an actor that restarted (and came back empty) catches up before it
    computes. `judge` is `[ObjectRef]` or `[]`: nested in a list so Ray does not fetch the judge
    with every shard; the actor fetches it once per `version` (one per call)."""

    checkpoint: str
    cfg: RolloutConfig
    judge: list
    version: str


class ShardWorker:
    """Computes shards with an `Engine`. In-process it wraps a given policy or loads `checkpoint`;
    as a Ray actor (in a `RolloutFleet`) it starts empty, `load`s checkpoints into the policy it
    holds (`weights.PolicySlot`: in place, or an adapter swap), and keeps to one torch thread
    (docs/design.md §8: two threads per process collapse when the other core is busy)."""

    def __init__(self, checkpoint: str | None, cfg: RolloutConfig, judge=None, policy=None,
                 single_thread: bool = False) -> None:
        import torch

        if single_thread:
            torch.set_num_threads(1)
        self.slot = PolicySlot(policy)
        if policy is None and checkpoint is not None:
            self.slot.load(checkpoint)
        self.engine = Engine(self.slot.policy, cfg, judge) if self.slot.policy is not None else None
        self.version = ""

    def load(self, checkpoint: str) -> str:
        """Hold `checkpoint` (see `PolicySlot.load` for how it is brought in); the engine is rebuilt
        at the next shard."""
        how = self.slot.load(checkpoint)
        if how != "same":
            self.engine, self.version = None, ""
        return how

    def prepare(self, setup: Setup, update: WeightUpdate | None = None) -> None:
        """Hold `setup.checkpoint` and, with an `update`, the trainer's weights on top of it; a shard
        without one, or with another series', gets the checkpoint's own weights back first."""
        held = self.slot.update
        if (self.slot.checkpoint != Path(setup.checkpoint)
                or (held is not None and (update is None or not held.startswith(update.series + ":")))):
            self.load(setup.checkpoint)
        if update is not None and self.slot.update != update.key:
            import ray

            self.slot.apply(update.key, ray.get(update.tensors[0]), update.lora)
            if self.engine is not None and self.engine.model is not self.slot.policy.model:
                self.engine = None  # LoRA layers went on: the engine is rebuilt around the new model
        if self.engine is None or self.version != setup.version:
            judge = None
            if setup.judge:
                import ray

                judge = ray.get(setup.judge[0])
            self.engine = Engine(self.slot.policy, setup.cfg, judge)
            self.version = setup.version

    def run(self, shard: Shard, on_done: Callable[[int, Trajectory], None] | None = None,
            setup: Setup | None = None) -> list[Trajectory]:
        if setup is not None:
            self.prepare(setup)
        trajs = self.engine.run(shard.prompts, seed=shard.seed, on_done=on_done)
        return [label(t, shard, n) for n, t in enumerate(trajs)]

    def sample(self, shard: Shard, setup: Setup, update: WeightUpdate) -> list[Sampled]:
        """An RL step's shard, from the checkpoint with the step's weights on top (`sample_shard`)."""
        self.prepare(setup, update)
        return sample_shard(self.engine, shard, update.step)

    def pid(self) -> int:
        return os.getpid()


def sample_shard(engine: Engine, shard: Shard, step: int) -> list[Sampled]:
    """A shard's rollouts for RL (`Engine.sample` with the shard's own seed), each trajectory stamped
    with its work item and the trainer step whose weights sampled it (`meta["weights_step"]`)."""
    rolled = engine.sample(shard.prompts, seed=shard.seed)
    for n, s in enumerate(rolled):
        label(s.trajectory, shard, n).meta["weights_step"] = step
    return rolled
