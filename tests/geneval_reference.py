"""An independent transcription of GenEval's judging rules, to test selfplay's checker against.

This follows `evaluate` and `relative_position` from GenEval's `evaluation/evaluate_images.py`
(djghosh13/geneval) step by step, with the two model calls replaced by ShapeWorld's detector:

* GenEval's Mask2Former detections per class, in confidence order, become our detections per class,
  in the detector's reading order;
* GenEval's CLIP colour classifier on each kept object becomes the detection's palette colour.

It deliberately imports nothing from `selfplay` except the `Detection` shape it consumes, and works on
the raw metadata dictionary (GenEval's JSON line), not on a parsed `PromptRecord`.
"""

from __future__ import annotations

import numpy as np

POSITION_THRESHOLD = 0.1  # GenEval's default `position_threshold`


def relative_position(box_a, box_b) -> set[str]:
    """Position of A relative to B, factoring in object dimensions (GenEval's rule).

    Boxes are (x1, y1, x2, y2). Centre offset A - B; each axis is shrunk towards 0 by
    POSITION_THRESHOLD * (width or height of A + that of B), keeping its sign and clipping at 0; the
    result is divided by the length of the *unshrunk* offset. x < -0.5 is 'left of', > 0.5 'right of';
    y < -0.5 is 'above', > 0.5 'below'. If nothing is left after shrinking there is no relation.
    """
    boxes = np.array([list(box_a)[:4], list(box_b)[:4]], dtype=float).reshape(2, 2, 2)
    center_a, center_b = boxes.mean(axis=-2)
    dim_a, dim_b = np.abs(np.diff(boxes, axis=-2))[..., 0, :]
    offset = center_a - center_b
    revised_offset = np.maximum(np.abs(offset) - POSITION_THRESHOLD * (dim_a + dim_b), 0) * np.sign(offset)
    if np.all(np.abs(revised_offset) < 1e-3):
        return set()
    dx, dy = revised_offset / np.linalg.norm(offset)
    rels = set()
    if dx < -0.5:
        rels.add("left of")
    if dx > 0.5:
        rels.add("right of")
    if dy < -0.5:
        rels.add("above")
    if dy > 0.5:
        rels.add("below")
    return rels


def objects_by_class(detections) -> dict[str, list[tuple[tuple[int, int, int, int], str]]]:
    """GenEval's `detected` dict: class -> [(box, colour)], in the detector's order, absent if none."""
    out: dict[str, list] = {}
    for d in detections:
        out.setdefault(d.shape, []).append((tuple(d.box), d.color))
    return out


def evaluate(detections, metadata: dict) -> tuple[bool, str]:
    """GenEval's `evaluate`: (correct, reason) for one image's detections against a metadata dict.

    Include clauses combine with AND, exclude clauses with OR. For each include group only the first
    `count` objects of its class are looked at: colours first, then (if the colours matched) the
    position of every one of them against every object of the target group, which must itself have
    matched. An exclude group fails when `count` or more objects of its class were detected.
    """
    objects = objects_by_class(detections)
    correct = True
    reason = []
    matched_groups: list[list | None] = []
    for req in metadata.get("include", []):
        classname = req["class"]
        count = req.get("count", 1)
        matched = True
        found_objects = objects.get(classname, [])[:count]
        if len(found_objects) < count:
            correct = matched = False
            reason.append(f"expected {classname}>={count}, found {len(found_objects)}")
        else:
            if "color" in req:
                colors = [color for _box, color in found_objects]
                if colors.count(req["color"]) < count:
                    correct = matched = False
                    reason.append(f"expected {req['color']} {classname}>={count}, found {colors}")
            if "position" in req and matched:
                expected_rel, target_group = req["position"]
                if matched_groups[target_group] is None:
                    correct = matched = False
                    reason.append(f"no target for {classname} to be {expected_rel}")
                else:
                    for box, _color in found_objects:
                        for target_box, _tcolor in matched_groups[target_group]:
                            true_rels = relative_position(box, target_box)
                            if expected_rel not in true_rels:
                                correct = matched = False
                                reason.append(f"expected {classname} {expected_rel} target, "
                                              f"found {' and '.join(sorted(true_rels))} target")
                                break
                        if not matched:
                            break
        matched_groups.append(found_objects if matched else None)
    for req in metadata.get("exclude", []):
        classname = req["class"]
        if len(objects.get(classname, [])) >= req["count"]:
            correct = False
            reason.append(f"expected {classname}<{req['count']}, found {len(objects[classname])}")
    return correct, "\n".join(reason)
