"""ShapeWorld's world: rendering and detection round trips, relations, records, suites and splits.

See docs/shapeworld.md for the conventions these tests pin down.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import math
import random

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from strokes.errors import InputError
from strokes.records import FREE_TEXT, TASKS, Exclusion, PromptRecord, Requirement, prompt_text, read_prompts
from strokes.shapeworld import (
    COLORS,
    RELATIONS,
    SHAPES,
    Obj,
    Scene,
    check,
    check_vocabulary,
    detect,
    is_held_out,
    make_suite,
    read_records,
    relations,
    render,
    sample_record,
    target_scene,
)
from strokes.shapeworld.render import FILL, MASKS
from strokes.shapeworld.suites import color_attr_pairs

FAST = settings(max_examples=150, deadline=None)


# ---- ground truth ------------------------------------------------------------------------------

def test_ground_truth_renders_are_correct_on_every_task():
    """A 300-record test suite drawn by `target_scene` is judged 100% correct, even in strict mode."""
    suite = make_suite("test", 50, seed=0)
    assert len(suite) == 300
    hits: dict[str, list[bool]] = {t: [] for t in TASKS}
    for i, rec in enumerate(suite):
        image = render(target_scene(rec, random.Random(i)))
        hits[rec.tag].append(not check(rec, image))
        assert check(rec, image, strict=True) == [], rec.text
    assert {t: len(h) for t, h in hits.items()} == {t: 50 for t in TASKS}
    assert all(all(h) for h in hits.values())


# ---- rendering and detection -------------------------------------------------------------------

def test_masks_fill_their_whole_box_with_distinct_fill_ratios():
    """Every mask touches all four sides of its 12x12 box; fill ratios 1, 7/9 and 7/12."""
    for name, m in MASKS.items():
        assert m.shape == (12, 12)
        assert m[0].any() and m[-1].any() and m[:, 0].any() and m[:, -1].any(), name
    assert FILL == pytest.approx({"square": 1.0, "circle": 112 / 144, "triangle": 84 / 144})


def _spread_out(candidates, size):
    """Keep candidates (in order) whose 12x12 box stays >= 4 px from every box kept so far."""
    kept: list[Obj] = []
    for shape, color, gx, gy in candidates:
        x, y = 4 * gx, 4 * gy
        if x + 12 > size or y + 12 > size:
            continue
        if all(abs(x - o.x) >= 16 or abs(y - o.y) >= 16 for o in kept):
            kept.append(Obj(shape, color, x, y))
    return kept


candidate = st.tuples(st.sampled_from(SHAPES), st.sampled_from(list(COLORS)),
                      st.integers(0, 23), st.integers(0, 23))


@FAST
@given(size=st.sampled_from([32, 64, 96]), candidates=st.lists(candidate, max_size=24))
def test_render_then_detect_gives_back_the_objects(size, candidates):
    """Any valid scene (grid corners, boxes >= 4 px apart) is detected exactly, in reading order."""
    objs = _spread_out(candidates, size)
    image = render(Scene(tuple(objs), size))
    assert image.shape == (size, size, 3)
    got = [(d.shape, d.color, d.box) for d in detect(image)]
    want = sorted(((o.shape, o.color, (o.x, o.y, o.x + 12, o.y + 12)) for o in objs),
                  key=lambda t: (t[2][1], t[2][0]))
    assert got == want


@settings(max_examples=30, deadline=None)
@given(candidates=st.lists(candidate, min_size=1, max_size=10), seed=st.integers(0, 2**16))
def test_detection_snaps_noisy_colours_to_the_palette(candidates, seed):
    """Pixel noise of +-12 per channel (a lossy codec's worth) changes nothing."""
    objs = _spread_out(candidates, 64)
    image = render(Scene(tuple(objs)))
    noise = np.random.default_rng(seed).integers(-12, 13, size=image.shape)
    noisy = np.clip(image.astype(int) + noise, 0, 255).astype(np.uint8)
    assert detect(noisy) == detect(image)


def test_specks_below_min_pixels_are_ignored():
    """A component with fewer than 12 pixels is noise, not an object."""
    image = render(Scene((Obj("circle", "red", 8, 8),)))
    image[40:43, 40:43] = COLORS["blue"]  # 9 px
    image[50, 50:61] = COLORS["green"]  # 11 px
    assert [(d.shape, d.color) for d in detect(image)] == [("circle", "red")]
    image[40:44, 40:43] = COLORS["blue"]  # 12 px: an object
    assert len(detect(image)) == 2


def _direct_relations(a, b):
    """GenEval's rule written out with scalars."""
    (ax1, ay1, ax2, ay2), (bx1, by1, bx2, by2) = a, b
    ox = (ax1 + ax2) / 2 - (bx1 + bx2) / 2
    oy = (ay1 + ay2) / 2 - (by1 + by2) / 2
    rx = math.copysign(max(abs(ox) - 0.1 * ((ax2 - ax1) + (bx2 - bx1)), 0.0), ox)
    ry = math.copysign(max(abs(oy) - 0.1 * ((ay2 - ay1) + (by2 - by1)), 0.0), oy)
    if abs(rx) < 1e-3 and abs(ry) < 1e-3:
        return set()
    norm = math.hypot(ox, oy)
    dx, dy = rx / norm, ry / norm
    return {r for r, ok in [("left of", dx < -0.5), ("right of", dx > 0.5),
                            ("above", dy < -0.5), ("below", dy > 0.5)] if ok}


box = st.tuples(st.integers(0, 100), st.integers(0, 100), st.integers(1, 40), st.integers(1, 40)).map(
    lambda t: (t[0], t[1], t[0] + t[2], t[1] + t[3]))


@FAST
@given(a=box, b=box)
def test_relations_follow_genevals_rule(a, b):
    """`relations` equals a direct recomputation, and swapping A and B swaps every relation."""
    rels = relations(a, b)
    assert rels == _direct_relations(a, b)
    opposite = {"left of": "right of", "right of": "left of", "above": "below", "below": "above"}
    assert relations(b, a) == {opposite[r] for r in rels}


def test_relation_examples_on_the_grid():
    """Side by side is 'left of'; a diagonal counts on both axes only when it is steep enough."""
    at = lambda x, y: Obj("square", "red", x, y).box  # noqa: E731
    assert relations(at(0, 20), at(16, 20)) == {"left of"}
    assert relations(at(0, 0), at(0, 16)) == {"above"}
    assert relations(at(0, 0), at(16, 16)) == {"left of", "above"}
    assert relations(at(0, 0), at(40, 8)) == {"left of"}  # too flat to be 'above' as well
    assert relations(at(20, 20), at(20, 20)) == set()


# ---- records and prompt texts ------------------------------------------------------------------

@pytest.mark.parametrize("rec, text", [
    (PromptRecord("single_object", (Requirement("circle"),)), "a circle"),
    (PromptRecord("two_object", (Requirement("circle"), Requirement("square"))), "a circle and a square"),
    (PromptRecord("counting", (Requirement("triangle", 3),), (Exclusion("triangle", 4),)), "three triangles"),
    (PromptRecord("colors", (Requirement("square", 1, "red"),)), "a red square"),
    (PromptRecord("colors", (Requirement("circle", 1, "orange"),)), "an orange circle"),
    (PromptRecord("position", (Requirement("circle"), Requirement("triangle", 1, None, ("left of", 0)))),
     "a triangle left of a circle"),
    (PromptRecord("color_attr", (Requirement("circle", 1, "red"), Requirement("square", 1, "blue"))),
     "a red circle and a blue square"),
])
def test_prompt_templates(rec, text):
    """GenEval's templates without 'a photo of'; 'an' before a vowel."""
    assert prompt_text(rec) == text == rec.text
    assert rec.to_json()["prompt"] == text


@st.composite
def records(draw):
    """Any valid GenEval-format ShapeWorld record (not only the suites' six shapes of record)."""
    n = draw(st.integers(1, 3))
    include = []
    for i in range(n):
        pos = None
        if i and draw(st.booleans()):
            pos = (draw(st.sampled_from(RELATIONS)), draw(st.integers(0, i - 1)))
        include.append(Requirement(draw(st.sampled_from(SHAPES)), draw(st.integers(1, 4)),
                                   draw(st.sampled_from([None, *COLORS])), pos))
    exclude = tuple(Exclusion(draw(st.sampled_from(SHAPES)), draw(st.integers(1, 5)))
                    for _ in range(draw(st.integers(0, 2))))
    rec = PromptRecord(draw(st.sampled_from(TASKS)), tuple(include), exclude)
    return PromptRecord(rec.tag, rec.include, rec.exclude, prompt_text(rec))


@FAST
@given(rec=records())
def test_record_json_round_trip(rec):
    """to_json -> JSON text -> from_json gives the same record and the same prompt text."""
    line = json.dumps(rec.to_json())
    back = PromptRecord.from_json(json.loads(line))
    assert back == rec
    assert back.text == rec.text == prompt_text(back)


def test_unknown_keys_are_kept():
    """Keys GenEval's tools add (or a user's) survive a read and write."""
    d = {"tag": "colors", "include": [{"class": "circle", "count": 1, "color": "red"}],
         "prompt": "a red circle", "note": "kept"}
    assert PromptRecord.from_json(d).to_json() == d


@pytest.mark.parametrize("group, fragment", [
    ({"class": "dog"}, "unknown class 'dog'"),
    ({"class": "circle", "color": "pink"}, "unknown color 'pink'"),
    ({"class": "circle", "count": 0}, "'count' must be a positive integer"),
    ({"class": "circle", "position": ["next to", 0]}, "'position'"),
])
def test_invalid_records_name_the_place_and_the_field(group, fragment):
    """Errors read 'suite.jsonl:7: include[1]: ...': GenEval's format refuses a malformed group,
    ShapeWorld a class or colour it cannot draw."""
    d = {"tag": "position", "include": [{"class": "square"}, group]}
    with pytest.raises(InputError, match=r"^suite\.jsonl:7: include\[1\]: ") as e:
        check_vocabulary(PromptRecord.from_json(d, "suite.jsonl:7"), "suite.jsonl:7")
    assert fragment in str(e.value)


def test_geneval_records_name_any_class_and_shapeworld_refuses_what_it_cannot_draw(tmp_path):
    """GenEval's own records (COCO classes, their colours) load as records; ShapeWorld's reader
    refuses them, and a plain-text prompt file gives free-text records."""
    line = {"tag": "color_attr", "include": [{"class": "wine glass", "count": 1, "color": "purple"},
                                             {"class": "apple", "count": 1, "color": "black"}],
            "prompt": "a photo of a purple wine glass and a black apple"}
    (tmp_path / "geneval.jsonl").write_text(json.dumps(line) + "\n")
    (rec,) = read_prompts(tmp_path / "geneval.jsonl")
    assert rec.to_json() == line and rec.classes == {"wine glass", "apple"}
    with pytest.raises(InputError, match="geneval.jsonl:1: include\\[0\\]: unknown class 'wine glass'"):
        read_records(tmp_path / "geneval.jsonl")
    (tmp_path / "plain.txt").write_text("a cat on a mat\n\n  two dogs  \n")
    plain = read_prompts(tmp_path / "plain.txt")
    assert [(r.tag, r.text) for r in plain] == [(FREE_TEXT, "a cat on a mat"), (FREE_TEXT, "two dogs")]
    assert PromptRecord.from_json(plain[0].to_json()) == plain[0]
    with pytest.raises(InputError, match="no GenEval rule"):
        check_vocabulary(plain[0])


def test_position_must_refer_to_an_earlier_group():
    d = {"tag": "position", "include": [{"class": "square", "position": ["above", 0]}, {"class": "circle"}]}
    with pytest.raises(InputError, match="must come earlier"):
        PromptRecord.from_json(d)


# ---- suites and splits -------------------------------------------------------------------------

def test_suites_are_deterministic_and_balanced():
    """Same arguments, same suite; `per_task` records of each task in task order."""
    a = make_suite("train", 7, seed=5)
    assert a == make_suite("train", 7, seed=5)
    assert [r.text for r in a] == [r.text for r in make_suite("train", 7, seed=5)]
    assert a != make_suite("train", 7, seed=6)
    assert [r.tag for r in a] == [t for t in TASKS for _ in range(7)]


def _documented_held_out():
    """The split rule from docs/shapeworld.md, written out independently."""
    held = set()
    for s1, s2 in itertools.combinations(SHAPES, 2):
        for c1, c2 in itertools.permutations(COLORS, 2):
            key = tuple(sorted([(s1, c1), (s2, c2)]))
            if int(hashlib.sha256(repr(key).encode()).hexdigest()[:8], 16) / 0xFFFFFFFF < 0.2:
                held.add(key)
    return held


def test_split_rule_holds_out_a_fixed_fifth_of_colour_attribute_pairs():
    """90 unordered pairs; the sha256 rule holds out 21 of them, and train gets the other 69."""
    test, train = set(color_attr_pairs("test")), set(color_attr_pairs("train"))
    assert test == _documented_held_out()
    assert not test & train and len(test | train) == 3 * 6 * 5 == 90
    assert len(test) == 21


def _pair(rec):
    return tuple(sorted((r.shape, r.color) for r in rec.include))


def test_held_out_pairs_never_appear_in_train_suites():
    """Over many seeds every train color_attr record uses a train pair; every test one a held-out pair."""
    held = _documented_held_out()
    seen_test = set()
    for seed in range(40):
        for rec in make_suite("train", 25, seed):
            if rec.tag == "color_attr":
                assert _pair(rec) not in held, rec.text
                assert not is_held_out(rec)
        for rec in make_suite("test", 25, seed):
            if rec.tag == "color_attr":
                assert _pair(rec) in held and is_held_out(rec), rec.text
                seen_test.add(_pair(rec))
    assert len(seen_test) > 15  # the test split really draws from its whole held-out set


def test_is_held_out_ignores_word_order_and_other_tasks():
    (s1, c1), (s2, c2) = sorted(_documented_held_out())[0]
    fwd = PromptRecord("color_attr", (Requirement(s1, 1, c1), Requirement(s2, 1, c2)))
    rev = PromptRecord("color_attr", (Requirement(s2, 1, c2), Requirement(s1, 1, c1)))
    assert is_held_out(fwd) and is_held_out(rev)
    (t1, d1), (t2, d2) = sorted(color_attr_pairs("train"))[0]
    assert not is_held_out(PromptRecord("color_attr", (Requirement(t1, 1, d1), Requirement(t2, 1, d2))))
    assert not is_held_out(PromptRecord("two_object", (Requirement(s1, 1, c1), Requirement(s2, 1, c2))))


def test_sample_record_covers_every_task():
    rng = random.Random(0)
    for task in TASKS:
        assert sample_record(task, rng).tag == task
    with pytest.raises(InputError, match="unknown task"):
        sample_record("spatial", rng)


def test_target_scene_refuses_impossible_records():
    """An exclusion that contradicts an inclusion, or too many objects for the canvas."""
    contradiction = PromptRecord("counting", (Requirement("circle", 3),), (Exclusion("circle", 3),))
    with pytest.raises(InputError, match="exclude allows"):
        target_scene(contradiction, random.Random(0))
    with pytest.raises(InputError, match="cannot place"):
        target_scene(PromptRecord("counting", (Requirement("circle", 17),)), random.Random(0), tries=3)
