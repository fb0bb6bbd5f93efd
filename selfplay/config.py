"""The run config: one YAML file with a section per component, each a documented dataclass defined
beside the code it configures. A file may `inherit` a parent and hold only what differs from it
(`strokes/config_loader.py`).

    model:     the tiny unified model's shape              strokes.model.tiny.ModelConfig
    data:      base data pipelines, mixture, replay source  strokes.data.build.DataConfig
    train:     how each round trains: SFT or GRPO (TRL)    trainer.config.TrainConfig
    rollout:   sampling, caps, batching, Ray actors         rollout.config.RolloutConfig
    judge:     oracle | gpt | self, endpoint and budgets    judges.config.JudgeConfig
    critique:  self-sampled or symbolic corrections, replay selfplay.critique.CritiqueConfig
    inspect_head: the policy's Inspect head, fitted per checkpoint selfplay.inspect_head.InspectHeadConfig
    world:     shapeworld, or a team's prompts and scorer    selfplay.world.config.WorldConfig
    loop:      rounds, prompts, eval suite, promotion       selfplay.config.LoopConfig
    tracking:  wandb mirror of metrics.jsonl                selfplay.tracking.TrackingConfig
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

from judges.config import JudgeConfig
from rollout.config import RolloutConfig
from strokes.config_loader import load, require
from strokes.data.build import DataConfig
from strokes.errors import InputError
from strokes.records import TASKS
from strokes.trajectory import MODES
from strokes.model.tiny import ModelConfig
from trainer.config import TrainConfig

from .critique import CritiqueConfig
from .inspect_head import InspectHeadConfig
from .tracking import TrackingConfig
from .world.config import WorldConfig

# The eval modes: the rollout modes (the policy alone: process, single_pass; the configured judge as
# external inspector: judge) and the oracle as external planner (planner).
EVAL_MODES = (*MODES, "planner")


@dataclass
class LoopConfig:
    """The rounds and what each one samples, evaluates and promotes."""

    SECTION: ClassVar[str] = "loop"

    rounds: int = 2
    """Self-improvement rounds after round 0."""
    prompts_per_round: int = 300
    """Training-split prompts rolled out per round."""
    samples_per_prompt: int = 1
    """Rollouts per prompt."""
    tasks: list[str] | None = None
    """The tasks an SFT round's training prompts come from, in equal shares (None: every task); a GRPO
    round's come from `train.grpo.tasks`."""
    data_mode: str = "process"
    """How an SFT round's data rollouts are drawn: "process" (the policy alone, as it is evaluated) or
    "judge" (the round's judge inspects each sketch as it is drawn, and with `data_retries` the policy
    draws a rejected step again from its plan: a search per step whose accepted trajectories are the
    policy's own plans and sketches, more of them right on the prompts it rarely gets right alone)."""
    data_retries: int = 0
    """With `data_mode: judge`, how often one step may be drawn again after the judge rejects it."""
    data_temperature: float | None = None
    """Sampling temperature of an SFT round's rollouts, the ones that become its training data (0:
    greedy); None samples them like every other rollout, at `rollout.temperature`. Evaluation always
    samples at `rollout.temperature`, so a round's data can be sharper than what its score measures."""
    train_from: str = "current"
    """"current": continue the promoted policy; "base": restart from round 0's."""
    promote_tolerance: float = 0.02
    """Promote unless process-mode overall on the validation split drops by more than this."""
    base_checkpoint: str = "checkpoints/base"
    """The shipped base model (relative to the project root)."""
    base_recipe: str = "configs/base.yaml"
    """The run config --from-scratch trains the base model with."""
    control: bool = True
    """Also train a control arm on base data only, for the same number of steps."""
    overlap: bool = False
    """Run the held-out eval and the control arm in a second process (one torch thread) while this
    one trains, validates and promotes (`selfplay/side_process.py`): on a machine whose second core
    would idle (a dispatch-bound engine on CPU) a round takes the time of its critical path. Ignored
    with rollout actors or Ray Train workers, which spread the work already."""
    eval_per_task: int = 50
    """Held-out test-split records per task (6 tasks)."""
    eval_seed: int = 1000
    """Seed of the held-out suite and of its sampling."""
    eval_samples: int = 1
    """Images per eval record (each an independent sample)."""
    validation_per_task: int = 50
    """Training-split records per task in the validation split: promotion compares process-mode
    scores on it, and the inspection table (`selfplay/inspect_eval.py`) is measured on it, so the
    test suite the report shows never steers the run."""
    validation_seed: int = 500
    """Seed of the validation split and its sampling (the rounds' rollouts use seeds 1000 * seed + round)."""
    eval_modes: list[str] = field(default_factory=lambda: ["process", "single_pass"])
    """Modes each round is evaluated in, from `EVAL_MODES`: process | single_pass | judge (the judge as
    external inspector) | planner (the oracle as external planner)."""
    strip_prompts: list[str] = field(default_factory=lambda: [
        "a red circle left of a blue square", "three triangles", "a green square and a purple triangle"])
    """Prompts drawn as trajectory strips every round, to compare rounds by eye."""
    seed: int = 0
    """Seed of the training prompts, their rollouts and the data shuffle."""

    def __post_init__(self) -> None:
        require(self, "train_from", self.train_from in ("current", "base"), "must be 'current' or 'base'")
        bad = [m for m in self.eval_modes if m not in EVAL_MODES]
        require(self, "eval_modes", not bad, f"has unknown mode {bad[0] if bad else ''!r} (known: {', '.join(EVAL_MODES)})")
        require(self, "rounds", self.rounds >= 0, "must be >= 0")
        unknown = [t for t in self.tasks or [] if t not in TASKS]
        require(self, "tasks", self.tasks is None or (self.tasks and not unknown),
                f"must be null or a non-empty list of {', '.join(TASKS)}")
        require(self, "data_mode", self.data_mode in ("process", "judge"), "must be 'process' or 'judge'")
        require(self, "data_retries", self.data_retries >= 0, "must be >= 0")
        require(self, "data_retries", self.data_retries == 0 or self.data_mode == "judge",
                "needs loop.data_mode: judge (the judge's verdict decides what is drawn again)")
        require(self, "data_temperature", self.data_temperature is None or self.data_temperature >= 0,
                "must be >= 0 (0: greedy) or null (rollout.temperature)")
        for name in ("prompts_per_round", "samples_per_prompt", "eval_per_task", "eval_samples", "validation_per_task"):
            require(self, name, getattr(self, name) >= 1, "must be >= 1")
        # scores are fractions: a negative tolerance refuses a round that scores as well as its
        # parent, and one above 1 (a percentage by mistake) promotes every round
        require(self, "promote_tolerance", 0 <= self.promote_tolerance <= 1,
                "must be in [0, 1] (a fraction of the overall score, not percent)")


