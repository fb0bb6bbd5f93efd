"""ShapeWorld's side of GenEval-format records: the vocabulary it can draw, reading suite files
that stay inside it, and parsing a typed prompt in our templates back into its record.

The record format itself is GenEval's (`strokes/records.py`); a record naming a class or colour
ShapeWorld does not have is refused here with one line, before anything tries to draw or check it.
"""

from __future__ import annotations

from pathlib import Path

from ..errors import InputError
from ..records import FREE_TEXT, Exclusion, PromptRecord, Requirement, noun_phrase, prompt_text
from ..records import read_records as read_geneval_records
from .scene import COLORS, RELATIONS, SHAPES


def check_vocabulary(rec: PromptRecord, where: str = "record") -> None:
    """Refuse a record with a class or colour ShapeWorld cannot draw, or one with no rule to check."""
    if rec.tag == FREE_TEXT:
        raise InputError(f"{where}: a {FREE_TEXT} prompt has no GenEval rule; ShapeWorld checks records of its tasks")
    for i, r in enumerate(rec.include):
        if r.shape not in SHAPES:
            raise InputError(f"{where}: include[{i}]: unknown class {r.shape!r} (ShapeWorld has {', '.join(SHAPES)})")
        if r.color is not None and r.color not in COLORS:
            raise InputError(f"{where}: include[{i}]: unknown color {r.color!r} (ShapeWorld has {', '.join(COLORS)})")
    for i, e in enumerate(rec.exclude):
        if e.shape not in SHAPES:
            raise InputError(f"{where}: exclude[{i}]: unknown class {e.shape!r} (ShapeWorld has {', '.join(SHAPES)})")


def drawable(rec: PromptRecord) -> bool:
    """Whether ShapeWorld can draw and check `rec` (`check_vocabulary` would accept it)."""
    try:
        check_vocabulary(rec)
    except InputError:
        return False
    return True


def read_records(path: str | Path) -> list[PromptRecord]:
    """A GenEval-format JSONL file of records ShapeWorld can draw (InputError naming file and line)."""
    return read_geneval_records(path, check_vocabulary)


def record_from_text(text: str) -> PromptRecord | None:
    """The record a prompt in our templates (`prompt_text`) stands for, so that the exact judge can
    check an image drawn for a typed prompt; None when the text is in none of the templates."""
    text = " ".join(text.split())
    for rel in RELATIONS:  # '<obj> left of <ref>': the reference is group 0
        obj, sep, ref = text.partition(f" {rel} ")
        if sep:
            a, b = _noun(ref), _noun(obj)
            if not (a and b):
                return None
            return _checked(text, "position", (a, Requirement(b.shape, b.count, b.color, (rel, 0))))
    groups = tuple(_noun(part) for part in text.split(" and "))
    if not all(groups):
        return None
    if len(groups) == 2:
        return _checked(text, "color_attr" if all(g.color for g in groups) else "two_object", groups)
    (g,) = groups
    if g.count > 1:
        return _checked(text, "counting", groups, (Exclusion(g.shape, g.count + 1),))
    return _checked(text, "colors" if g.color else "single_object", groups)


def _noun(phrase: str) -> Requirement | None:
    """'a red circle', 'three triangles' as a requirement (None when it is no noun phrase of ours)."""
    for shape in SHAPES:
        for count in range(1, 11):
            for color in (None, *COLORS):
                if noun_phrase(shape, count, color) == phrase:
                    return Requirement(shape, count, color)
    return None


def _checked(text: str, tag: str, include: tuple, exclude: tuple = ()) -> PromptRecord | None:
    """The record, if writing it out gives `text` back (so the parse means what the prompt says)."""
    rec = PromptRecord(tag, include, exclude)
    return PromptRecord(tag, include, exclude, text) if prompt_text(rec) == text else None
