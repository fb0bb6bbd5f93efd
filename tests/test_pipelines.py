"""The base data pipelines (paper §3.1) hold their promises, checked by the world's own judge.

Over a few hundred trajectories of every source, across all six tasks: every final image is correct
by the GenEval rules; every visual state that is not deliberately wrong shows exactly what its step
describes; every deliberate mistake is caught by the checker (a wrong plan contradicts the prompt, a
wrong sketch contradicts its description); every other plan is contradiction-free; every text parses
back, and each inspection says what the checker says. Then `selfplay data build` / `data show`.

Each trajectory is made from `random.Random(seed)` with the seed string printed in any failure, so
`TrajectoryMaker().make(source, sample_record(task, rng), rng)` reproduces it.
"""

from __future__ import annotations

import json
import random
from collections import Counter

import numpy as np
import pytest
from PIL import Image

from selfplay.cli import main
from selfplay.visualize import BORDER, GAP, SCALE, WRONG, strip_image
from strokes.data.build import DataConfig, make_rows
from strokes.data.pipelines import SOURCES, PipelineConfig, TrajectoryMaker
from strokes.language import EDIT_KINDS, parse_description, parse_inspection, parse_instruction
from strokes.records import TASKS, PromptRecord
from strokes.shapeworld import check, detect, sample_record
from strokes.shapeworld.check import Item, check_items, plan_conflicts
from strokes.trajectory import Trajectory, from_row

PER_TASK = 50  # 300 trajectories per source


def make(source: str, task: str, i: int, maker: TrajectoryMaker | None = None) -> tuple[str, Trajectory]:
    seed = f"{source}:{task}:{i}"
    rng = random.Random(seed)
    return seed, (maker or TrajectoryMaker()).make(source, sample_record(task, rng, "train"), rng)


@pytest.fixture(scope="module")
def samples() -> dict[str, list[tuple[str, Trajectory]]]:
    maker = TrajectoryMaker()
    return {src: [make(src, task, i, maker) for task in TASKS for i in range(PER_TASK)] for src in SOURCES}


def staged(samples, sources=("scene_graph", "conflict", "alignment")):
    """(seed, trajectory, record) for the staged (non-single-pass) sources."""
    for src in sources:
        for seed, t in samples[src]:
            yield seed, t, PromptRecord.from_json(t.record)


def visual_states(t: Trajectory):
    """(step index, step, refinement or None, image, inspection, deliberately wrong?) in drawing order."""
    for k, s in enumerate(t.steps):
        yield k, s, None, s.image, s.inspection, s.wrong_plan or s.wrong_image
        for r in s.refinements:
            yield k, s, r, r.image, r.inspection, r.wrong_image


# ---- the three promises of the issue ---------------------------------------------------------------

@pytest.mark.parametrize("source", SOURCES)
def test_every_final_image_passes_the_scorer(samples, source):
    failed = [seed for seed, t in samples[source] if check(PromptRecord.from_json(t.record), t.final_image)]
    assert not failed, f"{len(failed)} final images fail GenEval, e.g. seed {failed[0]}"
    assert Counter(t.meta.get("tag") or t.record["tag"] for _, t in samples[source]) == {t: PER_TASK for t in TASKS}


def test_every_state_that_is_not_deliberately_wrong_matches_its_description(samples):
    """A sketch shows exactly the objects and relations of its step's <des> (a wrong plan's sketch
    too: it faithfully draws the wrong plan). A refinement of a misdrawn sketch shows the step's
    description; a refinement of a wrong plan shows the corrected scene, which is what the next step
    builds on (its description less the object it adds), or the finished scene when no step follows."""
    for seed, t, rec in staged(samples):
        for k, s, r, image, _, wrong in visual_states(t):
            if wrong:
                continue
            where = f"seed {seed} step {k}" + (" refinement" if r else "")
            if r is None or not s.wrong_plan:
                assert not check_items(parse_description(s.description), detect(image)), where
            elif k + 1 < len(t.steps):
                nxt = t.steps[k + 1]
                assert parse_instruction(nxt.instruction).kind == "add", where
                assert not check_items(parse_description(nxt.description)[:-1], detect(image)), where
            else:
                assert not check(rec, image), where


