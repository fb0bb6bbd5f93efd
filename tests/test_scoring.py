"""The checker and the scorer: typed conflicts for each kind of mistake, and agreement with GenEval.

`check(rec, image)` must be empty exactly when GenEval would score the image correct; the
agreement test compares it with an independent transcription of GenEval's rules
(tests/geneval_reference.py) on thousands of corrupted scenes.
"""

from __future__ import annotations

import random

import pytest
from geneval_reference import evaluate, relative_position

from strokes.geneval import score_results
from strokes.records import TASKS, Exclusion, PromptRecord, Requirement
from strokes.shapeworld import (
    COLORS,
    SHAPES,
    Obj,
    Scene,
    check,
    check_detections,
    detect,
    make_suite,
    relations,
    render,
    target_scene,
)
from strokes.shapeworld.scene import free_slots, grid_positions, noun_phrase
from strokes.verdict import ConflictKind as K


def kinds(rec, scene, strict=False):
    return [c.kind for c in check(rec, render(scene), strict)]


def records_of(task, n=30, seed=0):
    return [r for r in make_suite("test", n, seed, tasks=(task,))]


def scene_for(rec, seed=0):
    return target_scene(rec, random.Random(seed))


def index_of(scene, shape):
    return next(i for i, o in enumerate(scene.objects) if o.shape == shape)


# ---- one conflict kind per mistake -------------------------------------------------------------

def test_missing_object():
    """Dropping one of two requested objects is a missing object, named as it should be."""
    for i, rec in enumerate(records_of("two_object") + records_of("color_attr")):
        scene = scene_for(rec, i)
        gone = rec.include[1]
        conflicts = check(rec, render(scene.without(index_of(scene, gone.shape))), strict=True)
        assert [c.kind for c in conflicts] == [K.missing_object], rec.text
        assert conflicts[0].subject == conflicts[0].expected == rec.text.split(" and ")[1]
        assert conflicts[0].found == ""


def test_missing_reference_object_also_breaks_the_relation():
    """Without the circle, 'a triangle left of a circle' has nothing to be left of."""
    rec = PromptRecord("position", (Requirement("circle"), Requirement("triangle", 1, None, ("left of", 0))))
    scene = scene_for(rec)
    assert kinds(rec, scene.without(index_of(scene, "circle"))) == [K.missing_object, K.wrong_relation]


def test_extra_object_only_in_strict_mode():
    """GenEval ignores unrequested objects; strict mode (for step images) reports them."""
    for i, rec in enumerate(records_of("single_object") + records_of("colors")):
        scene = scene_for(rec, i)
        other = next(s for s in SHAPES if s != rec.include[0].shape)
        x, y = random.Random(i).choice(free_slots(scene))
        bigger = scene.with_object(Obj(other, "green", x, y))
        assert kinds(rec, bigger) == []
        conflicts = check(rec, render(bigger), strict=True)
        assert [c.kind for c in conflicts] == [K.extra_object]
        assert conflicts[0].found == f"a green {other}"


def test_recolour_is_a_wrong_color():
    for i, rec in enumerate(records_of("colors") + records_of("color_attr")):
        scene = scene_for(rec, i)
        want = rec.include[-1]
        k = index_of(scene, want.shape)
        new = random.Random(i).choice([c for c in COLORS if c != want.color])
        obj = scene.objects[k]
        conflicts = check(rec, render(scene.replaced(k, Obj(obj.shape, new, obj.x, obj.y))), strict=True)
        assert [c.kind for c in conflicts] == [K.wrong_color], rec.text
        assert (conflicts[0].expected, conflicts[0].found) == (want.color, new)


def test_reshape_is_a_wrong_shape():
    """The right colour drawn as a shape the prompt does not mention is a wrong shape, not missing + extra."""
    for i, rec in enumerate(records_of("colors") + records_of("color_attr")):
        scene = scene_for(rec, i)
        want = rec.include[0]
        k = index_of(scene, want.shape)
        new = next(s for s in SHAPES if all(r.shape != s for r in rec.include))
        obj = scene.objects[k]
        conflicts = check(rec, render(scene.replaced(k, Obj(new, obj.color, obj.x, obj.y))), strict=True)
        assert [c.kind for c in conflicts] == [K.wrong_shape], rec.text
        assert (conflicts[0].expected, conflicts[0].found) == (want.shape, noun_phrase(new, 1, want.color))


