"""ShapeWorld: the built-in world, with exact rendering and exact judging (docs/design.md §5).

`ShapeWorld` bundles what the rest of the system needs from a world (suites, target scenes,
`render`, `detect`, `check`); a user's world plugs in by offering the same methods.
"""

from __future__ import annotations

import random

import numpy as np

from ..verdict import Conflict
from .check import check, check_detections, is_correct
from .records import TASKS, Exclusion, PromptRecord, Requirement, read_records, record_from_text, write_records
from .render import Detection, detect, render
from .scene import CANVAS, COLORS, RELATIONS, SHAPES, Obj, Scene, relations
from .suites import is_held_out, make_suite, sample_record, target_scene


class ShapeWorld:
    """The world interface over one canvas size."""

    name = "shapeworld"

    def __init__(self, size: int = CANVAS) -> None:
        self.size = size

    def suite(self, split: str, per_task: int, seed: int) -> list[PromptRecord]:
        return make_suite(split, per_task, seed)

    def target_scene(self, rec: PromptRecord, rng: random.Random) -> Scene:
        return target_scene(rec, rng, self.size)

    def render(self, scene: Scene) -> np.ndarray:
        return render(scene)

    def detect(self, image: np.ndarray) -> list[Detection]:
        return detect(image)

    def check(self, rec: PromptRecord, image: np.ndarray, strict: bool = False) -> list[Conflict]:
        return check(rec, image, strict)


__all__ = [
    "CANVAS", "COLORS", "RELATIONS", "SHAPES", "TASKS", "Detection", "Exclusion", "Obj", "PromptRecord",
    "Requirement", "Scene", "ShapeWorld", "check", "check_detections", "detect", "is_correct", "is_held_out",
    "make_suite", "read_records", "record_from_text", "relations", "render", "sample_record", "target_scene",
    "write_records",
]
