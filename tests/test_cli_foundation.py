"""The foundation commands: `selfplay suite`, `selfplay render`, `selfplay score`.

Happy path through the real console script, then bad input: every mistake ends with exit status 2
and one line on stderr that names the file (and line) at fault, and never leaves half an output.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from selfplay.cli import main

SELFPLAY = [shutil.which("selfplay")] if shutil.which("selfplay") else [sys.executable, "-m", "selfplay.cli"]
GOOD = {"tag": "colors", "include": [{"class": "circle", "count": 1, "color": "red"}], "prompt": "a red circle"}


def selfplay(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([*SELFPLAY, *args], capture_output=True, text=True, timeout=120)


def run(capsys, *args: str) -> tuple[int, str, str]:
    """`selfplay ARGS` in this process: (exit status, stdout, stderr)."""
    code = main(list(args))
    out, err = capsys.readouterr()
    return code, out, err


def one_error_line(err: str, *names: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert "Traceback" not in err and "error:" in lines[0]
    for name in names:
        assert name in lines[0], (name, lines[0])
    return lines[0]


def write_jsonl(path: Path, *lines) -> Path:
    path.write_text("".join((line if isinstance(line, str) else json.dumps(line)) + "\n" for line in lines))
    return path


# ---- the happy path ----------------------------------------------------------------------------

def test_suite_render_score_gives_100(tmp_path):
    """Ground truth for a test suite scores 100.0 overall, in the table and in --json."""
    suite, gt = tmp_path / "suite.jsonl", tmp_path / "gt"
    r = selfplay("suite", "--split", "test", "--per-task", "10", "--out", str(suite))
    assert r.returncode == 0, r.stderr
    assert len(suite.read_text().splitlines()) == 60
    r = selfplay("render", "--metadata", str(suite), "--samples", "2", "--out", str(gt))
    assert r.returncode == 0, r.stderr
    assert sorted(p.name for p in gt.iterdir()) == [f"{i:05d}" for i in range(60)]
    assert sorted(p.name for p in (gt / "00000" / "samples").iterdir()) == ["0000.png", "0001.png"]
    assert json.loads((gt / "00007" / "metadata.jsonl").read_text()) == json.loads(suite.read_text().splitlines()[7])
    r = selfplay("score", str(gt))
    assert r.returncode == 0, r.stderr
    assert "| 100.0 | 100.0 | 100.0 | 100.0 | 100.0 | 100.0 | 100.0 |" in r.stdout
    r = selfplay("score", "--json", str(gt))
    assert r.returncode == 0, r.stderr
    result = json.loads(r.stdout)
    assert result["overall"] == 1.0 and result["overall_se"] == 0.0
    assert result["counts"] == {t: 20 for t in result["per_task"]} and len(result["per_task"]) == 6


def test_score_counts_wrong_images(tmp_path, capsys):
    """Blanking one of four images of one task drops that task to 75% and overall by 1/24."""
    suite, gt = tmp_path / "suite.jsonl", tmp_path / "gt"
    assert run(capsys, "suite", "--per-task", "1", "--out", str(suite))[0] == 0
    assert run(capsys, "render", "--metadata", str(suite), "--samples", "4", "--out", str(gt))[0] == 0
    Image.new("RGB", (64, 64), "white").save(gt / "00002" / "samples" / "0003.png")  # the counting record
    code, out, _ = run(capsys, "score", "--json", str(gt))
    result = json.loads(out)
    assert code == 0 and result["per_task"]["counting"] == 0.75
    assert result["overall"] == pytest.approx(1 - 0.25 / 6)


def test_render_is_reproducible_and_replaces_old_output(tmp_path, capsys):
    meta = write_jsonl(tmp_path / "m.jsonl", GOOD)
    for out in ("a", "b"):
        assert run(capsys, "render", "--metadata", str(meta), "--out", str(tmp_path / out))[0] == 0
    a, b = (np.asarray(Image.open(tmp_path / d / "00000/samples/0002.png")) for d in "ab")
    assert (a == b).all()
    (tmp_path / "a" / "stale").mkdir()
    assert run(capsys, "render", "--metadata", str(meta), "--samples", "1", "--out", str(tmp_path / "a"))[0] == 0
    assert sorted(p.name for p in (tmp_path / "a").iterdir()) == ["00000"]


# ---- bad input: exit 2, one line naming the culprit --------------------------------------------

@pytest.mark.parametrize("bad, fragment", [
    (json.dumps({"tag": "single_object", "include": [{"class": "dog", "count": 1}]}).encode(), "unknown class 'dog'"),
    (json.dumps({"tag": "colors", "include": [{"class": "circle", "color": "pink"}]}).encode(), "unknown color 'pink'"),
    (b'{"tag": "colors", "include": [', "malformed JSON"),
    (b"\xff\xfe garbage", "not UTF-8"),
])
def test_render_rejects_a_bad_record_line(tmp_path, capsys, bad, fragment):
    """The error names the file and the line (here line 2), and nothing is written."""
    meta = tmp_path / "m.jsonl"
    meta.write_bytes(json.dumps(GOOD).encode() + b"\n" + bad + b"\n")
    code, _, err = run(capsys, "render", "--metadata", str(meta), "--out", str(tmp_path / "out"))
    assert code == 2
    assert fragment in one_error_line(err, f"{meta}:2")
    assert not (tmp_path / "out").exists()


def test_bad_input_through_the_console_script(tmp_path):
    """The installed `selfplay` prints no traceback either."""
    meta = write_jsonl(tmp_path / "m.jsonl", {"tag": "single_object", "include": [{"class": "dog"}]})
    r = selfplay("render", "--metadata", str(meta), "--out", str(tmp_path / "out"))
    assert r.returncode == 2
    one_error_line(r.stderr, f"{meta}:1", "unknown class")


def test_render_rejects_a_missing_metadata_file(tmp_path, capsys):
    code, _, err = run(capsys, "render", "--metadata", str(tmp_path / "nope.jsonl"), "--out", str(tmp_path / "o"))
    assert code == 2
    one_error_line(err, "nope.jsonl", "no such file")


def test_failed_render_leaves_no_output(tmp_path, capsys):
    """A record that cannot be drawn (17 circles do not fit) fails before anything is written."""
    impossible = {"tag": "counting", "include": [{"class": "circle", "count": 17}]}
    meta = write_jsonl(tmp_path / "m.jsonl", GOOD, impossible)
    out = tmp_path / "out"
    code, _, err = run(capsys, "render", "--metadata", str(meta), "--out", str(out))
    assert code == 2
    one_error_line(err, f"{meta}:2", "cannot place")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.jsonl"]


def test_interrupted_write_leaves_nothing_behind(tmp_path):
    """`write_samples` is atomic: a failure part way leaves neither the folder nor its temporary."""
    from strokes.geneval import write_samples
    from strokes.records import PromptRecord

    rec = PromptRecord.from_json(GOOD)

    def items():
        yield rec, [np.full((64, 64, 3), 255, np.uint8)]
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError):
        write_samples(tmp_path / "out", items())
    assert list(tmp_path.iterdir()) == []


@pytest.fixture
def gt(tmp_path, capsys):
    """A small ground-truth folder in GenEval's layout: two records, two images each."""
    meta = write_jsonl(tmp_path / "m.jsonl", GOOD, {**GOOD, "prompt": "another red circle"})
    out = tmp_path / "gt"
    assert run(capsys, "render", "--metadata", str(meta), "--samples", "2", "--out", str(out))[0] == 0
    return out


