"""GenEval-format prompt records: the benchmark's metadata lines, parsed, validated and written.

A record is GenEval's metadata line: `{"tag", "include": [{"class", "count", "color"?, "position"?}],
"exclude": [{"class", "count"}], "prompt"}`. `position: [relation, k]` places every object of this
group relative to include group k, which must come earlier. One extension: a plain prompt with no
rule to check, `{"tag": "free_text", "prompt": ...}` (what a line of a plain-text prompt file becomes;
a judge checks its image against the words). Classes and colours are free words here
(GenEval's own records use the 80 COCO classes and ten colours); a world that draws only some of them
checks its own vocabulary (ShapeWorld: `strokes.shapeworld.records.read_records`).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Iterator

from .errors import InputError
from .io import write_atomic

TASKS: tuple[str, ...] = ("single_object", "two_object", "counting", "colors", "position", "color_attr")
"""GenEval's six tasks, in its order."""
FREE_TEXT = "free_text"
"""The tag of a prompt without GenEval structure (no include groups: only its words can be judged)."""
RELATIONS: tuple[str, ...] = ("left of", "right of", "above", "below")
"""GenEval's relative positions."""
NUMBER_WORDS = {1: "one", 2: "two", 3: "three", 4: "four", 5: "five", 6: "six", 7: "seven", 8: "eight",
                9: "nine", 10: "ten"}  # larger counts are written in digits


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
        if self.tag == FREE_TEXT:
            return {"tag": FREE_TEXT, "prompt": self.prompt, **self.extra}
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
        if tag not in (*TASKS, FREE_TEXT):
            raise InputError(f"{where}: field 'tag' must be one of {', '.join((*TASKS, FREE_TEXT))}, got {tag!r}")
        if tag == FREE_TEXT:
            return cls.free_text(d.get("prompt"), where)
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

    @classmethod
    def free_text(cls, prompt: object, where: str = "record") -> "PromptRecord":
        """A plain prompt: its words and nothing to check by rule."""
        if not isinstance(prompt, str) or not prompt.strip():
            raise InputError(f"{where}: a {FREE_TEXT} record needs a non-empty 'prompt'")
        return cls(FREE_TEXT, (), (), " ".join(prompt.split()))

    @property
    def text(self) -> str:
        return self.prompt or prompt_text(self)

    @property
    def classes(self) -> set[str]:
        """Every class the record names, included or excluded."""
        return {r.shape for r in self.include} | {e.shape for e in self.exclude}

    @property
    def colors(self) -> set[str]:
        return {r.color for r in self.include if r.color is not None}


def _shape(g: dict, where: str) -> str:
    shape = g.get("class")
    if not isinstance(shape, str) or not shape.strip():
        raise InputError(f"{where}: field 'class' must be a non-empty string, got {shape!r}")
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
    if color is not None and (not isinstance(color, str) or not color.strip()):
        raise InputError(f"{where}: field 'color' must be a non-empty string, got {color!r}")
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


IRREGULAR = {"person": "people", "sheep": "sheep", "skis": "skis", "mouse": "mice", "scissors": "scissors"}


def plural(word: str) -> str:
    """English plural of a class name ("circle" -> "circles", "bus" -> "buses", "knife" -> "knives")."""
    head, _, last = word.rpartition(" ")
    if last in IRREGULAR:
        last = IRREGULAR[last]
    elif last.endswith(("s", "x", "z", "ch", "sh")):
        last += "es"
    elif last.endswith("y") and last[-2:-1] not in tuple("aeiou"):
        last = last[:-1] + "ies"
    elif last.endswith("fe"):
        last = last[:-2] + "ves"
    elif last.endswith("f") and not last.endswith("ff"):
        last = last[:-1] + "ves"
    else:
        last += "s"
    return f"{head} {last}" if head else last


def noun_phrase(shape: str, count: int = 1, color: str | None = None) -> str:
    """'a circle', 'a red circle', 'an orange circle', 'three triangles', 'two blue squares'."""
    rest = ([color] if color else []) + [shape if count == 1 else plural(shape)]
    article = ("an" if rest[0][0] in "aeiou" else "a") if count == 1 else NUMBER_WORDS.get(count, str(count))
    return " ".join([article, *rest])


def prompt_text(rec: PromptRecord) -> str:
    """GenEval's templates without 'a photo of' (docs/design.md §5)."""
    inc = rec.include

    def phrase(r: Requirement) -> str:
        return noun_phrase(r.shape, r.count, r.color)

    if len(inc) == 2 and inc[1].position is not None:
        return f"{phrase(inc[1])} {inc[1].position[0]} {phrase(inc[0])}"
    return " and ".join(phrase(r) for r in inc)


def json_lines(path: str | Path) -> Iterator[tuple[str, object]]:
    """(where, decoded object) for each non-blank line of a JSONL file, `where` being "file:line";
    a missing file, non-UTF-8 text or malformed JSON fails in one line naming the place."""
    p = Path(path)
    if not p.is_file():
        raise InputError(f"{p}: no such file")
    for n, raw in enumerate(p.read_bytes().splitlines(), start=1):
        try:
            line = raw.decode("utf-8")
        except UnicodeDecodeError:
            raise InputError(f"{p}:{n}: not UTF-8 text") from None
        if line.strip():
            try:
                yield f"{p}:{n}", json.loads(line)
            except json.JSONDecodeError as e:
                raise InputError(f"{p}:{n}: malformed JSON ({e.msg})") from None


def read_records(path: str | Path, check: Callable[[PromptRecord, str], None] | None = None) -> list[PromptRecord]:
    """Read a GenEval-format JSONL file; a bad line raises InputError naming file and line. `check`
    (record, where) may refuse records a world cannot draw, with its own one-line error."""
    out = []
    for where, d in json_lines(path):
        rec = PromptRecord.from_json(d, where)
        if check is not None:
            check(rec, where)
        out.append(rec)
    if not out:
        raise InputError(f"{path}: no records")
    return out


def read_prompts(path: str | Path) -> list[PromptRecord]:
    """A prompt file: GenEval-format JSONL (a first line that opens a JSON object), or plain text,
    one prompt a line (each a `free_text` record)."""
    p = Path(path)
    if not p.is_file():
        raise InputError(f"{p}: no such file")
    try:
        lines = [line for line in p.read_text(encoding="utf-8").splitlines() if line.strip()]
    except UnicodeDecodeError:
        raise InputError(f"{p}: not UTF-8 text") from None
    if not lines:
        raise InputError(f"{p}: no prompts")
    if lines[0].lstrip().startswith("{"):
        return read_records(p)
    return [PromptRecord.free_text(line, f"{p}:{n}") for n, line in enumerate(lines, start=1)]


def write_records(records: Iterable[PromptRecord], path: str | Path) -> None:
    """Write JSONL atomically (temporary file, then rename)."""
    write_atomic(path, "".join(json.dumps(r.to_json()) + "\n" for r in records))
