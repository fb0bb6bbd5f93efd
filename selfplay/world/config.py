"""`WorldConfig`: which world a run draws in (`world:` in the run config)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from strokes.config_loader import require

KINDS = ("shapeworld", "open")


@dataclass
class WorldConfig:
    """The world the loop's prompts, suites, judges' view and scores come from (selfplay/world/)."""

    SECTION: ClassVar[str] = "world"

    kind: str = "shapeworld"
    """"shapeworld": the built-in world, exact rendering and judging, generated suites; "open": a
    team's own prompts from files, images at the policy's size, scores from a judge or an external
    scorer (docs/open_world.md)."""
    prompts: str = ""
    """Open world: the training prompts, GenEval-format JSONL or plain text (one prompt a line)."""
    eval_prompts: str = ""
    """Open world: the held-out eval suite, GenEval-format JSONL; "" holds out `eval_fraction` of
    `prompts` (whole prompts, per task) and never trains on them."""
    eval_fraction: float = 0.3
    """Open world without `eval_prompts`: the share of `prompts` held out as the eval suite."""
    validation_fraction: float = 0.1
    """Open world: the share of the training prompts held out as the validation split that decides
    promotion (never trained on)."""
    scorer: str = ""
    """Open world: an external GenEval scorer command, e.g. the official one: `python evaluate_images.py
    {images} --outfile {results} --model-path ...`; `{images}` is the eval folder in GenEval's layout and
    `{results}` the results.jsonl it must write. "" scores with the run's judge (each record's rule asked
    of it)."""
    control_data: str = ""
    """Open world: a trajectory dataset (`selfplay train --data` format, saved with `save_to_disk`) the
    control arm trains on; "" needs `loop.control: false` (ShapeWorld makes base data itself)."""
    seed: int = 0
    """Seed of the held-out splits of `prompts`."""

    def __post_init__(self) -> None:
        require(self, "kind", self.kind in KINDS, f"must be one of {', '.join(KINDS)}")
        require(self, "prompts", self.kind != "open" or bool(self.prompts), "must name a prompt file in an open world")
        for name in ("eval_fraction", "validation_fraction"):
            require(self, name, 0 <= getattr(self, name) < 1, "must be in [0, 1)")
        require(self, "eval_fraction", bool(self.eval_prompts) or self.kind != "open" or self.eval_fraction > 0,
                "must be > 0 without world.eval_prompts (the eval suite is held out of the prompts)")
        require(self, "scorer", not self.scorer or ("{images}" in self.scorer and "{results}" in self.scorer),
                "must contain {images} and {results}")
