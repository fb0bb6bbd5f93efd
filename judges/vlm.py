"""A stand-in VLM judge: the exact ShapeWorld judge with a VLM's systematic mistakes.

Teams judge with a vision-language model behind an OpenAI-compatible endpoint; such a judge is good
but not exact, and its mistakes are not coin flips. The studies of VLMs as judges (MJ-Bench's
alignment subsets, MLLM-as-a-Judge) find object presence the strongest, attributes next, counting
and spatial relations the weakest, and answers that repeat when asked again at temperature 0. This
judge reproduces that on our world, so a round can be trained and measured against a judge that is
wrong 5-20 % of the time in those ways (`selfplay judge-serve --judge vlm --profile typical`):

- it takes the exact verdict (`OracleJudge`), then, per conflict, misses it with the chance its
  profile gives the step's task (1 - `recall`), times how hard the image makes that conflict:
  a count off by one is missed more often than one off by three; a relation in an image whose
  objects sit near GenEval's threshold more often than one in a clear image; a wrong colour on a
  small object (few filled pixels) more often than on a large one; a plan conflict (text against
  the prompt: read, not seen) less often. A step whose conflicts were all missed is called aligned;
- on an aligned step it raises a false alarm with the task's `false_alarm` chance, times the same
  image difficulty, inventing the conflict a VLM would (a count off by one, a flipped relation, a
  misread colour of the smallest object, a misread shape);
- every draw is a hash of (seed, image, prompt, plan, the question asked), not a random stream:
  asked again, it answers the same, with the same mistakes;
- it says how sure it is, as a VLM's token probabilities do (`graded_verdict`, the served judge's
  `logprobs`): each draw is read as the judge's evidence of a conflict on a signal-detection scale,
  the answer is that evidence's sign (so the verdicts are exactly the draws' above) and the
  probability it gives a conflict is what an observer who knows the task's rates would infer from
  that evidence. A miss is then mostly an unsure "aligned", as a near-miss count is for a VLM.

Profiles are YAML (`judges/profiles/strong.yaml`, `typical.yaml`, or a user's file; `load_profile`).
"""

from __future__ import annotations

import hashlib
import math
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from statistics import NormalDist

import numpy as np
import yaml

from strokes.errors import InputError
from strokes.language import instruction_text, parse_description
from strokes.records import TASKS, noun_phrase
from strokes.shapeworld import CANVAS, COLORS, SHAPES, detect
from strokes.shapeworld.render import Detection
from strokes.shapeworld.scene import BACKGROUND, POSITION_THRESHOLD
from strokes.verdict import Conflict, ConflictKind, StepContext, Verdict

from .oracle import OracleJudge, _count_of, _parse_phrase, choose_correction

PROFILES = Path(__file__).with_name("profiles")
"""The profiles shipped with the package, by name (`strong`, `typical`)."""
_DIFFICULTY = ("count_off_by", "relation_margin", "relation_near", "relation_far", "small_fill", "color_small",
               "color_large", "plan")
MAX_CHANCE = 0.95  # no mistake is certain: a judge sees what is plainly there at least sometimes
_NORMAL = NormalDist()


@dataclass(frozen=True)
class Rates:
    """A judge's step-level rates on one task."""

    recall: float
    """Share of conflicts it reports (1 - the miss rate)."""
    false_alarm: float
    """Share of aligned steps it flags."""


@dataclass(frozen=True)
class Profile:
    """Per-task rates and how the image shifts them (see the shipped YAML files for each field)."""

    name: str
    tasks: dict[str, Rates]
    default: Rates
    count_off_by: tuple[float, float, float]
    relation_margin: float
    relation_near: float
    relation_far: float
    small_fill: int
    color_small: float
    color_large: float
    plan: float

    def rates(self, task: str) -> Rates:
        return self.tasks.get(task, self.default)


