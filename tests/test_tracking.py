"""Issue 30, tracking: a run with the trainers logging into its wandb run keeps every round's metrics
(read back from the offline run's own file), and a GRPO round keeps each step's trajectories with
their rewards, which the report shows."""

from __future__ import annotations

import base64
import gzip
import json
import shutil
import struct
from pathlib import Path

import pytest
from test_loop import base_checkpoint, tiny_config  # noqa: F401  (fixture)

from selfplay.cli import main
from selfplay.run_dir import RunDir
from strokes.trajectory import from_row
from trainer.config import REWARDS


def wandb_records(path: Path):
    """The records of an offline run's `run-*.wandb` file: wandb's log format (a 7-byte header, then
    32 KiB blocks of chunks, each a 7-byte header of checksum, length and type, FULL=1 FIRST=2
    MIDDLE=3 LAST=4) around its own protobuf `Record`s. wandb ships no reader for it in Python."""
    from wandb.proto import wandb_internal_pb2

    data, pos, block, chunk = path.read_bytes(), 7, 32768, b""
    assert data[:4] == b":W&B"
    while pos + 7 <= len(data):
        left = block - pos % block
        if left < 7:  # the rest of a block too short for a header is padding
            pos += left
            continue
        _, length, kind = struct.unpack("<IHB", data[pos: pos + 7])
        if kind == 0:
            pos += left
            continue
        chunk += data[pos + 7: pos + 7 + length]
        pos += 7 + length
        if kind in (1, 4):
            record = wandb_internal_pb2.Record()
            record.ParseFromString(chunk)
            chunk = b""
            yield record


@pytest.fixture(scope="module")
def grpo_run(tmp_path_factory, base_checkpoint) -> Path:  # noqa: F811
    """One GRPO round with both wandb mirrors on (the cluster configs' setting), offline."""
    tmp = tmp_path_factory.mktemp("tracked")
    cfg = tiny_config(tmp, base_checkpoint, loop={"rounds": 1, "control": False},
                      train={"method": "grpo", "lr": 1e-3, "report_to": "wandb",
                             "grpo": {"steps": 2, "prompts_per_step": 2, "generations": 2, "prompts": 6}},
                      tracking={"wandb": True, "mode": "offline"})
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("WANDB_MODE", "offline")
        mp.delenv("WANDB_DIR", raising=False)
        assert main(["run", str(cfg), "--runs", str(tmp / "runs"), "--name", "w"]) == 0
    import wandb

    wandb.teardown()  # wandb keeps its settings (the run's folder) per process: later tests get fresh ones
    return tmp / "runs" / "w"


def test_every_rounds_metrics_reach_wandb_beside_the_trainers_steps(grpo_run):
    (path,) = grpo_run.glob("wandb/offline-run-*/run-*.wandb")
    records = list(wandb_records(path))
    assert history(grpo_run, "train/global_step")  # the trainer logged into the same run first
    rounds = [row["round"] for row in history(grpo_run, "process/overall")]
    assert rounds == [0, 1]  # round 1 used to be dropped: its step was below the trainer's
    steps = [row["_step"] for row in history(grpo_run, "_step")]
    assert steps == sorted(steps)
    axes = {r.metric.name: r.metric.step_metric for r in records if r.WhichOneof("record_type") == "metric"}
    assert axes.get("process/overall") == "round" and axes.get("single_pass/overall") == "round"


def test_a_grpo_round_keeps_each_steps_trajectories_with_their_rewards(grpo_run):
    kept = RunDir(grpo_run).step_trajectories(1)
    assert sorted(kept) == [1, 2]
    files = sorted((grpo_run / "round_001" / "checkpoint" / "trajectories").iterdir())
    assert [f.name for f in files] == ["step_00001.jsonl.gz", "step_00002.jsonl.gz"]
    with gzip.open(files[0], "rt") as f:
        assert f.readline().startswith('{"step": 1, "group": 0')
    for step, rows in kept.items():
        assert len(rows) == 4 and [r["group"] for r in rows] == [0, 0, 1, 1]  # whole groups of 2
        for row in rows:
            assert row["step"] == step and set(row["rewards"]) == set(REWARDS)
            assert row["rewards"]["final"] == float(row["judged"]["final"])
            traj = from_row({**row, "images": [base64.b64decode(x) for x in row["images"]]})
            assert len(traj.images()) == len(row["images"])
    page = (grpo_run / "report.html").read_text()
    assert "GRPO trajectories as the reward saw them" in page and "Round 1, step 2 (4 of its trajectories" in page


def history(run: Path, key: str) -> list[dict]:
    """Every wandb history row holding `key`, across the run's offline runs (one per start)."""
    return [row for path in sorted(run.glob("wandb/offline-run-*/run-*.wandb")) for r in wandb_records(path)
            if r.WhichOneof("record_type") == "history"
            for row in [{i.key or "/".join(i.nested_key): json.loads(i.value_json) for i in r.history.item}]
            if key in row]


def test_a_resumed_run_logs_no_round_twice(grpo_run, tmp_path, monkeypatch):
    run = Path(shutil.copytree(grpo_run, tmp_path / "runs" / "w"))
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.delenv("WANDB_DIR", raising=False)
    assert main(["run", str(run / "config.yaml"), "--runs", str(tmp_path / "runs"), "--name", "w", "--resume"]) == 0
    assert len(list(run.glob("wandb/offline-run-*"))) == 2  # the resume opened the run again
    assert [row["round"] for row in history(run, "process/overall")] == [0, 1]
