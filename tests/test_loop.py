"""The self-improvement loop end to end on a tiny random policy: rounds, resume, GPT judge, errors."""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from selfplay.cli import main
from strokes.records import TASKS


@pytest.fixture(scope="module")
def base_checkpoint(tmp_path_factory) -> Path:
    """A tiny untrained policy standing in for the shipped base model."""
    from strokes.model.policy import Policy
    from strokes.model.tiny import ModelConfig

    path = tmp_path_factory.mktemp("base") / "checkpoint"
    Policy.build(ModelConfig(hidden_size=32, num_layers=1, num_heads=2, intermediate_size=64)).save_pretrained(path)
    return path


def tiny_config(tmp: Path, base: Path, **sections) -> Path:
    cfg = {
        "data": {"workers": 1},
        "train": {"max_steps": 2, "batch_size": 2, "max_length": 512, "warmup_steps": 0, "logging_steps": 1,
                  "save_steps": 1000, "tokenize_workers": 1, "num_threads": 1},
        "rollout": {"max_steps": 2, "max_refines": 1, "max_text_tokens": 12, "batch_size": 16},
        "judge": {"kind": "oracle"},
        "loop": {"rounds": 2, "prompts_per_round": 12, "eval_per_task": 1, "validation_per_task": 1, "control": True,
                 "base_checkpoint": str(base), "strip_prompts": ["a red circle left of a blue square"]},
        "tracking": {"wandb": False},
    }
    for name, values in sections.items():
        cfg.setdefault(name, {}).update(values)
    path = tmp / "tiny.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def stages(run: Path) -> list[str]:
    return json.loads((run / "state.json").read_text())["done"]


def test_two_rounds_end_to_end(tmp_path, base_checkpoint):
    """Base checkpoint -> two rounds (rollout, judge, critique, SFT, eval, control) -> report."""
    cfg = tiny_config(tmp_path, base_checkpoint)
    assert main(["run", str(cfg), "--runs", str(tmp_path / "runs"), "--name", "t"]) == 0
    run = tmp_path / "runs" / "t"
    done = stages(run)
    for r in (1, 2):
        for s in ("rollouts", "data", "checkpoint", "eval", "validate", "control", "control_eval", "control_validate",
                  "promote"):
            assert f"{r}:{s}" in done
    scores = json.loads((run / "round_002" / "eval" / "scores.json").read_text())
    assert set(scores) == {"process", "single_pass"} and 0.0 <= scores["process"]["overall"] <= 1.0
    events = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert {e["event"] for e in events} >= {"stage", "eval", "data", "train", "promote"}
    assert (run / "round_002" / "checkpoint" / "checkpoint" / "config.json").is_file()
    # the control arm mirrors the policy's lineage: round 2's control continues the control twin
    # of round 2's parent, so both arms have trained the same steps in all
    state = json.loads((run / "state.json").read_text())
    twin = run / "round_001" / "control" if state["promotions"]["1"]["promoted"] else run / "round_000"
    control = [e for e in events if e["event"] == "control" and e["round"] == 2]
    assert control and Path(control[0]["parent"]) == twin / "checkpoint"
    # promotion compares validation-split scores, never the test suite the report shows
    for r, decision in state["promotions"].items():
        validation = json.loads((run / f"round_{int(r):03d}" / "validate" / "scores.json").read_text())
        assert decision["new"] == validation["process"]["overall"]
    validate = [e for e in events if e["event"] == "validate"]
    assert {(e["round"], e["arm"]) for e in validate} >= {(0, "policy"), (1, "policy"), (1, "control")}
    html = (run / "report.html").read_text()
    assert "Own-sketch inspection on the validation split" in html
    assert "data:image/png;base64" in html and "round 2" in html
    assert "Inspect and Refine on the eval rollouts" in html and "recall: plan / image errors" in html