@dataclass
class RunConfig:
    """The whole run: one section per component (module docstring). Each section checks itself."""

    model: ModelConfig = field(default_factory=ModelConfig)
    """The tiny unified model's shape (used when training the base model from scratch)."""
    data: DataConfig = field(default_factory=DataConfig)
    """Base data pipelines and mixture (round 0 from scratch, replay, control arm)."""
    train: TrainConfig = field(default_factory=TrainConfig)
    """How each round trains: SFT on its data or GRPO on its own rollouts (TRL)."""
    rollout: RolloutConfig = field(default_factory=RolloutConfig)
    """Sampling, caps, batching, Ray actors."""
    judge: JudgeConfig = field(default_factory=JudgeConfig)
    """oracle | gpt | self, endpoint and budgets."""
    critique: CritiqueConfig = field(default_factory=CritiqueConfig)
    """Self-sampled or symbolic corrections, replay."""
    world: WorldConfig = field(default_factory=WorldConfig)
    """The world the prompts, suites and scores come from: ShapeWorld, or a team's own (open)."""
    inspect_head: InspectHeadConfig = field(default_factory=InspectHeadConfig)
    """The policy's Inspect head, fitted on its own labelled sketches for every evaluated checkpoint."""
    loop: LoopConfig = field(default_factory=LoopConfig)
    """Rounds, prompts, eval suite, promotion."""
    tracking: TrackingConfig = field(default_factory=TrackingConfig)
    """wandb mirror of metrics.jsonl."""

    def __post_init__(self) -> None:
        if self.world.kind == "open":
            self._check_open_world()
        if self.train.grpo.max_staleness and not self.samples_on_fleet:
            raise InputError("train.grpo.max_staleness: rollouts sampled ahead of training need the fleet "
                             "(rollout.actors > 0, train.grpo.sample_on: fleet, train.distributed: none); set it to 0")
        for name, meta, command in (("inspector", "inspector.json", "fit-inspector"),
                                    ("question_judge", "judge.json", "fit-judge")):
            folder = getattr(self.judge, name)
            if folder and not (Path(folder) / meta).is_file():  # before round 0, not when its GRPO stage starts
                raise InputError(f"judge.{name}: {folder} has no {meta} (make one with `selfplay {command}`)")
        head_file = Path(self.loop.base_checkpoint) / "inspect_head.json"
        if self.rollout.inspect == "head" and not self.inspect_head.enabled and not head_file.is_file():
            raise InputError("rollout.inspect: 'head' needs inspect_head.enabled: true (or a base checkpoint "
                             "with an Inspect head)")

    @property
    def samples_on_fleet(self) -> bool:
        """Whether a GRPO round samples its steps on the run's rollout actors (else in the trainer's
        process, or with `train.distributed: ray` in each Ray Train worker for its share)."""
        return self.rollout.actors > 0 and self.train.grpo.sample_on == "fleet" and self.train.distributed != "ray"

    def _check_open_world(self) -> None:
        """What an open world cannot do (no exact judge, renderer or base-data pipelines), one line each."""
        w = "config field '{}' {} in an open world (world.kind: open)"
        if self.judge.kind == "oracle":
            raise InputError(w.format("judge.kind", "cannot be 'oracle': the exact judge knows only ShapeWorld "
                                                    "(use gpt with base_url, or self)"))
        if self.train.method != "grpo":
            raise InputError(w.format("train.method", "must be grpo: SFT critique rounds need ShapeWorld's "
                                                      "exact corrections and continuations"))
        if self.loop.control and not self.world.control_data:
            raise InputError(w.format("loop.control", "needs world.control_data (a trajectory dataset for the "
                                                      "control arm), or set loop.control: false"))
        if self.judge.kind == "gpt" and not self.judge.prompts_file:
            raise InputError(w.format("judge.prompts_file", "must be set: the built-in prompts describe "
                                                            "ShapeWorld's flat shapes (use 'natural' or your own)"))
        if "planner" in self.loop.eval_modes:
            raise InputError(w.format("loop.eval_modes", "cannot hold 'planner': the oracle planner plans "
                                                         "ShapeWorld scenes"))


def load_config(path: str | Path | None, overrides: list[str] | None = None) -> RunConfig:
    """The run config at `path` (None: the defaults) with `key=value` overrides applied, checked."""
    return load(RunConfig, path, overrides)
