"""The run config: one YAML file with a section per component, each a documented dataclass defined
beside the code it configures.

    model:     the tiny unified model's shape              selfplay.model.tiny.ModelConfig
    data:      base data pipelines, mixture, replay source  selfplay.data.build.DataConfig
    train:     SFT of each round (TRL)                      trainer.config.TrainConfig
    rollout:   sampling, caps, batching, Ray actors         rollout.config.RolloutConfig
    judge:     oracle | gpt | self, endpoint and budgets    judges.config.JudgeConfig
    critique:  self-sampled or symbolic corrections, replay selfplay.critique.CritiqueConfig
    loop:      rounds, prompts, eval suite, promotion       selfplay.loop.LoopConfig
    tracking:  wandb mirror of metrics.jsonl                selfplay.tracking.TrackingConfig
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from judges.config import JudgeConfig
from rollout.config import RolloutConfig
from trainer.config import TrainConfig

from .configuration import load
from .critique import CritiqueConfig
from .data.build import DataConfig
from .errors import InputError
from .loop import LoopConfig
from .model.tiny import ModelConfig
from .tracking import TrackingConfig


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
