"""Rollouts: prompts to Plan->Sketch->Inspect->Refine trajectories with a policy, fast, on one process
or many Ray actors. See docs/rollout.md.

This package never imports `judges/`, `trainer/` or selfplay's loop: a judge is any object with
`judge(list[StepContext]) -> list[Verdict]`, and the policy is `strokes.model`'s `Policy`.

Names load on first use (`from rollout import Engine` imports the engine then), so a command that
needs only `rollout.config` (the CLI's flag defaults) does not pay for importing torch.
"""

from __future__ import annotations

import importlib

_WHERE = {"RolloutConfig": "config", "Engine": "engine", "RolloutFleet": "fleet", "write_geneval": "outputs",
          "RolloutError": "pool", "Summary": "pool", "rollout": "pool", "RolloutDir": "shards"}

__all__ = sorted(_WHERE)


def __getattr__(name: str):
    if name not in _WHERE:
        raise AttributeError(f"module 'rollout' has no attribute {name!r}")
    return getattr(importlib.import_module(f"rollout.{_WHERE[name]}"), name)
