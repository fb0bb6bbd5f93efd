"""`selfplay ablate` runs every arm as a resumable run (or an evaluation, or a read of another run)
and tabulates the rows in the paper's shape."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from selfplay.cli import main
from tests.test_loop import base_checkpoint, tiny_config  # noqa: F401 (fixture)


def ablation_file(tmp_path: Path, **fields) -> Path:
    path = tmp_path / "mini.yaml"
    path.write_text(yaml.safe_dump({"title": "mini", **fields}, sort_keys=False))
    return path


@pytest.mark.slow
def test_every_arm_and_seed_runs_and_lands_in_the_table(tmp_path, base_checkpoint, capsys):  # noqa: F811
    base = tiny_config(tmp_path, base_checkpoint, loop={"rounds": 0, "eval_modes": ["process"], "overlap": True})
    ablation = ablation_file(tmp_path, base=str(base), seeds=[0, 1], columns=["colors", "overall"], parallel=2,
                             arms={"greedy": ["rollout.temperature=0.0"], "sampled": ["rollout.temperature=1.0"]})
    assert main(["ablate", str(ablation), "--runs", str(tmp_path / "runs")]) == 0
    root = tmp_path / "runs" / "mini"
    # two jobs at once share the cores already: no side process beside each
    assert yaml.safe_load((root / "greedy" / "seed0" / "config.yaml").read_text())["loop"]["overlap"] is False
    results = json.loads((root / "results.json").read_text())["results"]
    assert set(results) == {"greedy", "sampled"} and all(len(v["overall"]) == 2 for v in results.values())
    table = (root / "table.md").read_text()
    assert "| greedy |" in table and "| sampled |" in table and (root / "plot.png").stat().st_size > 0
    # a second call resumes every finished run instead of redoing it
    scores = root / "greedy" / "seed0" / "round_000" / "eval" / "scores.json"
    before = scores.stat().st_mtime_ns
    assert main(["ablate", str(ablation), "--runs", str(tmp_path / "runs")]) == 0
    assert scores.stat().st_mtime_ns == before


@pytest.mark.slow
def test_arms_share_one_run_and_evaluate_checkpoints_without_training(tmp_path, base_checkpoint):  # noqa: F811
    """Table 6's 'none' is the self arm's control and Table 4's rows are evaluations: one loop run
    per seed serves three rows, and the external planner and inspector rows train nothing."""
    base = tiny_config(tmp_path, base_checkpoint, loop={"rounds": 1, "eval_modes": ["process"], "control": True})
    ablation = ablation_file(tmp_path, base=str(base), seeds=[0], columns=["counting", "overall"], arms={
        "self": ["critique.mode=self"],
        "none": {"run": "self", "source": "control_eval"},
        "base model": {"run": "self", "round": 0},
        "external planner": {"checkpoint": str(base_checkpoint), "mode": "planner", "seeds": [0, 1]},
        "external inspector": {"checkpoint": str(base_checkpoint), "mode": "judge"},
        "borrowed": {"run_dir": str(tmp_path / "elsewhere" / "seed{seed}")},
    })
    assert main(["ablate", str(ablation), "--runs", str(tmp_path / "runs")]) == 0
    root = tmp_path / "runs" / "mini"
    assert sorted(p.name for p in root.iterdir() if p.is_dir()) == ["external_inspector", "external_planner", "self"]
    out = json.loads((root / "results.json").read_text())["results"]
    run = root / "self" / "seed0"
    control = json.loads((run / "round_001" / "control_eval" / "scores.json").read_text())["process"]
    assert out["none"]["overall"] == [control["overall"]] and out["none"]["rounds"] == [1]
    round0 = json.loads((run / "round_000" / "eval" / "scores.json").read_text())["process"]
    assert out["base model"]["overall"] == [round0["overall"]] and out["base model"]["rounds"] == [0]
    assert out["external planner"]["seeds"] == [0, 1]
    planner_eval = root / "external_planner" / "seed0" / "round_000" / "eval"
    assert json.loads((planner_eval / "planner" / "planner.json").read_text())["planned"] > 0
    assert not (root / "external_inspector" / "seed0" / "round_000" / "checkpoint").exists()  # nothing trained
    table = (root / "table.md").read_text()
    assert "| borrowed | not yet run | not yet run | - |" in table and "| external planner | " in table
    assert "- none: arm 'self', control_eval, last round, process mode" in table


@pytest.mark.slow
def test_pretrain_gives_each_arm_its_own_base_model_from_its_data(tmp_path, base_checkpoint):  # noqa: F811
    base = tiny_config(tmp_path, base_checkpoint, loop={"rounds": 0, "eval_modes": ["process"]})
    ablation = ablation_file(tmp_path, base=str(base), seeds=[0], pretrain={"steps": 2, "size": 8}, arms={
        "multi-turn only": ["data.mixture={scene_graph: 2.0, single_pass: 1.0}"],
        "both": [],
    })
    assert main(["ablate", str(ablation), "--runs", str(tmp_path / "runs")]) == 0
    root = tmp_path / "runs" / "mini"
    for arm in ("multi_turn_only", "both"):
        pre = root / arm / "pretrain_seed0"
        assert json.loads((pre / "train_summary.json").read_text())["steps"] == 2
        run_cfg = yaml.safe_load((root / arm / "seed0" / "config.yaml").read_text())
        assert run_cfg["loop"]["base_checkpoint"] == str((pre / "checkpoint").resolve())
    used = yaml.safe_load((root / "multi_turn_only" / "pretrain_seed0" / "config.yaml").read_text())
    assert used["data"]["mixture"] == {"scene_graph": 2.0, "single_pass": 1.0} and used["train"]["max_steps"] == 2


@pytest.mark.parametrize("arms, extra, field", [
    ({"a": {"mode": "sketchy"}}, {}, "arms.a.mode"),
    ({"a": {"nonsense": 1}}, {}, "arms.a.nonsense"),
    ({"a": [], "b": {"run": "c"}}, {}, "arms.b.run"),
    ({"a": ["loop.rounds=zero"]}, {}, "loop.rounds"),
    ({"a": ["loop.control=false"], "b": {"run": "a", "source": "control_eval"}}, {}, "arms.b.source"),
    ({"a": {"checkpoint": "x", "run": "b"}, "b": []}, {}, "arms.a"),
    ({"a": []}, {"columns": ["colours"]}, "columns"),
    ({"a": []}, {"pretrain": {"steps": -1}}, "pretrain.steps"),
    ({"a": {"mode": "single_pass"}}, {}, "arms.a.mode"),  # not among the run's loop.eval_modes
])
def test_a_malformed_ablation_fails_in_one_line_naming_the_field(tmp_path, base_checkpoint, capsys,  # noqa: F811
                                                                 arms, extra, field):
    base = tiny_config(tmp_path, base_checkpoint, loop={"eval_modes": ["process"]})
    ablation = ablation_file(tmp_path, base=str(base), arms=arms, **extra)
    assert main(["ablate", str(ablation), "--runs", str(tmp_path / "runs")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and field in err
    assert not (tmp_path / "runs" / "mini").exists() or not any((tmp_path / "runs" / "mini").iterdir())


def test_the_external_planner_writes_every_plan_the_model_follows(base_checkpoint, tmp_path):  # noqa: F811
    """The oracle's plan replaces the model's own <ins>/<des> at every step the plan covers."""
    from selfplay.config import load_config
    from selfplay.oracle_planner import OraclePlanner, planner_rollout
    from strokes.shapeworld import make_suite

    suite = make_suite("test", 1, 3)
    cfg = load_config(tiny_config(tmp_path, base_checkpoint), ["rollout.max_steps=4", "rollout.max_text_tokens=40"])
    trajs = planner_rollout(cfg, base_checkpoint, suite, seed=5, out=tmp_path / "planner", samples=2)
    assert len(trajs) == 2 * len(suite) and (tmp_path / "planner" / "trajectories").exists()
    plans = OraclePlanner(suite, seed=5)
    checked = 0
    for t in trajs:
        plan = plans.plan(suite[t.meta["index"]].text)
        for k, step in enumerate(t.steps[: len(plan)]):
            assert (step.instruction, step.description) == plan[k]
            checked += 1
    assert checked > 0
    assert plans(suite[0].text, len(plans.plan(suite[0].text)) + 1, "add a red circle", "a red circle") is None


def test_table5_additive_only_arm_makes_scene_graph_data_without_other_edits():
    """`data.pipelines.detour_prob=0.0` is Table 5's knob: scene-graph trajectories then only add."""
    from strokes.data.build import DataConfig, make_rows
    from strokes.data.pipelines import PipelineConfig
    from strokes.trajectory import from_row

    def edits(detour_prob: float) -> set[str]:
        cfg = DataConfig(size=60, mixture={"scene_graph": 1.0}, pipelines=PipelineConfig(detour_prob=detour_prob),
                         workers=1)
        return {s.edit for r in make_rows(cfg, progress=False) for s in from_row(r).steps}

    assert edits(0.0) == {"add"}
    assert edits(0.4) > {"add"}


ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("path", sorted((ROOT / "configs" / "ablations").glob("*.yaml")), ids=lambda p: p.stem)
def test_every_shipped_ablation_file_is_valid(path, monkeypatch):
    """Each table's file checks out field by field (arms, modes, every arm's run config) before any compute."""
    from selfplay.ablate import load_ablation

    monkeypatch.chdir(ROOT)  # the files name their base config relative to the project root
    cfg = load_ablation(path)
    assert cfg.arms and cfg.columns
