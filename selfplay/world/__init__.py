"""The world a run draws in: what the loop needs from one, behind one small interface.

    eval_suite(per_task, seed)         the held-out suite the report shows (never steers the run)
    validation_suite(per_task, seed)   the split promotion compares on (never trained on)
    training_suite(n, seed, tasks)     the prompts rounds roll out and GRPO trains on
    image_size                         the side of the images written to eval folders and shown to judges
    label_judge()                      who labels every visual state for inspection tables and agreement
    score(folder)                      a GenEval-layout eval folder -> `strokes.geneval.Score`
    final_conflicts(trajectory)        the exact verdict on a strip's final image, or None
    corrected_state                    an exact renderer of a judge's correction, or None (re-sketch)
    near_miss(image, rng)              the picture with one object edited, exactly, or None (no editor)
    understanding_pictures(n, seed, perturb)  pictures with what they hold in the world's words, or None
    transcript_words(words)            a transcript's grammar: the words that may come next, whether it may end
    transcript_holds(record, text)     whether a record holds of a picture read as `text`, or None (no rule)
    transcript_state_verdict(record, description, text)  a visual state read as `text` held against its
                                       step's description and its prompt, or None (no rule)
    exact                              whether GenEval rules are decided exactly (an oracle judge exists)
    base_rows(size, seed)              base-data trajectories for replay and the control arm

`ShapeWorld` (selfplay/world/shapeworld.py, the only loop module that imports `strokes.shapeworld`)
implements all of it exactly; `OpenWorld` (selfplay/world/open.py) from a team's files and judge.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from strokes.model.policy import checkpoint_image_side

from ..judging import policy_judge
from .config import KINDS, WorldConfig
from .open import OpenWorld
from .shapeworld import ShapeWorld

if TYPE_CHECKING:
    from ..config import RunConfig

World = ShapeWorld | OpenWorld


def make_world(cfg: RunConfig) -> World:
    """The world `cfg.world` names. An open world scores and labels with the run's judge, the self
    judge inspecting with the base checkpoint (a fixed judge across rounds, not the policy it scores)."""
    if cfg.world.kind == "shapeworld":
        return ShapeWorld(cfg.data)
    base = cfg.loop.base_checkpoint
    return OpenWorld(cfg.world, checkpoint_image_side(base), lambda: policy_judge(cfg.judge, base, cfg.rollout))


__all__ = ["KINDS", "OpenWorld", "ShapeWorld", "World", "WorldConfig", "make_world"]
