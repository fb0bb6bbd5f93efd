"""The checker: a scene spec (a prompt record, or the record of a step's target) against an image.

It follows GenEval's `evaluate` to the letter, so "no conflicts" is exactly "GenEval says correct":
for each include group it takes the first `count` detections of that class (our detector's order is
reading order, where GenEval's is confidence), checks their colours, then their relation to every
object of the referenced group; each exclude group fails when `count` or more of its class appear.
On top of that it names *what* is wrong as typed conflicts, and in strict mode also reports objects
no group accounts for (GenEval ignores them; a step image must not have them).
"""

from __future__ import annotations

import itertools
from collections import Counter
from dataclasses import dataclass

import numpy as np

from ..geneval import Score, score_dir
from ..records import PromptRecord
from ..verdict import Conflict, ConflictKind
from .records import check_vocabulary
from .render import Detection, detect
from .scene import CANVAS, OPPOSITE, noun_phrase, relations


def _phrase(d: Detection) -> str:
    return noun_phrase(d.shape, 1, d.color)


def _held(held: set[str] | list[str], ref: str) -> str:
    """What a wrong relation found: the relations that do hold to `ref`, or "level with" it."""
    return " and ".join(sorted(held)) + f" {ref}" if held else f"level with {ref}"


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
                # the group's colours, each once ('blue', or 'red and blue' when one of two is right):
                # "two red squares are red and blue instead of red", never "... is blue and blue ..."
                found_colors = list(dict.fromkeys(colors))
                conflicts.append(Conflict(kind=ConflictKind.wrong_color, source="image", subject=subject,
                                          expected=req.color, found=" and ".join(found_colors)))
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
                        conflicts.append(Conflict(
                            kind=ConflictKind.wrong_relation, source="image", subject=subject,
                            expected=f"{rel} {ref_phrase}", found=_held(relations(d.box, bad.box), ref_phrase)))
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


def score_folder(root, size: int = CANVAS) -> Score:
    """A GenEval-layout folder of ShapeWorld images, each decided by the exact checker (GenEval's
    rules); a record outside ShapeWorld's vocabulary is refused, naming its file."""
    def correct(rec: PromptRecord, images: list[np.ndarray]) -> list[bool]:
        return [not check(rec, image) for image in images]

    return score_dir(root, correct, size, check=check_vocabulary)


def is_correct(rec: PromptRecord, image: np.ndarray) -> bool:
    """GenEval's per-image verdict."""
    return not check(rec, image)


# ---- step checks: a described scene against an image ---------------------------------------------

@dataclass(frozen=True)
class Item:
    """One described object: shape, colour, and optionally a relation to an earlier item."""

    shape: str
    color: str
    relation: tuple[str, int] | None = None  # (relation, index of the earlier item it refers to)

    @property
    def phrase(self) -> str:
        return noun_phrase(self.shape, 1, self.color)

    @property
    def the(self) -> str:
        return f"the {self.color} {self.shape}"


def check_items(items: list[Item], dets: list[Detection]) -> list[Conflict]:
    """Conflicts between a whole-scene description and detections, always strict.

    A step image must show exactly the described objects with the described relations. Unlike
    GenEval's groups, several objects may share a class here, so items are matched to detections
    by (shape, colour), choosing among look-alikes the assignment that satisfies most relations;
    leftovers pair up as wrong colour (same shape), then wrong shape (same colour), then missing and
    extra objects.
    """
    assign = _best_assignment(items, dets)
    free_items = [i for i in range(len(items)) if i not in assign]
    free_dets = [j for j in range(len(dets)) if j not in assign.values()]
    conflicts: list[Conflict] = []
    for same in ("shape", "color"):
        for i in list(free_items):
            j = next((j for j in free_dets if getattr(dets[j], same) == getattr(items[i], same)), None)
            if j is None:
                continue
            free_items.remove(i)
            free_dets.remove(j)
            assign[i] = j
            if same == "shape":
                conflicts.append(Conflict(kind=ConflictKind.wrong_color, source="image", subject=items[i].phrase,
                                          expected=items[i].color, found=dets[j].color))
            else:
                conflicts.append(Conflict(kind=ConflictKind.wrong_shape, source="image", subject=items[i].phrase,
                                          expected=items[i].shape, found=_phrase(dets[j])))
    for i in free_items:
        conflicts.append(Conflict(kind=ConflictKind.missing_object, source="image", subject=items[i].phrase,
                                  expected=items[i].phrase, found=""))
    for j in free_dets:
        conflicts.append(Conflict(kind=ConflictKind.extra_object, source="image", subject=_phrase(dets[j]),
                                  expected="", found=_phrase(dets[j])))
    for i, it in enumerate(items):
        if it.relation is None or i not in assign or it.relation[1] not in assign:
            continue
        rel, k = it.relation
        held = relations(dets[assign[i]].box, dets[assign[k]].box)
        if rel not in held:
            ref = items[k].phrase
            conflicts.append(Conflict(
                kind=ConflictKind.wrong_relation, source="image", subject=it.phrase, expected=f"{rel} {ref}",
                found=_held(held, ref)))
    return conflicts