def test_every_negative_is_detected_by_the_checker(samples):
    """A wrong plan contradicts the prompt (plan_conflicts); a misdrawn sketch contradicts its
    description (check_items). Their inspections say so, blaming the instruction or the image."""
    seen = Counter()
    for seed, t, rec in staged(samples):
        for k, s in enumerate(t.steps):
            verdict = parse_inspection(s.inspection)
            if s.wrong_plan:
                seen["wrong_plan"] += 1
                assert plan_conflicts(rec, parse_description(s.description)), f"seed {seed} step {k}"
                assert verdict.conflicts and {c.source for c in verdict.conflicts} == {"instruction"}, seed
            if s.wrong_image:
                seen["wrong_image"] += 1
                assert check_items(parse_description(s.description), detect(s.image)), f"seed {seed} step {k}"
                assert verdict.conflicts and {c.source for c in verdict.conflicts} == {"image"}, seed
    # The mixture really holds negatives of both kinds (paper: ~55% and 2/3 of their sets).
    assert seen["wrong_plan"] > 100 and seen["wrong_image"] > 150, seen


def test_every_positive_plan_is_contradiction_free(samples):
    """Detours included: a recolour, move or swap detour never states what the prompt forbids."""
    for seed, t, rec in staged(samples):
        for k, s in enumerate(t.steps):
            if not s.wrong_plan:
                assert not plan_conflicts(rec, parse_description(s.description)), f"seed {seed} step {k}"


def test_every_text_parses_and_inspections_agree_with_refinements(samples):
    """Instructions, descriptions and inspections parse back; a step is refined exactly when its
    inspection reports a conflict, and each refinement fixes it (its own inspection is aligned)."""
    for seed, t, _ in staged(samples):
        for k, s in enumerate(t.steps):
            where = f"seed {seed} step {k}"
            assert parse_instruction(s.instruction) is not None, (where, s.instruction)
            assert parse_description(s.description) is not None, (where, s.description)
            verdict = parse_inspection(s.inspection)
            assert verdict is not None, (where, s.inspection)
            assert verdict.aligned == (not s.refinements) == (not (s.wrong_plan or s.wrong_image)), where
            for r in s.refinements:
                assert parse_instruction(r.instruction) is not None, (where, r.instruction)
                assert parse_inspection(r.inspection).aligned, (where, r.inspection)


def test_inspections_say_the_scene_is_complete_exactly_when_it_is(samples):
    """'the scene matches the prompt' iff GenEval says correct, and 'still missing: ...' otherwise.
    A finished scene is followed only by <eos> or by a deliberately wrong plan (too many objects,
    masked from the loss): the model is never taught to keep drawing after saying it is done.
    (Seed scene_graph:position:13 once broke this: a move detour's first placement already held the
    relation, so the scene looked finished a step early.)"""
    for seed, t, rec in staged(samples):
        states = list(visual_states(t))
        for n, (k, s, r, image, inspection, wrong) in enumerate(states):
            if wrong:
                continue
            verdict = parse_inspection(inspection)
            done = not check(rec, image)
            assert done == (not verdict.missing), f"seed {seed} step {k}: {inspection}"
            if done and n + 1 < len(states):
                assert states[n + 1][1].wrong_plan and states[n + 1][2] is None, f"seed {seed} step {k}"


def test_every_trained_state_changes_the_scene_and_stays_on_track(samples):
    """Each visual state the model is trained to draw differs from the one before, and never holds
    an object the prompt rules out (by class, count or colour)."""
    for seed, t, rec in staged(samples):
        previous = None
        for k, s, r, image, _, wrong in visual_states(t):
            if not wrong:
                assert previous is None or not np.array_equal(image, previous), f"seed {seed} step {k}"
                found = [Item(d.shape, d.color) for d in detect(image)]
                assert not plan_conflicts(rec, found), f"seed {seed} step {k}"
            previous = image


