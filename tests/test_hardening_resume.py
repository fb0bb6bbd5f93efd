"""Hardening of `selfplay run` (issue 16): a resume keeps the run's own config unless a field safe to
change is named with --allow-change, a damaged state.json is refused in one line, and --dry-run checks
the paths the run would start from. The run folders are written by hand around a tiny saved policy."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from test_rollout_support import tiny_checkpoint

from selfplay.cli import main
from selfplay.config import load_config
from selfplay.run_dir import RunState
from strokes.config_loader import dump
from strokes.errors import InputError

@pytest.fixture
def setup(tmp_path, tmp_path_factory) -> tuple[Path, Path]:
    """(config file, run folder): a run killed after round 0's checkpoint, with its config.yaml."""
    base = tiny_checkpoint(tmp_path_factory)  # the dry run checks it in full
    cfg = tmp_path / "c.yaml"
    cfg.write_text(yaml.safe_dump({"loop": {"base_checkpoint": str(base), "rounds": 1}}))
    run = tmp_path / "runs" / "c"
    run.mkdir(parents=True)
    dump(load_config(cfg), run / "config.yaml")
    (run / "state.json").write_text(json.dumps({"done": ["0:checkpoint"], "policy": None, "policy_round": 0,
                                                "promotions": {}}))
    return cfg, run


def selfplay_run(capsys, cfg: Path, *args: str) -> tuple[int, str]:
    """`selfplay run CFG --runs .. --resume --dry-run ARGS` in this process: (exit status, stderr)."""
    code = main(["run", str(cfg), "--runs", str(cfg.parent / "runs"), "--resume", "--dry-run", *args])
    err = capsys.readouterr().err.strip()
    assert code == 0 or (len(err.splitlines()) == 1 and "Traceback" not in err), err
    return code, err


def test_a_resume_with_a_changed_config_is_refused_naming_each_field(setup, capsys):
    cfg, run = setup
    saved = (run / "config.yaml").read_bytes()
    code, err = selfplay_run(capsys, cfg, "--set", "rollout.temperature=0.3", "--set", "train.lr=0.01")
    assert code == 2
    assert "--resume: the config differs" in err
    assert "rollout.temperature (1.0 -> 0.3)" in err and "train.lr (0.002 -> 0.01)" in err
    assert (run / "config.yaml").read_bytes() == saved  # refused before anything is written
    assert selfplay_run(capsys, cfg)[0] == 0  # the same config resumes


def test_allow_change_permits_only_the_named_safe_fields(setup, capsys):
    cfg, _ = setup
    change = ["--set", "rollout.actors=2", "--set", "tracking.project=other"]
    assert selfplay_run(capsys, cfg, *change, "--allow-change", "rollout.actors", "--allow-change", "tracking.*")[0] == 0
    code, err = selfplay_run(capsys, cfg, *change, "--allow-change", "rollout.actors")
    assert code == 2 and "tracking.project ('strokes' -> 'other')" in err and "rollout.actors" not in err.split(";")[0]
    code, err = selfplay_run(capsys, cfg, "--set", "rollout.temperature=0.3", "--allow-change", "rollout.temperature")
    assert code == 2 and "--allow-change rollout.temperature: not a field a resume may change" in err
    code, err = selfplay_run(capsys, cfg, "--allow-change", "tracking.projects")
    assert code == 2 and "no such config field" in err
    assert main(["run", str(cfg), "--dry-run", "--allow-change", "rollout.actors"]) == 2
    assert "only applies with --resume" in capsys.readouterr().err


@pytest.mark.parametrize("text, problem", [
    ('{"done": ["0:checkpoint", "0:roll', "malformed JSON"),  # cut short by a full disk
    ("", "malformed JSON"),
    ('{"done": 5}', "'done' must be a list"),
    ('{"done": [1]}', "'done' holds 1"),
    ('{"done": ["checkpoint"]}', "'done' holds 'checkpoint'"),
    ('{"policy": 3}', "'policy' must be"),
    ('{"policy_round": "1"}', "'policy_round' must be"),
    ('{"promotions": []}', "'promotions' must"),
    ("[]", "must be a JSON object"),
])
def test_a_damaged_state_json_is_refused_in_one_line(tmp_path, text, problem):
    (tmp_path / "state.json").write_text(text)
    with pytest.raises(InputError) as e:
        RunState.load(tmp_path)
    msg = str(e.value)
    assert "state.json: corrupt run state" in msg and problem in msg and "\n" not in msg


def test_a_state_missing_its_keys_stops_a_resume_naming_them(setup, capsys):
    """`{}` (or any state short of the keys `RunState.save` always writes) is not a fresh run: resuming
    it used to re-run every stage over the old outputs without a word."""
    cfg, run = setup
    (run / "state.json").write_text("{}")
    code, err = selfplay_run(capsys, cfg)
    assert code == 2
    assert "state.json: corrupt run state (missing 'done', 'policy', 'policy_round', 'promotions')" in err
    (run / "state.json").write_text('{"done": ["0:checkpoint"], "policy": null, "policy_round": 0}')
    code, err = selfplay_run(capsys, cfg)
    assert code == 2 and "(missing 'promotions')" in err
    (run / "state.json").write_text('{"done": 5}')
    code, err = selfplay_run(capsys, cfg)
    assert code == 2 and "state.json: corrupt run state ('done' must be a list" in err
    RunState(path=run / "state.json").save()  # what the loop writes for a run that has done nothing yet
    assert RunState.load(run).done == []


def test_the_dry_run_checks_the_paths_the_run_starts_from(setup, capsys):
    cfg, _ = setup
    assert main(["run", str(cfg), "--dry-run", "--set", "loop.base_checkpoint=/nonexistent"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "loop.base_checkpoint: /nonexistent: no base checkpoint" in err
    assert main(["run", str(cfg), "--dry-run", "--from-scratch", "--set", "loop.base_recipe=/nonexistent.yaml"]) == 2
    assert "loop.base_recipe: /nonexistent.yaml: no such config file" in capsys.readouterr().err
    recipe = cfg.parent / "recipe.yaml"
    recipe.write_text("model: {hidden_size: 64, num_heads: 2}\n")
    assert main(["run", str(cfg), "--dry-run", "--from-scratch", "--set", "loop.base_checkpoint=/nonexistent",
                 "--set", f"loop.base_recipe={recipe}"]) == 0
    planned = json.loads(capsys.readouterr().out.split("# the plan\n", 1)[1].split("# what runs where", 1)[0])
    assert planned["policy"]["hidden"] == 64  # the recipe's shape, not the checkpoint's