def _best_assignment(items: list[Item], dets: list[Detection]) -> dict[int, int]:
    """Item index -> detection index over exact (shape, colour) matches, most relations satisfied."""
    groups: dict[tuple[str, str], tuple[list[int], list[int]]] = {}
    for i, it in enumerate(items):
        groups.setdefault((it.shape, it.color), ([], []))[0].append(i)
    for j, d in enumerate(dets):
        if (d.shape, d.color) in groups:
            groups[(d.shape, d.color)][1].append(j)
    options = []  # per group: every injective assignment of as many items as there are detections
    for its, ds in groups.values():
        n = min(len(its), len(ds))
        options.append([dict(zip(chosen, perm)) for chosen in itertools.combinations(its, n)
                        for perm in itertools.permutations(ds, n)])
    best: dict[int, int] = {}
    best_score = -1
    for combo in itertools.islice(itertools.product(*options), 5000):
        assign = {k: v for part in combo for k, v in part.items()}
        score = sum(
            1 for i, it in enumerate(items)
            if it.relation and i in assign and it.relation[1] in assign
            and it.relation[0] in relations(dets[assign[i]].box, dets[assign[it.relation[1]]].box)
        )
        if score > best_score:
            best, best_score = assign, score
    return best


def plan_conflicts(rec: PromptRecord, items: list[Item], final: bool = False) -> list[Conflict]:
    """Conflicts between a planned scene description and the prompt (the instruction-vs-prompt kind).

    A plan may be incomplete (later steps add the rest) but never contradictory: no object of a
    class or colour the prompt rules out, no more objects of a class than it asks for, no stated
    relation that the prompt's relation forbids. With `final`, whatever is still missing is a
    conflict too.
    """
    out: list[Conflict] = []
    want: dict[str, int] = {}
    for r in rec.include:
        want[r.shape] = want.get(r.shape, 0) + r.count
    have: dict[str, list[int]] = {}
    for i, it in enumerate(items):
        have.setdefault(it.shape, []).append(i)
    # Class and count: objects beyond what the prompt asks for.
    spare = {s: list(ix) for s, ix in have.items()}
    for shape, ix in have.items():
        extra = ix[want.get(shape, 0):]
        for i in extra:
            spare[shape].remove(i)
        for i in extra:
            missing_class = next((r.shape for r in rec.include
                                  if len(have.get(r.shape, [])) < want[r.shape]), None)
            if shape not in want and missing_class is not None:
                out.append(Conflict(kind=ConflictKind.wrong_shape, source="instruction",
                                    subject=noun_phrase(missing_class, 1), expected=missing_class,
                                    found=items[i].phrase))
            elif shape not in want:
                out.append(Conflict(kind=ConflictKind.extra_object, source="instruction",
                                    subject=items[i].phrase, expected="", found=items[i].phrase))
            else:
                out.append(Conflict(kind=ConflictKind.wrong_count, source="instruction",
                                    subject=noun_phrase(shape, 1), expected=noun_phrase(shape, want[shape]),
                                    found=noun_phrase(shape, len(ix))))
    # Colours: each coloured requirement takes matching objects first; others must not remain.
    groups: list[list[int]] = []
    for r in rec.include:
        pool = spare.get(r.shape, [])
        match = [i for i in pool if r.color is None or items[i].color == r.color][: r.count]
        for i in match:
            pool.remove(i)
        groups.append(match)
    for r, g in zip(rec.include, groups):
        if r.color is None:
            continue
        for i in list(spare.get(r.shape, [])):
            if len(g) < r.count:
                spare[r.shape].remove(i)
                out.append(Conflict(kind=ConflictKind.wrong_color, source="instruction",
                                    subject=noun_phrase(r.shape, 1, r.color), expected=r.color,
                                    found=items[i].color))
    # Relations: a stated relation between the two groups must agree with the prompt's.
    for r, g in zip(rec.include, groups):
        if r.position is None:
            continue
        rel, k = r.position
        for i in g:
            for j in groups[k]:
                stated = _stated(items, i, j)
                if stated is not None and stated != rel:
                    out.append(Conflict(kind=ConflictKind.wrong_relation, source="instruction",
                                        subject=items[i].phrase, expected=f"{rel} {items[j].phrase}",
                                        found=f"{stated} {items[j].phrase}"))
    if final:
        for r, g in zip(rec.include, groups):
            if len(g) < r.count:
                phrase = noun_phrase(r.shape, r.count - len(g), r.color)
                out.append(Conflict(kind=ConflictKind.missing_object, source="instruction",
                                    subject=phrase, expected=phrase, found=""))
    return out


