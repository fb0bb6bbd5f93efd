"""Issue 30, the dry run: it checks the base checkpoint in full, says what runs where stage by stage
with memory against the devices it plans for, and warns about what would fail or waste the run."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from test_hardening_checkpoints import swap_red_and_blue
from test_rollout_support import tiny_checkpoint

from selfplay.cli import main

LLAMA_8B = {"hidden_size": 4096, "num_hidden_layers": 32, "vocab_size": 128256, "intermediate_size": 14336,
            "num_attention_heads": 32, "num_key_value_heads": 8, "max_position_embeddings": 8192}


def dry_run(capsys, config: str, *args: str) -> tuple[int, dict, str, list[str]]:
    """`selfplay run CONFIG --dry-run ARGS`: (exit status, the plan, the what-runs-where table, warnings)."""
    code = main(["run", config, "--dry-run", *args])
    captured = capsys.readouterr()
    if code:
        return code, {}, "", captured.err.strip().splitlines()
    plan, table = captured.out.split("# the plan\n", 1)[1].split("# what runs where (each round)\n", 1)
    return code, json.loads(plan), table, captured.err.strip().splitlines()


@pytest.fixture
def shaped(tmp_path_factory, tmp_path):
    """A copy of a tiny saved policy whose config.json claims another shape (checksums dropped):
    the dry run reads the shape, the checks pass."""
    def make(shape: dict) -> Path:
        folder = Path(shutil.copytree(tiny_checkpoint(tmp_path_factory), tmp_path / "shaped"))
        (folder / "checksums.json").unlink()
        (folder / "config.json").write_text(json.dumps({**json.loads((folder / "config.json").read_text()), **shape}))
        return folder
    return make


def test_the_dry_run_checks_the_base_checkpoint_in_full(tmp_path, tmp_path_factory, capsys):
    copy = Path(shutil.copytree(tiny_checkpoint(tmp_path_factory), tmp_path / "ck"))
    assert dry_run(capsys, "configs/shapeworld.yaml", "--set", f"loop.base_checkpoint={copy}")[0] == 0
    swap_red_and_blue(copy / "tokenizer.json")
    code, _, _, err = dry_run(capsys, "configs/shapeworld.yaml", "--set", f"loop.base_checkpoint={copy}")
    assert code == 2 and len(err) == 1 and "tokenizer.json: changed since the checkpoint was saved" in err[0]
    (copy / "checksums.json").unlink()
    (copy / "model.safetensors").write_bytes((copy / "model.safetensors").read_bytes()[:1000])
    code, _, _, err = dry_run(capsys, "configs/shapeworld.yaml", "--set", f"loop.base_checkpoint={copy}")
    assert code == 2 and len(err) == 1 and "model.safetensors: unreadable weights" in err[0]


def test_the_grpo_plan_is_grpos_own_and_says_which_gpus_sit_idle(capsys):
    code, plan, table, err = dry_run(capsys, "configs/cluster-grpo.yaml")
    assert code == 0
    assert "sft" not in plan["training"]  # control: false, so no SFT batch anywhere in the plan
    assert plan["training"]["grpo"]["tokens_per_step_at_most"] == 16 * 8 * 1024  # 128 trajectories x positions
    stages = {p["stage"]: p for p in plan["placement"]}
    assert set(stages) == {"eval, validate, GRPO step rollouts", "checkpoint (GRPO)", "judge"}
    assert stages["eval, validate, GRPO step rollouts"]["gpus"] == 7 and stages["checkpoint (GRPO)"]["gpus"] == 1
    assert "7 Ray actors x 1 GPU (GPUs 1-7)" in table and "the loop's process, GPU 0" in table
    assert not [line for line in err if "idle" in line or "shares GPU 0" in line]  # the layout uses all 8
    code, _, table, err = dry_run(capsys, "configs/cluster-grpo.yaml", "--set", "rollout.reserved_gpus=2")
    assert "GPU 0 (GPU 1 reserved too, unused)" in table and "GPUs 2-8" in table
    assert any("1 of the 9 GPUs the run plans for sit idle while GRPO trains" in line for line in err), err
    code, _, _, err = dry_run(capsys, "configs/cluster-grpo.yaml", "--set", "rollout.reserved_gpus=0")
    assert any("shares GPU 0 with the first actor" in line for line in err), err
    code, plan, _, _ = dry_run(capsys, "configs/cluster-grpo.yaml", "--set", "loop.control=true")
    assert plan["training"]["sft"]["for"] == ["control arm"] and "control" in {p["stage"] for p in plan["placement"]}


def test_memory_beyond_the_planned_devices_is_a_warning(shaped, capsys):
    base = shaped(LLAMA_8B)
    code, plan, _, err = dry_run(capsys, "configs/cluster-grpo.yaml", "--set", f"loop.base_checkpoint={base}",
                                 "--set", "train.lora.enabled=false")
    assert code == 0 and plan["policy"]["parameters"] > 7e9
    beyond = [line for line in err if "beyond the 80 GB of its GPU" in line]
    assert any(line.startswith("warning: checkpoint (GRPO) needs about") for line in beyond), err
    assert any(line.startswith("warning: eval, validate, GRPO step rollouts needs about") and "per actor" in line
               for line in beyond), err
    code, _, _, err = dry_run(capsys, "configs/cluster-grpo.yaml", "--set", f"loop.base_checkpoint={base}",
                              "--set", "rollout.batch_size=4", "--set", "train.grpo.prompts_per_step=1",
                              "--set", "train.grpo.generations=2", "--set", "rollout.max_new_tokens=512",
                              "--gpu-memory", "141")
    assert not [line for line in err if "beyond" in line], err  # LoRA, small batches, an H200: it fits


def test_train_max_length_beyond_the_models_positions_is_a_warning(capsys):
    code, _, _, err = dry_run(capsys, "configs/shapeworld.yaml", "--set", "train.max_length=2048")
    assert code == 0
    assert err == [("warning: train.max_length 2048 is beyond the model's 1024 positions (max_position_embeddings): "
                    "no row can be longer; set train.max_length <= 1024")]
    assert dry_run(capsys, "configs/shapeworld.yaml", "--set", "train.max_length=1024")[3] == []


def test_with_sample_on_trainer_the_actors_serve_evaluation_and_grpo_samples_here(capsys):
    code, plan, table, err = dry_run(capsys, "configs/shapeworld.yaml", "--set", "rollout.actors=2",
                                     "--set", "train.grpo.sample_on=trainer")
    assert code == 0
    stages = {p["stage"]: p for p in plan["placement"]}
    assert "eval, validate" in stages and "2 Ray actors" in stages["eval, validate"]["where"]
    assert "sampled here" in stages["checkpoint (GRPO)"]["work"]
    code, _, _, err = dry_run(capsys, "configs/shapeworld.yaml", "--set", "train.grpo.sample_on=actors")
    assert code == 2 and len(err) == 1 and "'train.grpo.sample_on' must be fleet or trainer, got 'actors'" in err[0]


def test_the_main_job_says_its_eval_and_control_arm_run_in_the_side_process(capsys):
    """loop.overlap: the dry run says which stages the side process takes; with rollout actors the
    fleet evaluates and there is no side process."""
    code, plan, _, _ = dry_run(capsys, "configs/shapeworld.yaml")
    assert code == 0
    where = {p["stage"]: p["where"] for p in plan["placement"]}
    assert "eval in a side process beside validation" in where["eval, validate"]
    assert "control in a side process beside validation" in where["control"]
    code, plan, _, _ = dry_run(capsys, "configs/shapeworld.yaml", "--set", "rollout.actors=2")
    assert not [p for p in plan["placement"] if "side process" in p["where"]]


def test_with_ray_train_the_grpo_round_runs_on_the_workers_and_the_actors_only_evaluate(capsys):
    """train.distributed: ray puts the GRPO round on Ray Train workers, each sampling, judging and
    training its share of a step; rollout actors then serve only evaluation."""
    code, plan, _, _ = dry_run(capsys, "configs/shapeworld.yaml", "--set", "train.distributed=ray",
                               "--set", "train.workers=2", "--set", "rollout.actors=2")
    assert code == 0
    stages = {p["stage"]: p for p in plan["placement"]}
    grpo = stages["checkpoint (GRPO)"]
    assert grpo["where"] == "2 Ray Train workers x 1 CPU" and grpo["per"] == "worker"
    assert "32 of 64 trajectories/step sampled by each" in grpo["work"]
    assert "GRPO step rollouts" not in stages["eval, validate"]["stage"]
    assert "each Ray Train worker" in stages["judge"]["where"]


def test_the_plan_says_when_the_fleet_samples_ahead_of_training(capsys):
    code, plan, _, _ = dry_run(capsys, "configs/cluster-grpo.yaml", "--set", "train.grpo.max_staleness=1")
    assert code == 0
    grpo = {p["stage"]: p for p in plan["placement"]}["checkpoint (GRPO)"]
    assert grpo["work"].endswith("sampled by the actors, up to 1 step ahead of training")