def score_error(capsys, folder: Path) -> str:
    code, out, err = run(capsys, "score", str(folder))
    assert code == 2 and out == ""
    return err


def test_score_rejects_a_missing_folder(tmp_path, capsys):
    one_error_line(score_error(capsys, tmp_path / "nowhere"), "nowhere", "no such folder")


def test_score_rejects_a_folder_without_records(tmp_path, capsys):
    one_error_line(score_error(capsys, tmp_path), str(tmp_path), "no record folders")


def test_score_rejects_missing_metadata(gt, capsys):
    (gt / "00001" / "metadata.jsonl").unlink()
    one_error_line(score_error(capsys, gt), "00001/metadata.jsonl", "missing")


@pytest.mark.parametrize("line, fragment", [
    (b'{"tag": "colors", "include": [{"class": "dog"}]}', "unknown class 'dog'"),
    (b'{"tag": "colors", "include": [{"class": "circle", "color": "pink"}]}', "unknown color 'pink'"),
    (b'{"tag": "colors", "include": ', "malformed JSON"),
    (b"\xff\xfe garbage", "not UTF-8"),
])
def test_score_rejects_bad_metadata(gt, capsys, line, fragment):
    (gt / "00001" / "metadata.jsonl").write_bytes(line + b"\n")
    assert fragment in one_error_line(score_error(capsys, gt), "00001/metadata.jsonl:1")


