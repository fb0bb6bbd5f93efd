"""GRPO rollouts on the Ray fleet: each step's weights go to the actors through the object store, a
step's trajectories do not depend on where its shards ran, and an actor lost mid-step costs none.

The cluster is the test session's one `ray_cluster` (tests/conftest.py).
"""

from __future__ import annotations

import gzip
import json
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from test_loop import base_checkpoint, stages, tiny_config  # noqa: F401  (fixture)
from test_rollout_ray import same_trajectories
from test_rollout_support import tiny_checkpoint

from rollout import Engine, RolloutConfig, RolloutDir, RolloutFleet, rollout
from rollout.steps import FleetRollouts, step_shards
from rollout.sync import WeightPublisher
from rollout.worker import sample_shard
from selfplay.cli import main
from selfplay.config import load_config
from strokes.model.policy import Policy
from strokes.shapeworld import make_suite

ray = pytest.importorskip("ray")

CFG = RolloutConfig(actors=2, actor_cpus=0.5, batch_size=8, max_steps=2, max_refines=1, max_text_tokens=8,
                    max_shard_retries=2)
SEED, STEP = 11, 3


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    return tiny_checkpoint(tmp_path_factory)


@pytest.fixture(scope="module")
def fleet(ray_cluster, checkpoint):
    with RolloutFleet(CFG) as f:
        yield f


def trained(checkpoint, lora: bool):
    """The policy as a trainer holds it some steps into a round: weights moved away from the
    checkpoint (full fine-tuning), or peft LoRA layers injected into the model in place, as TRL's
    `GRPOTrainer` injects them, with non-zero weights. Returns (policy, the LoRA config or None)."""
    torch.manual_seed(5)
    policy = Policy.from_pretrained(checkpoint)
    config = None
    if lora:
        from peft import LoraConfig, get_peft_model

        config = LoraConfig(r=4, lora_alpha=16, target_modules=["q_proj", "v_proj"], init_lora_weights=False,
                            task_type="CAUSAL_LM")
        get_peft_model(policy.model, config)  # injects into policy.model; only the adapter trains
    else:
        with torch.no_grad():
            for p in policy.model.parameters():
                p.add_(0.05 * torch.randn_like(p))
    return policy, config


def tokens(rolled) -> list:
    return [(s.prompt_ids, s.completion_ids, s.chosen, s.legal, s.trajectory.meta) for s in rolled]


def same(a, b) -> bool:
    return tokens(a) == tokens(b) and all(torch.allclose(torch.tensor(x.logprobs), torch.tensor(y.logprobs), atol=1e-5)
                                          for x, y in zip(a, b))


def in_process(engine, records) -> list:
    """The step computed in this process, shard by shard with the same seeds."""
    return [s for shard in step_shards(records, SEED, CFG.actors, CFG.shard_size)
            for s in sample_shard(engine, shard, STEP)]


@pytest.mark.parametrize("lora", [False, True], ids=["full", "lora"])
def test_a_steps_trajectories_are_the_same_in_process_and_on_two_actors(fleet, checkpoint, lora, tmp_path):
    """The actors hold the round's checkpoint; the step's weights (all of them, or the LoRA deltas)
    arrive through the object store, and every trajectory is the one this process samples from the
    same weights with the same shard seeds, token for token, and records the step it came from. A
    plain rollout on the fleet afterwards gets the checkpoint's own weights back."""
    torch.set_num_threads(1)
    policy, config = trained(checkpoint, lora)
    engine = Engine(policy, CFG)
    records = make_suite("train", 1, 0)
    publisher = WeightPublisher(policy.model, config)
    draw = FleetRollouts(fleet, replace(CFG, actors=0), checkpoint, publisher, engine)
    rolled = draw(records, SEED, STEP)
    assert len(rolled) == len(records) and draw.stats.retries == 0 and draw.stats.local_shards == 0
    assert all(s.trajectory.meta["weights_step"] == STEP for s in rolled)
    assert same(rolled, in_process(engine, records))
    base = Engine(Policy.from_pretrained(checkpoint), CFG)
    assert not same(rolled, in_process(base, records))  # the update was applied: not the checkpoint's own
    # a plain rollout on the same fleet afterwards (the round's eval) samples the checkpoint's own weights
    out = rollout(records, tmp_path / "after", replace(CFG, shard_size=3), checkpoint=checkpoint, fleet=fleet,
                  progress=False)
    rollout(records, tmp_path / "local", replace(CFG, actors=0, shard_size=3), checkpoint=checkpoint, progress=False)
    assert out.shards_computed == 2 and same_trajectories(RolloutDir(tmp_path / "after").trajectories(),
                                                          RolloutDir(tmp_path / "local").trajectories())
    if lora:  # only the adapter travels
        assert publisher.bytes < 0.2 * sum(
            p.numel() * 4 for p in policy.model.parameters())


