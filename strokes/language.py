"""The trajectory language: instructions, scene descriptions, inspections and corrections.

Every text a trajectory holds is generated here and can be parsed back here, so a judge can read
what a model wrote (`parse_instruction`, `parse_description`, `parse_inspection`) with the same
grammar the data was written in. Texts are lower-case words separated by single spaces, with "." and
":" attached to the word before them; the word-level tokenizer round-trips exactly that form.

    instruction  add a red circle [left of the blue square]
                 make the green circle red            (recolour)
                 move the red circle left of the blue square
                 remove the green triangle
                 swap the red circle and the blue square
                 replace the green triangle with a green circle
    description  a red circle and a blue square right of the red circle
    inspection   aligned. the image follows the instruction. still missing: a green triangle.
                 aligned. the image follows the instruction and the scene matches the prompt.
                 conflict. the red circle is blue instead of red.
    check list   red circle planned drawn. blue square not planned drawn. conflict. …
                 (an inspection may open with one: each described object against the prompt and
                 the sketch, before the verdict; `data.pipelines.checklist`)
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from .shapeworld.check import Item, ItemCheck
from .shapeworld.scene import COLORS, RELATIONS, SHAPES, noun_phrase
from .verdict import Conflict, ConflictKind, Verdict

EDIT_KINDS = ("add", "recolor", "move", "remove", "swap", "replace")


@dataclass(frozen=True)
class Edit:
    """A parsed instruction. `target` and `other` are (shape, colour) of the objects it names."""

    kind: str
    target: tuple[str, str]
    relation: str | None = None
    other: tuple[str, str] | None = None  # the reference (add/move) or the partner (swap)
    new_color: str | None = None  # recolor


def the(shape_color: tuple[str, str]) -> str:
    return f"the {shape_color[1]} {shape_color[0]}"


def instruction_text(edit: Edit) -> str:
    s, c = edit.target
    rel = f" {edit.relation} {the(edit.other)}" if edit.relation and edit.other else ""
    if edit.kind == "add":
        return f"add {noun_phrase(s, 1, c)}{rel}"
    if edit.kind == "recolor":
        return f"make {the(edit.target)} {edit.new_color}"
    if edit.kind == "move":
        return f"move {the(edit.target)}{rel}"
    if edit.kind == "remove":
        return f"remove {the(edit.target)}"
    if edit.kind == "swap":
        return f"swap {the(edit.target)} and {the(edit.other)}"
    if edit.kind == "replace":
        return f"replace {the(edit.target)} with {noun_phrase(edit.other[0], 1, edit.other[1])}"
    raise ValueError(f"unknown edit kind {edit.kind!r}")


def description_text(items: list[Item]) -> str:
    """'a red circle and a blue square right of the red circle'; 'nothing' for an empty scene."""
    if not items:
        return "nothing"
    parts = []
    for it in items:
        rel = f" {it.relation[0]} {items[it.relation[1]].the}" if it.relation else ""
        parts.append(it.phrase + rel)
    return " and ".join(parts)


_COLOR = "|".join(COLORS)
_SHAPE = "|".join(SHAPES)
_REL = "|".join(RELATIONS)
_OBJ = rf"(?:a|an) ({_COLOR}) ({_SHAPE})"
_THE = rf"the ({_COLOR}) ({_SHAPE})"
_INSTRUCTIONS = {
    "add": re.compile(rf"^add {_OBJ}(?: ({_REL}) {_THE})?$"),
    "recolor": re.compile(rf"^make {_THE} ({_COLOR})$"),
    "move": re.compile(rf"^move {_THE} ({_REL}) {_THE}$"),
    "remove": re.compile(rf"^remove {_THE}$"),
    "swap": re.compile(rf"^swap {_THE} and {_THE}$"),
    "replace": re.compile(rf"^replace {_THE} with {_OBJ}$"),
}
_ITEM = re.compile(rf"^{_OBJ}(?: ({_REL}) {_THE})?$")


def parse_instruction(text: str) -> Edit | None:
    """The edit an instruction asks for, or None when the text is not a well-formed instruction."""
    text = text.strip()
    for kind, pat in _INSTRUCTIONS.items():
        m = pat.match(text)
        if not m:
            continue
        g = m.groups()
        if kind == "add":
            other = (g[4], g[3]) if g[2] else None
            return Edit("add", (g[1], g[0]), g[2], other)
        if kind == "recolor":
            return Edit("recolor", (g[1], g[0]), new_color=g[2])
        if kind == "move":
            return Edit("move", (g[1], g[0]), g[2], (g[4], g[3]))
        if kind == "remove":
            return Edit("remove", (g[1], g[0]))
        if kind == "replace":
            return Edit("replace", (g[1], g[0]), other=(g[3], g[2]))
        return Edit("swap", (g[1], g[0]), other=(g[3], g[2]))
    return None


def parse_description(text: str) -> list[Item] | None:
    """Items of a description; a reference resolves to the latest earlier item with that phrase.
    None when the text is malformed or refers to an object not described before it."""
    text = text.strip()
    if text == "nothing":
        return []
    items: list[Item] = []
    for part in text.split(" and "):
        m = _ITEM.match(part)
        if not m:
            return None
        color, shape, rel, rcolor, rshape = m.groups()
        relation = None
        if rel:
            ref = next((i for i in range(len(items) - 1, -1, -1)
                        if items[i].shape == rshape and items[i].color == rcolor), None)
            if ref is None:
                return None
            relation = (rel, ref)
        items.append(Item(shape, color, relation))
    return items


# ---- inspections and corrections -------------------------------------------------------------

ALIGNED = "aligned. the image follows the instruction"
CONFLICT = "conflict."
PLAN_CONFLICT = "the instruction contradicts the prompt"


def inspection_text(verdict: Verdict) -> str:
    """The paper's two templates: a correct step says so and names what later steps will add
    (`verdict.missing`); a wrong step says what is wrong (the correction goes into <refine>)."""
    missing = verdict.missing
    if verdict.aligned:
        if missing:
            return f"{ALIGNED}. still missing: {' and '.join(missing)}."
        return f"{ALIGNED} and the scene matches the prompt."
    planned = any(c.source == "instruction" for c in verdict.conflicts)
    head = f"{CONFLICT} {PLAN_CONFLICT}." if planned else CONFLICT
    return head + " " + " ".join(f"{c.sentence()}." for c in verdict.conflicts)


def checklist_text(checks: list[ItemCheck]) -> str:
    """'red circle planned drawn. blue square not planned drawn.': the check list an inspection
    opens with when it enumerates (empty for an empty scene). Small transformers copy and compare a
    few tokens well, so a verdict that follows such a list can rest on per-object lookups in the
    prompt and the sketch instead of one token's guess."""
    return " ".join(f"{c.color} {c.shape} {'' if c.planned else 'not '}planned {'' if c.drawn else 'not '}drawn."
                    for c in checks)


