"""Prompt suites for the six GenEval tasks, with train/test splits, and target scenes for records.

The test split holds out a fixed fifth of the colour-attribute combinations entirely (as unordered
pairs of (shape, colour), so neither word order of a held-out pair is ever trained on); the other
tasks have prompt spaces of 3-24 texts, so both splits sample the same texts with different seeds, as
GenEval samples several images per prompt.
"""

from __future__ import annotations

import hashlib
import itertools
import random

from ..errors import InputError
from ..records import TASKS, Exclusion, PromptRecord, Requirement, prompt_text
from .scene import CANVAS, COLORS, RELATIONS, SHAPES, Obj, Scene, free_slots, relations

COUNTS = (2, 3, 4)
HELD_OUT_FRACTION = 0.2


def _pair_key(a: tuple[str, str], b: tuple[str, str]) -> tuple:
    return tuple(sorted([a, b]))


def color_attr_pairs(split: str) -> list[tuple[tuple[str, str], tuple[str, str]]]:
    """Unordered ((shape, colour), (shape, colour)) pairs with distinct shapes and colours in `split`.

    A pair is held out (test) when the first bytes of its hash fall below HELD_OUT_FRACTION: a fixed,
    seed-free choice that every run and every machine agrees on.
    """
    pairs = []
    for s1, s2 in itertools.combinations(SHAPES, 2):
        for c1, c2 in itertools.permutations(COLORS, 2):
            key = _pair_key((s1, c1), (s2, c2))
            h = int(hashlib.sha256(repr(key).encode()).hexdigest()[:8], 16) / 0xFFFFFFFF
            if (h < HELD_OUT_FRACTION) == (split == "test"):
                pairs.append(key)
    return sorted(set(pairs))


def is_held_out(rec: PromptRecord) -> bool:
    """True when a color_attr record's combination belongs to the test split only."""
    if rec.tag != "color_attr" or len(rec.include) != 2:
        return False
    a, b = ((r.shape, r.color) for r in rec.include)
    return _pair_key(a, b) in _HELD_OUT


def sample_record(task: str, rng: random.Random, split: str = "train") -> PromptRecord:
    """One GenEval-format record of `task` from `split` ('train' or 'test')."""
    if task == "single_object":
        inc = (Requirement(rng.choice(SHAPES)),)
        rec = PromptRecord(task, inc)
    elif task == "two_object":
        a, b = rng.sample(SHAPES, 2)
        rec = PromptRecord(task, (Requirement(a), Requirement(b)))
    elif task == "counting":
        shape, n = rng.choice(SHAPES), rng.choice(COUNTS)
        rec = PromptRecord(task, (Requirement(shape, n),), (Exclusion(shape, n + 1),))
    elif task == "colors":
        rec = PromptRecord(task, (Requirement(rng.choice(SHAPES), 1, rng.choice(list(COLORS))),))
    elif task == "position":
        ref, obj = rng.sample(SHAPES, 2)
        rel = rng.choice(RELATIONS)
        rec = PromptRecord(task, (Requirement(ref), Requirement(obj, 1, None, (rel, 0))))
    elif task == "color_attr":
        pair = list(rng.choice(_PAIRS[split]))
        rng.shuffle(pair)
        rec = PromptRecord(task, tuple(Requirement(s, 1, c) for s, c in pair))
    else:
        raise InputError(f"unknown task {task!r} (tasks: {', '.join(TASKS)})")
    return PromptRecord(rec.tag, rec.include, rec.exclude, prompt_text(rec))


def make_suite(split: str, per_task: int, seed: int, tasks: tuple[str, ...] = TASKS) -> list[PromptRecord]:
    """`per_task` records of each task, in task order; the same arguments give the same suite."""
    if split not in ("train", "test"):
        raise InputError(f"split must be 'train' or 'test', got {split!r}")
    rng = random.Random(f"{split}:{seed}")
    return [sample_record(t, rng, split) for t in tasks for _ in range(per_task)]


def target_scene(rec: PromptRecord, rng: random.Random, size: int = CANVAS, tries: int = 200) -> Scene:
    """A scene that satisfies the record exactly: its objects, colours and relations, nothing more.

    Objects without a colour get a random one. Raises InputError when the record cannot be drawn
    (more objects than the canvas holds, or an exclusion that contradicts an inclusion).
    """
    for e in rec.exclude:
        need = sum(r.count for r in rec.include if r.shape == e.shape)
        if need >= e.count:
            raise InputError(f"record '{rec.text}': include asks for {need} {e.shape}(s) but exclude allows < {e.count}")
    for _ in range(tries):
        scene = _try_place(rec, rng, size)
        if scene is not None:
            return scene
    raise InputError(f"record '{rec.text}': cannot place its objects on a {size}x{size} canvas")


def _try_place(rec: PromptRecord, rng: random.Random, size: int) -> Scene | None:
    scene = Scene(size=size)
    groups: list[list[Obj]] = []
    for req in rec.include:
        group = []
        for _ in range(req.count):
            slots = free_slots(scene)
            if req.position is not None:
                rel, k = req.position
                slots = [
                    (x, y) for x, y in slots
                    if all(rel in relations(Obj(req.shape, "red", x, y).box, t.box) for t in groups[k])
                ]
            if not slots:
                return None
            x, y = rng.choice(slots)
            obj = Obj(req.shape, req.color or rng.choice(list(COLORS)), x, y)
            scene = scene.with_object(obj)
            group.append(obj)
        groups.append(group)
    return scene


_PAIRS = {s: color_attr_pairs(s) for s in ("train", "test")}
_HELD_OUT = set(_PAIRS["test"])