def test_single_pass_is_the_prompt_and_one_image(samples):
    for seed, t in samples["single_pass"]:
        assert t.single_pass and len(t.steps) == 1 and t.steps[0].instruction == "", seed


# ---- mixture knobs ---------------------------------------------------------------------------------

def test_negative_rates_follow_the_config(samples):
    """Default: ~55% of the conflict set and ~2/3 of the alignment set are negatives (the paper's
    ~45% and 1/3 positives); at rate 0 a set holds positives only."""
    for source, rate in (("conflict", 0.55), ("alignment", 0.67)):
        neg = sum(t.meta["error"] != "none" for _, t in samples[source]) / len(samples[source])
        assert abs(neg - rate) < 0.09, (source, neg)
    maker = TrajectoryMaker(PipelineConfig(conflict_negative=0.0, alignment_negative=0.0))
    for source in ("conflict", "alignment"):
        for task in TASKS:
            for i in range(10):
                seed, t = make(source, task, i, maker)
                assert t.meta["error"] == "none" and not any(s.refinements for s in t.steps), seed


@pytest.mark.parametrize("kind", ["recolor", "move", "swap"])
def test_each_detour_edit_reaches_the_prompted_scene(kind):
    """With only one detour kind enabled, trajectories use that edit once, as a step whose
    instruction parses to that kind, and still end in a correct image."""
    weights = {"recolor": 0.0, "move": 0.0, "swap": 0.0, kind: 1.0}
    maker = TrajectoryMaker(PipelineConfig(detour_prob=1.0, detour_weights=weights))
    used = 0
    for task in ("two_object", "position", "color_attr", "counting"):
        for i in range(15):
            seed, t = make("scene_graph", task, i, maker)
            assert t.meta["detour"] in ("none", kind), seed
            edits = [s for s in t.steps if s.edit != "add"]
            if t.meta["detour"] == "none":
                assert not edits, seed
                continue
            used += 1
            assert len(edits) == 1 and parse_instruction(edits[0].instruction).kind == kind, seed
            assert not check(PromptRecord.from_json(t.record), t.final_image), seed
    assert used >= 10, (kind, used)


def test_edit_kinds_are_the_language_edit_kinds(samples):
    kinds = Counter(s.edit for seed, t, _ in staged(samples) for s in t.steps)
    kinds.update(parse_instruction(r.instruction).kind for _, t, _ in staged(samples)
                 for s in t.steps for r in s.refinements)
    assert set(kinds) == set(EDIT_KINDS), kinds


def test_rows_do_not_depend_on_the_worker_count():
    """Chunks are seeded by index, so one worker and two give the same dataset."""
    one = make_rows(DataConfig(size=600, workers=1), progress=False)
    two = make_rows(DataConfig(size=600, workers=2), progress=False)
    assert [r["steps"] for r in one] == [r["steps"] for r in two]
    assert [r["images"] for r in one] == [r["images"] for r in two]
    assert from_row(one[0]).prompt == from_row(two[0]).prompt


# ---- selfplay data build / show ------------------------------------------------------------------

def run(capsys, *args: str) -> tuple[int, str, str]:
    code = main(list(args))
    out, err = capsys.readouterr()
    return code, out, err


def one_error_line(err: str, *names: str) -> None:
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in err and "error:" in lines[0], err
    for name in names:
        assert name in lines[0], (name, lines[0])


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """`selfplay data build` of 2000 trajectories from a config whose other sections it ignores."""
    root = tmp_path_factory.mktemp("data")
    config = root / "run.yaml"
    config.write_text("data:\n  size: 500\n  seed: 3\n  workers: 2\ntrain:\n  lr: 0.001\n  anything: [1, 2]\n")
    code = main(["data", "build", "--config", str(config), "--out", str(root / "base"), "--set", "data.size=2000"])
    assert code == 0
    return root / "base"