def test_moving_across_the_relation_is_a_wrong_relation():
    """Move the related object to a free grid slot where the relation no longer holds."""
    for i, rec in enumerate(records_of("position", 50)):
        scene = scene_for(rec, i)
        rel = rec.include[1].position[0]
        k = index_of(scene, rec.include[1].shape)
        ref = scene.objects[index_of(scene, rec.include[0].shape)]
        rest = scene.without(k)
        obj = scene.objects[k]
        slots = [(x, y) for x, y in free_slots(rest) if rel not in relations(obj.moved(x, y).box, ref.box)]
        x, y = random.Random(i).choice(slots)
        moved = scene.replaced(k, obj.moved(x, y))
        conflicts = check(rec, render(moved), strict=True)
        assert [c.kind for c in conflicts] == [K.wrong_relation], rec.text
        assert conflicts[0].expected.startswith(rel + " ")
        # and moving it to a slot where the relation holds is fine again
        good = [(x, y) for x, y in free_slots(rest) if rel in relations(obj.moved(x, y).box, ref.box)]
        assert kinds(rec, scene.replaced(k, obj.moved(*good[0])), strict=True) == []


def test_counting_one_too_few_or_too_many_is_a_wrong_count():
    """Removing an instance fails the include group, adding one trips the exclude group."""
    for i, rec in enumerate(records_of("counting")):
        scene = scene_for(rec, i)
        req = rec.include[0]
        fewer = check(rec, render(scene.without(0)), strict=True)
        assert [c.kind for c in fewer] == [K.wrong_count], rec.text
        x, y = free_slots(scene)[0]
        more = check(rec, render(scene.with_object(Obj(req.shape, "blue", x, y))), strict=True)
        assert [c.kind for c in more] == [K.wrong_count], rec.text
        assert more[0].expected.startswith("fewer than ")


def test_counting_texts_for_many_objects():
    """Conflict texts for large counts do not crash (words up to ten, then digits)."""
    rec = PromptRecord("counting", (Requirement("circle", 4),), (Exclusion("circle", 5),))
    scene = Scene(tuple(Obj("circle", "red", x, y) for x in (0, 16, 32, 48) for y in (0, 16, 32, 48)))
    (c,) = check(rec, render(scene), strict=True)
    assert (c.kind, c.expected, c.found) == (K.wrong_count, "fewer than five circles", "16 circles")


def test_every_conflict_reads_as_a_sentence():
    rec = PromptRecord("position", (Requirement("circle", 1, "red"), Requirement("square", 1, "blue", ("above", 0))))
    scene = Scene((Obj("circle", "red", 0, 0), Obj("square", "blue", 32, 32), Obj("triangle", "red", 0, 40)))
    for c in check(rec, render(scene), strict=True):
        assert c.sentence() and "\n" not in c.sentence()


# ---- agreement with GenEval on random corruptions ----------------------------------------------

def _corrupt(scene: Scene, rng: random.Random) -> Scene:
    """One random mistake: drop, add, recolour, reshape, or move (to any grid corner, overlaps allowed)."""
    objs = list(scene.objects)
    op = rng.choice(["drop", "add", "add_anywhere", "recolour", "reshape", "move", "move_anywhere"])
    if not objs or op in ("add", "add_anywhere"):
        slots = free_slots(scene) if op == "add" else []
        grid = grid_positions(scene.size)
        x, y = rng.choice(slots) if slots else (rng.choice(grid), rng.choice(grid))
        return scene.with_object(Obj(rng.choice(SHAPES), rng.choice(list(COLORS)), x, y))
    k = rng.randrange(len(objs))
    o = objs[k]
    if op == "drop":
        return scene.without(k)
    if op == "recolour":
        return scene.replaced(k, Obj(o.shape, rng.choice(list(COLORS)), o.x, o.y))
    if op == "reshape":
        return scene.replaced(k, Obj(rng.choice(SHAPES), o.color, o.x, o.y))
    if op == "move":
        slots = free_slots(scene.without(k))
        return scene.replaced(k, o.moved(*rng.choice(slots))) if slots else scene
    grid = grid_positions(scene.size)
    return scene.replaced(k, o.moved(rng.choice(grid), rng.choice(grid)))


