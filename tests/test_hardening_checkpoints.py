"""Issue 16 (hardening), checkpoints: an eval's output is keyed by what made it; a damaged checkpoint
is named in one line before any output exists; a hand-edited one is refused by its checksums."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from test_rollout_support import tiny_checkpoint

from selfplay.cli import main
from strokes.errors import InputError
from strokes.model.checkpoint_check import check_checkpoint
from strokes.model.policy import Policy
from strokes.records import write_records
from strokes.shapeworld import make_suite


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    return tiny_checkpoint(tmp_path_factory)


@pytest.fixture()
def copy(checkpoint, tmp_path) -> Path:
    """A private copy of the tiny checkpoint, free to damage."""
    return Path(shutil.copytree(checkpoint, tmp_path / "ck"))


@pytest.fixture()
def suite(tmp_path) -> Path:
    path = tmp_path / "suite.jsonl"
    write_records(make_suite("test", 1, 3), path)
    return path


def test_eval_resumes_only_the_output_of_the_same_checkpoint_suite_and_settings(checkpoint, suite, tmp_path, capsys):
    other = tmp_path / "other"
    policy = Policy.from_pretrained(checkpoint)
    with torch.no_grad():
        next(policy.model.parameters()).add_(1.0)
    policy.save_pretrained(other)  # same file names and sizes, other weights
    out = tmp_path / "ev"
    base = ["eval", "--suite", str(suite), "--mode", "single-pass", "--out", str(out)]
    assert main([*base[:1], str(checkpoint), *base[1:]]) == 0
    first = (out / "score.json").read_text()
    assert json.loads((out / "fingerprint.json").read_text())["settings"]["temperature"] == 1.0
    capsys.readouterr()

    assert main([*base[:1], str(other), *base[1:]]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "another checkpoint;" in err[0] and "--fresh" in err[0]
    assert main([*base[:1], str(checkpoint), *base[1:], "--temperature", "0.5", "--samples", "2"]) == 2
    assert "another samples, temperature;" in capsys.readouterr().err
    assert (out / "score.json").read_text() == first  # nothing was overwritten
    assert main([*base[:1], str(checkpoint), *base[1:], "--batch-size", "5"]) == 0  # infrastructure: reused
    assert json.loads((out / "score.json").read_text())["rollout"]["shards_computed"] == 0

    assert main([*base[:1], str(other), *base[1:], "--fresh"]) == 0
    result = json.loads((out / "score.json").read_text())
    assert result["checkpoint"] == str(other) and result["rollout"]["shards_computed"] == 1

    legacy = tmp_path / "legacy"
    (legacy / "rollout").mkdir(parents=True)  # an eval from before fingerprints: origin unknown
    capsys.readouterr()
    assert main(["eval", str(checkpoint), "--suite", str(suite), "--out", str(legacy)]) == 2
    assert "cannot tell what made it" in capsys.readouterr().err


def _truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[:-100])


DAMAGE = {
    "missing weights": ("model.safetensors", lambda p: p.unlink()),
    "truncated weights": ("model.safetensors", _truncate),
    "garbage tokenizer": ("tokenizer.json", lambda p: p.write_text("not a tokenizer")),
    "missing tokenizer": ("tokenizer.json", lambda p: p.unlink()),
    "bad config": ("config.json", lambda p: p.write_text("[1, 2]")),
    "missing codebook": ("image_tokenizer.npz", lambda p: p.unlink()),
}


@pytest.mark.parametrize("damage", DAMAGE)
def test_a_damaged_checkpoint_is_named_in_one_line_before_any_output(damage, copy, suite, tmp_path, capsys):
    name, spoil = DAMAGE[damage]
    spoil(copy / name)
    with pytest.raises(InputError, match=name):
        Policy.from_pretrained(copy)
    config = tmp_path / "run.yaml"
    config.write_text("train:\n  max_steps: 1\n")
    commands = {
        "ev": ["eval", str(copy), "--suite", str(suite)],
        "tr": ["train", "--config", str(config), "--init", str(copy)],
        "ie": ["inspect-eval", str(copy)],
        "strip.png": ["sample", str(copy), "a red circle"],
    }
    for out, argv in commands.items():
        capsys.readouterr()
        assert main([*argv, "--out", str(tmp_path / out)]) == 2, argv[0]
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and str(copy / name) in err[0], (argv[0], err)
        assert not (tmp_path / out).exists(), argv[0]


def test_checksums_refuse_a_hand_edited_file_and_allow_the_head_written_later(copy, suite, tmp_path, capsys):
    recorded = json.loads((copy / "checksums.json").read_text())
    assert set(recorded) == {p.name for p in copy.iterdir()} - {"checksums.json"}
    (copy / "inspect_head.json").write_text("{}")  # the loop's head stage adds it after the save
    check_checkpoint(copy)

    swap_red_and_blue(copy / "tokenizer.json")
    with pytest.raises(InputError, match="tokenizer.json: changed since the checkpoint was saved"):
        Policy.from_pretrained(copy)
    assert main(["eval", str(copy), "--suite", str(suite), "--out", str(tmp_path / "ev")]) == 2
    assert "tokenizer.json" in capsys.readouterr().err and not (tmp_path / "ev").exists()

    (copy / "checksums.json").unlink()  # a checkpoint saved before checksums still loads
    check_checkpoint(copy)


def swap_red_and_blue(tokenizer: Path) -> None:
    """Hand-edit a tokenizer: still a valid one, silently wrong (it scored 0% on colours)."""
    data = json.loads(tokenizer.read_text())
    vocab = data["model"]["vocab"]
    vocab["red"], vocab["blue"] = vocab["blue"], vocab["red"]
    tokenizer.write_text(json.dumps(data))


def test_the_shipped_base_carries_true_checksums_and_refuses_a_tampered_tokenizer(tmp_path):
    """checkpoints/base ships `checksums.json` over every file it holds (written by `write_checksums`,
    and kept true: this check fails after any edit until it is rewritten), so a tampered copy fails."""
    base = Path(__file__).resolve().parents[1] / "checkpoints" / "base"
    recorded = json.loads((base / "checksums.json").read_text())
    assert set(recorded) == {p.name for p in base.iterdir() if p.is_file()} - {"checksums.json"}
    check_checkpoint(base)
    copy = Path(shutil.copytree(base, tmp_path / "base"))
    swap_red_and_blue(copy / "tokenizer.json")
    with pytest.raises(InputError, match="tokenizer.json: changed since the checkpoint was saved"):
        check_checkpoint(copy)


def test_the_trainers_checkpoint_carries_checksums_of_all_its_files(checkpoint, tmp_path):
    config = tmp_path / "tiny.yaml"
    config.write_text("data: {size: 8, workers: 1}\n"
                      "train: {max_steps: 1, batch_size: 2, max_length: 512, warmup_steps: 0, tokenize_workers: 1,"
                      " num_threads: 1}\n")
    out = tmp_path / "out"
    assert main(["train", "--config", str(config), "--out", str(out), "--init", str(checkpoint)]) == 0
    saved = out / "checkpoint"
    assert set(json.loads((saved / "checksums.json").read_text())) == {p.name for p in saved.iterdir()} - {"checksums.json"}
    check_checkpoint(saved)
