"""Running a rollout: shards on this process or on a pool of Ray actors; the driver writes them.

`rollout(prompts, out, cfg, checkpoint=...)` cuts the work into shards (see `shards.py`), skips the
shards a previous run already finished, and computes the rest, either in this process (`actors=0`)
or on Ray actors that each hold the policy (fractional CPUs, one torch thread each;
`num_gpus_per_actor` on a GPU cluster). The actors are a `RolloutFleet` (`fleet.py`): passed in,
it outlives the call and only reloads when `checkpoint` differs from what it holds; otherwise one
is started for this call and closed after it. Failures are classified as the design asks: an actor
that dies or restarts (infrastructure) costs its shard a retry on another actor, up to
`max_shard_retries`, and a dead actor is replaced while that budget lasts; a bad trajectory (data)
is counted in the shard and never retried. Only the driver writes, one shard at a time,
atomically; a progress bar shows trajectories done, the rate and failures.
"""

from __future__ import annotations

import time
import uuid
from collections import Counter, deque
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Callable, Sequence

from strokes.errors import InputError
from strokes.trajectory import Trajectory

from .config import RolloutConfig
from .engine import Prompt
from .fleet import RolloutFleet
from .shards import Manifest, RolloutDir, Shard, make_shards
from .weights import checkpoint_path
from .worker import Setup, ShardWorker


class RolloutError(RuntimeError):
    """The rollout could not finish for an infrastructure reason (shards already written stay)."""


@dataclass
class Summary:
    trajectories: int = 0
    failed: int = 0
    tokens: int = 0
    shards: int = 0
    shards_computed: int = 0  # in this run
    trajectories_computed: int = 0  # in this run
    shards_skipped: int = 0  # finished by an earlier run
    retries: int = 0  # shard attempts lost to dead or restarting actors
    seconds: float = 0.0
    startup_seconds: float = 0.0  # Ray: until every actor held the checkpoint (start and/or reload)
    failures: dict = field(default_factory=dict)  # reason -> count

    def to_json(self) -> dict:
        d = asdict(self)
        computed = self.trajectories_computed
        d["trajectories_per_second"] = computed / self.seconds if self.seconds else 0.0
        return d


def rollout(prompts: Sequence[Prompt], out: str | Path, cfg: RolloutConfig | None = None, *,
            checkpoint: str | Path | None = None, policy=None, judge=None, samples: int = 1,
            progress: bool = True, on_shard: Callable[[int], None] | None = None,
            on_dispatch: Callable[[int, object], None] | None = None,
            fleet: RolloutFleet | None = None) -> Summary:
    """Roll `samples` trajectories per prompt into `out`, resuming whatever an earlier run with the
    same manifest finished. In-process runs use `policy` (or load `checkpoint`); Ray actors hold
    `checkpoint`: those of `fleet` when given (reloaded first if they hold another checkpoint; with
    no `checkpoint`, what they hold), else `cfg.actors` actors started for this call. A checkpoint is
    a full one or a LoRA adapter folder (`weights.py`). `on_shard(index)` runs after each shard is
    written; `on_dispatch(index, actor)` after each shard is sent to an actor."""
    cfg = (cfg or RolloutConfig()).validate()
    if samples < 1:
        raise InputError(f"samples: must be at least 1, got {samples}")
    if not prompts:
        raise InputError("prompts: nothing to roll out")
    if checkpoint is not None:
        checkpoint = checkpoint_path(checkpoint)
    if fleet is not None and checkpoint is None and fleet.checkpoint is None:
        raise InputError("rollout: the fleet holds no checkpoint yet; pass one")
    if fleet is None and cfg.actors and checkpoint is None:
        raise InputError("rollout.actors: Ray actors load the policy from a checkpoint; pass one")
    if fleet is None and not cfg.actors and policy is None and checkpoint is None:
        raise InputError("rollout: pass a policy or a checkpoint")

    folder = RolloutDir(out)
    folder.open(Manifest.of(prompts, cfg.mode, cfg.seed, samples, cfg.shard_size))
    shards = make_shards(prompts, samples, cfg.shard_size, cfg.seed)
    done = set(folder.finished())
    todo = [s for s in shards if s.index not in done]
    summary = Summary(shards=len(shards), shards_skipped=len(shards) - len(todo))
    t0 = time.perf_counter()
    from tqdm import tqdm

    total = sum(len(s.items) for s in shards)
    bar = tqdm(total=total, initial=total - sum(len(s.items) for s in todo), unit="traj", desc="rollout",
               disable=not progress or None, smoothing=0.1)
    failed = [0]
    on_ray = fleet is not None or bool(cfg.actors)

    def write(shard: Shard, trajs: list[Trajectory]) -> None:
        folder.write_shard(shard.index, trajs)
        summary.shards_computed += 1
        summary.trajectories_computed += len(trajs)
        failed[0] += sum("failed" in t.meta for t in trajs)
        if on_ray:
            bar.update(len(trajs))
        bar.set_postfix(failed=failed[0], refresh=False)
        if on_shard is not None:
            on_shard(shard.index)

    try:
        if on_ray and todo:
            own = fleet is None
            actors = fleet or RolloutFleet(replace(cfg, actors=min(cfg.actors, len(todo))))
            try:
                t_load = time.perf_counter()
                actors.hold(checkpoint or actors.checkpoint)
                summary.startup_seconds = time.perf_counter() - t_load
                import ray

                setup = Setup(str(actors.checkpoint), cfg, [ray.put(judge)] if judge is not None else [],
                              uuid.uuid4().hex)
                run_on_fleet(todo, write, actors, lambda actor, shard: actor.run.remote(shard, None, setup),
                             cfg.max_shard_retries, summary, on_dispatch)
            finally:
                if own:
                    actors.close()
        elif todo:
            worker = ShardWorker(str(checkpoint) if checkpoint else None, cfg, judge, policy)
            for shard in todo:
                write(shard, worker.run(shard, on_done=lambda k, t: bar.update(1)))
    finally:
        bar.close()
    summary.seconds = time.perf_counter() - t0
    reasons: Counter = Counter()
    for i in folder.finished():
        for meta in folder.shard_meta(i):
            summary.trajectories += 1
            summary.tokens += int(meta.get("tokens", 0))
            if "failed" in meta:
                reasons[meta["failed"]] += 1
    summary.failed = sum(reasons.values())
    summary.failures = dict(reasons)
    folder.write_summary(summary.to_json())
    return summary


