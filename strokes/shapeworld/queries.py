"""Questions about a scene against a prompt that the data pipelines and the judges both ask."""

from __future__ import annotations

from ..records import PromptRecord
from .scene import Scene, noun_phrase, relations


def missing_parts(rec: PromptRecord, scene: Scene) -> list[str]:
    """What the prompt still needs, as phrases for the inspection ('a blue square', 'two circles',
    'a triangle left of a circle')."""
    out = []
    objs = list(scene.objects)
    groups = []
    for r in rec.include:
        got = [o for o in objs if o.shape == r.shape and (r.color is None or o.color == r.color)][: r.count]
        for o in got:
            objs.remove(o)
        groups.append(got)
        if len(got) < r.count:
            out.append(noun_phrase(r.shape, r.count - len(got), r.color))
    for r, g in zip(rec.include, groups):
        if r.position and len(g) == r.count and len(groups[r.position[1]]) == rec.include[r.position[1]].count:
            rel, k = r.position
            if not all(rel in relations(o.box, t.box) for o in g for t in groups[k]):
                ref = rec.include[k]
                out.append(f"{noun_phrase(r.shape, 1, r.color)} {rel} {noun_phrase(ref.shape, 1, ref.color)}")
    return out