def test_an_actor_killed_mid_step_costs_no_trajectory(fleet, checkpoint):
    """Kill the actor given the step's first shard: the shard reruns on another actor and the step
    has every trajectory, identical to an undisturbed step. With no retries left the fleet gives up
    on the shard and this process samples it from the same weights: still the same step."""
    torch.set_num_threads(1)
    policy, _ = trained(checkpoint, lora=False)
    engine = Engine(policy, CFG)
    records = make_suite("train", 1, 0)
    expected = in_process(engine, records)
    for retries, where in ((2, "another actor"), (0, "this process")):
        killed = []

        def kill_first(index: int, actor, killed=killed) -> None:
            if not killed:
                ray.kill(actor, no_restart=True)
                killed.append(index)

        draw = FleetRollouts(fleet, replace(CFG, actors=0, max_shard_retries=retries), checkpoint,
                             WeightPublisher(policy.model), engine, on_dispatch=kill_first)
        rolled = draw(records, SEED, STEP)
        assert killed and draw.stats.retries >= 1, where
        assert (draw.stats.local_shards >= 1) == (where == "this process")
        assert len(rolled) == len(records) and same(rolled, expected), where
        assert draw.stats.metrics()["rollout/retries"] == draw.stats.retries



def test_a_step_sampled_ahead_is_the_one_its_weights_would_sample_and_a_wrong_guess_is_sampled_again(fleet,
                                                                                                     checkpoint):
    """`max_staleness`: step 0's call also sends step 1's prompts; the trainer then updates its
    weights, and step 1 takes the rollouts sent ahead: drawn from step 0's weights (each records
    it), token for token what this process samples from those weights. A step whose prompts are not
    the ones sent ahead waits for that work, drops it and samples from the live weights."""
    torch.set_num_threads(1)
    policy, _ = trained(checkpoint, lora=False)
    engine = Engine(policy, CFG)
    records = make_suite("train", 1, 0)
    first, second = records[:3], records[3:]
    draw = FleetRollouts(fleet, replace(CFG, actors=0), checkpoint, WeightPublisher(policy.model), engine)
    draw(first, SEED, 0, [(second, SEED + 1)])
    assert set(draw.ahead) == {1} and draw.stats.staleness == 0
    expected = [s for shard in step_shards(second, SEED + 1, CFG.actors, CFG.shard_size)
                for s in sample_shard(engine, shard, 0)]  # step 0's weights, before the update below
    with torch.no_grad():  # the trainer's update of step 0
        for p in policy.model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    rolled = draw(second, SEED + 1, 1, [(first, SEED + 2)])
    assert draw.stats.staleness == 1 and draw.stats.ahead_misses == 0 and same(rolled, expected)
    again = draw(second, SEED + 2, 2)  # not what was sent ahead for step 2
    assert draw.stats.ahead_misses == 1 and draw.stats.staleness == 0 and not draw.ahead
    assert {s.trajectory.meta["weights_step"] for s in again} == {2}
    draw(first, SEED, 3, [(second, SEED + 4)])
    draw.close()  # a round that ends with a step in flight: the fleet is free afterwards
    assert not draw.ahead


def two_actor_grpo_round(tmp_path: Path, base_checkpoint: Path, **grpo) -> tuple[Path, list[dict]]:
    """A one-round GRPO run (2 steps) with `rollout.actors: 2` and `train.grpo` overrides `grpo`: its
    folder, after checking the round's stages ran, and its steps' log lines."""
    cfg = tiny_config(tmp_path, base_checkpoint, loop={"rounds": 1, "control": False},
                      rollout={"actors": 2, "actor_cpus": 0.5},
                      train={"method": "grpo", "lr": 1e-3,
                             "grpo": {"steps": 2, "prompts_per_step": 2, "generations": 2, "prompts": 6, **grpo}})
    assert main(["run", str(cfg), "--runs", str(tmp_path / "runs"), "--name", "g"]) == 0
    run = tmp_path / "runs" / "g"
    assert {"1:checkpoint", "1:eval", "1:promote"} <= set(stages(run))
    events = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    steps = [e for e in events if e["event"] == "train" and "reward" in e]
    assert [e["step"] for e in steps] == [1, 2]
    return run, steps