def test_score_rejects_an_image_of_the_wrong_size(gt, capsys):
    Image.new("RGB", (32, 32), "white").save(gt / "00001" / "samples" / "0001.png")
    err = one_error_line(score_error(capsys, gt), "00001/samples/0001.png")
    assert "32x32, expected 64x64" in err


@pytest.mark.parametrize("corrupt", [
    lambda good: b"this is not a png at all",
    lambda good: good[:40],  # truncated
    lambda good: good[:33] + (1).to_bytes(4, "big") + good[37:],  # a wrong IDAT length (PIL: SyntaxError)
])
def test_score_rejects_an_unreadable_image(gt, capsys, corrupt):
    png = gt / "00000" / "samples" / "0000.png"
    png.write_bytes(corrupt(png.read_bytes()))
    assert "unreadable image" in one_error_line(score_error(capsys, gt), "00000/samples/0000.png")


def test_score_rejects_a_record_folder_without_images(gt, capsys):
    shutil.rmtree(gt / "00001" / "samples")
    one_error_line(score_error(capsys, gt), "00001/samples", "no PNG images")


def test_score_reports_a_missing_image_and_strict_refuses_it(gt, capsys):
    """Three of four images scored is said in the table and in --json, and --strict fails on it."""
    (gt / "00001" / "samples" / "0001.png").unlink()
    code, out, _ = run(capsys, "score", str(gt))
    assert code == 0 and "3 images, 1 missing (first 00001/samples/0001.png)" in out
    code, out, _ = run(capsys, "score", "--json", str(gt))
    result = json.loads(out)
    assert code == 0 and result["missing"] == 1 and sum(result["counts"].values()) == 3
    code, out, err = run(capsys, "score", "--strict", str(gt))
    assert code == 2 and out == ""
    one_error_line(err, "1 of 4 images missing", "00001/samples/0001.png", "--strict")


def test_score_json_says_its_units_and_counts_no_missing_image_when_none_is(gt, capsys):
    """--json gives fractions where the table gives percent: `units` says which."""
    code, out, _ = run(capsys, "score", "--json", "--strict", str(gt))
    result = json.loads(out)
    assert code == 0 and result["units"] == "fraction" and result["missing"] == 0 and result["overall"] == 1.0


@pytest.mark.parametrize("args, fragment", [
    (["suite", "--per-task", "0"], "--per-task"),
    (["render", "--samples", "0"], "--samples"),
])
def test_bad_numbers_are_rejected(tmp_path, capsys, args, fragment):
    meta = write_jsonl(tmp_path / "m.jsonl", GOOD)
    extra = ["--metadata", str(meta)] if args[0] == "render" else []
    code, _, err = run(capsys, *args, *extra, "--out", str(tmp_path / "o"))
    assert code == 2
    one_error_line(err, fragment)
    assert not (tmp_path / "o").exists()