def test_data_build_writes_dataset_and_summary(built, capsys):
    summary = json.loads((built / "summary.json").read_text())
    assert summary["trajectories"] == 2000 and summary["workers"] == 2
    per = summary["per_source"]
    assert set(per) == set(SOURCES) and sum(per.values()) == 2000
    assert 0.35 < per["scene_graph"] / 2000 < 0.45  # mixture 2:1:1:1
    for src in ("conflict", "alignment", "single_pass"):
        assert 0.16 < per[src] / 2000 < 0.24, (src, per[src])
    assert sum(c for v, c in summary["per_variant"].items() if v.startswith("conflict:")) == per["conflict"]
    assert {"add", "recolor", "move", "swap", "refine:remove", "refine:replace"} <= set(summary["per_edit_kind"])
    assert summary["mean_steps_per_source"]["single_pass"] == 1.0
    assert 1.0 < summary["mean_steps"] < summary["mean_steps_per_source"]["conflict"]
    tokens = summary["tokens"]
    assert tokens["p50"] <= tokens["p95"] <= tokens["max"] and tokens["total"] > 2000 * 66
    assert 0 < summary["seconds_to_make"] <= summary["seconds_total"]


def test_data_build_prints_the_summary_table(tmp_path, capsys):
    config = tmp_path / "c.yaml"
    config.write_text("data:\n  size: 40\n  workers: 1\n")
    code, out, err = run(capsys, "data", "build", "--config", str(config), "--out", str(tmp_path / "d"))
    assert code == 0, err
    assert out.startswith("built 40 trajectories in ")
    for word in ("scene_graph", "conflict:none", "refine:", "mean steps", "p95", "traj/s"):
        assert word in out, word


def test_data_show_prints_and_writes_strips(built, tmp_path, capsys):
    code, out, err = run(capsys, "data", "show", str(built), "--n", "3", "--source", "conflict",
                         "--out", str(tmp_path / "show"))
    assert code == 0, err
    strips = sorted((tmp_path / "show").glob("*.png"))
    assert len(strips) == 3 and out.count("prompt:") == 3 and out.count("<ins>") >= 3
    assert "final image by the GenEval rules: correct" in out and "WRONG (" not in out
    code, out, _ = run(capsys, "data", "show", str(built), "--n", "2")
    assert code == 0 and len(list((built / "show").glob("*.png"))) == 2


def test_strip_shows_every_state_scaled_with_wrong_ones_framed_red():
    maker = TrajectoryMaker(PipelineConfig(alignment_negative=1.0))
    _, t = make("alignment", "color_attr", 0, maker)
    states = t.images()
    strip = strip_image(t)
    side = 64 * SCALE
    assert strip.shape == (side + 2 * BORDER, len(states) * (side + 2 * BORDER) + (len(states) - 1) * GAP, 3)
    wrong = []
    for s in t.steps:
        wrong += [s.wrong_plan or s.wrong_image] + [r.wrong_image for r in s.refinements]
    for i, (image, bad) in enumerate(zip(states, wrong)):
        x = i * (side + 2 * BORDER + GAP) + BORDER
        panel = strip[BORDER: BORDER + side, x: x + side]
        assert np.array_equal(panel[::SCALE, ::SCALE], image)
        assert np.array_equal(panel, np.repeat(np.repeat(image, SCALE, 0), SCALE, 1))
        assert (tuple(strip[0, x]) == WRONG) == bad
    assert any(wrong)
    Image.fromarray(strip)  # a valid RGB array for PIL


# ---- bad input: one line naming the culprit, exit status 2 ---------------------------------------

