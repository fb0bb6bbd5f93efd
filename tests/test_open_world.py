"""The open world: a team's prompt file, a real unified model (a tiny random Emu3), a judge reached
through the `openai` client, GenEval's folder layout and scores from a judge or GenEval's own scorer."""

from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
import pytest
import yaml

from selfplay.cli import main
from selfplay.config import load_config
from selfplay.world import OpenWorld, WorldConfig, make_world
from strokes.errors import InputError
from strokes.records import FREE_TEXT, TASKS, PromptRecord, write_records
from strokes.shapeworld import make_suite, render, score_folder, target_scene

ROOT = Path(__file__).resolve().parents[1]
GENEVAL = ROOT / "data" / "geneval" / "evaluation_metadata.jsonl"


@pytest.fixture(scope="module")
def tiny_emu3(tmp_path_factory) -> Path:
    """A tiny random Emu3 policy whose tokenizer knows GenEval's words, made as a user makes one."""
    from strokes.model.emu3 import main as convert

    out = tmp_path_factory.mktemp("emu3") / "policy"
    convert(["--tiny", "--words", str(GENEVAL), "--out", str(out)])
    return out


def open_config(tmp: Path, base: Path, prompts: Path, **sections) -> Path:
    cfg = {"inherit": str(ROOT / "configs" / "geneval-open-tiny.yaml"),
           "world": {"prompts": str(prompts)},
           "train": {"num_threads": 1, "grpo": {"steps": 2, "prompts_per_step": 2, "generations": 2, "prompts": 8}},
           "rollout": {"max_steps": 2, "max_text_tokens": 8, "batch_size": 8},
           "loop": {"base_checkpoint": str(base), "eval_per_task": 1, "validation_per_task": 1}}
    for name, values in sections.items():
        cfg.setdefault(name, {}).update(values)
    path = tmp / "open.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def test_geneval_prompts_split_into_disjoint_training_validation_and_eval_prompts():
    world = OpenWorld(WorldConfig(kind="open", prompts=str(GENEVAL)), 64, judge=lambda: None)
    texts = [{r.text for r in part} for part in (world.train, world.validation, world.eval)]
    assert sum(map(len, texts)) == 553 and not (texts[0] & texts[1] or texts[0] & texts[2] or texts[1] & texts[2])
    assert {r.tag for r in world.eval} == set(TASKS) and 150 <= len(world.eval) <= 180  # 30% of each task
    again = OpenWorld(WorldConfig(kind="open", prompts=str(GENEVAL)), 64, judge=lambda: None)
    assert again.eval == world.eval and again.validation == world.validation  # the same file, the same splits
    assert [r.tag for r in world.eval_suite(2, seed=0)] == [t for t in TASKS for _ in range(2)]
    assert len(world.training_suite(1000, seed=1)) == 1000  # more than the file holds: drawn again


@pytest.mark.parametrize("overrides, field", [
    (["judge.kind=oracle", "judge.serve=''"], "judge.kind"),
    (["train.method=sft"], "train.method"),
    (["loop.control=true"], "loop.control"),
    (["judge.prompts_file=''"], "judge.prompts_file"),
    (["world.prompts=''"], "world.prompts"),
])
def test_what_an_open_world_cannot_do_is_refused_in_one_line(overrides, field):
    with pytest.raises(InputError) as e:
        load_config(ROOT / "configs" / "geneval-open-tiny.yaml", overrides)
    assert f"'{field}'" in str(e.value) and "\n" not in str(e.value)


