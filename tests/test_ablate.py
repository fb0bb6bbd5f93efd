"""`selfplay ablate` runs every arm as a resumable run and tabulates the final round."""

from __future__ import annotations

import json

import pytest
import yaml

from selfplay.cli import main
from tests.test_loop import base_checkpoint, tiny_config  # noqa: F401 (fixture)


@pytest.mark.slow
def test_every_arm_and_seed_runs_and_lands_in_the_table(tmp_path, base_checkpoint, capsys):  # noqa: F811
    base = tiny_config(tmp_path, base_checkpoint, loop={"rounds": 0, "eval_modes": ["process"]})
    ablation = tmp_path / "mini.yaml"
    ablation.write_text(yaml.safe_dump({
        "title": "mini", "base": str(base), "seeds": [0, 1], "columns": ["colors", "overall"],
        "arms": {"greedy": ["rollout.temperature=0.0"], "sampled": ["rollout.temperature=1.0"]},
    }))
    assert main(["ablate", str(ablation), "--runs", str(tmp_path / "runs")]) == 0
    root = tmp_path / "runs" / "mini"
    results = json.loads((root / "results.json").read_text())["results"]
    assert set(results) == {"greedy", "sampled"} and all(len(v["overall"]) == 2 for v in results.values())
    table = (root / "table.md").read_text()
    assert "| greedy |" in table and "| sampled |" in table and (root / "plot.png").stat().st_size > 0
    # a second call resumes every finished run instead of redoing it
    scores = root / "greedy" / "seed0" / "round_000" / "eval" / "scores.json"
    before = scores.stat().st_mtime_ns
    assert main(["ablate", str(ablation), "--runs", str(tmp_path / "runs")]) == 0
    assert scores.stat().st_mtime_ns == before
