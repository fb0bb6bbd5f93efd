"""The oracle judge agrees with the base pipelines' own labels and its corrections really correct.

On trajectories of every pipeline and task: a step is flagged exactly when the pipeline made it
wrong on purpose, the inspection text it implies is word for word the pipeline's, its correction
is the pipeline's `<refine>`, and the scene `corrected_scene` gives is aligned when re-judged. Then
the cases the pipelines never produce: unparsable texts, a relation that cannot be reached by moving
the named object, several conflicts fixed one at a time.
"""

from __future__ import annotations

import random

import numpy as np
import pytest

from judges import OracleJudge, SelfJudge, corrected_scene
from judges.evaluate import evaluate, labelled_contexts
from judges.oracle import edit_items
from strokes.data.pipelines import TrajectoryMaker
from strokes.language import description_text, inspection_text, parse_description, parse_instruction
from strokes.records import TASKS
from strokes.shapeworld import Obj, Scene, render, sample_record
from strokes.shapeworld.check import Item
from strokes.verdict import ConflictKind, StepContext

SOURCES = ("scene_graph", "conflict", "alignment")


def step_contexts(source: str, task: str, i: int):
    rng = random.Random(f"oracle:{source}:{task}:{i}")
    t = TrajectoryMaker().make(source, sample_record(task, rng, "train"), rng)
    for k, s in enumerate(t.steps):
        yield s, StepContext(t.prompt, s.instruction, s.description, s.image, t.record, t.steps[:k])


def rejudge(judge: OracleJudge, ctx: StepContext, verdict, description: str | None = None):
    """The verdict on the corrected state (with the corrected plan, when the plan was at fault)."""
    scene = corrected_scene(ctx, verdict)
    assert scene is not None, (ctx.description, verdict.correction)
    items = parse_description(ctx.description)
    if any(c.source == "instruction" for c in verdict.conflicts):
        items = edit_items(items, parse_instruction(verdict.correction))
    fixed = StepContext(ctx.prompt, ctx.instruction, description or description_text(items), render(scene),
                        ctx.record, ctx.history)
    return fixed, judge.verdict(fixed)


@pytest.mark.parametrize("source", SOURCES)
def test_oracle_matches_pipeline_labels_texts_and_corrections(source):
    judge = OracleJudge()
    flagged = 0
    for task in TASKS:
        for i in range(12):
            for step, ctx in step_contexts(source, task, i):
                v = judge.verdict(ctx)
                wrong = step.wrong_plan or step.wrong_image
                assert v.aligned == (not wrong), (ctx.prompt, ctx.description)
                assert inspection_text(v) == step.inspection
                if wrong:
                    flagged += 1
                    assert v.correction == step.refinements[0].instruction
                    assert all(c.source == ("instruction" if step.wrong_plan else "image") for c in v.conflicts)
                    _, after = rejudge(judge, ctx, v)
                    assert after.aligned, (ctx.description, v.correction, after.conflicts)
    assert (flagged > 20) == (source != "scene_graph")
    assert judge.stats["unparsable_description"] == judge.stats["unparsable_instruction"] == 0


def test_aligned_verdict_names_what_the_prompt_still_needs():
    rng = random.Random(3)
    rec = sample_record("color_attr", rng, "train")
    t = TrajectoryMaker().make("scene_graph", rec, rng)
    first = t.steps[0]
    v = OracleJudge().verdict(StepContext(t.prompt, first.instruction, first.description, first.image, t.record))
    drawn = parse_description(first.description)[0]
    other = [r for r in rec.include if (r.shape, r.color) != (drawn.shape, drawn.color)]
    assert v.aligned and v.missing == [f"a {other[0].color} {other[0].shape}"]
    assert corrected_scene(StepContext(t.prompt, "", first.description, first.image), v).objects  # as drawn


def test_unparsable_texts_are_conflicts_and_counted():
    judge = OracleJudge()
    img = render(Scene((Obj("circle", "red", 8, 8),)))
    v1 = judge.verdict(StepContext("a circle", "draw something nice", "a red circle", img))
    v2 = judge.verdict(StepContext("a circle", "add a red circle", "a red blob somewhere", img))
    assert not v1.aligned and not v2.aligned
    assert judge.stats["unparsable_instruction"] == 1 and judge.stats["unparsable_description"] == 1
    # A parsable description is still checked: the conflicts found are reported with a correction.
    v3 = judge.verdict(StepContext("a circle", "paint", "a blue circle", img))
    assert [c.kind for c in v3.conflicts] == [ConflictKind.wrong_color]
    assert v3.correction == "make the red circle blue"


def test_unreachable_relation_moves_the_reference_instead():
    # The circle sits on the top row: nothing can be placed above it, so the triangle cannot be
    # moved there; moving the circle below the triangle reaches the same relation.
    scene = Scene((Obj("circle", "orange", 24, 0), Obj("triangle", "red", 4, 24)))
    ctx = StepContext("a triangle above a circle", "move the red triangle above the orange circle",
                      "an orange circle and a red triangle above the orange circle", render(scene))
    judge = OracleJudge()
    v = judge.verdict(ctx)
    assert [c.kind for c in v.conflicts] == [ConflictKind.wrong_relation]
    assert v.correction == "move the orange circle below the red triangle"
    _, after = rejudge(judge, ctx, v, ctx.description)
    assert after.aligned


def test_several_conflicts_are_fixed_one_correction_at_a_time():
    items = [Item("square", "blue"), Item("circle", "red", ("left of", 0)), Item("triangle", "green", ("below", 0))]
    drawn = Scene((Obj("square", "blue", 24, 8), Obj("circle", "yellow", 48, 8), Obj("square", "purple", 4, 44)))
    desc = description_text(items)
    ctx = StepContext("p", "add a green triangle below the blue square", desc, render(drawn))
    judge = OracleJudge()
    v = judge.verdict(ctx)
    assert len(v.conflicts) >= 3
    for _ in range(len(v.conflicts)):
        if v.aligned:
            break
        ctx, v = rejudge(judge, ctx, v, desc)
    assert v.aligned, v.conflicts


def test_self_judge_reads_the_oracles_inspections_exactly():
    # The oracle writes inspections in the paper's templates; read back by the self judge they give
    # the same decisions, conflict kinds and sources, corrections and missing parts.
    contexts = labelled_contexts(120, seed=4)
    report = evaluate(SelfJudge(OracleJudge().inspect), contexts, "self(oracle texts)")
    assert report.unjudged == 0
    for row in report.rows:
        assert row.hits == row.reference == row.judged, row
    assert report.correction_match == report.missing_match == 1.0


def test_labelled_set_is_balanced_and_covers_both_sources():
    contexts = labelled_contexts(100, seed=0)
    verdicts = OracleJudge().judge(contexts)
    assert sum(not v.aligned for v in verdicts) == 50
    sources = {c.source for v in verdicts for c in v.conflicts}
    assert sources == {"image", "instruction"}
    assert len({c.prompt for c in contexts}) > 10
    assert all(np.asarray(c.image).shape == (64, 64, 3) for c in contexts)
