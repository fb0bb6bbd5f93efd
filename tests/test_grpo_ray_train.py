"""GRPO on Ray Train workers (`train.distributed: ray`): every worker a rank of TRL's GRPOTrainer
that samples and trains its share of each step, and a worker killed mid-round resumes from the
last trainer checkpoint.

The cluster is the test session's one `ray_cluster` (tests/conftest.py).
"""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from pathlib import Path

import pytest
from test_loop import base_checkpoint, tiny_config  # noqa: F401  (fixture)

from selfplay.config import load_config
from selfplay.grpo import grpo_on_ray, grpo_prompts
from selfplay.run_dir import TRAJECTORIES

ray = pytest.importorskip("ray")
psutil = pytest.importorskip("psutil")


def train_workers_of_this_process() -> list[int]:
    """Process ids of the Ray Train workers of this test process's own cluster (descendants of it),
    never another session's."""
    me = psutil.Process()
    return [p.pid for p in me.children(recursive=True)
            if " ".join(p.cmdline()).startswith("ray::RayTrainWorker")]


def checkpointed_steps(out: Path) -> list[int]:
    """Trainer checkpoints whose save finished (trainer_state.json is written last)."""
    return sorted(int(p.name.split("-")[1]) for p in (out / "trainer").glob("checkpoint-*")
                  if (p / "trainer_state.json").is_file())


@pytest.mark.slow
def test_two_workers_train_a_grpo_round_and_resume_after_one_is_killed(ray_cluster, tmp_path, base_checkpoint):  # noqa: F811
    """Two CPU workers (gloo) each sample and train half of every step; one is killed with SIGKILL
    between steps (after the step-2 checkpoint is saved); Ray Train starts the group again and the
    round resumes from that checkpoint and finishes all its steps, the replicas in sync."""
    path = tiny_config(tmp_path, base_checkpoint, loop={"rounds": 1, "control": False},
                       train={"method": "grpo", "lr": 1e-3, "distributed": "ray", "workers": 2, "worker_cpus": 0.25,
                              "save_steps": 1, "worker_restarts": 1,
                              "grpo": {"steps": 4, "prompts_per_step": 2, "generations": 2, "prompts": 6}})
    cfg = load_config(path)
    out = tmp_path / "train"
    killed: list[int] = []

    def kill_one_worker_after_step_two() -> None:
        deadline = time.time() + 600
        while 2 not in checkpointed_steps(out) and time.time() < deadline:
            time.sleep(0.1)
        workers = train_workers_of_this_process()
        if workers:
            os.kill(workers[-1], signal.SIGKILL)
            killed.append(workers[-1])

    killer = threading.Thread(target=kill_one_worker_after_step_two, daemon=True)
    killer.start()
    summary = grpo_on_ray(cfg, base_checkpoint, grpo_prompts(cfg, 1), out)
    killer.join(timeout=5)
    assert killed, "no Ray Train worker was found to kill"
    assert summary["workers"] == summary["world_size"] == 2
    assert summary["steps"] == 4 and summary["complete"] and summary["resumed"]
    assert summary["replicas_in_sync"]
    steps = [json.loads(x)["step"] for x in (out / "metrics.jsonl").read_text().splitlines()
             if "reward" in json.loads(x)]
    assert steps[-1] == 4 and set(steps) == {1, 2, 3, 4}
    assert (out / "checkpoint" / "config.json").is_file()



@pytest.mark.slow
def test_a_run_with_distributed_ray_trains_its_grpo_round_on_the_workers(ray_cluster, tmp_path, base_checkpoint,  # noqa: F811
                                                                        capsys):
    """`selfplay run` with `train.distributed: ray` hands the GRPO round to Ray Train (a merge once
    dropped that branch and the round trained in the loop's process without a word): two ranks, the
    replicas in sync, the step trajectories kept, the round's judge cost in metrics.jsonl, and the
    console shows each step's line as in-process training does."""
    from selfplay.cli import main

    path = tiny_config(tmp_path, base_checkpoint, loop={"rounds": 1, "control": False},
                       train={"method": "grpo", "lr": 1e-3, "distributed": "ray", "workers": 2, "worker_cpus": 0.25,
                              "grpo": {"steps": 2, "prompts_per_step": 2, "generations": 2, "prompts": 6}})
    assert main(["run", str(path), "--runs", str(tmp_path / "runs"), "--name", "w"]) == 0
    stage = tmp_path / "runs" / "w" / "round_001" / "checkpoint"
    summary = json.loads((stage / "train_summary.json").read_text())
    assert summary["workers"] == summary["world_size"] == 2 and summary["replicas_in_sync"]
    assert summary["steps"] == 2 and summary["judge"]["steps"] == 2
    events = [json.loads(x) for x in (tmp_path / "runs" / "w" / "metrics.jsonl").read_text().splitlines()]
    assert [e["round"] for e in events if e["event"] == "judge"] == [1]
    kept = sorted(p.name for p in (stage / TRAJECTORIES).glob("step_*.jsonl.gz"))
    assert kept == ["step_00001.jsonl.gz", "step_00002.jsonl.gz"]  # the first rank's share of each step
    out = capsys.readouterr().out
    assert "step 1/2 loss" in out and "step 2/2 loss" in out


def test_many_workers_refuse_a_judge_budget(tmp_path, base_checkpoint):  # noqa: F811
    from strokes.errors import InputError

    path = tiny_config(tmp_path, base_checkpoint, judge={"kind": "oracle", "budget_requests": 100},
                       train={"method": "grpo", "distributed": "ray", "workers": 2,
                              "grpo": {"prompts_per_step": 2, "generations": 2, "prompts": 6}})
    with pytest.raises(InputError, match="judge.budget_requests"):
        grpo_on_ray(load_config(path), base_checkpoint, [], tmp_path / "train")
