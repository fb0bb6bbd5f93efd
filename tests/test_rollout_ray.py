"""Rollouts on Ray actors: one local cluster per test session, kept on loopback (docs/design.md §8).

The cluster is the test session's one `ray_cluster` (tests/conftest.py).
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
from test_rollout_support import tiny_checkpoint

from rollout import RolloutConfig, RolloutDir, rollout
from strokes.shapeworld import make_suite

ray = pytest.importorskip("ray")


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


# ---- a fleet: actors that outlive a rollout call --------------------------------------------------------

@pytest.fixture(scope="module")
def checkpoints(checkpoint, tmp_path_factory):
    """Two more checkpoints beside the shared one: a policy with other weights (same architecture
    and processor: a later round), and a LoRA adapter on that policy saved the way `trainer.sft.train`
    saves with `lora.merge: false` (`policy.model` is the PeftModel; `policy.save_pretrained` writes
    adapter_config.json + adapter_model.safetensors + the processor, and peft records the folder the
    base was loaded from). Random LoRA weights (not peft's zero init), so the adapter changes outputs."""
    import torch
    from peft import LoraConfig, get_peft_model
    from test_rollout_support import TINY

    from strokes.model.policy import Policy

    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("fleet")
    Policy.build(replace(TINY, seed=1), processor=Policy.from_pretrained(checkpoint).processor).save_pretrained(root / "b")
    b = Policy.from_pretrained(root / "b")
    torch.manual_seed(2)
    b.model = get_peft_model(b.model, LoraConfig(r=4, lora_alpha=16, target_modules=["q_proj", "v_proj"],
                                                 init_lora_weights=False))
    b.save_pretrained(root / "b-lora")
    return {"a": checkpoint, "b": root / "b", "b-lora": root / "b-lora"}


@pytest.mark.slow
def test_a_fleet_reloads_checkpoints_into_the_same_processes(ray_cluster, checkpoints, tmp_path):
    """One fleet, one rollout per checkpoint: the same two processes serve every call, each call's
    trajectories equal an in-process rollout from that checkpoint token for token (so a reload
    leaves nothing of the previous weights behind), full checkpoints are copied into the loaded
    model, and a LoRA adapter goes on top of its base and comes off again. An actor killed for good
    is replaced by one that loads the checkpoint the fleet holds now, not the first one; a closed
    fleet starts afresh at its next rollout."""
    from rollout.fleet import RolloutFleet

    records = make_suite("test", 1, 0)  # 6 records, 3 shards
    expected = {}
    for name, ck in checkpoints.items():
        rollout(records, tmp_path / f"local-{name}", replace(CFG, actors=0), checkpoint=ck, progress=False)
        expected[name] = RolloutDir(tmp_path / f"local-{name}").trajectories()
    assert not same_trajectories(expected["a"], expected["b"]) and not same_trajectories(expected["b"], expected["b-lora"])

    def roll(name: str, fleet, **kw):
        out = tmp_path / f"{name}-{len(list(tmp_path.iterdir()))}"
        summary = rollout(records, out, CFG, checkpoint=checkpoints[name], fleet=fleet, progress=False, **kw)
        assert summary.shards_computed == 3
        return RolloutDir(out).trajectories()

    with RolloutFleet(CFG) as fleet:
        assert same_trajectories(roll("a", fleet), expected["a"])  # starts the actors
        pids = fleet.pids()
        assert fleet.reload(checkpoints["b"])["how"] == {"in_place": 2}
        assert same_trajectories(roll("b", fleet), expected["b"])  # held already: no reload
        assert same_trajectories(roll("b-lora", fleet), expected["b-lora"])  # rollout reloads by itself
        assert same_trajectories(roll("a", fleet), expected["a"])  # the adapter came off, a's weights went in
        assert fleet.pids() == pids and dict(fleet.loads) == {"fresh": 2, "in_place": 4, "in_place+adapter": 2}
        killed = []

        def kill_first(index: int, actor) -> None:
            if not killed:
                ray.kill(actor, no_restart=True)
                killed.append(index)

        assert same_trajectories(roll("b", fleet, on_dispatch=kill_first), expected["b"])
        assert killed and len(fleet.actors) == 2 and len(set(fleet.pids()) & set(pids)) == 1
        fleet.close()  # e.g. to hand the GPUs to training; the next rollout starts new actors
        assert not fleet.actors and same_trajectories(roll("b-lora", fleet), expected["b-lora"])
        assert len(fleet.actors) == 2 and not set(fleet.pids()) & set(pids)
