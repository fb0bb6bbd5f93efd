"""The run directory's bookkeeping (DESIGN.md §6): the stages of a round, in order, and `state.json`
(which stages are complete, which policy is current)."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path

from strokes.io import write_atomic

# Every stage of a round, in the order its events go into `metrics.jsonl`. The rounds name their
# stages from here, and `stage` refuses any other name, so a new stage cannot be left out of the log.
STAGES = ("checkpoint", "rollouts", "data", "eval", "control", "control_eval", "promote")
CHECKPOINT, ROLLOUTS, DATA, EVAL, CONTROL, CONTROL_EVAL, PROMOTE = STAGES


@dataclass
class RunState:
    """`state.json`: which stages of which rounds are complete, and which policy is current."""

    done: list[str] = field(default_factory=list)
    """Completed stages as "round:stage"."""
    policy: str | None = None
    """The current (last promoted) policy's checkpoint folder; None before round 0's checkpoint."""
    policy_round: int = 0
    """The round that made the current policy."""
    promotions: dict[str, dict] = field(default_factory=dict)
    """Each round's promotion decision (the `promote` event), by round number as a string."""
    path: Path | None = field(default=None, repr=False, compare=False)
    """Where the state is saved (not itself saved)."""

    @classmethod
    def load(cls, run_dir: Path) -> RunState:
        """The state in `run_dir/state.json`, or a fresh one saved there later."""
        path = run_dir / "state.json"
        data = json.loads(path.read_text()) if path.exists() else {}
        names = {f.name for f in dataclasses.fields(cls)} - {"path"}
        return cls(**{k: v for k, v in data.items() if k in names}, path=path)

    def is_done(self, rnd: int, stage_name: str) -> bool:
        return f"{rnd}:{stage_name}" in self.done

    def mark(self, rnd: int, stage_name: str) -> None:
        self.done.append(f"{rnd}:{stage_name}")
        self.save()

    def save(self) -> None:
        data = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "path"}
        write_atomic(self.path, json.dumps(data, indent=2))


def round_dir(run_dir: Path, rnd: int) -> Path:
    return run_dir / f"round_{rnd:03d}"
