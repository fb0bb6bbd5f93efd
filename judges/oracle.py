"""The oracle judge: exact verdicts for ShapeWorld steps, straight from the checker.

A step is aligned iff (a) the image shows exactly what the step's description says
(`check_items`, the image-vs-instruction kind) and (b) the description does not contradict the
prompt (`plan_conflicts`, the instruction-vs-prompt kind). An instruction or description that does
not parse is a conflict too (counted in `stats`), because a model that writes it has not planned.
The corrective instruction fixes the first conflict (plan conflicts first: redrawing a plan that
contradicts the prompt would be wasted work), and `corrected_scene` gives the exact scene that
correction leads to, so the critique builder can render the corrected state.

This is the reference every other judge is measured against (`judges.evaluate`).
"""

from __future__ import annotations

import re
from collections import Counter

import numpy as np

from strokes.language import Edit, inspection_text, instruction_text, parse_description, parse_instruction
from strokes.records import PromptRecord
from strokes.shapeworld import CANVAS, COLORS, SHAPES, Obj, Scene, check, detect
from strokes.shapeworld.check import Item, check_items, plan_conflicts
from strokes.shapeworld.queries import missing_parts
from strokes.shapeworld.render import Detection, detections_to_scene
from strokes.shapeworld.scene import NUMBER_WORDS, OPPOSITE, PLURALS, RELATIONS, free_slots, relations
from strokes.verdict import Conflict, ConflictKind, StepContext, Verdict

_SINGULAR = {p: s for s, p in PLURALS.items()}
_NUMBERS = {w: n for n, w in NUMBER_WORDS.items()}
_PHRASE = re.compile(rf"^(?:a|an|\w+) (?:({'|'.join(COLORS)}) )?({'|'.join(list(SHAPES) + list(PLURALS.values()))})$")
_RELATED = re.compile(rf"^({'|'.join(RELATIONS)}) (.+)$")


def _parse_phrase(phrase: str) -> tuple[str, str | None]:
    """'a red circle' -> ('circle', 'red'); 'three circles' -> ('circle', None)."""
    m = _PHRASE.match(phrase.strip())
    if not m:
        raise ValueError(f"not an object phrase: {phrase!r}")
    color, shape = m.groups()
    return _SINGULAR.get(shape, shape), color


def _count_of(phrase: str) -> int:
    """'three circles' -> 3, 'a circle' -> 1, '12 circles' -> 12."""
    word = phrase.split(" ", 1)[0]
    if word in ("a", "an"):
        return 1
    return _NUMBERS.get(word, int(word) if word.isdigit() else 1)


def _dets_of(scene: Scene) -> list[Detection]:
    """What `detect(render(scene))` returns, without rendering (render and detect are exact)."""
    dets = [Detection(o.shape, o.color, o.box) for o in scene.objects]
    return sorted(dets, key=lambda d: (d.box[1], d.box[0]))


class OracleJudge:
    """Exact judge for ShapeWorld. `stats` counts unparsable instructions and descriptions."""

    name = "oracle"
    image_side = CANVAS
    """It reads ShapeWorld's canvas (a judge server refuses larger images)."""

    def __init__(self) -> None:
        self.stats: Counter = Counter()

    def judge(self, contexts: list[StepContext]) -> list[Verdict]:
        return [self.verdict(c) for c in contexts]

    def whole_scene(self, rec: PromptRecord, image) -> Verdict:
        """Whether a finished picture satisfies its record (a context with no instruction whose
        description is the prompt: how an eval image is put to a judge): GenEval's rule, exactly."""
        self.stats["scenes"] += 1
        conflicts = check(rec, image)
        return Verdict(aligned=not conflicts, conflicts=conflicts, correction="")

    def inspect(self, contexts: list[StepContext]) -> list[tuple[str, str]]:
        """(inspection text in the paper's templates, corrective instruction) per step: the same
        shape as a policy's Inspect + Refine, so the oracle can stand in for a policy's own judgment."""
        return [(inspection_text(v), v.correction) for v in self.judge(contexts)]

    def verdict(self, ctx: StepContext) -> Verdict:
        rec = PromptRecord.from_json(ctx.record, "step record") if ctx.record else None
        if rec is not None and not ctx.instruction and ctx.description == rec.text:
            return self.whole_scene(rec, ctx.image)
        dets = detect(ctx.image)
        items = parse_description(ctx.description)
        edit = parse_instruction(ctx.instruction)
        self.stats["steps"] += 1
        if items is None:
            self.stats["unparsable_description"] += 1
        if edit is None:
            self.stats["unparsable_instruction"] += 1
        plan = plan_conflicts(rec, items) if rec is not None and items is not None else []
        image = check_items(items, dets) if items is not None else []
        conflicts = plan + image
        if not conflicts and items is not None and edit is not None:
            size = int(np.asarray(ctx.image).shape[0])
            missing = missing_parts(rec, detections_to_scene(dets, size)) if rec is not None else []
            return Verdict(aligned=True, conflicts=[], correction="", missing=missing)
        size = int(np.asarray(ctx.image).shape[0])
        fix = choose_correction(conflicts, items or [], dets, size)
        return Verdict(aligned=False, conflicts=conflicts, correction=instruction_text(fix) if fix else "")


