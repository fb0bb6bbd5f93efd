"""GenEval-format prompt records: parsing, validation, prompt texts, and reading/writing JSONL.

A record is GenEval's metadata line: `{"tag", "include": [{"class", "count", "color"?, "position"?}],
"exclude": [{"class", "count"}], "prompt"}`. `position: [relation, k]` places every object of this
group relative to include group k, which must come earlier.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable

from ..errors import InputError
from ..io import write_atomic
from .scene import COLORS, RELATIONS, SHAPES, noun_phrase

TASKS: tuple[str, ...] = ("single_object", "two_object", "counting", "colors", "position", "color_attr")


@dataclass(frozen=True)
class Requirement:
    """One include group: `count` objects of `shape`, optionally of `color`, optionally related."""

    shape: str
    count: int = 1
    color: str | None = None
    position: tuple[str, int] | None = None

    def to_json(self) -> dict:
        d: dict = {"class": self.shape, "count": self.count}
        if self.color is not None:
            d["color"] = self.color
        if self.position is not None:
            d["position"] = [self.position[0], self.position[1]]
        return d


@dataclass(frozen=True)
class Exclusion:
    """An exclude group: fewer than `count` objects of `shape` may appear."""

    shape: str
    count: int

    def to_json(self) -> dict:
        return {"class": self.shape, "count": self.count}


@dataclass(frozen=True)
class PromptRecord:
    tag: str
    include: tuple[Requirement, ...]
    exclude: tuple[Exclusion, ...] = ()
    prompt: str = ""
    extra: dict = field(default_factory=dict, compare=False)  # unknown keys, kept on write

    def to_json(self) -> dict:
        d = {"tag": self.tag, "include": [r.to_json() for r in self.include]}
        if self.exclude:
            d["exclude"] = [e.to_json() for e in self.exclude]
        d["prompt"] = self.prompt or prompt_text(self)
        d.update(self.extra)
        return d

    @classmethod
    def from_json(cls, d: object, where: str = "record") -> "PromptRecord":
        """Validate a decoded JSON object; errors name `where` (e.g. 'suite.jsonl:3') and the field."""
        if not isinstance(d, dict):
            raise InputError(f"{where}: expected a JSON object, got {type(d).__name__}")
        tag = d.get("tag")
        if tag not in TASKS:
            raise InputError(f"{where}: field 'tag' must be one of {', '.join(TASKS)}, got {tag!r}")
        inc = d.get("include")
        if not isinstance(inc, list) or not inc:
            raise InputError(f"{where}: field 'include' must be a non-empty list")
        include = tuple(_requirement(g, f"{where}: include[{i}]", i) for i, g in enumerate(inc))
        exc = d.get("exclude", [])
        if not isinstance(exc, list):
            raise InputError(f"{where}: field 'exclude' must be a list")
        exclude = tuple(_exclusion(g, f"{where}: exclude[{i}]") for i, g in enumerate(exc))
        prompt = d.get("prompt", "")
        if not isinstance(prompt, str):
            raise InputError(f"{where}: field 'prompt' must be a string")
        extra = {k: v for k, v in d.items() if k not in ("tag", "include", "exclude", "prompt")}
        return cls(tag, include, exclude, prompt, extra)

    @property
    def text(self) -> str:
        return self.prompt or prompt_text(self)


def _shape(g: dict, where: str) -> str:
    shape = g.get("class")
    if shape not in SHAPES:
        raise InputError(f"{where}: unknown class {shape!r} (ShapeWorld has {', '.join(SHAPES)})")
    return shape


def _count(g: dict, where: str) -> int:
    count = g.get("count", 1)
    if not isinstance(count, int) or isinstance(count, bool) or count < 1:
        raise InputError(f"{where}: field 'count' must be a positive integer, got {count!r}")
    return count


def _requirement(g: object, where: str, index: int) -> Requirement:
    if not isinstance(g, dict):
        raise InputError(f"{where}: expected an object")
    shape, count = _shape(g, where), _count(g, where)
    color = g.get("color")
    if color is not None and color not in COLORS:
        raise InputError(f"{where}: unknown color {color!r} (ShapeWorld has {', '.join(COLORS)})")
    pos = g.get("position")
    if pos is not None:
        ok = isinstance(pos, list) and len(pos) == 2 and pos[0] in RELATIONS and isinstance(pos[1], int)
        if not ok:
            raise InputError(f"{where}: field 'position' must be [relation, group index], got {pos!r}")
        if not 0 <= pos[1] < index:
            raise InputError(f"{where}: position refers to include group {pos[1]}, which must come earlier")
        pos = (pos[0], pos[1])
    return Requirement(shape, count, color, pos)


def _exclusion(g: object, where: str) -> Exclusion:
    if not isinstance(g, dict):
        raise InputError(f"{where}: expected an object")
    return Exclusion(_shape(g, where), _count(g, where))


def prompt_text(rec: PromptRecord) -> str:
    """GenEval's templates without 'a photo of' (docs/design.md §5)."""
    inc = rec.include

    def phrase(r: Requirement) -> str:
        return noun_phrase(r.shape, r.count, r.color)

    if len(inc) == 2 and inc[1].position is not None:
        return f"{phrase(inc[1])} {inc[1].position[0]} {phrase(inc[0])}"
    return " and ".join(phrase(r) for r in inc)


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


def read_records(path: str | Path) -> list[PromptRecord]:
    """Read a GenEval-format JSONL file; a bad line raises InputError naming file and line."""
    p = Path(path)
    if not p.is_file():
        raise InputError(f"{p}: no such file")
    out = []
    for n, raw in enumerate(p.read_bytes().splitlines(), start=1):
        try:
            line = raw.decode("utf-8")
        except UnicodeDecodeError:
            raise InputError(f"{p}:{n}: not UTF-8 text") from None
        if not line.strip():
            continue
        try:
            d = json.loads(line)
        except json.JSONDecodeError as e:
            raise InputError(f"{p}:{n}: malformed JSON ({e.msg})") from None
        out.append(PromptRecord.from_json(d, f"{p}:{n}"))
    if not out:
        raise InputError(f"{p}: no records")
    return out


def write_records(records: Iterable[PromptRecord], path: str | Path) -> None:
    """Write JSONL atomically (temporary file, then rename)."""
    write_atomic(path, "".join(json.dumps(r.to_json()) + "\n" for r in records))
