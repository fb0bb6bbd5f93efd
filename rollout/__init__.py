"""Rollouts: prompts to Plan->Sketch->Inspect->Refine trajectories with a policy, fast, on one process
or many Ray actors. See docs/rollout.md.

This package never imports `judges/`, `trainer/` or selfplay's loop: a judge is any object with
`judge(list[StepContext]) -> list[Verdict]`, and the policy is `strokes.model`'s `Policy`.
"""

from .config import RolloutConfig
from .engine import Engine
from .fleet import RolloutFleet
from .outputs import write_geneval
from .pool import RolloutError, Summary, rollout
from .shards import RolloutDir

__all__ = ["Engine", "RolloutConfig", "RolloutDir", "RolloutError", "RolloutFleet", "Summary", "rollout",
           "write_geneval"]