def load_profile(name: str | Path) -> Profile:
    """A shipped profile by name (`strong`, `typical`) or a YAML file of the same form; a bad one
    fails in one line naming the file and the key."""
    path = PROFILES / f"{name}.yaml" if (PROFILES / f"{name}.yaml").is_file() else Path(name)
    try:
        data = yaml.safe_load(path.read_text())
    except (FileNotFoundError, IsADirectoryError):
        shipped = ", ".join(sorted(p.stem for p in PROFILES.glob("*.yaml")))
        raise InputError(f"{path}: no such VLM judge profile (shipped: {shipped})") from None
    except yaml.YAMLError as e:
        raise InputError(f"{path}: not valid YAML ({str(e).splitlines()[0]})") from None
    if not isinstance(data, dict):
        raise InputError(f"{path}: expected a mapping with keys tasks, default, difficulty")

    def rates(value: object, where: str) -> Rates:
        if not isinstance(value, dict) or set(value) != {"recall", "false_alarm"}:
            raise InputError(f"{path}: {where} must map recall and false_alarm to fractions")
        for k, v in value.items():
            if not isinstance(v, (int, float)) or not 0.0 <= v <= 1.0:
                raise InputError(f"{path}: {where}.{k} must be a fraction between 0 and 1, got {v!r}")
        if value["recall"] <= value["false_alarm"]:  # a judge no better than chance has no evidence to grade
            raise InputError(f"{path}: {where}.recall must exceed {where}.false_alarm")
        return Rates(float(value["recall"]), float(value["false_alarm"]))

    tasks = data.get("tasks")
    if not isinstance(tasks, dict) or set(tasks) - set(TASKS):
        raise InputError(f"{path}: tasks must map GenEval tasks ({', '.join(TASKS)}) to rates")
    diff = data.get("difficulty")
    if not isinstance(diff, dict) or set(diff) != set(_DIFFICULTY):
        raise InputError(f"{path}: difficulty must have exactly the keys {', '.join(_DIFFICULTY)}")
    off_by = diff["count_off_by"]
    if not isinstance(off_by, list) or len(off_by) != 3 or not all(isinstance(x, (int, float)) and x >= 0 for x in off_by):
        raise InputError(f"{path}: difficulty.count_off_by must be three multipliers >= 0 (off by 1, 2, 3+)")
    for k in _DIFFICULTY[1:]:
        if not isinstance(diff[k], (int, float)) or diff[k] < 0:
            raise InputError(f"{path}: difficulty.{k} must be a number >= 0, got {diff[k]!r}")
    return Profile(str(data.get("name", path.stem)), {t: rates(v, f"tasks.{t}") for t, v in tasks.items()},
                   rates(data.get("default"), "default"), tuple(float(x) for x in off_by),
                   float(diff["relation_margin"]), float(diff["relation_near"]), float(diff["relation_far"]),
                   int(diff["small_fill"]), float(diff["color_small"]), float(diff["color_large"]), float(diff["plan"]))


def fill(image: np.ndarray, det: Detection) -> int:
    """Pixels of the object's box that are not background: how much of it a judge has to look at."""
    x1, y1, x2, y2 = det.box
    patch = np.asarray(image, dtype=np.int32)[y1:y2, x1:x2, :3]
    return int((np.abs(patch - np.asarray(BACKGROUND)).sum(-1) > 60).sum())


def relation_margin(dets: list[Detection]) -> float:
    """How far the closest pair of objects is from a relation's decision (GenEval's normalised
    offset against 0.5, per axis): small means left/right (or above/below) is a close call. 1.0
    with fewer than two objects."""
    best = 1.0
    for i, a in enumerate(dets):
        for b in dets[i + 1:]:
            ca = np.add(a.box[:2], a.box[2:]) / 2
            cb = np.add(b.box[:2], b.box[2:]) / 2
            offset = ca - cb
            norm = float(np.linalg.norm(offset))
            if norm == 0:
                continue
            dims = np.subtract(a.box[2:], a.box[:2]) + np.subtract(b.box[2:], b.box[:2])
            revised = np.maximum(np.abs(offset) - POSITION_THRESHOLD * dims, 0) / norm
            best = min(best, float(np.min(np.abs(revised - 0.5))))
    return best


