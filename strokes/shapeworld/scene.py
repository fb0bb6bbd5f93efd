"""ShapeWorld's vocabulary, scene graphs and the GenEval relation rule (docs/design.md §5).

A scene is a list of objects on a grid; relations are not stored but *decided* from geometry, exactly
as GenEval decides them from detected boxes, so a scene, its render and its detections can never
disagree about which relations hold.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

from ..records import NUMBER_WORDS, RELATIONS, noun_phrase, plural  # noqa: F401 (ShapeWorld's vocabulary)

SHAPES: tuple[str, ...] = ("circle", "square", "triangle")
COLORS: dict[str, tuple[int, int, int]] = {
    "red": (220, 40, 40),
    "green": (40, 170, 60),
    "blue": (40, 80, 220),
    "yellow": (240, 200, 40),
    "purple": (140, 60, 180),
    "orange": (245, 130, 30),
}
OPPOSITE = {"left of": "right of", "right of": "left of", "above": "below", "below": "above"}
BACKGROUND = (255, 255, 255)
CANVAS = 64  # default canvas side in pixels
OBJECT_SIZE = 12  # every shape is drawn inside a 12x12 box
GRID = 4  # box corners lie on a 4-px grid
MIN_GAP = 4  # boxes keep at least this many pixels apart
POSITION_THRESHOLD = 0.1  # GenEval's shrink factor for relations
PLURALS = {s: plural(s) for s in SHAPES}


@dataclass(frozen=True)
class Obj:
    """One filled shape: its class, colour, and the top-left corner of its 12x12 box."""

    shape: str
    color: str
    x: int
    y: int

    @property
    def box(self) -> tuple[int, int, int, int]:
        """(x1, y1, x2, y2), exclusive end, as GenEval's detector reports boxes."""
        return (self.x, self.y, self.x + OBJECT_SIZE, self.y + OBJECT_SIZE)

    def moved(self, x: int, y: int) -> "Obj":
        return replace(self, x=x, y=y)

    def phrase(self, with_color: bool = True) -> str:
        """'a red circle' or 'a circle'."""
        return noun_phrase(self.shape, 1, self.color if with_color else None)


@dataclass(frozen=True)
class Scene:
    """A scene graph: objects on one canvas. Relations follow from the geometry (see `relations`)."""

    objects: tuple[Obj, ...] = ()
    size: int = CANVAS

    def with_object(self, obj: Obj) -> "Scene":
        return replace(self, objects=self.objects + (obj,))

    def without(self, index: int) -> "Scene":
        return replace(self, objects=self.objects[:index] + self.objects[index + 1 :])

    def replaced(self, index: int, obj: Obj) -> "Scene":
        objs = list(self.objects)
        objs[index] = obj
        return replace(self, objects=tuple(objs))

    def to_dict(self) -> dict:
        return {"size": self.size, "objects": [vars(o).copy() for o in self.objects]}

    @classmethod
    def from_dict(cls, d: dict) -> "Scene":
        return cls(tuple(Obj(**o) for o in d["objects"]), d.get("size", CANVAS))


def relations(box_a: tuple[float, ...], box_b: tuple[float, ...]) -> set[str]:
    """Relations of A relative to B, GenEval's `relative_position`.

    The centre offset is shrunk per axis by 0.1·(size_a + size_b) (sign kept, clipped at 0) and
    normalised by the *unshrunk* offset's length; < -0.5 is left/above, > 0.5 is right/below.
    """
    a = np.asarray(box_a, dtype=float).reshape(2, 2)
    b = np.asarray(box_b, dtype=float).reshape(2, 2)
    offset = a.mean(axis=0) - b.mean(axis=0)
    dims = np.abs(np.diff(a, axis=0))[0] + np.abs(np.diff(b, axis=0))[0]
    revised = np.maximum(np.abs(offset) - POSITION_THRESHOLD * dims, 0) * np.sign(offset)
    if np.all(np.abs(revised) < 1e-3):
        return set()
    dx, dy = revised / np.linalg.norm(offset)
    out = set()
    if dx < -0.5:
        out.add("left of")
    if dx > 0.5:
        out.add("right of")
    if dy < -0.5:
        out.add("above")
    if dy > 0.5:
        out.add("below")
    return out


def boxes_apart(a: Obj, b: Obj) -> bool:
    """True when the two 12x12 boxes keep at least MIN_GAP pixels between them on some axis."""
    reach = OBJECT_SIZE + MIN_GAP
    return abs(a.x - b.x) >= reach or abs(a.y - b.y) >= reach


def grid_positions(size: int = CANVAS) -> list[int]:
    return list(range(0, size - OBJECT_SIZE + 1, GRID))


def free_slots(scene: Scene) -> list[tuple[int, int]]:
    """All grid corners where a new object keeps its distance from every object in the scene."""
    pos = grid_positions(scene.size)
    return [
        (x, y)
        for y in pos
        for x in pos
        if all(boxes_apart(Obj("square", "red", x, y), o) for o in scene.objects)
    ]


NEAR_MISSES = ("drop", "copy", "move", "recolor", "reshape")


def near_miss(scene: Scene, rng) -> Scene | None:
    """`scene` with one object dropped, copied to a free slot, moved to one, recoloured or reshaped
    (one edit, `NEAR_MISSES`, chosen by `rng`, a `random.Random`); None when the scene is empty or
    the edit needs a free slot there is none of. What a judge learns to tell apart from a picture:
    a count off by one, a relation flipped by one move, a colour or class misdrawn."""
    if not scene.objects:
        return None
    k = rng.randrange(len(scene.objects))
    obj = scene.objects[k]
    edit = rng.choice(NEAR_MISSES)
    if edit == "drop":
        return scene.without(k)
    if edit == "recolor":
        return scene.replaced(k, replace(obj, color=rng.choice([c for c in COLORS if c != obj.color])))
    if edit == "reshape":
        return scene.replaced(k, replace(obj, shape=rng.choice([s for s in SHAPES if s != obj.shape])))
    slots = free_slots(scene.without(k) if edit == "move" else scene)
    if not slots:
        return None
    x, y = rng.choice(slots)
    return scene.with_object(obj.moved(x, y)) if edit == "copy" else scene.replaced(k, obj.moved(x, y))
