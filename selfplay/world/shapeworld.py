"""ShapeWorld as the loop's world: generated suites (the test split holds out a fifth of the colour
pairs), 64-px canvases, the exact judge, exact corrections and exact GenEval scoring, and base data
made by its pipelines. This is the only module of the loop that imports `strokes.shapeworld`."""

from __future__ import annotations

import dataclasses
import math
import random
from pathlib import Path

import numpy as np

from judges import OracleJudge, corrected_scene
from strokes.data.build import DataConfig, make_rows
from strokes.geneval import Score
from strokes.language import parse_description
from strokes.records import TASKS, PromptRecord
from strokes.shapeworld import (CANVAS, check, check_detections, detect, drawable, is_correct, make_suite, record_from_text, render,
                                score_folder)
from strokes.shapeworld.check import check_items, drawn_conflicts
from strokes.shapeworld.render import detections_to_scene
from strokes.shapeworld.scene import near_miss
from strokes.shapeworld.transcript import next_words, read_transcript, understanding_pictures
from strokes.trajectory import Trajectory, from_row
from strokes.verdict import Verdict


def final_conflicts(t: Trajectory) -> list[str] | None:
    """What the exact judge finds wrong with a trajectory's final image ([] when it satisfies the
    prompt); None when there is no image or no record ShapeWorld can check (a typed prompt outside
    its templates)."""
    record = PromptRecord.from_json(t.record) if t.record else record_from_text(t.prompt)
    if record is None or t.final_image is None or not drawable(record):
        return None
    return [c.sentence() for c in check(record, t.final_image)]


class ShapeWorld:
    """The built-in world (docs/shapeworld.md)."""

    name = "shapeworld"
    exact = True
    image_size = CANVAS

    def __init__(self, data: DataConfig) -> None:
        self.data = data

    def eval_suite(self, per_task: int, seed: int) -> list[PromptRecord]:
        return make_suite("test", per_task, seed)

    def validation_suite(self, per_task: int, seed: int) -> list[PromptRecord]:
        return make_suite("train", per_task, seed)

    def training_suite(self, n: int, seed: int, tasks: tuple[str, ...] = TASKS) -> list[PromptRecord]:
        return make_suite("train", math.ceil(n / len(tasks)), seed, tuple(tasks))

    def label_judge(self) -> OracleJudge:
        """Who labels every visual state for the inspection tables: the exact judge."""
        return OracleJudge()

    def score(self, folder: Path) -> Score:
        return score_folder(folder, self.image_size)

    final_conflicts = staticmethod(final_conflicts)

    is_correct = staticmethod(is_correct)
    """GenEval's rule for one image, decided exactly (GRPO's final reward with the exact judge)."""

    corrected_state = staticmethod(corrected_scene)
    """The exact scene a judge's correction leads to (the critique builder renders it)."""

    @staticmethod
    def near_miss(image: np.ndarray, rng: random.Random) -> np.ndarray | None:
        """The picture with one object dropped, copied, moved, recoloured or reshaped, re-rendered
        exactly (`strokes.shapeworld.scene.near_miss`); None when nothing can be edited. What a judge
        learns a count off by one or a flipped relation from (`selfplay fit-judge`)."""
        edited = near_miss(detections_to_scene(detect(image), image.shape[0]), rng)
        return None if edited is None else render(edited)

    understanding_pictures = staticmethod(understanding_pictures)
    """Rendered pictures with what they hold in ShapeWorld's words (`strokes.shapeworld.transcript`):
    what a transcriber judge learns to read pictures from (`selfplay fit-judge --transcribe`)."""

    transcript_words = staticmethod(next_words)
    """A transcript's grammar: the words that may follow a beginning, and whether it may end there."""

    @staticmethod
    def transcript_holds(record: PromptRecord, text: str) -> bool | None:
        """Whether `record` holds of a picture a reader transcribed as `text`, by GenEval's rule over the
        objects it names; None when `text` is not a transcript."""
        detections = read_transcript(text)
        return None if detections is None else not check_detections(record, detections)

    @staticmethod
    def transcript_state_verdict(record: PromptRecord, description: str, text: str) -> Verdict | None:
        """A visual state read as `text`, held against its step and its prompt: the picture must hold
        exactly what the step's description says (the exact judge's image check over the objects
        read: an image error) and, so held, nothing the prompt rules out (`drawn_conflicts`: a picture
        still being drawn may lack objects, never hold a wrong one; drawn as planned, the plan is
        wrong). A description that does not parse is wrong, as the exact judge has it; None when
        `text` is not a transcript."""
        detections, items = read_transcript(text), parse_description(description)
        if detections is None:
            return None
        conflicts = None if items is None else check_items(items, detections) or drawn_conflicts(record, detections)
        return Verdict(aligned=conflicts == [], conflicts=conflicts or [], correction="")

    def base_rows(self, size: int, seed: int) -> list[Trajectory]:
        """`size` base-data trajectories (the base pipelines' mixture): replay and the control arm."""
        cfg = dataclasses.replace(self.data, size=size, seed=seed)
        return [from_row(row) for row in make_rows(cfg, progress=False)]