class VLMJudge:
    """The exact judge with a profile's mistakes, deterministic per (seed, image, question).
    `stats` counts steps, conflicts missed and false alarms raised. `graded`: whether
    `judge_graded` says how sure each verdict is (served, it always can: the client asks)."""

    name = "vlm"
    image_side = CANVAS
    """It reads ShapeWorld's canvas, as the exact judge does."""

    def __init__(self, profile: Profile, seed: int = 0, graded: bool = True) -> None:
        self.profile, self.seed, self.graded = profile, seed, graded
        self.exact = OracleJudge()
        self.stats: Counter = Counter()

    def judge(self, contexts: list[StepContext]) -> list[Verdict]:
        return [self.verdict(c) for c in contexts]

    def judge_graded(self, contexts: list[StepContext]) -> list[tuple[Verdict, float | None]]:
        """Each verdict with its P(conflict) (`graded_verdict`), or None with `graded` off (a judge
        configured not to say how sure it is: `judge.logprobs: false`)."""
        out = [self.graded_verdict(c) for c in contexts]
        return out if self.graded else [(v, None) for v, _ in out]

    def verdict(self, ctx: StepContext) -> Verdict:
        return self.graded_verdict(ctx)[0]

    def graded_verdict(self, ctx: StepContext) -> tuple[Verdict, float]:
        """The verdict and the judge's P(conflict). Signal detection (Green & Swets): a conflict
        missed with chance p is seen as evidence e ~ N(z(1 - p), 1), an aligned step flagged with
        chance f as e ~ N(z(f), 1), z the normal quantile; each draw u gives e (z(u) - z(p) for a
        conflict, z(f) - z(u) for an aligned step) and the verdict says conflict when e > 0, so
        the verdicts are those of the draws alone. P(conflict) is sigmoid((z(recall) - z(false_alarm)) * e),
        the posterior of an observer who knows the task's rates and calls e = 0 even: a confident
        answer far from the boundary, an unsure one near it, where this judge's mistakes are."""
        exact, misses, false_alarm = self.chances(ctx)
        rates = self.profile.rates((ctx.record or {}).get("tag", ""))
        slope = _z(rates.recall) - _z(rates.false_alarm)
        self.stats["steps"] += 1
        if not exact.aligned:
            evidence = [_z(self._draw(ctx, f"miss {i} {c.kind.value} {c.subject}")) - _z(p)
                        for i, (c, p) in enumerate(zip(exact.conflicts, misses))]
            p_conflict = _sigmoid(slope * max(evidence)) if evidence else 1.0
            kept = [c for c, e in zip(exact.conflicts, evidence) if e >= 0]
            self.stats["missed"] += len(exact.conflicts) - len(kept)
            if exact.conflicts and not kept:
                return Verdict(aligned=True, conflicts=[], correction="", missing=[]), p_conflict
            if len(kept) == len(exact.conflicts):
                return exact, p_conflict
            return Verdict(aligned=False, conflicts=kept, correction=self._correction(ctx, kept)), p_conflict
        evidence = _z(false_alarm) - _z(self._draw(ctx, "false alarm"))
        p_conflict = _sigmoid(slope * evidence)
        if evidence <= 0:
            return exact, p_conflict
        self.stats["false_alarms"] += 1
        invented = self._invent(ctx)
        return Verdict(aligned=False, conflicts=[invented], correction=self._correction(ctx, [invented])), p_conflict

    def chances(self, ctx: StepContext) -> tuple[Verdict, list[float], float]:
        """(the exact verdict, the chance each of its conflicts is missed, the chance of a false
        alarm were it aligned): the profile's task rates times the image's difficulty."""
        exact = self.exact.verdict(ctx)
        task = (ctx.record or {}).get("tag", "")
        rates = self.profile.rates(task)
        dets = detect(ctx.image)
        misses = [min(MAX_CHANCE, (1.0 - rates.recall) * self._difficulty(c, ctx.image, dets))
                  for c in exact.conflicts]
        kind = {"counting": ConflictKind.wrong_count, "position": ConflictKind.wrong_relation,
                "colors": ConflictKind.wrong_color, "color_attr": ConflictKind.wrong_color}.get(task)
        factor = self._image_factor(kind, None, ctx.image, dets) if kind is not None else 1.0
        return exact, misses, min(MAX_CHANCE, rates.false_alarm * factor)

    # ---- difficulty -----------------------------------------------------------------------------------

    def _difficulty(self, c: Conflict, image: np.ndarray, dets: list[Detection]) -> float:
        if c.source == "instruction":
            return self.profile.plan
        return self._image_factor(c.kind, c, image, dets)

    def _image_factor(self, kind: ConflictKind, c: Conflict | None, image: np.ndarray, dets: list[Detection]) -> float:
        """How much harder (> 1) or easier (< 1) this image makes a mistake about `kind`."""
        p = self.profile
        if kind is ConflictKind.wrong_count and c is not None:
            try:
                off = abs(_count_of(c.expected.removeprefix("fewer than ")) - _count_of(c.found))
            except ValueError:
                return 1.0
            return p.count_off_by[min(max(off, 1), 3) - 1]
        if kind is ConflictKind.wrong_relation:
            return p.relation_near if relation_margin(dets) < p.relation_margin else p.relation_far
        if kind is ConflictKind.wrong_color:
            target = dets
            if c is not None:
                try:
                    shape, _ = _parse_phrase(c.subject)
                    target = [d for d in dets if d.shape == shape and d.color in c.found.split(" and ")] or dets
                except ValueError:
                    pass
            if not target:
                return 1.0
            return p.color_small if min(fill(image, d) for d in target) < p.small_fill else p.color_large
        return 1.0

    # ---- the mistakes ---------------------------------------------------------------------------------

    def _draw(self, ctx: StepContext, question: str) -> float:
        """A uniform number in [0, 1) fixed by the seed, the image and the question asked."""
        h = hashlib.sha256()
        image = np.ascontiguousarray(ctx.image, dtype=np.uint8)
        for part in (str(self.seed), str(image.shape), ctx.prompt, ctx.instruction, ctx.description, question):
            h.update(part.encode())
            h.update(b"\x00")
        h.update(image.tobytes())
        return int.from_bytes(h.digest()[:8], "big") / 2**64

    def _invent(self, ctx: StepContext) -> Conflict:
        """The conflict a VLM raises on an aligned step of this task: a count off by one, a flipped
        relation, the smallest object's colour misread, or an object's shape misread."""
        dets = detect(ctx.image)
        task = (ctx.record or {}).get("tag", "")
        pick = self._draw(ctx, "what is misread")
        if not dets:
            return Conflict(kind=ConflictKind.missing_object, source="image", subject="an object", expected="an object",
                            found="")
        if task == "counting":
            shape = Counter(d.shape for d in dets).most_common(1)[0][0]
            n = sum(d.shape == shape for d in dets)
            seen = n + 1 if n == 1 or pick < 0.5 else n - 1
            return Conflict(kind=ConflictKind.wrong_count, source="image", subject=noun_phrase(shape, 1),
                            expected=noun_phrase(shape, n), found=noun_phrase(shape, seen))
        if task == "position" and len(dets) >= 2:
            a, b = dets[-1], dets[0]
            side = "left of" if (a.box[0] + a.box[2]) < (b.box[0] + b.box[2]) else "right of"
            flipped = "right of" if side == "left of" else "left of"
            ref = noun_phrase(b.shape, 1, b.color)
            return Conflict(kind=ConflictKind.wrong_relation, source="image", subject=noun_phrase(a.shape, 1, a.color),
                            expected=f"{side} {ref}", found=f"{flipped} {ref}")
        if task in ("colors", "color_attr"):
            d = min(dets, key=lambda d: fill(ctx.image, d))
            others = [c for c in COLORS if c != d.color]
            misread = others[int(pick * len(others))]
            return Conflict(kind=ConflictKind.wrong_color, source="image", subject=noun_phrase(d.shape, 1, d.color),
                            expected=d.color, found=misread)
        d = dets[int(pick * len(dets))]
        others = [s for s in SHAPES if s != d.shape]
        return Conflict(kind=ConflictKind.wrong_shape, source="image", subject=noun_phrase(d.shape, 1, d.color),
                        expected=d.shape, found=noun_phrase(others[int(pick * 10) % len(others)], 1, d.color))

    def _correction(self, ctx: StepContext, conflicts: list[Conflict]) -> str:
        """The corrective instruction the exact judge would give for these conflicts ("" when none
        can be written: a mistaken conflict need not have a fix)."""
        items = parse_description(ctx.description) or []
        try:
            fix = choose_correction(conflicts, items, detect(ctx.image), int(np.asarray(ctx.image).shape[0]))
        except (ValueError, IndexError, KeyError):
            return ""
        return instruction_text(fix) if fix else ""


def _z(p: float) -> float:
    """The standard normal quantile, kept finite (a chance of 0 or 1 is 7 sd out)."""
    return _NORMAL.inv_cdf(min(max(p, 1e-12), 1.0 - 1e-12))


def _sigmoid(x: float) -> float:
    return 0.5 * (1.0 + math.tanh(0.5 * x))