def test_checker_agrees_with_genevals_evaluate_on_corrupted_scenes():
    """`not check(rec, img)` == GenEval's `evaluate` on the same detections, for every task."""
    rng = random.Random(1234)
    suite = make_suite("test", 40, seed=1) + make_suite("train", 40, seed=1)
    outcomes = {t: [] for t in TASKS}
    for i, rec in enumerate(suite * 3):
        scene = target_scene(rec, rng)
        for _ in range(rng.choice([0, 1, 1, 1, 2, 3])):
            scene = _corrupt(scene, rng)
        image = render(scene)
        dets = detect(image)
        ours = not check_detections(rec, dets)
        theirs, why = evaluate(dets, rec.to_json())
        assert ours == theirs, (rec.to_json(), scene, why)
        assert ours == (not check(rec, image))
        outcomes[rec.tag].append(ours)
    for task, seen in outcomes.items():  # both verdicts occur on every task
        assert any(seen) and not all(seen), task


def test_checker_agrees_with_genevals_evaluate_on_random_records_and_scenes():
    """Multi-object groups with colours, relations and exclusions, against random scenes."""
    rng = random.Random(99)
    grid = grid_positions()
    results = []
    for _ in range(1500):
        include = []
        for g in range(rng.randint(1, 3)):
            pos = (rng.choice(["left of", "right of", "above", "below"]), rng.randrange(g)) \
                if g and rng.random() < 0.6 else None
            include.append(Requirement(rng.choice(SHAPES), rng.choice([1, 1, 2, 3]),
                                       rng.choice([None, *COLORS]), pos))
        exclude = tuple(Exclusion(rng.choice(SHAPES), rng.randint(1, 4)) for _ in range(rng.randint(0, 1)))
        rec = PromptRecord(rng.choice(TASKS), tuple(include), exclude)
        objs = []
        for _ in range(rng.randint(0, 7)):
            objs.append(Obj(rng.choice(SHAPES), rng.choice(list(COLORS)), rng.choice(grid), rng.choice(grid)))
            if rng.random() < 0.3 and objs:  # copy an object's shape and colour to raise hit rates
                o = rng.choice(objs)
                objs.append(Obj(o.shape, o.color, rng.choice(grid), rng.choice(grid)))
        scene = Scene(tuple(objs))
        dets = detect(render(scene))
        ours = not check_detections(rec, dets)
        theirs, why = evaluate(dets, rec.to_json())
        assert ours == theirs, (rec.to_json(), scene, why)
        results.append(ours)
    assert 20 < sum(results) < len(results) - 20


def test_reference_relative_position_is_selfplays_relations():
    rng = random.Random(5)
    for _ in range(2000):
        a = [rng.randint(0, 60) for _ in range(2)]
        b = [rng.randint(0, 60) for _ in range(2)]
        box_a = (a[0], a[1], a[0] + rng.randint(1, 20), a[1] + rng.randint(1, 20))
        box_b = (b[0], b[1], b[0] + rng.randint(1, 20), b[1] + rng.randint(1, 20))
        assert relations(box_a, box_b) == relative_position(box_a, box_b)


def test_only_the_first_count_objects_in_reading_order_are_judged():
    """Like GenEval (which takes the most confident), colour is judged on the first objects only;
    ours are the first in reading order, so a red circle lower down does not rescue a blue one above."""
    rec = PromptRecord("colors", (Requirement("circle", 1, "red"),))
    scene = Scene((Obj("circle", "blue", 0, 0), Obj("circle", "red", 0, 40)))
    assert kinds(rec, scene) == [K.wrong_color]
    assert evaluate(detect(render(scene)), rec.to_json())[0] is False
    flipped = Scene((Obj("circle", "red", 0, 0), Obj("circle", "blue", 0, 40)))
    assert kinds(rec, flipped) == []


# ---- aggregation -------------------------------------------------------------------------------

def test_overall_is_the_mean_of_task_accuracies():
    """Not the mean over images: a task with more images does not weigh more."""
    score = score_results([("counting", True)] * 3 + [("counting", False)] + [("colors", True)] * 10)
    assert score.per_task == {"counting": 0.75, "colors": 1.0}
    assert score.counts == {"counting": 4, "colors": 10}
    assert score.overall == pytest.approx(0.875)
    assert list(score.per_task) == ["counting", "colors"]  # GenEval's task order
    assert score.to_json()["overall"] == pytest.approx(0.875)
    assert "| 75.0 | 100.0 | 87.5 |" in score.table()