# ---- corrections ---------------------------------------------------------------------------------

def choose_correction(conflicts: list[Conflict], items: list[Item], dets: list[Detection], size: int) -> Edit | None:
    """The edit for the first conflict that can be carried out on this canvas.

    A relation can be impossible to reach by moving the named object (its reference sits at the
    edge, or the canvas is full); then the reference moves the opposite way instead, an add drops its
    relation (a later step moves it), or the next conflict is fixed first. When nothing can be
    carried out the first conflict's edit is still returned, as the best instruction there is.
    """
    scene = detections_to_scene(dets, size)
    first = None
    for c in conflicts:
        edit = correction_edit(c, items, dets)
        if edit is None:
            continue
        first = first or edit
        options = [edit]
        if edit.kind == "move":
            options.append(Edit("move", edit.other, OPPOSITE[edit.relation], edit.target))
        elif edit.kind == "add" and edit.relation:
            options.append(Edit("add", edit.target))
        for e in options:
            if apply_edit(scene, e):
                return e
    return first


def correction_edit(c: Conflict, items: list[Item], dets: list[Detection]) -> Edit | None:
    """The edit that fixes conflict `c`, given the step's described items and the detections.

    image conflicts: wrong colour -> recolour, wrong shape -> replace, missing -> add (with the
    relation the description states), extra -> remove, wrong relation -> move, wrong count ->
    remove or add. Plan conflicts: remove what the prompt rules out, recolour, move.
    """
    k = c.kind
    if k is ConflictKind.wrong_color:
        shape, want = _parse_phrase(c.subject)
        return Edit("recolor", (shape, c.found.split(" and ")[0]), new_color=want or c.expected)
    if k is ConflictKind.wrong_shape:
        found = _parse_phrase(c.found)
        if c.source == "instruction":
            return Edit("remove", (found[0], found[1]))
        shape, color = _parse_phrase(c.subject)
        return Edit("replace", (found[0], found[1]), other=(shape, color or found[1]))
    if k is ConflictKind.extra_object:
        shape, color = _parse_phrase(c.found)
        return Edit("remove", (shape, color))
    if k is ConflictKind.wrong_relation:
        m = _RELATED.match(c.expected)
        if not m:
            return None
        shape, color = _parse_phrase(c.subject)
        rshape, rcolor = _parse_phrase(m.group(2))
        return Edit("move", (shape, color), m.group(1), (rshape, rcolor))
    if k is ConflictKind.missing_object:
        shape, color = _parse_phrase(c.subject)
        return _add_missing(shape, color, items, dets)
    if k is ConflictKind.wrong_count:
        shape, _ = _parse_phrase(c.subject)
        want, have = _count_of(c.expected.removeprefix("fewer than ")), _count_of(c.found)
        if c.expected.startswith("fewer than"):
            want -= 1
        if have > want:  # drop the latest-planned (or last-drawn) object of that class
            pool = [(it.shape, it.color) for it in items if it.shape == shape] if c.source == "instruction" \
                else [(d.shape, d.color) for d in dets if d.shape == shape]
            return Edit("remove", pool[-1]) if pool else None
        color = next((col for col in COLORS if (shape, col) not in {(d.shape, d.color) for d in dets}), "red")
        return Edit("add", (shape, color))
    return None


def _add_missing(shape: str, color: str | None, items: list[Item], dets: list[Detection]) -> Edit:
    """`add` for a missing described object, with the relation the description states when its
    other end is on the canvas (its own relation, or a later object's relation to it, inverted)."""
    present = {(d.shape, d.color) for d in dets}
    color = color or "red"
    for i, it in enumerate(items):
        if (it.shape, it.color) != (shape, color):
            continue
        if it.relation is not None:
            ref = items[it.relation[1]]
            if (ref.shape, ref.color) in present:
                return Edit("add", (shape, color), it.relation[0], (ref.shape, ref.color))
        for later in items[i + 1:]:
            if later.relation is not None and later.relation[1] == i and (later.shape, later.color) in present:
                return Edit("add", (shape, color), OPPOSITE[later.relation[0]], (later.shape, later.color))
    return Edit("add", (shape, color))


# ---- the corrected scene -------------------------------------------------------------------------

