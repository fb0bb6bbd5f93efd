"""GenEval's folder layout and scoring, whoever decides each image.

Layout: `<dir>/<index:05d>/metadata.jsonl` (one record) and `<dir>/<index:05d>/samples/<k:04d>.png`.
Score: each image is correct or not (by GenEval's rule for its record, decided by whatever can see
it: ShapeWorld's exact checker, a judge, or GenEval's own detector-based script, whose
`results.jsonl` `read_results` reads); a task's accuracy is the mean over its images; overall is
the mean of the task accuracies present.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Sequence

import numpy as np
from PIL import Image, UnidentifiedImageError

from .errors import InputError
from .io import atomic_path
from .records import TASKS, PromptRecord, json_lines


def save_png(image: np.ndarray, path: Path) -> None:
    Image.fromarray(np.asarray(image, dtype=np.uint8)).save(path, format="PNG")


def load_png(path: Path, size: int | None = None) -> np.ndarray:
    """An RGB uint8 array; InputError naming the file when unreadable or of the wrong size."""
    try:
        with Image.open(path) as im:
            arr = np.asarray(im.convert("RGB"))
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
        # PIL reports some corrupt PNGs (e.g. a wrong chunk length) as SyntaxError
        raise InputError(f"{path}: unreadable image ({e.__class__.__name__})") from None
    if size is not None and arr.shape[:2] != (size, size):
        raise InputError(f"{path}: image is {arr.shape[1]}x{arr.shape[0]}, expected {size}x{size}")
    return arr


def write_samples(out: Path, items: Iterable[tuple[PromptRecord, Sequence[np.ndarray]]]) -> int:
    """Write records and their images in GenEval's layout, atomically: the folder appears complete
    or not at all. Returns the number of records written."""
    n = 0
    with atomic_path(out, folder=True) as tmp:  # a failed write leaves nothing behind
        for i, (rec, images) in enumerate(items):
            d = tmp / f"{i:05d}"
            (d / "samples").mkdir(parents=True)
            (d / "metadata.jsonl").write_text(json.dumps(rec.to_json()) + "\n")
            for k, img in enumerate(images):
                save_png(img, d / "samples" / f"{k:04d}.png")
            n += 1
    return n


@dataclass
class Score:
    """Per-task accuracy (fractions), image counts, and the overall mean of task accuracies."""

    per_task: dict[str, float]
    counts: dict[str, int]
    missing: tuple[str, ...] = ()
    """Images the folder should hold but does not (`<index>/samples/<k>.png`, see `missing_images`):
    not scored, so the score covers fewer images than were asked for."""

    @property
    def overall(self) -> float:
        return float(np.mean(list(self.per_task.values()))) if self.per_task else 0.0

    def standard_error(self) -> float:
        """SE of `overall` treating tasks as independent binomials: sqrt(sum p(1-p)/n) / T."""
        t = len(self.per_task)
        var = sum(p * (1 - p) / max(self.counts[k], 1) for k, p in self.per_task.items())
        return float(np.sqrt(var) / t) if t else 0.0

    def to_json(self) -> dict:
        """Accuracies as fractions in [0, 1] (`units` says so; the table prints percent)."""
        return {"overall": self.overall, "overall_se": self.standard_error(),
                "per_task": self.per_task, "counts": self.counts, "units": "fraction",
                "missing": len(self.missing)}

    def table(self) -> str:
        tasks = list(self.per_task)  # GenEval's tasks in its order first (`score_results`)
        head = "| " + " | ".join(tasks + ["overall"]) + " |"
        sep = "|" + "---|" * (len(tasks) + 1)
        row = "| " + " | ".join(f"{100 * self.per_task[t]:.1f}" for t in tasks) + f" | {100 * self.overall:.1f} |"
        return "\n".join([head, sep, row])


def score_results(results: Iterable[tuple[str, bool]]) -> Score:
    """Aggregate (task, correct) pairs."""
    hits: dict[str, list[bool]] = {}
    for tag, ok in results:
        hits.setdefault(tag, []).append(ok)
    order = [t for t in TASKS if t in hits] + sorted(set(hits) - set(TASKS))
    return Score({t: float(np.mean(hits[t])) for t in order}, {t: len(hits[t]) for t in order})


def iter_samples(root: Path, size: int | None = None, check: Callable[[PromptRecord, str], None] | None = None):
    """Yield (record, [images]) per record folder of a GenEval-layout directory, in index order;
    `check(record, where)` may refuse a record (a world that cannot read it)."""
    root = Path(root)
    if not root.is_dir():
        raise InputError(f"{root}: no such folder")
    dirs = sorted(p for p in root.iterdir() if p.is_dir() and p.name.isdigit())
    if not dirs:
        raise InputError(f"{root}: no record folders (expected <index:05d>/metadata.jsonl)")
    for d in dirs:
        meta = d / "metadata.jsonl"
        if not meta.is_file():
            raise InputError(f"{meta}: missing")
        try:
            lines = [line for line in meta.read_text(encoding="utf-8").splitlines() if line.strip()]
        except UnicodeDecodeError:
            raise InputError(f"{meta}:1: not UTF-8 text") from None
        if not lines:
            raise InputError(f"{meta}:1: empty metadata")
        try:
            raw = json.loads(lines[0])
        except json.JSONDecodeError as e:
            raise InputError(f"{meta}:1: malformed JSON ({e.msg})") from None
        rec = PromptRecord.from_json(raw, f"{meta}:1")
        if check is not None:
            check(rec, f"{meta}:1")
        pngs = sorted((d / "samples").glob("*.png"))
        if not pngs:
            raise InputError(f"{d / 'samples'}: no PNG images")
        yield rec, [load_png(p, size) for p in pngs]


def missing_images(root: Path) -> list[str]:
    """Sample images absent from a GenEval-layout folder, as `<index>/samples/<k:04d>.png`, in order.
    Every record is asked for the same number of samples, so each should hold 0000.png up to the
    highest index any record holds (names that are not an index are scored but not counted here)."""
    dirs = sorted(p for p in Path(root).iterdir() if p.is_dir() and p.name.isdigit())
    held = {d: {int(p.stem) for p in (d / "samples").glob("*.png") if p.stem.isdigit()} for d in dirs}
    expected = 1 + max((k for ks in held.values() for k in ks), default=-1)
    return [f"{d.name}/samples/{k:04d}.png" for d, ks in held.items() for k in range(expected) if k not in ks]


def score_dir(root: Path, correct: Callable[[PromptRecord, list[np.ndarray]], list[bool]],
              size: int | None = None, check: Callable[[PromptRecord, str], None] | None = None) -> Score:
    """Score a GenEval-layout folder: `correct(record, images)` decides each image of a record
    (`check` may refuse a record first); `missing` names the images the folder lacks."""
    score = score_results((rec.tag, ok) for rec, imgs in iter_samples(root, size, check)
                          for ok in correct(rec, imgs))
    score.missing = tuple(missing_images(root))
    return score


def read_results(path: str | Path) -> Score:
    """The score in the `results.jsonl` of GenEval's own scorer (`evaluate_images.py`: one JSON line per
    image with its `tag` and `correct`), aggregated as GenEval's `summary_scores.py` does."""
    pairs = []
    for where, row in json_lines(path):
        if not isinstance(row, dict) or not isinstance(row.get("tag"), str) or not isinstance(row.get("correct"), bool):
            raise InputError(f"{where}: a GenEval result line needs 'tag' (text) and 'correct' (true/false)")
        pairs.append((row["tag"], row["correct"]))
    if not pairs:
        raise InputError(f"{path}: no results")
    return score_results(pairs)
