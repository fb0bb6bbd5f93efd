"""Shared by the rollout tests (no tests here): one tiny random policy per test session.

Building a policy fits the image tokenizer (~10 s), so the checkpoint is built once, under the
session's temporary folder, and every rollout test module loads it from there.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from strokes.model.policy import Policy
from strokes.model.tiny import ModelConfig

TINY = ModelConfig(hidden_size=64, num_layers=2, num_heads=2, intermediate_size=128)


def tiny_checkpoint(tmp_path_factory) -> Path:
    """A saved random tiny policy, built on first use in this session."""
    path = tmp_path_factory.getbasetemp() / "rollout-tiny-policy"
    if not (path / "config.json").is_file():
        tmp = path.with_name(path.name + ".tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        Policy.build(TINY).save_pretrained(tmp)
        tmp.rename(path)
    return path
