"""Rollout actors that outlive a rollout call: started once per run, reloaded between rounds.

Each round's rollouts, every eval mode and the strips used to start their own Ray actors and load
the policy, so a run paid a process start, the imports and a full model load (on a GPU: a CUDA
context and a fresh allocation) per call. A `RolloutFleet` holds `cfg.actors` actors
(`worker.ShardWorker`) for as long as the caller keeps it:

    fleet = RolloutFleet(cfg.rollout)                       # no process starts yet
    rollout(records, out, cfg, checkpoint=ck0, fleet=fleet) # starts the actors, each loads ck0
    rollout(records, out2, cfg, checkpoint=ck1, fleet=fleet)# same processes, ck1 loaded in place
    fleet.close()

`hold(checkpoint)` (which `rollout` calls) reloads only when the checkpoint differs from what the
fleet holds; each actor brings it into the policy it has (`weights.PolicySlot`): a full checkpoint
is copied into the existing weights, a LoRA adapter folder goes on the base weights with peft.

Crash safety is the pool's (`pool._run_on_ray`): every shard carries the fleet's checkpoint, so
an actor that Ray restarted (it comes back empty) loads it before computing; an actor that died is
replaced here and the replacement loads with its first shard. Actor resources (`actor_cpus`,
`num_gpus_per_actor`, `ray_address`) are the fleet's config; the decoding settings are each call's.
Dropping the last reference to a fleet also ends its actors (Ray ends an actor with its handles).
"""

from __future__ import annotations

import time
from collections import Counter
from dataclasses import replace
from pathlib import Path

from strokes.errors import InputError

from .cluster import connect
from .config import RolloutConfig
from .weights import checkpoint_path
from .worker import ShardWorker


class RolloutFleet:
    """`cfg.actors` long-lived Ray rollout actors holding one checkpoint (module docstring)."""

    def __init__(self, cfg: RolloutConfig, checkpoint: str | Path | None = None) -> None:
        self.cfg = replace(cfg).validate()
        if self.cfg.actors < 1:
            raise InputError(f"rollout.actors: a fleet needs at least one actor, got {self.cfg.actors}")
        self.actors: list = []
        self.checkpoint: Path | None = None
        self.loads: Counter = Counter()  # how actors brought checkpoints in ("fresh", "in_place", ...)
        self._class = None
        if checkpoint is not None:
            self.hold(checkpoint)

    # ---- actors ------------------------------------------------------------------------------------

    def _spawn(self):
        """A new, empty actor (it loads the fleet's checkpoint with its first shard or `hold`)."""
        if self._class is None:
            import ray

            connect(self.cfg.ray_address, self.cfg.ray_cpus, self.cfg.object_store_mb, self.cfg.reserved_gpus)
            self._class = ray.remote(ShardWorker).options(
                num_cpus=self.cfg.actor_cpus, num_gpus=self.cfg.num_gpus_per_actor, max_restarts=1,
                max_task_retries=0)
        actor = self._class.remote(None, self.cfg, None, None, True)
        self.actors.append(actor)
        return actor

    def replace(self, dead):
        """Swap an actor that died for a new one; returns the new one."""
        self.retire(dead)
        return self._spawn()

    def retire(self, dead) -> None:
        """Forget an actor that died (it is killed, in case it is only unreachable)."""
        import ray

        self.actors = [a for a in self.actors if a is not dead]
        try:
            ray.kill(dead, no_restart=True)
        except Exception:  # already gone
            pass

    # ---- checkpoints ---------------------------------------------------------------------------------

    def hold(self, checkpoint: str | Path) -> dict:
        """Make every actor hold `checkpoint` (starting the actors on first use). A no-op when the
        fleet holds it already. Returns {"seconds": ..., "how": {how: actors}}."""
        import ray
        from ray.exceptions import ActorUnavailableError, RayActorError

        folder = checkpoint_path(checkpoint)  # a one-line InputError on the driver, not in every actor
        t0 = time.perf_counter()
        if folder == self.checkpoint:  # refill lost actors; new ones load with their first shard
            while len(self.actors) < self.cfg.actors:
                self._spawn()
            return {"seconds": 0.0, "how": {}}
        while len(self.actors) < self.cfg.actors:
            self._spawn()
        how: Counter = Counter()
        pending = {a.load.remote(str(folder)): a for a in self.actors}
        for ref, actor in pending.items():
            try:
                how[ray.get(ref)] += 1
            except ActorUnavailableError:  # restarting: it comes back empty and loads with its first shard
                how["restarting"] += 1
            except RayActorError:  # died: a new one loads with its first shard
                self.replace(actor)
                how["replaced"] += 1
        self.checkpoint = folder
        self.loads.update(how)
        return {"seconds": time.perf_counter() - t0, "how": dict(how)}

    def reload(self, checkpoint: str | Path) -> dict:
        """Load a new checkpoint into every actor, in place (the same as `hold`, named for the loop)."""
        return self.hold(checkpoint)

    def pids(self) -> list[int]:
        """The actors' process ids (a reload keeps them; a replaced or restarted actor changes its)."""
        import ray

        return ray.get([a.pid.remote() for a in self.actors])

    def close(self) -> None:
        """End the actors. The fleet stays usable: the next `hold` (or rollout) starts new ones, so a
        loop can close it while training needs the GPUs the actors hold."""
        import ray

        for a in self.actors:
            try:
                ray.kill(a)
            except Exception:  # already gone
                pass
        self.actors = []
        self.checkpoint = None

    def __enter__(self) -> "RolloutFleet":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