def drawn_conflicts(rec: PromptRecord, dets: list[Detection]) -> list[Conflict]:
    """Conflicts between a picture still being drawn and the prompt, as `plan_conflicts` judges a plan
    (and of its kind, "instruction": a picture drawn as planned shows its plan): objects may be
    missing, but none the prompt rules out (class, count, colour), and no relation between drawn
    objects that the prompt's relation forbids."""
    out = plan_conflicts(rec, [Item(d.shape, d.color) for d in dets])

    def group(req) -> list[Detection]:
        return [d for d in dets if d.shape == req.shape and (req.color is None or d.color == req.color)]
    for req in rec.include:
        if req.position is None:
            continue
        rel, k = req.position
        for a in group(req):
            bad = next((b for b in group(rec.include[k]) if rel not in relations(a.box, b.box)), None)
            if bad is not None:
                ref = _phrase(bad)
                out.append(Conflict(kind=ConflictKind.wrong_relation, source="instruction", subject=_phrase(a),
                                    expected=f"{rel} {ref}", found=_held(relations(a.box, bad.box), ref)))
                break
    return out


def _stated(items: list[Item], i: int, j: int) -> str | None:
    """The relation of item i to item j that the description states (directly or inverted)."""
    if items[i].relation and items[i].relation[1] == j:
        return items[i].relation[0]
    if items[j].relation and items[j].relation[1] == i:
        return OPPOSITE[items[j].relation[0]]
    return None


@dataclass(frozen=True)
class ItemCheck:
    """One line of an inspection's check list: an object of the step's description, whether the
    prompt asks for it (`planned`) and whether the sketch shows it (`drawn`)."""

    shape: str
    color: str
    planned: bool
    drawn: bool


def item_checks(rec: PromptRecord, items: list[Item], dets: list[Detection]) -> list[ItemCheck]:
    """Each described object checked against the prompt and the sketch, in description order.

    Planned: the object fills a free slot of an include group of its shape, a slot of its own colour
    first, then a colour-free one (greedy is exact here: a colour-free slot takes any colour), so a
    fourth circle for "three circles", a blue circle for "a red circle" and a swapped binding are
    not planned. Drawn: the sketch shows at least as many objects of its shape and colour as the
    description has named so far. Relations are not checked item by item (the verdict after the
    list still names a wrong one)."""
    free: Counter = Counter()
    for r in rec.include:
        free[(r.shape, r.color)] += r.count
    shown, named = Counter((d.shape, d.color) for d in dets), Counter()
    out = []
    for it in items:
        key = (it.shape, it.color)
        named[key] += 1
        slot = next((s for s in (key, (it.shape, None)) if free[s] > 0), None)
        if slot is not None:
            free[slot] -= 1
        out.append(ItemCheck(it.shape, it.color, slot is not None, shown[key] >= named[key]))
    return out