@pytest.mark.parametrize("yaml_text, names", [
    ("data:\n  mixture: {scene_graph: 1, bogus: 1}\n", ["data.mixture.bogus"]),
    ("data:\n  sizes: 10\n", ["data.sizes"]),
    ("data:\n  pipelines: {detour_prob: high}\n", ["data.pipelines.detour_prob"]),
    ("data:\n  tasks: {counting: -1}\n", ["data.tasks"]),
    ("data:\n  pipelines: {swapped_colors: 1.5}\n", ["data.pipelines.swapped_colors", "between 0 and 1"]),
    ("data:\n  pipelines: {plan_order: alphabetical}\n", ["data.pipelines.plan_order", "random, prompt"]),
    ("data: [1, 2\n", ["c.yaml:", "malformed YAML"]),
])
def test_bad_config_exits_2_with_one_line(tmp_path, capsys, yaml_text, names):
    config = tmp_path / "c.yaml"
    config.write_text(yaml_text)
    code, _, err = run(capsys, "data", "build", "--config", str(config), "--out", str(tmp_path / "d"))
    assert code == 2
    one_error_line(err, *names)
    assert not (tmp_path / "d").exists()


def test_bad_command_line_exits_2_with_one_line(tmp_path, capsys):
    (tmp_path / "precious").mkdir()
    (tmp_path / "precious" / "thesis.tex").write_text("years of work")
    cases = [
        (["data", "build", "--config", str(tmp_path / "nope.yaml"), "--out", str(tmp_path / "d")], ["nope.yaml"]),
        (["data", "build", "--set", "size=10", "--out", str(tmp_path / "d")], ["size=10", "data.KEY"]),
        (["data", "build", "--set", "data.size=0", "--out", str(tmp_path / "d")], ["data.size"]),
        (["data", "build", "--set", "data.size=10", "--out", str(tmp_path / "precious")], ["precious"]),
        (["data", "show", str(tmp_path / "nothing")], ["nothing"]),
    ]
    for argv, names in cases:
        code, _, err = run(capsys, *argv)
        assert code == 2, argv
        one_error_line(err, *names)
    assert (tmp_path / "precious" / "thesis.tex").read_text() == "years of work"


def test_data_show_rejects_bad_options(built, capsys):
    for argv, name in ((["--n", "0"], "--n"), (["--source", "self"], "--source")):
        code, _, err = run(capsys, "data", "show", str(built), *argv)
        assert code == 2
        one_error_line(err, name)


def test_a_check_list_finds_a_swapped_binding_an_extra_object_and_a_missing_sketch():
    """Each described object against the prompt and the sketch, by hand: "a red circle and a blue
    square" described with swapped colours has neither object planned; a fourth circle for "three
    circles" is not planned; an object the sketch lacks is not drawn."""
    from strokes.language import checklist_text, split_checklist
    from strokes.shapeworld.check import ItemCheck, item_checks
    from strokes.shapeworld.render import Detection

    def det(shape: str, color: str) -> Detection:
        return Detection(shape, color, (0, 0, 8, 8))

    rec = PromptRecord.from_json({"tag": "color_attr", "include": [
        {"class": "circle", "count": 1, "color": "red"}, {"class": "square", "count": 1, "color": "blue"}]})
    swapped = [Item("circle", "blue"), Item("square", "red")]
    assert [(c.planned, c.drawn) for c in item_checks(rec, swapped, [det("circle", "blue")])] == \
        [(False, True), (False, False)]
    counting = PromptRecord.from_json({"tag": "counting", "include": [{"class": "circle", "count": 3}]})
    four = [Item("circle", c) for c in ("red", "blue", "green", "yellow")]
    assert [c.planned for c in item_checks(counting, four, [])] == [True, True, True, False]

    checks = item_checks(rec, swapped, [det("circle", "blue")])
    text = checklist_text(checks)
    assert text == "blue circle not planned drawn. red square not planned not drawn."
    assert split_checklist(f"{text} conflict. the red circle is blue instead of red.") == \
        (checks, "conflict. the red circle is blue instead of red.")
    assert split_checklist("aligned. the image follows the instruction") == ([], "aligned. the image follows the instruction")
    assert checks[0] == ItemCheck("circle", "blue", planned=False, drawn=True)