def test_eval_with_the_runs_config_reproduces_the_runs_eval(tmp_path, base_checkpoint, capsys):
    """`selfplay eval --config RUN/config.yaml` on the run's own suite gives the run's own score (a run
    with `strip_prompts: []` draws no strips)."""
    cfg = tiny_config(tmp_path, base_checkpoint, loop={"rounds": 0, "eval_per_task": 2, "eval_samples": 2,
                                                       "strip_prompts": []},
                      rollout={"retries": 1})
    assert main(["run", str(cfg), "--runs", str(tmp_path), "--name", "e"]) == 0
    run = tmp_path / "e"
    assert not list((run / "round_000" / "eval" / "strips").iterdir())
    suite = tmp_path / "suite.jsonl"
    assert main(["suite", "--split", "test", "--per-task", "2", "--seed", "1000", "--out", str(suite)]) == 0
    out = tmp_path / "again"
    assert main(["eval", str(run / "round_000" / "checkpoint" / "checkpoint"), "--suite", str(suite),
                 "--config", str(run / "config.yaml"), "--out", str(out)]) == 0
    again = json.loads((out / "score.json").read_text())
    first = json.loads((run / "round_000" / "eval" / "scores.json").read_text())["process"]
    assert again["samples"] == 2 and again["rollout"]["trajectories"] == 24
    assert (again["score"]["overall"], again["score"]["per_task"]) == (first["overall"], first["per_task"])
    capsys.readouterr()
    assert main(["eval", str(run / "round_000" / "checkpoint" / "checkpoint"), "--suite", str(suite),
                 "--config", str(run / "config.yaml"), "--temperature", "0.5"]) == 2
    assert "--set rollout.temperature" in capsys.readouterr().err


def test_round_zero_fits_an_inspect_head_and_evaluates_and_promotes_with_it(tmp_path):
    """With inspect_head.enabled the shipped base rolls out, its own states are labelled, a head is
    fitted and saved beside a linked copy of the weights, and that copy is what is evaluated."""
    base = Path(__file__).resolve().parents[1] / "checkpoints" / "base"
    cfg = tiny_config(tmp_path, base, loop={"rounds": 0, "validation_per_task": 3},
                      rollout={"max_steps": 6, "max_text_tokens": 48, "batch_size": 64, "inspect": "head", "retries": 1},
                      inspect_head={"enabled": True, "prompts": 90})
    assert main(["run", str(cfg), "--runs", str(tmp_path), "--name", "h"]) == 0
    run = tmp_path / "h"
    with_head = run / "round_000" / "inspect_head" / "checkpoint"
    state = json.loads((run / "state.json").read_text())
    assert Path(state["policy"]) == with_head and (with_head / "inspect_head.json").is_file()
    assert os.path.samefile(with_head / "model.safetensors", base / "model.safetensors") or \
        (with_head / "model.safetensors").read_bytes() == (base / "model.safetensors").read_bytes()
    events = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    head = next(e for e in events if e["event"] == "inspect_head")
    assert head["held_out/states"] > 0 and 0.5 < head["held_out/auc"] <= 1.0
    table = json.loads((run / "round_000" / "validate" / "inspection.json").read_text())["table"]
    assert table["all"]["states"] > 0