@pytest.mark.slow
def test_a_grpo_round_on_two_actors_end_to_end(ray_cluster, tmp_path, base_checkpoint):  # noqa: F811
    """`rollout.actors: 2` in a GRPO round: the loop's fleet samples every step with none of its
    shards lost or sampled here, the weight sync is logged, the weights move, and the round's eval
    runs on the same fleet afterwards, from the trained checkpoint."""
    run, steps = two_actor_grpo_round(tmp_path, base_checkpoint)
    assert all(e["rollout/retries"] == 0 and e["rollout/in_process_shards"] == 0 and e["time/weight_sync"] > 0
               for e in steps)
    trained = Policy.from_pretrained(run / "round_001" / "checkpoint" / "checkpoint")
    base = Policy.from_pretrained(base_checkpoint)
    assert any(not torch.equal(a, b) for a, b in zip(trained.model.parameters(), base.model.parameters()))


@pytest.mark.slow
def test_sample_on_trainer_keeps_the_steps_here_and_the_actors_for_evaluation(ray_cluster, tmp_path,
                                                                             base_checkpoint):  # noqa: F811
    """`train.grpo.sample_on: trainer`: the run has actors, but every GRPO step samples in the
    trainer's process from its live weights and nothing is published to the actors; the round's
    eval still runs on them."""
    _, steps = two_actor_grpo_round(tmp_path, base_checkpoint, sample_on="trainer")
    assert not any(k.startswith(("time/weight_sync", "rollout/in_process_shards")) for e in steps for k in e)


@pytest.mark.slow
def test_a_grpo_round_with_rollouts_one_step_ahead_of_training(ray_cluster, tmp_path, base_checkpoint,
                                                               monkeypatch):  # noqa: F811
    """`max_staleness: 1` in a run: step 2's rollouts were sampled on the fleet from step 1's
    weights while step 1 trained (the trainer's prompt order predicted, nothing sampled twice), and
    both steps' losses take the PPO ratio against the log-probs the rollouts were sampled with."""
    from trl import GRPOTrainer

    olds = []
    compute = GRPOTrainer._compute_loss

    def spy(self, model, inputs):
        olds.append(inputs.get("old_per_token_logps"))
        return compute(self, model, inputs)

    monkeypatch.setattr(GRPOTrainer, "_compute_loss", spy)
    run, steps = two_actor_grpo_round(tmp_path, base_checkpoint, max_staleness=1)
    assert [e["rollout/staleness"] for e in steps] == [0, 1] and all(e["rollout/ahead_misses"] == 0 for e in steps)
    assert len(olds) == 2 and all(o is not None for o in olds)
    kept = [json.loads(line) for line in gzip.open(run / "round_001" / "checkpoint" / "trajectories" /
                                                   "step_00002.jsonl.gz", "rt")]
    assert {json.loads(row["meta"])["weights_step"] for row in kept} == {0}


def test_rollouts_ahead_need_the_fleet(tmp_path, base_checkpoint):  # noqa: F811
    from strokes.errors import InputError

    path = tiny_config(tmp_path, base_checkpoint, train={"method": "grpo", "grpo": {"max_staleness": 1}})
    with pytest.raises(InputError, match="train.grpo.max_staleness: rollouts sampled ahead of training need the fleet"):
        load_config(path)


def test_the_cluster_grpo_layout_keeps_gpu_0_for_the_trainer(tmp_path):
    """configs/cluster-grpo.yaml on an 8-GPU node: the trainer on GPU 0, one actor on each of the
    others; on 4 GPUs the layout does not fit and says so; actors at half a GPU pack two per GPU, and
    a trainer left without a reserved GPU is told it shares one."""
    from selfplay.config import load_config
    from selfplay.placement import grpo_placement

    cfg = load_config("configs/cluster-grpo.yaml")
    placed = grpo_placement(cfg, 8)
    assert placed["trainer"] == [0] and placed["actors"] == [[g] for g in range(1, 8)] and not placed["warnings"]
    assert "needs 8 GPUs" in grpo_placement(cfg, 4)["warnings"][0]
    half = load_config("configs/cluster-grpo.yaml", ["rollout.num_gpus_per_actor=0.5", "rollout.actors=4"])
    assert grpo_placement(half, 8)["actors"] == [[1], [1], [2], [2]] and grpo_placement(half, 8)["gpus_idle"] == 5
    shared = load_config("configs/cluster-grpo.yaml", ["rollout.reserved_gpus=0"])
    assert "shares GPU 0" in grpo_placement(shared, 8)["warnings"][0]


def test_reserved_gpus_apply_to_a_local_cluster_only():
    from strokes.errors import InputError

    with pytest.raises(InputError, match="rollout.reserved_gpus"):
        RolloutConfig(reserved_gpus=1, ray_address="auto")
