"""The run config: one YAML file with a section per component, each a documented dataclass defined
beside the code it configures.

    model:     the tiny unified model's shape              strokes.model.tiny.ModelConfig
    data:      base data pipelines, mixture, replay source  strokes.data.build.DataConfig
    train:     SFT of each round (TRL)                      trainer.config.TrainConfig
    rollout:   sampling, caps, batching, Ray actors         rollout.config.RolloutConfig
    judge:     oracle | gpt | self, endpoint and budgets    judges.config.JudgeConfig
    critique:  self-sampled or symbolic corrections, replay selfplay.critique.CritiqueConfig
    loop:      rounds, prompts, eval suite, promotion       selfplay.config.LoopConfig
    tracking:  wandb mirror of metrics.jsonl                selfplay.tracking.TrackingConfig
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from judges.config import JudgeConfig
from rollout.config import RolloutConfig
from strokes.config_loader import load
from strokes.data.build import DataConfig
from strokes.errors import InputError
from strokes.model.tiny import ModelConfig
from trainer.config import TrainConfig

from .critique import CritiqueConfig
from .tracking import TrackingConfig


@dataclass
class LoopConfig:
    """The rounds and what each one samples, evaluates and promotes."""

    rounds: int = 2
    prompts_per_round: int = 300  # training-split prompts rolled out per round
    samples_per_prompt: int = 1  # rollouts per prompt
    train_from: str = "current"  # "current": continue the promoted policy; "base": restart from round 0's
    promote_tolerance: float = 0.02  # promote unless process-mode overall drops by more than this
    base_checkpoint: str = "checkpoints/base"  # the shipped base model (relative to the project root)
    base_recipe: str = "configs/base.yaml"  # used by --from-scratch to train the base model
    control: bool = True  # also train a control arm on base data only, for the same number of steps
    eval_per_task: int = 50  # held-out test-split records per task (6 tasks)
    eval_seed: int = 1000
    eval_samples: int = 1  # images per eval record (each an independent sample)
    # process | single_pass | judge (the judge as external inspector) | planner (the oracle as external planner)
    eval_modes: list[str] = field(default_factory=lambda: ["process", "single_pass"])
    strip_prompts: list[str] = field(default_factory=lambda: [
        "a red circle left of a blue square", "three triangles", "a green square and a purple triangle"])
    seed: int = 0

    def __post_init__(self) -> None:
        if self.train_from not in ("current", "base"):
            raise InputError(f"config field 'loop.train_from' must be 'current' or 'base', got {self.train_from!r}")
        bad = [m for m in self.eval_modes if m not in ("process", "single_pass", "judge", "planner")]
        if bad:
            raise InputError(f"config field 'loop.eval_modes' has unknown mode {bad[0]!r}")
        if self.rounds < 0 or self.prompts_per_round < 1 or self.eval_per_task < 1 or self.eval_samples < 1:
            raise InputError("config fields 'loop.rounds' >= 0, and 'loop.prompts_per_round', "
                             "'loop.eval_per_task', 'loop.eval_samples' >= 1")


@dataclass
class RunConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    rollout: RolloutConfig = field(default_factory=RolloutConfig)
    judge: JudgeConfig = field(default_factory=JudgeConfig)
    critique: CritiqueConfig = field(default_factory=CritiqueConfig)
    loop: LoopConfig = field(default_factory=LoopConfig)
    tracking: TrackingConfig = field(default_factory=TrackingConfig)

    def __post_init__(self) -> None:
        self.rollout.validate()
        self.judge.validate()
        if self.tracking.mode not in ("offline", "online", "disabled"):
            raise InputError(f"config field 'tracking.mode' must be offline, online or disabled, got {self.tracking.mode!r}")


def load_config(path: str | Path | None, overrides: list[str] | None = None) -> RunConfig:
    return load(RunConfig, path, overrides)
