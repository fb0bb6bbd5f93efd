"""What a newcomer sees in the first hour (issue 17): stage lines and short training lines on the
console, the control beside the policy, `sample` writing only where told, a report that explains
itself, and a dry run that warns."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from selfplay.cli import main
from strokes import console
from strokes.shapeworld import make_suite, record_from_text

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    """A tiny untrained policy."""
    from strokes.model.policy import Policy
    from strokes.model.tiny import ModelConfig

    path = tmp_path_factory.mktemp("base") / "checkpoint"
    Policy.build(ModelConfig(hidden_size=32, num_layers=1, num_heads=2, intermediate_size=64)).save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def one_round(tmp_path_factory, checkpoint) -> tuple[Path, str]:
    """A one-round run with the control arm, and what it printed."""
    from tests.test_loop import tiny_config

    tmp = tmp_path_factory.mktemp("run")
    cfg = tiny_config(tmp, checkpoint, loop={"rounds": 1})
    proc = subprocess.run(["selfplay", "run", str(cfg), "--runs", str(tmp / "runs"), "--name", "t"],
                          capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr
    return tmp / "runs" / "t", proc.stdout + proc.stderr


def test_each_stage_says_what_it_does_when_it_starts(one_round):
    _, text = one_round
    assert "round 1: rollouts ... 12 process-mode rollouts on training prompts" in text
    assert "round 0: eval ... 6 rollouts per mode (process, single_pass) on the held-out suite" in text
    assert text.index("round 1: rollouts ...") < text.index("round 1: rollouts done")


def test_a_grpo_rounds_start_line_says_when_its_loss_is_an_sft_loss():
    """The SFT config trains in GRPO's trainer; its start line says what the update is."""
    from selfplay.config import load_config
    from selfplay.loop import CHECKPOINT, UPDATES, describe
    from trainer.config import ADVANTAGES

    assert set(UPDATES) == set(ADVANTAGES)
    main_job, sft = (describe(load_config(ROOT / "configs" / f"{name}.yaml"), 1, CHECKPOINT)
                    for name in ("shapeworld", "shapeworld-sft"))
    assert main_job.startswith("GRPO (60 steps") and "SFT" not in main_job
    assert "the SFT loss on the rollouts that beat their group" in sft


def test_training_prints_short_step_lines_and_no_trainer_dicts(one_round):
    _, text = one_round
    assert "step 1/2 loss " in text and "step 2/2 loss " in text
    assert "{'loss'" not in text and "'grad_norm'" not in text


def test_the_control_scores_reach_the_console_beside_the_policys(one_round):
    _, text = one_round
    line = next(line for line in text.splitlines() if "vs control" in line)
    assert line.startswith("round 1: process policy ") and "(gap " in line and "±" in line


def test_bars_show_only_on_a_terminal_and_never_when_quiet(monkeypatch):
    monkeypatch.setattr("sys.stderr.isatty", lambda: True, raising=False)
    assert console.bars() and console.lines()
    console.set_quiet(True)
    try:
        assert not console.bars() and not console.lines()
    finally:
        console.set_quiet(False)


def test_the_report_opens_with_a_summary_glossary_and_metadata(one_round):
    run, _ = one_round
    page = (run / "report.html").read_text()
    summary = page.split('<div class="summary">', 1)[1].split("</div>", 1)[0]
    assert "Current policy: round" in summary and "vs round 0" in summary and "Wall time" in summary
    assert "significant" in summary
    assert "<dt>process</dt>" in page and "<dt>control</dt>" in page and "<dt>promotion</dt>" in page
    assert "<summary>config.yaml</summary>" in page and "git commit" in page and "machine" in page
    assert "±2 SE" not in page and "tolerance (points)" in page
    assert page.count("<img ") == page.count(' alt="')
    assert "inspection:" in page and ("✓ final image right" in page or "✗ final image wrong" in page)


def _chromium_title(run, tmp_path, onload: str, *flags: str) -> tuple[str, str]:
    """The title the report's page has after `onload` ran in headless chromium, and chromium's stderr."""
    chromium = shutil.which("chromium")
    if chromium is None:
        pytest.skip("chromium not installed (Debian's `chromium` package)")
    probe = tmp_path / "probe.html"
    probe.write_text((run / "report.html").read_text().replace(
        "</body>", f"<script>window.onload=()=>{{{onload}}}</script></body>"))
    out = subprocess.run([chromium, "--headless", "--no-sandbox", "--disable-gpu", *flags,
                          "--dump-dom", probe.as_uri()], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    return out.stdout.split("<title>", 1)[1].split("</title>", 1)[0], out.stderr


def test_the_report_loads_in_headless_chromium_with_every_image_decoded(one_round, tmp_path):
    run, _ = one_round
    # Count decoded images into the title, then read the rendered DOM back.
    title, stderr = _chromium_title(run, tmp_path, "const i=[...document.images];document.title="
                                    "'decoded '+i.filter(x=>x.complete&&x.naturalWidth>0).length+'/'+i.length",
                                    "--enable-logging=stderr")
    decoded, total = title.removeprefix("decoded ").split("/")
    assert int(total) > 0 and decoded == total
    assert "CONSOLE" not in stderr  # the page logged nothing: no script errors


def test_no_image_of_the_report_is_cut_in_a_1400_px_window(one_round, tmp_path):
    """Issue 30: the row of plots was wider than a 1400-px window (the third was cut)."""
    run, _ = one_round
    title, _ = _chromium_title(run, tmp_path, "const r=[...document.images].map(i=>i.getBoundingClientRect().right);"
                               "document.title='right '+Math.ceil(Math.max(...r))+' of '+window.innerWidth",
                               "--window-size=1400,900")
    right, width = title.removeprefix("right ").split(" of ")
    assert int(right) <= int(width)


def test_sample_writes_only_where_out_says_and_tells_whether_the_image_is_right(checkpoint, tmp_path, monkeypatch,
                                                                                capsys):
    here, out = tmp_path / "empty", tmp_path / "elsewhere" / "strip.png"
    here.mkdir()
    monkeypatch.chdir(here)
    assert main(["sample", str(checkpoint), "a green square and a purple triangle", "--out", str(out),
                 "--max-steps", "2"]) == 0
    text = capsys.readouterr().out
    assert list(here.iterdir()) == [] and out.exists()
    assert "rollout (none)" not in text and f"wrote {out}" in text
    last = text.strip().splitlines()[-2:]
    assert last[0].startswith("final image satisfies the prompt (exact judge): ")
    assert last[0].split(": ", 1)[1].split(":")[0] in ("yes", "no")
    assert last[1].startswith("steps the model flagged: ")


def test_prompts_in_our_templates_parse_back_into_their_records():
    for rec in make_suite("test", 3, 0) + make_suite("train", 3, 1):
        parsed = record_from_text(rec.text)
        assert (parsed.tag, parsed.include, parsed.exclude) == (rec.tag, rec.include, rec.exclude)
    assert record_from_text("a pink elephant") is None


def test_the_cluster_dry_run_warns_about_the_tiny_model_and_wandb_online(capsys):
    assert main(["run", "configs/cluster.yaml", "--dry-run"]) == 0
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 3
    assert "train.max_length 4096 is beyond the model's 1024 positions" in err[0]
    assert "2.3M-parameter model" in err[1] and "loop.base_checkpoint" in err[1]
    assert "wandb login" in err[2]
    assert main(["run", "configs/shapeworld.yaml", "--dry-run"]) == 0
    assert capsys.readouterr().err == ""
