"""ShapeWorld: the built-in world, with exact rendering and exact judging (docs/design.md §5).

Suites, target scenes, `render`, `detect`, the exact GenEval checker and its folder scorer; the loop
reaches them through its world seam (`selfplay/world/shapeworld.py`).
"""

from __future__ import annotations

from .check import check, check_detections, is_correct, score_folder
from .records import check_vocabulary, drawable, read_records, record_from_text
from .render import Detection, detect, render
from .scene import CANVAS, COLORS, RELATIONS, SHAPES, Obj, Scene, relations
from .suites import is_held_out, make_suite, sample_record, target_scene


__all__ = [
    "CANVAS", "COLORS", "RELATIONS", "SHAPES", "Detection", "Obj", "Scene", "check",
    "check_detections", "check_vocabulary", "detect", "drawable", "is_correct", "is_held_out", "make_suite", "read_records",
    "record_from_text", "relations", "render", "sample_record", "score_folder", "target_scene",
]
