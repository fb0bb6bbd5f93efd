"""A team's own world: prompts and the eval suite from files, images at the policy's own size, no
exact judge. The run's judge labels states and scores eval folders by each record's GenEval rule,
unless an external scorer (e.g. GenEval's official detector-based script) is configured; the
control arm trains on a trajectory dataset the team gives (`world.control_data`).

Held-out splits of the prompt file are whole prompts, drawn per task with `world.seed`, so the
same file always gives the same training prompts, validation split and (without `eval_prompts`)
eval suite, and no prompt is in two of them.
"""

from __future__ import annotations

import random
import shlex
import subprocess
from pathlib import Path
from typing import Callable

from strokes.errors import InputError
from strokes.geneval import Score, iter_samples, missing_images, read_results, score_results
from strokes.records import TASKS, PromptRecord, read_prompts, read_records
from strokes.trajectory import Trajectory, from_row
from strokes.verdict import StepContext

from .config import WorldConfig


class OpenWorld:
    """Prompts from files, scores from a judge or a scorer command (docs/open_world.md)."""

    name = "open"
    exact = False

    def __init__(self, cfg: WorldConfig, image_size: int, judge: Callable[[], object]) -> None:
        """`image_size`: the policy's; `judge()`: the judge that labels and scores (built on first use)."""
        self.cfg = cfg
        self.image_size = image_size
        self._make_judge = judge
        self._judge = None
        self.train, self.validation, self.eval = self._splits()

    def _splits(self) -> tuple[list[PromptRecord], list[PromptRecord], list[PromptRecord]]:
        rng = random.Random(f"open-world:{self.cfg.seed}")
        prompts = read_prompts(self.cfg.prompts)
        if self.cfg.eval_prompts:
            held = read_records(self.cfg.eval_prompts)
            rest = prompts
        else:
            held, rest = _split(prompts, self.cfg.eval_fraction, rng)
        validation, train = _split(rest, self.cfg.validation_fraction, rng)
        if not train:
            raise InputError(f"world.prompts: {self.cfg.prompts} leaves no training prompts after the held-out splits")
        return train, validation, held

    def eval_suite(self, per_task: int, seed: int) -> list[PromptRecord]:
        """At most `per_task` records of each task of the eval suite (the same ones for every seed)."""
        return _per_task(self.eval, per_task)

    def validation_suite(self, per_task: int, seed: int) -> list[PromptRecord]:
        if not self.validation:
            raise InputError("world.validation_fraction: 0 leaves no validation split to promote on")
        return _per_task(self.validation, per_task)

    def training_suite(self, n: int, seed: int, tasks: tuple[str, ...] = TASKS) -> list[PromptRecord]:
        """`n` training prompts, drawn with replacement once the file runs out (GRPO asks for more
        prompts than a small file has); free-text prompts count for every task."""
        pool = [r for r in self.train if r.tag in tasks or r.tag not in TASKS]
        if not pool:
            raise InputError(f"world.prompts: no training prompts of the tasks {', '.join(tasks)}")
        rng = random.Random(f"train:{seed}")
        order = rng.sample(pool, len(pool))
        return [order[i % len(order)] for i in range(n)]

    def judge(self):
        if self._judge is None:
            self._judge = self._make_judge()
        return self._judge

    def label_judge(self):
        """Who labels every visual state for the inspection tables: the run's judge (no exact one here)."""
        return self.judge()

    def score(self, folder: Path) -> Score:
        """The eval folder scored by the external scorer, or by the judge asked each record's rule."""
        if self.cfg.scorer:
            return self._external(folder)
        records, images = [], []
        for rec, imgs in iter_samples(folder):
            records += [rec] * len(imgs)
            images += imgs
        # no instruction, the prompt as the description: "does this finished picture satisfy its record?"
        contexts = [StepContext(r.text, "", r.text, im, r.to_json()) for r, im in zip(records, images)]
        verdicts = self.judge().judge(contexts)
        score = score_results((r.tag, v is not None and v.aligned and not v.missing)
                              for r, v in zip(records, verdicts))
        score.missing = tuple(missing_images(folder))
        return score

    def _external(self, folder: Path) -> Score:
        results = folder.parent / f"{folder.name}-results.jsonl"
        cmd = shlex.split(self.cfg.scorer.format(images=shlex.quote(str(folder)), results=shlex.quote(str(results))))
        proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
        if proc.returncode != 0 or not results.is_file():
            tail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["no output"]
            raise InputError(f"world.scorer failed (exit {proc.returncode}, wrote "
                             f"{'no' if not results.is_file() else ''} {results.name}): {tail[0]}")
        return read_results(results)

    def final_conflicts(self, t: Trajectory) -> None:
        """No exact verdict on a strip's final image in an open world."""
        return None

    corrected_state = None
    """No exact renderer: a correction is re-sketched by the policy."""

    is_correct = None
    """No exact GenEval check: the judge decides every image."""

    near_miss = None
    """No exact editor of a picture: a judge copy learns from the model's own pictures only."""

    understanding_pictures = None
    transcript_words = None
    transcript_holds = None
    transcript_state_verdict = None
    """No pictures with what they hold written in the world's words, no grammar or rule for such a text: a
    transcriber judge (`selfplay fit-judge --transcribe`) needs a world that has both."""

    def base_rows(self, size: int, seed: int) -> list[Trajectory]:
        """`size` rows of `world.control_data`, drawn with `seed` (with replacement past its end)."""
        import datasets

        if not self.cfg.control_data:
            raise InputError("world.control_data: an open world has no base data; name a trajectory dataset "
                             "or set loop.control: false")
        data = datasets.load_from_disk(self.cfg.control_data)
        rng = random.Random(seed)
        return [from_row(data[rng.randrange(len(data))]) for _ in range(size)]


def _split(records: list[PromptRecord], fraction: float, rng: random.Random) -> tuple[list, list]:
    """(held out, rest): `fraction` of each task's records, at least one of a task that has two."""
    held, rest = [], []
    for task in dict.fromkeys(r.tag for r in records):
        group = [r for r in records if r.tag == task]
        k = round(fraction * len(group)) if fraction > 0 else 0
        k = max(k, 1) if fraction > 0 and len(group) > 1 else k
        chosen = set(rng.sample(range(len(group)), k))
        held += [r for i, r in enumerate(group) if i in chosen]
        rest += [r for i, r in enumerate(group) if i not in chosen]
    return held, rest


def _per_task(records: list[PromptRecord], per_task: int) -> list[PromptRecord]:
    """The first `per_task` records of each task, tasks in GenEval's order."""
    order = [t for t in TASKS if any(r.tag == t for r in records)]
    order += [t for t in dict.fromkeys(r.tag for r in records) if t not in order]
    return [r for t in order for r in [r for r in records if r.tag == t][:per_task]]