def run_on_fleet(todo: list[Shard], write: Callable[[Shard, list], None], fleet: RolloutFleet,
                 submit: Callable[[object, Shard], object], max_retries: int, summary,
                 on_dispatch: Callable[[int, object], None] | None = None) -> None:
    """Hand the shards to the fleet's actors (`submit(actor, shard)` starts the remote call and
    returns its reference; `write(shard, result)` takes each result); a lost shard goes back to the
    queue for another actor, and an actor that died for good is replaced in the fleet (at most
    `max_retries` per call). `summary.retries` counts the shard attempts lost."""
    import ray
    from ray.exceptions import ActorUnavailableError, RayActorError

    replaced = 0
    idle = deque(fleet.actors)
    queue = deque(todo)
    attempts: Counter = Counter()
    inflight: dict = {}

    def replace(actor) -> None:
        nonlocal replaced
        if replaced < max_retries:
            idle.append(fleet.replace(actor))
            replaced += 1
        else:
            fleet.retire(actor)

    while queue or inflight:
        while queue and idle:
            shard, actor = queue.popleft(), idle.popleft()
            inflight[submit(actor, shard)] = (shard, actor)
            if on_dispatch is not None:
                on_dispatch(shard.index, actor)
        if not inflight:
            raise RolloutError("no rollout actor is left alive")
        ready, _ = ray.wait(list(inflight), num_returns=1, timeout=1.0)
        for ref in ready:
            shard, actor = inflight.pop(ref)
            if shard is None:  # the readiness probe of a restarting actor
                try:
                    ray.get(ref)
                    idle.append(actor)
                except ActorUnavailableError:  # still restarting: probe again shortly
                    time.sleep(0.2)
                    inflight[actor.pid.remote()] = (None, actor)
                except RayActorError:  # it did not come back
                    replace(actor)
                continue
            try:
                trajs = ray.get(ref)
            except (RayActorError, ActorUnavailableError) as e:
                attempts[shard.index] += 1
                summary.retries += 1
                if attempts[shard.index] > max_retries:
                    raise RolloutError(f"shard {shard.index} lost its actor {attempts[shard.index]} times: "
                                       f"{type(e).__name__}") from e
                queue.appendleft(shard)  # to the next idle actor: not the one that just failed
                if isinstance(e, ActorUnavailableError):
                    # restarting (max_restarts): it rejoins the idle pool once it answers again, so
                    # the shard is not handed straight back to an actor that is still down; it came
                    # back empty and loads `setup.checkpoint` with its next shard
                    inflight[actor.pid.remote()] = (None, actor)
                else:
                    replace(actor)
                continue
            write(shard, trajs)
            idle.append(actor)