_CHECK = re.compile(rf"^({_COLOR}) ({_SHAPE}) (not )?planned (not )?drawn\.(?: |$)")


def split_checklist(text: str) -> tuple[list[ItemCheck], str]:
    """An inspection's opening check list (empty when it has none) and the rest of it, the verdict."""
    text, checks = text.strip(), []
    while m := _CHECK.match(text):
        checks.append(ItemCheck(m.group(2), m.group(1), m.group(3) is None, m.group(4) is None))
        text = text[m.end():]
    return checks, text


def says_conflict(inspection: str) -> bool:
    """Whether an inspection's verdict (its first word after any check list) is that the state
    conflicts with the plan or prompt."""
    return split_checklist(inspection)[1].startswith(CONFLICT)


def parse_inspection(text: str) -> Verdict | None:
    """The verdict an inspection text states: aligned or not, and each conflict sentence's kind,
    source and subject (after any check list). None when the text follows neither template."""
    text = split_checklist(text)[1]
    if text.startswith(ALIGNED):
        rest = text[len(ALIGNED):].strip()
        missing = []
        if rest.startswith(". still missing:"):
            missing = rest[len(". still missing:"):].strip().rstrip(".").split(" and ")
        return Verdict(aligned=True, conflicts=[], correction="", missing=missing)
    if not text.startswith(CONFLICT):
        return None
    body = text[len(CONFLICT):].strip()
    source = "image"
    if body.startswith(PLAN_CONFLICT):
        source, body = "instruction", body[len(PLAN_CONFLICT) + 1:]
    conflicts = [_sentence_conflict(s.strip(), source) for s in body.split(".") if s.strip()]
    return Verdict(aligned=False, conflicts=[c for c in conflicts if c is not None], correction="")


_SENTENCES = [
    (ConflictKind.missing_object, rf"^({_OBJ}|.+) is (?:missing|not planned)$"),
    (ConflictKind.wrong_color, rf"^({_OBJ}) is (?:planned )?({_COLOR}) instead of ({_COLOR})$"),
    (ConflictKind.wrong_shape, r"^(.+?) is (?:drawn|planned) as (.+)$"),
    (ConflictKind.wrong_relation, rf"^({_OBJ}) should be (.+?) but is (.+)$"),
    (ConflictKind.extra_object, r"^there is an extra (.+) that should not be there$"),
    (ConflictKind.wrong_count, r"^there should be (.+) but there are (.+)$"),
]


def _sentence_conflict(s: str, source: str) -> Conflict | None:
    for kind, pat in _SENTENCES:
        m = re.match(pat, s)
        if m:
            return Conflict(kind=kind, source=source, subject=m.group(1), expected="", found="")
    return None