def corrected_scene(context: StepContext, verdict: Verdict) -> Scene | None:
    """The exact scene the verdict's correction leads to, starting from what the image shows.

    The correction's edit is applied to the detected scene. Where it leaves a choice (which of two
    look-alike objects, which free grid slot satisfies a relation), the choice that best matches the
    scene the step should show is taken: the description for an image conflict, the description
    with the correction applied for a plan conflict. An aligned verdict returns the detected scene
    as it is; None when the correction does not parse or cannot be applied (its object is absent,
    or no free slot satisfies its relation).
    """
    size = int(np.asarray(context.image).shape[0])
    scene = detections_to_scene(detect(context.image), size)
    if verdict.aligned:
        return scene
    edit = parse_instruction(verdict.correction)
    if edit is None:
        return None
    items = parse_description(context.description)
    if items is not None and any(c.source == "instruction" for c in verdict.conflicts):
        items = edit_items(items, edit)
    candidates = apply_edit(scene, edit)
    if not candidates:
        return None
    if items is None:
        return candidates[0][1]
    return min(candidates, key=lambda c: (len(check_items(items, _dets_of(c[1]))), c[0]))[1]


def apply_edit(scene: Scene, edit: Edit) -> list[tuple[float, Scene]]:
    """Every scene `edit` can turn `scene` into, each with a preference key (lower is a smaller
    change: the nearest slot for a move or an add with a reference, reading order otherwise)."""
    def matches(sc: tuple[str, str] | None) -> list[int]:
        return [i for i, o in enumerate(scene.objects) if sc is not None and (o.shape, o.color) == sc]

    out: list[tuple[float, Scene]] = []
    targets = matches(edit.target)
    if edit.kind == "add":
        shape, color = edit.target
        refs = matches(edit.other) if edit.relation else []
        for n, (x, y) in enumerate(free_slots(scene)):
            obj = Obj(shape, color, x, y)
            if refs:
                for r in refs:
                    ref = scene.objects[r]
                    if edit.relation in relations(obj.box, ref.box):
                        out.append((abs(x - ref.x) + abs(y - ref.y), scene.with_object(obj)))
            else:
                out.append((n, scene.with_object(obj)))
    elif edit.kind == "recolor":
        out = [(n, scene.replaced(i, Obj(scene.objects[i].shape, edit.new_color, scene.objects[i].x,
                                         scene.objects[i].y))) for n, i in enumerate(targets)]
    elif edit.kind == "replace":
        out = [(n, scene.replaced(i, Obj(edit.other[0], edit.other[1], scene.objects[i].x, scene.objects[i].y)))
               for n, i in enumerate(targets)]
    elif edit.kind == "remove":
        out = [(-n, scene.without(i)) for n, i in enumerate(targets)]  # the latest-drawn look-alike first
    elif edit.kind == "move":
        for i in targets:
            o = scene.objects[i]
            rest = scene.without(i)
            for r in matches(edit.other):
                if r == i:
                    continue
                ref = scene.objects[r]
                for x, y in free_slots(rest):
                    if (x, y) != (o.x, o.y) and edit.relation in relations(o.moved(x, y).box, ref.box):
                        out.append((abs(x - o.x) + abs(y - o.y), scene.replaced(i, o.moved(x, y))))
    elif edit.kind == "swap":
        for a in targets:
            for b in matches(edit.other):
                if a != b:
                    oa, ob = scene.objects[a], scene.objects[b]
                    out.append((0, scene.replaced(a, oa.moved(ob.x, ob.y)).replaced(b, ob.moved(oa.x, oa.y))))
    return out


def edit_items(items: list[Item], edit: Edit) -> list[Item]:
    """A described scene with an edit applied to it: the plan a correction turns the plan into."""
    items = list(items)

    def find(sc: tuple[str, str] | None, last: bool = False) -> int | None:
        ix = [i for i, it in enumerate(items) if sc is not None and (it.shape, it.color) == sc]
        return (ix[-1] if last else ix[0]) if ix else None

    i = find(edit.target, last=edit.kind == "remove")
    if edit.kind == "add":
        ref = find(edit.other) if edit.relation else None
        items.append(Item(edit.target[0], edit.target[1], (edit.relation, ref) if ref is not None else None))
    elif i is None:
        return items
    elif edit.kind == "remove":
        out = []
        for j, it in enumerate(items):
            if j == i:
                continue
            rel = it.relation
            if rel is not None:
                rel = None if rel[1] == i else (rel[0], rel[1] - (rel[1] > i))
            out.append(Item(it.shape, it.color, rel))
        items = out
    elif edit.kind == "recolor":
        items[i] = Item(items[i].shape, edit.new_color, items[i].relation)
    elif edit.kind == "replace":
        items[i] = Item(edit.other[0], edit.other[1], items[i].relation)
    elif edit.kind == "move":
        r = find(edit.other)
        if r is not None and r != i:
            def between(j: int, it: Item) -> bool:  # a stated relation between the two objects
                return it.relation is not None and {j, it.relation[1]} == {i, r}

            items = [Item(it.shape, it.color, None if between(j, it) else it.relation) for j, it in enumerate(items)]
            items[i] = Item(items[i].shape, items[i].color, (edit.relation, r))
    return items

