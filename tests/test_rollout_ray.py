"""Rollouts on Ray actors: one local cluster per test session, kept on loopback (DESIGN.md §8).

The cluster is started by the project's own `rollout.cluster.connect` with `HOME` pointed at a
temporary folder, so the fixture also checks the local path writes the bootstrap config there.
"""

from __future__ import annotations

import os
from dataclasses import replace

import numpy as np
import pytest
from test_rollout_support import tiny_checkpoint

from rollout import RolloutConfig, RolloutDir, rollout
from rollout.cluster import BOOTSTRAP, BOOTSTRAP_TEXT, connect
from selfplay.shapeworld import make_suite

ray = pytest.importorskip("ray")


@pytest.fixture(scope="session")
def ray_cluster(tmp_path_factory):
    if ray.is_initialized():
        ray.shutdown()
    home = tmp_path_factory.mktemp("ray-home")
    old = os.environ.get("HOME")
    os.environ["HOME"] = str(home)
    try:
        connect(num_cpus=2, object_store_mb=100)
    finally:
        if old is None:
            del os.environ["HOME"]
        else:
            os.environ["HOME"] = old
    assert (home / BOOTSTRAP).read_text() == BOOTSTRAP_TEXT
    assert os.environ["RAY_USAGE_STATS_ENABLED"] == "0" and os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] == "0"
    yield ray
    ray.shutdown()


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    return tiny_checkpoint(tmp_path_factory)


CFG = RolloutConfig(actors=2, actor_cpus=0.5, shard_size=2, batch_size=8, max_steps=2, max_text_tokens=6,
                    max_shard_retries=2)


def same_trajectories(a, b) -> bool:
    return len(a) == len(b) and all(
        x.meta == y.meta and x.prompt == y.prompt
        and [(s.instruction, s.description, s.inspection) for s in x.steps]
        == [(s.instruction, s.description, s.inspection) for s in y.steps]
        and all(np.array_equal(i, j) for i, j in zip(x.images(), y.images()))
        for x, y in zip(a, b))


def test_actors_compute_what_one_process_computes(ray_cluster, checkpoint, tmp_path):
    """Shards carry their own seeds: where they run does not change a single token."""
    records = make_suite("test", 1, 0)  # 6 records, 3 shards
    summary = rollout(records, tmp_path / "ray", CFG, checkpoint=checkpoint, progress=False)
    assert summary.trajectories == 6 and summary.shards_computed == 3 and summary.retries == 0
    rollout(records, tmp_path / "local", replace(CFG, actors=0), checkpoint=checkpoint, progress=False)
    assert same_trajectories(RolloutDir(tmp_path / "ray").trajectories(), RolloutDir(tmp_path / "local").trajectories())


@pytest.mark.parametrize("no_restart", [pytest.param(True, id="killed"),
                                        pytest.param(False, id="restarted", marks=pytest.mark.slow)])
def test_killed_actor_loses_no_trajectory(ray_cluster, checkpoint, tmp_path, no_restart):
    """Kill an actor right after it is handed a shard (asynchronously, as ray.kill is): the shard
    fails with ActorDiedError (killed for good) or ActorUnavailableError (restarting) and is redone
    elsewhere; every trajectory is written exactly once, identical to an undisturbed run."""
    records = make_suite("test", 2, 0)  # 12 records, 6 shards
    killed = []

    def kill_third(index: int, actor) -> None:
        if index == 2 and not killed:
            ray.kill(actor, no_restart=no_restart)
            killed.append(index)

    summary = rollout(records, tmp_path / "ray", CFG, checkpoint=checkpoint, on_dispatch=kill_third, progress=False)
    assert killed and summary.retries >= 1 and summary.shards_computed == 6
    trajs = RolloutDir(tmp_path / "ray").trajectories()
    assert sorted((t.meta["index"], t.meta["sample"]) for t in trajs) == [(i, 0) for i in range(12)]
    rollout(records, tmp_path / "local", replace(CFG, actors=0), checkpoint=checkpoint, progress=False)
    assert same_trajectories(trajs, RolloutDir(tmp_path / "local").trajectories())