def test_existing_run_needs_resume_and_bad_field_fails_in_one_line(tmp_path, base_checkpoint, capsys):
    cfg = tiny_config(tmp_path, base_checkpoint, loop={"rounds": 0})
    assert main(["run", str(cfg), "--runs", str(tmp_path), "--name", "r"]) == 0
    assert main(["run", str(cfg), "--runs", str(tmp_path), "--name", "r"]) == 2
    assert "--resume" in capsys.readouterr().err
    bad = tmp_path / "bad.yaml"
    bad.write_text("loop:\n  rounds: 1\n  promote_tolerence: 0.1\n")
    assert main(["run", str(bad), "--dry-run"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "loop.promote_tolerence" in err
    assert main(["run", str(cfg), "--dry-run", "--set", "rollout.temperature=-1"]) == 2
    assert "rollout.temperature" in capsys.readouterr().err


def _dataset_rows(run: Path, rnd: int) -> list[dict]:
    import datasets

    ds = datasets.load_from_disk(str(run / f"round_{rnd:03d}" / "data" / "dataset"))
    return [{k: v for k, v in r.items() if k != "images"} for r in ds]


def _eval_scores(run: Path) -> list:
    return [json.loads((d / "eval" / "scores.json").read_text()) for d in sorted(run.glob("round_*"))]


def kill9_mid_training_then_resume(tmp_path: Path, cfg: Path) -> tuple[Path, Path]:
    """Run `cfg` straight, and again killed with -9 in the middle of round 1's training and then
    resumed; returns the two run folders (straight, killed)."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "selfplay.cli", "run", str(cfg), "--runs", str(tmp_path)]
    subprocess.run(cmd + ["--name", "straight"], check=True, env=env, capture_output=True)
    proc = subprocess.Popen(cmd + ["--name", "killed"], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    marker = tmp_path / "killed" / "round_001" / "checkpoint.tmp" / "train" / "metrics.jsonl"
    deadline = time.time() + 300
    while not marker.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    assert proc.poll() is None, "the run ended before it could be killed mid-training"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert "1:checkpoint" not in stages(tmp_path / "killed")
    subprocess.run(cmd + ["--name", "killed", "--resume"], check=True, env=env, capture_output=True)
    return tmp_path / "straight", tmp_path / "killed"


@pytest.mark.slow
def test_kill9_then_resume_matches_an_uninterrupted_run(tmp_path, base_checkpoint):
    """kill -9 in the middle of round 1's training, then --resume: same datasets, same scores."""
    cfg = tiny_config(tmp_path, base_checkpoint, loop={"rounds": 1, "control": False},
                      train={"max_steps": 6})
    a, b = kill9_mid_training_then_resume(tmp_path, cfg)
    assert _dataset_rows(a, 1) == _dataset_rows(b, 1)
    assert _eval_scores(a) == _eval_scores(b)
    assert stages(a) == stages(b)
    losses = [[e["loss"] for e in map(json.loads, (r / "metrics.jsonl").read_text().splitlines())
               if e.get("event") == "train" and "loss" in e] for r in (a, b)]
    assert losses[0] == losses[1] and losses[0]


@pytest.mark.slow
def test_a_round_with_the_gpt_judge_against_the_local_judge_server(tmp_path, base_checkpoint):
    """The GPT judge's real openai client talks over HTTP to our own judge server (oracle behind it)."""
    from judges import OracleJudge
    from judges.server import JudgeServer

    with JudgeServer(OracleJudge(), host="127.0.0.1", port=0) as server:
        cfg = tiny_config(tmp_path, base_checkpoint,
                          judge={"kind": "gpt", "base_url": server.base_url, "model": "strokes-oracle",
                                 "api_key_env": "NO_KEY"},
                          loop={"rounds": 1, "control": False})
        assert main(["run", str(cfg), "--runs", str(tmp_path), "--name", "g"]) == 0
    summary = json.loads((tmp_path / "g" / "round_001" / "data" / "summary.json").read_text())
    events = [json.loads(x) for x in (tmp_path / "g" / "metrics.jsonl").read_text().splitlines()]
    judged = [e for e in events if e.get("event") == "data"][0]
    assert judged["judge"]["requests"] > 0
    assert summary["unjudged"] == 0


def test_the_external_inspector_and_planner_arms_evaluate_with_the_oracle_in_the_loop(tmp_path, base_checkpoint):
    """loop.eval_modes [judge, planner]: the oracle writes each inspection and correction, or each plan
    (paper Table 4's external inspector and external planner)."""
    cfg = tiny_config(tmp_path, base_checkpoint, loop={"rounds": 0, "eval_modes": ["judge", "planner"]})
    assert main(["run", str(cfg), "--runs", str(tmp_path), "--name", "j"]) == 0
    from strokes.trajectory import read_jsonl

    evals = tmp_path / "j" / "round_000" / "eval"
    judged = read_jsonl(evals / "judge" / "trajectories")
    assert judged and all(t.meta["mode"] == "judge" for t in judged)
    assert any(t.meta.get("verdicts") for t in judged)
    planned = read_jsonl(evals / "planner" / "trajectories")
    assert planned and all(t.meta["mode"] == "planner" for t in planned)
    assert json.loads((evals / "planner" / "planner.json").read_text())["planned"] > 0
    assert set(json.loads((evals / "scores.json").read_text())) == {"judge", "planner"}


@pytest.mark.slow
def test_ray_rollout_actors_live_through_the_run_and_match_in_process_rollouts(ray_cluster, tmp_path, base_checkpoint):
    """rollout.actors > 0: one fleet of Ray actors rolls out every round and eval, reloading each
    new checkpoint in place; with the same seeds it makes exactly the data of an in-process run."""
    runs = {}
    for actors in (0, 1):
        (tmp_path / str(actors)).mkdir()
        cfg = tiny_config(tmp_path / str(actors), base_checkpoint, rollout={"actors": actors},
                          loop={"rounds": 2, "control": False})
        assert main(["run", str(cfg), "--runs", str(tmp_path), "--name", f"a{actors}"]) == 0
        runs[actors] = tmp_path / f"a{actors}"
    for rnd in (1, 2):
        assert _dataset_rows(runs[0], rnd) == _dataset_rows(runs[1], rnd)
    assert _eval_scores(runs[0]) == _eval_scores(runs[1])


def test_an_sft_round_rolls_out_prompts_of_its_tasks_only():
    """`loop.tasks` narrows an SFT round's prompts to the tasks named, in equal shares."""
    from collections import Counter

    from selfplay.config import load_config
    from selfplay.stages import round_suite

    cfg = load_config(None, ["loop.tasks=[counting, position]", "loop.prompts_per_round=40",
                             "loop.samples_per_prompt=2"])
    suite = round_suite(cfg, 1)
    assert len(suite) == 80 and Counter(r.tag for r in suite) == {"counting": 40, "position": 40}
    assert {r.tag for r in round_suite(load_config(None, []), 1)} == set(TASKS)


def test_judge_mode_data_rollouts_redraw_what_the_judge_rejects(tmp_path, base_checkpoint):
    """`loop.data_mode: judge`: the round's judge inspects every data sketch as it is drawn and a
    rejected step is drawn again (`loop.data_retries`); the inspections the rollouts keep are the
    judge's. Evaluation keeps sampling the policy alone."""
    from judges import OracleJudge
    from selfplay.config import load_config
    from selfplay.critique import step_contexts
    from selfplay.stages import data_rollout_config, data_rollouts_stage
    from strokes.language import parse_inspection

    cfg = load_config(tiny_config(tmp_path, base_checkpoint, loop={"prompts_per_round": 6, "data_mode": "judge",
                                                                    "data_retries": 1}), [])
    assert data_rollout_config(cfg).rollout.retries == 1 and cfg.rollout.retries == 0
    trajectories = data_rollouts_stage(cfg, 1, base_checkpoint, tmp_path / "rollouts")
    assert len(trajectories) == 6 and (tmp_path / "rollouts" / "trajectories").is_dir()
    assert sum(t.meta.get("retries", 0) for t in trajectories) > 0  # an untrained policy gets redrawn
    verdicts = OracleJudge().judge([c for t in trajectories for c in step_contexts(t)])
    written = [parse_inspection(s.inspection) for t in trajectories for s in t.steps]
    assert [w.aligned for w in written] == [v.aligned for v in verdicts]


def test_an_sft_rounds_data_rollouts_sample_at_the_data_temperature_and_nothing_else_does():
    """`loop.data_temperature: 0.5` makes the rollouts that become a round's training data sharper;
    every other rollout (eval, validation, the Inspect head's) keeps `rollout.temperature`."""
    from selfplay.config import load_config
    from selfplay.stages import data_rollout_config

    cfg = load_config(None, ["loop.data_temperature=0.5", "rollout.temperature=1.0"])
    data = data_rollout_config(cfg)
    assert data.rollout == dataclasses.replace(cfg.rollout, temperature=0.5)
    assert data.loop == cfg.loop and cfg.rollout.temperature == 1.0
    unset = load_config(None, [])
    assert unset.loop.data_temperature is None and data_rollout_config(unset) is unset


def _grpo_config(tmp: Path, base: Path, steps: int = 2, **loop) -> Path:
    return tiny_config(tmp, base, loop={"rounds": 2, **loop},
                       train={"method": "grpo", "lr": 1e-3,
                              "grpo": {"steps": steps, "prompts_per_step": 2, "generations": 2, "prompts": 6}})


def _outcome(run: Path) -> dict:
    """What a run produced, whatever the order its stages ran in."""
    state = json.loads((run / "state.json").read_text())
    scores = {str(d.relative_to(run)): json.loads(d.read_text()) for d in sorted(run.glob("round_*/*/scores.json"))}
    return {"done": sorted(state["done"]), "promotions": state["promotions"], "scores": scores}


def test_the_side_process_changes_when_stages_run_not_what_they_produce(tmp_path, base_checkpoint, capsys):
    """loop.overlap: the held-out evals and the control arm run in a second process beside the
    validation and promotion (never beside training); every score, promotion and stage is the same
    as in one process (one torch thread each)."""
    runs = {}
    for overlap in (False, True):
        (tmp_path / str(overlap)).mkdir()
        cfg = _grpo_config(tmp_path / str(overlap), base_checkpoint, overlap=overlap)
        assert main(["run", str(cfg), "--runs", str(tmp_path), "--name", f"o{overlap}"]) == 0
        runs[overlap] = _outcome(tmp_path / f"o{overlap}")
    assert runs[True] == runs[False]
    assert {"1:control_validate", "2:control_validate", "2:eval"} <= set(runs[True]["done"])
    console = capsys.readouterr().out
    assert "round 1: control ... control arm: SFT on base data only (the policy's step count) (side process)" in console
    assert "round 1: control done in" in console
    # training never shares the machine: round 2 trains after round 1's side stages are all back
    assert console.index("round 1: control_validate done") < console.index("round 2: checkpoint ...")
    assert "round 2: process policy" in console  # each round closes with its control beside it


def test_a_finished_run_given_more_rounds_goes_on_as_if_asked_at_the_start(tmp_path, base_checkpoint, capsys):
    """A run that finished one round, resumed with its config's two rounds and `--allow-change
    loop.rounds`, trains round 2 only and ends where a two-round run from the start ends."""
    cfg = _grpo_config(tmp_path, base_checkpoint, overlap=False)
    assert main(["run", str(cfg), "--runs", str(tmp_path), "--name", "whole"]) == 0
    assert main(["run", str(cfg), "--runs", str(tmp_path), "--name", "grown", "--set", "loop.rounds=1"]) == 0
    assert "2:checkpoint" not in stages(tmp_path / "grown")
    capsys.readouterr()
    assert main(["run", str(cfg), "--runs", str(tmp_path), "--name", "grown", "--resume"]) == 2
    assert "loop.rounds (1 -> 2)" in capsys.readouterr().err
    assert main(["run", str(cfg), "--runs", str(tmp_path), "--name", "grown", "--resume",
                 "--allow-change", "loop.rounds"]) == 0
    console = capsys.readouterr().out
    assert "round 1: checkpoint ..." not in console and "round 2: checkpoint ..." in console
    assert _outcome(tmp_path / "grown") == _outcome(tmp_path / "whole")


def test_the_side_process_exits_when_the_loop_process_is_killed(tmp_path):
    """A run killed with -9 leaves no side process writing into the folder a resume will redo."""
    script = ("import os, sys\nfrom selfplay.side_process import SideProcess\n"
              "side = SideProcess()\nprint(side.submit(os.getpid).get(), flush=True)\nos._exit(9)\n")
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=False, timeout=120)
    worker = int(out.stdout.strip())
    deadline = time.time() + 20
    while time.time() < deadline and Path(f"/proc/{worker}").exists():
        time.sleep(0.1)
    assert not Path(f"/proc/{worker}").exists(), "the side process outlived the loop"


@pytest.mark.slow
def test_kill9_with_the_side_process_busy_then_resume_matches_an_uninterrupted_run(tmp_path, base_checkpoint):
    """kill -9 in round 1's training while the side process evaluates round 0 and trains round 1's
    control, then --resume: the same scores, promotions and stages as a run never killed."""
    cfg = _grpo_config(tmp_path, base_checkpoint, steps=6, rounds=1, overlap=True)
    a, b = kill9_mid_training_then_resume(tmp_path, cfg)
    assert _outcome(a) == _outcome(b)
