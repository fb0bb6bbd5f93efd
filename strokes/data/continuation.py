"""Completing a partly drawn scene with clean steps (used after a corrected state in critique traces)."""

from __future__ import annotations

import random

from ..language import instruction_text
from ..records import PromptRecord
from ..shapeworld import COLORS, Obj, Scene, relations, render
from ..shapeworld.check import Item
from ..shapeworld.queries import missing_parts
from ..shapeworld.scene import free_slots
from ..trajectory import Step
from .pipelines import _add_edit, _state, aligned_inspection


def continuation(rec: PromptRecord, scene: Scene, rng: random.Random,
                 items: list[Item] | None = None) -> list[Step] | None:
    """Clean `add` steps that complete `scene` (whatever drew it) into a scene satisfying `rec`.

    The model's own prefix ends in a corrected state; these steps finish the scene exactly. When
    `items` (the description of that state) name the scene's objects, the new descriptions extend it
    in its own order and with its relations, so the description reads on as the model wrote it.
    None when the scene cannot be completed (no room, or an existing object already breaks a
    relation the prompt needs).
    """
    objs = list(scene.objects)
    rels: list = [None] * len(objs)
    order = _in_described_order(objs, items)
    if order is not None:
        objs = [objs[i] for i in order]
        rels = [it.relation for it in items]
    pool = list(range(len(objs)))
    groups: list[list[int]] = []
    for r in rec.include:
        got = [i for i in pool if objs[i].shape == r.shape and (r.color is None or objs[i].color == r.color)][: r.count]
        for i in got:
            pool.remove(i)
        groups.append(got)
    steps: list[Step] = []
    for g, r in enumerate(rec.include):
        while len(groups[g]) < r.count:
            taken = {(o.shape, o.color) for o in objs}
            colors = [r.color] if r.color else [c for c in COLORS if (r.shape, c) not in taken] or list(COLORS)
            color = rng.choice(colors)
            slots = free_slots(Scene(tuple(objs), scene.size))
            rel = None
            if r.position:
                name, k = r.position
                slots = [s for s in slots
                         if all(name in relations(Obj(r.shape, color, *s).box, objs[t].box) for t in groups[k])]
                rel = (name, groups[k][0]) if groups[k] else None
            if not slots:
                return None
            new = Obj(r.shape, color, *rng.choice(slots))
            if rel is None and objs:
                held = [(n, k) for k in range(len(objs)) for n in sorted(relations(new.box, objs[k].box))]
                rel = rng.choice(held) if held else None
            objs.append(new)
            rels.append(rel)
            groups[g].append(len(objs) - 1)
            st = _state(objs, rels, scene.size)
            steps.append(Step(instruction_text(_add_edit(st, len(objs) - 1)), st.description, render(st.scene),
                              aligned_inspection(rec, st.scene)))
    if missing_parts(rec, Scene(tuple(objs), scene.size)):
        return None
    return steps


def _in_described_order(objs: list[Obj], items: list[Item] | None) -> list[int] | None:
    """Indices of `objs` in the order `items` describes them (matched by shape and colour), or None
    when the description does not name exactly these objects."""
    if not items or len(items) != len(objs):
        return None
    left = list(range(len(objs)))
    order = []
    for it in items:
        k = next((i for i in left if (objs[i].shape, objs[i].color) == (it.shape, it.color)), None)
        if k is None:
            return None
        left.remove(k)
        order.append(k)
    return order