def test_a_judge_scores_an_eval_folder_by_each_records_rule_as_the_exact_checker_does(tmp_path):
    """An open world's eval score comes from its judge, reached over HTTP: with our exact judge
    behind the server, ShapeWorld images get exactly the exact checker's score."""
    suite = make_suite("test", 2, seed=3)
    rng = np.random.default_rng(0)
    images = []
    for i, rec in enumerate(suite):
        right = render(target_scene(rec, random.Random(i)))
        images.append(right if rng.random() < 0.6 else np.full_like(right, 255))  # a blank one is wrong
    from strokes.geneval import write_samples

    write_samples(tmp_path / "geneval", [(rec, [im]) for rec, im in zip(suite, images)])
    write_records(suite, tmp_path / "prompts.jsonl")
    cfg = load_config(None, ["world.kind=open", f"world.prompts={tmp_path / 'prompts.jsonl'}", "judge.kind=gpt",
                             "judge.serve=oracle", "judge.prompts_file=shapeworld", "train.method=grpo",
                             "loop.control=false", "judge.max_retries=0"])
    from selfplay.judging import served_judge

    with served_judge(cfg) as served:
        assert served.judge.base_url.startswith("http://127.0.0.1:")
        by_judge = make_world(served).score(tmp_path / "geneval")
    exact = score_folder(tmp_path / "geneval")
    assert by_judge.per_task == exact.per_task and 0 < exact.overall < 1


def test_genevals_own_results_are_read_and_summarised_like_ours(tmp_path, capsys):
    """`selfplay score results.jsonl` reads the official scorer's output: per task the share of
    correct images, overall the mean over tasks (GenEval's summary_scores.py)."""
    rows = [("single_object", True), ("single_object", False), ("counting", True), ("counting", True),
            ("counting", False), ("position", False)]
    (tmp_path / "results.jsonl").write_text("".join(
        json.dumps({"filename": f"{i:05d}/samples/0000.png", "tag": t, "prompt": "p", "correct": ok,
                    "reason": "", "metadata": "{}", "details": "{}"}) + "\n" for i, (t, ok) in enumerate(rows)))
    assert main(["score", str(tmp_path / "results.jsonl"), "--json"]) == 0
    score = json.loads(capsys.readouterr().out)
    assert score["per_task"] == {"single_object": 0.5, "counting": pytest.approx(2 / 3), "position": 0.0}
    assert score["overall"] == pytest.approx((0.5 + 2 / 3 + 0.0) / 3)
    (tmp_path / "bad.jsonl").write_text('{"tag": "counting"}\n')
    assert main(["score", str(tmp_path / "bad.jsonl")]) == 2
    assert "bad.jsonl:1: a GenEval result line needs 'tag' (text) and 'correct'" in capsys.readouterr().err


def test_a_plain_text_prompt_file_gives_free_text_prompts(tmp_path):
    (tmp_path / "prompts.txt").write_text("a cat sitting on a mat\na red bicycle\n" * 5)
    world = OpenWorld(WorldConfig(kind="open", prompts=str(tmp_path / "prompts.txt"), eval_fraction=0.2), 64,
                      judge=lambda: None)
    assert {r.tag for r in world.train} == {FREE_TEXT} and world.eval
    assert PromptRecord.from_json(world.eval[0].to_json()) == world.eval[0]


@pytest.mark.slow
def test_an_open_world_grpo_round_end_to_end(tmp_path, tiny_emu3, capsys):
    """GenEval prompts -> rollouts of a tiny Emu3 -> rewards from its own Inspect served over HTTP and
    reached through the openai client -> a GRPO round -> evals in GenEval's layout, scored by the
    judge -> report."""
    cfg = open_config(tmp_path, tiny_emu3, GENEVAL)
    assert main(["run", str(cfg), "--runs", str(tmp_path), "--name", "open"]) == 0
    run = tmp_path / "open"
    out = capsys.readouterr().out
    assert "judge server on http://127.0.0.1:" in out and "answered" in out
    folder = run / "round_001" / "eval" / "process" / "geneval"
    record = json.loads((folder / "00000" / "metadata.jsonl").read_text())
    assert record["prompt"].startswith("a photo of") and (folder / "00000" / "samples" / "0000.png").is_file()
    scores = json.loads((run / "round_001" / "eval" / "scores.json").read_text())["process"]
    assert set(scores["per_task"]) == set(TASKS) and sum(scores["counts"].values()) == 6
    events = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    steps = [e for e in events if e["event"] == "train" and "reward" in e]
    assert [e["step"] for e in steps] == [1, 2]
    assert all(e["judge/unjudged"] < 4 for e in steps)  # the judge answered (4 trajectories a step)
    assert (run / "report.html").is_file()
