"""The checker: a scene spec (a prompt record, or the record of a step's target) against an image.

It follows GenEval's `evaluate` to the letter, so "no conflicts" is exactly "GenEval says correct":
for each include group it takes the first `count` detections of that class (our detector's order is
reading order, where GenEval's is confidence), checks their colours, then their relation to every
object of the referenced group; each exclude group fails when `count` or more of its class appear.
On top of that it names *what* is wrong as typed conflicts, and in strict mode also reports objects
no group accounts for (GenEval ignores them; a step image must not have them).
"""

from __future__ import annotations

import numpy as np

from ..verdict import Conflict, ConflictKind
from .records import PromptRecord
from .render import Detection, detect
from .scene import noun_phrase, relations


def _phrase(d: Detection) -> str:
    return noun_phrase(d.shape, 1, d.color)


def check_detections(rec: PromptRecord, dets: list[Detection], strict: bool = False) -> list[Conflict]:
    """Conflicts between a record and detected objects; empty iff GenEval scores it correct
    (and, when `strict`, no object is left unaccounted for)."""
    by_class: dict[str, list[Detection]] = {}
    for d in dets:
        by_class.setdefault(d.shape, []).append(d)
    conflicts: list[Conflict] = []
    groups: list[list[Detection] | None] = []
    used: set[int] = set()
    missing: list[tuple[int, str | None, str]] = []  # (conflict index, colour, shape) of absent groups
    for req in rec.include:
        subject = noun_phrase(req.shape, req.count, req.color)
        found = by_class.get(req.shape, [])[: req.count]
        used.update(id(d) for d in found)
        if len(found) < req.count:
            if not found:
                missing.append((len(conflicts), req.color, req.shape))
                conflicts.append(Conflict(kind=ConflictKind.missing_object, source="image",
                                          subject=subject, expected=subject, found=""))
            else:
                conflicts.append(Conflict(kind=ConflictKind.wrong_count, source="image", subject=subject,
                                          expected=noun_phrase(req.shape, req.count),
                                          found=noun_phrase(req.shape, len(found))))
            groups.append(None)
            continue
        matched = True
        if req.color is not None:
            colors = [d.color for d in found]
            if colors.count(req.color) < req.count:
                matched = False
                wrong = [c for c in colors if c != req.color]
                conflicts.append(Conflict(kind=ConflictKind.wrong_color, source="image", subject=subject,
                                          expected=req.color, found=" and ".join(wrong)))
        if req.position is not None and matched:
            rel, k = req.position
            target = groups[k]
            ref = rec.include[k]
            ref_phrase = noun_phrase(ref.shape, 1, ref.color)
            if target is None:
                matched = False
                conflicts.append(Conflict(kind=ConflictKind.wrong_relation, source="image", subject=subject,
                                          expected=f"{rel} {ref_phrase}", found=f"without {ref_phrase} to be {rel}"))
            else:
                for d in found:
                    bad = next((t for t in target if rel not in relations(d.box, t.box)), None)
                    if bad is not None:
                        matched = False
                        held = sorted(relations(d.box, bad.box))
                        conflicts.append(Conflict(
                            kind=ConflictKind.wrong_relation, source="image", subject=subject,
                            expected=f"{rel} {ref_phrase}",
                            found=(" and ".join(held) + f" {ref_phrase}") if held else f"level with {ref_phrase}"))
                        break
        groups.append(found if matched else None)
    for exc in rec.exclude:
        have = by_class.get(exc.shape, [])
        if len(have) >= exc.count:
            conflicts.append(Conflict(kind=ConflictKind.wrong_count, source="image",
                                      subject=noun_phrase(exc.shape, 1),
                                      expected=f"fewer than {noun_phrase(exc.shape, exc.count)}",
                                      found=noun_phrase(exc.shape, len(have))))
    leftovers = [d for d in dets if id(d) not in used]
    # A group with nothing of its class, and an unexplained object of the right colour elsewhere:
    # the model drew the wrong shape.
    for ci, color, shape in missing:
        cand = next((d for d in leftovers if d.shape != shape and (color is None or d.color == color)), None)
        if cand is not None:
            leftovers.remove(cand)
            c = conflicts[ci]
            conflicts[ci] = Conflict(kind=ConflictKind.wrong_shape, source="image", subject=c.subject,
                                     expected=shape, found=_phrase(cand))
    if strict:
        for d in leftovers:
            if rec.exclude and any(e.shape == d.shape for e in rec.exclude):
                continue  # already reported as a count conflict
            conflicts.append(Conflict(kind=ConflictKind.extra_object, source="image",
                                      subject=_phrase(d), expected="", found=_phrase(d)))
    return conflicts


def check(rec: PromptRecord, image: np.ndarray, strict: bool = False) -> list[Conflict]:
    """Conflicts between a record and an RGB image (see `check_detections`)."""
    return check_detections(rec, detect(image), strict)


def is_correct(rec: PromptRecord, image: np.ndarray) -> bool:
    """GenEval's per-image verdict."""
    return not check(rec, image)
