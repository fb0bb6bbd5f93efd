"""What a picture holds, written out in ShapeWorld's words: the text a model learns to read pictures
into (selfplay/question_judge.py, `Transcriber`), and the pictures it learns from.

A transcript lists the detected objects in reading order (top to bottom, then left to right), each
as its colour, its class and the top-left corner of its box in 4-px grid units, the units objects
are placed in (`scene.GRID`), written with the number words the vocabulary has (0 -> "one", 9 ->
"ten", 10 -> "ten one", ... 15 -> "ten six"):

    red circle three, five. blue square ten one, two.      (red circle at (8, 16), blue square at (40, 4))
    nothing                                                  (an empty canvas)

`next_words` is its grammar: a reader constrained by it writes only transcripts. Read back
(`read_transcript`) it is a detection list with 12-px boxes, so GenEval's rule
(`check.check_detections`) decides any prompt against it exactly as against `detect`'s own list:
whatever a reader gets wrong is in what it read, not in the rule.

`understanding_pictures` makes the pictures such a reader learns from: rendered scenes of the kinds
a policy draws (a count of one class, anything, the target scenes of training prompts), some with an
object cut by the canvas edge or wrapped round it (`_paint_wrapped`) and, through `perturb`, the stray
fragments a policy's image codes leave; each labelled with `detect` on the picture as it finally is.
Nothing a policy drew is labelled.
"""

from __future__ import annotations

import random
from collections.abc import Callable

import numpy as np

from .render import Detection, detect, render
from .scene import COLORS, GRID, OBJECT_SIZE, SHAPES, Obj, Scene, free_slots
from .suites import make_suite, target_scene

NUMBERS = ("one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten")


def _number(k: int) -> list[str]:
    return [NUMBERS[k]] if k < 10 else ["ten", NUMBERS[k - 10]]


def _unnumber(words: list[str]) -> int | None:
    if len(words) == 1 and words[0] in NUMBERS:
        return NUMBERS.index(words[0])
    if len(words) == 2 and words[0] == "ten" and words[1] in NUMBERS:
        return 10 + NUMBERS.index(words[1])
    return None


def transcript(detections: list[Detection]) -> str:
    """The transcript of a detection list (module docstring); "nothing" for none."""
    if not detections:
        return "nothing"
    parts = []
    for d in sorted(detections, key=lambda d: (d.box[1], d.box[0])):
        x, y = (" ".join(_number(v // GRID)) for v in d.box[:2])
        parts.append(f"{d.color} {d.shape} {x}, {y}.")
    return " ".join(parts)


def read_transcript(text: str) -> list[Detection] | None:
    """The detections a transcript names, each with a 12-px box; None when it is not one."""
    text = text.strip()
    if text == "nothing":
        return []
    out = []
    for part in text.replace(",", " ,").split("."):
        words = part.split()
        if not words:
            continue
        if len(words) < 5 or words[0] not in COLORS or words[1] not in SHAPES or words.count(",") != 1:
            return None
        comma = words.index(",")
        x, y = _unnumber(words[2:comma]), _unnumber(words[comma + 1:])
        if x is None or y is None:
            return None
        out.append(Detection(words[1], words[0], (GRID * x, GRID * y, GRID * x + OBJECT_SIZE, GRID * y + OBJECT_SIZE)))
    return out or None


def next_words(words: list[str]) -> tuple[list[str], bool]:
    """The grammar of a transcript, for a reader that writes only transcripts: the words that may
    follow `words` (a transcript's beginning, split into words), and whether it may end there."""
    if not words:
        return [*COLORS, "nothing"], False
    last = words[-1]
    if words == ["nothing"] or last == ".":
        return ([], True) if words == ["nothing"] else (list(COLORS), True)
    if last in COLORS:
        return list(SHAPES), False
    if last in SHAPES or last == ",":
        return list(NUMBERS), False
    if last not in NUMBERS:
        return [], False
    run = next(k for k in range(1, len(words) + 1) if words[-k] not in NUMBERS) - 1
    separator = "," if words[-run - 1] in SHAPES else "."
    return ([*NUMBERS, separator] if run == 1 and last == "ten" else [separator]), False


def _random_scene(rng: random.Random, size: int) -> Scene:
    """A count of one class (often one colour) with maybe a stray other, or anything: 1-6 objects."""
    if rng.random() < 0.6:
        shape, color = rng.choice(SHAPES), rng.choice(list(COLORS))
        kinds = [(shape, color if rng.random() < 0.7 else rng.choice(list(COLORS))) for _ in range(rng.randint(1, 6))]
        kinds += [(rng.choice(SHAPES), rng.choice(list(COLORS))) for _ in range(rng.choice((0, 0, 1, 2)))]
    else:
        kinds = [(rng.choice(SHAPES), rng.choice(list(COLORS))) for _ in range(rng.randint(1, 6))]
    scene = Scene((), size)
    for shape, color in kinds:
        slots = free_slots(scene)
        if not slots:
            break
        scene = scene.with_object(Obj(shape, color, *rng.choice(slots)))
    return scene


def _paint_wrapped(image: np.ndarray, obj: Obj, patch: int = 8) -> np.ndarray:
    """`image` with `obj`, placed past the right edge, painted as a policy's row-major image codes
    draw it: the part past the last column goes on at the first, one row of `patch`-px codes lower.
    `detect` counts the two pieces, so a reader must too: a reader never shown one reads a wrapped
    shape as one and misses most wrong counts of a policy's pictures (docs/loop.md, "A transcriber")."""
    size = image.shape[0]
    alone = render(Scene((obj,), size + OBJECT_SIZE))
    out = image.copy()
    drawn = (alone != 255).any(axis=2)
    for r, c in zip(*np.nonzero(drawn)):
        r2, c2 = (r, c) if c < size else (r + patch, c - size)
        if r2 < size:
            out[r2, c2] = alone[r, c]
    return out


def understanding_pictures(n: int, seed: int, perturb: Callable[[np.ndarray, random.Random], np.ndarray] | None = None,
                           size: int = 64) -> list[tuple[np.ndarray, str]]:
    """`n` (picture, transcript) pairs (module docstring): a third the target scenes of training-split
    prompts of every task, the rest `_random_scene`s; 15 % with one more object at the canvas edge
    (cut by it, or past the right edge and half the time wrapped round it); 40 % passed through
    `perturb` (a policy's image codes replaced at random) before labelling."""
    rng = random.Random(seed)
    records = list(make_suite("train", max(1, n // 12), seed))
    edge = [v for v in range(0, size, GRID) if v > size - OBJECT_SIZE]
    out = []
    for i in range(n):
        scene = target_scene(rng.choice(records), rng) if i % 3 == 0 else _random_scene(rng, size)
        image = render(scene)
        if edge and rng.random() < 0.15:
            x, y = rng.choice(edge), rng.randrange(0, size, GRID)
            obj = Obj(rng.choice(SHAPES), rng.choice(list(COLORS)), *((x, y) if rng.random() < 0.5 else (y, x)))
            image = _paint_wrapped(image, obj) if obj.x in edge and rng.random() < 0.5 else \
                render(Scene(scene.objects + (obj,), size))
        if perturb is not None and rng.random() < 0.4:
            image = perturb(image, rng)
        out.append((image, transcript(detect(image))))
    return out