def test_with_a_check_list_every_inspection_opens_with_its_objects_and_keeps_its_verdict():
    """`data.pipelines.checklist`: the same trajectories, each step's inspection opened by the check
    list of its description; the verdict after it parses as before, a wrong plan has an object that
    is not planned, and a right state has every object planned and drawn."""
    from strokes.language import split_checklist

    plain = TrajectoryMaker(PipelineConfig(), 64)
    listed = TrajectoryMaker(PipelineConfig(checklist=True), 64)
    checked = 0
    for seed in range(30):
        source, rec = ("conflict", "alignment", "scene_graph")[seed % 3], sample_record(TASKS[seed % 6], random.Random(seed))
        a, b = plain.make(source, rec, random.Random(seed)), listed.make(source, rec, random.Random(seed))
        for s, t in zip(a.steps, b.steps):
            checks, rest = split_checklist(t.inspection)
            assert rest == s.inspection and len(checks) == len(parse_description(s.description))
            if s.wrong_plan and source == "conflict" and b.meta["error"] != "too_many":
                assert not all(c.planned for c in checks)
            if not (s.wrong_plan or s.wrong_image):
                assert all(c.planned and c.drawn for c in checks)
            checked += 1
    assert checked > 60


def test_swapped_colours_give_an_object_the_other_objects_colour_and_the_check_list_flags_it():
    """`data.pipelines.swapped_colors`: a wrong plan for "a red circle and a blue square" is "a blue
    circle" (the colour of the prompt's other object), never a colour the prompt does not name; the
    inspection says so and the refinement recolours it."""
    from strokes.language import split_checklist

    maker = TrajectoryMaker(PipelineConfig(conflict_negative=1.0, swapped_colors=1.0, checklist=True), 64)
    rng = random.Random(0)
    for _ in range(20):
        rec = sample_record("color_attr", rng)
        t = maker.make("conflict", rec, rng)
        stated = {r.color for r in rec.include}
        wrong = next(s for s in t.steps if s.wrong_plan)
        item = parse_description(wrong.description)[-1]
        assert t.meta["error"] == "swapped_color" and item.color in stated
        assert (item.shape, item.color) not in {(r.shape, r.color) for r in rec.include}
        assert not split_checklist(wrong.inspection)[0][-1].planned
        assert parse_inspection(wrong.inspection).conflicts[0].kind.value == "wrong_color"
        assert parse_instruction(wrong.refinements[0].instruction).kind == "recolor"


def test_prompt_plan_order_draws_a_prompts_phrases_in_its_word_order():
    """`data.pipelines.plan_order: prompt`: without a stated relation the plan draws the prompt's
    objects in the prompt's word order ("a red circle and a blue square" opens with "add a red
    circle"), where `random` draws them in any order; position prompts keep their reference first."""
    in_word_order = {}
    for order in ("random", "prompt"):
        maker, rng, hits = TrajectoryMaker(PipelineConfig(plan_order=order), 64), random.Random(0), []
        for _ in range(40):
            rec = sample_record("color_attr", rng)
            t = maker.make("scene_graph", rec, rng)
            items = [parse_description(s.description)[-1] for s in t.steps if s.instruction.startswith("add")]
            hits.append([(i.shape, i.color) for i in items] == [(r.shape, r.color) for r in rec.include])
        in_word_order[order] = sum(hits)
    assert in_word_order["prompt"] == 40 and 8 < in_word_order["random"] < 32
    rng = random.Random(1)
    rec = sample_record("position", rng)
    t = TrajectoryMaker(PipelineConfig(plan_order="prompt"), 64).make("scene_graph", rec, rng)
    assert parse_description(t.steps[0].description)[0].shape == rec.include[0].shape
