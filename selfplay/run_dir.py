"""The run folder, and the one place that knows its layout (docs/design.md §6).

    runs/<name>/
      config.yaml  state.json  metrics.jsonl  report.html
      round_000/  checkpoint/  eval/  validate/
      round_001/  data/  checkpoint/  eval/  validate/  control/  control_eval/  control_validate/  promote/

Every stage of a round is a folder named after it; inside it, `events.jsonl` holds what the stage
logged and `scores.json` its GenEval scores per eval mode (eval stages); a GRPO round's training stage
(`checkpoint/`) also keeps a sample of each step's trajectories in `trajectories/step_NNNNN.jsonl.gz`. `state.json` records which
stages are complete and which policy is current, and `metrics.jsonl` is rebuilt from the stages'
events in round and `STAGES` order, so a resumed run never logs twice. Other modules reach these
files through `RunDir` and the `read_*`/`write_*` helpers here, never by name.
"""

from __future__ import annotations

import dataclasses
import gzip
import json
import re
from dataclasses import dataclass, field
from pathlib import Path

from strokes.errors import InputError
from strokes.io import atomic_path, write_atomic

# Every stage of a round, in the order its events go into `metrics.jsonl`. The rounds name their
# stages from here, and the loop refuses any other name, so a new stage cannot be left out of the log.
STAGES = ("checkpoint", "rollouts", "data", "inspect_head", "eval", "validate", "control", "control_inspect_head",
          "control_eval", "control_validate", "promote")
(CHECKPOINT, ROLLOUTS, DATA, INSPECT_HEAD, EVAL, VALIDATE, CONTROL, CONTROL_INSPECT_HEAD, CONTROL_EVAL,
 CONTROL_VALIDATE, PROMOTE) = STAGES

SCORES = "scores.json"
EVENTS = "events.jsonl"
TRAJECTORIES = "trajectories"
_ROUND = re.compile(r"round_(\d{3})")
_STEP = re.compile(r"step_(\d{5})\.jsonl\.gz")


def write_scores(folder: Path, scores: dict) -> None:
    """A stage's scores, by eval mode (each `strokes.geneval.Score.to_json()` plus counts)."""
    (folder / SCORES).write_text(json.dumps(scores, indent=2))


def read_scores(folder: Path) -> dict:
    """A stage folder's scores by mode; {} when it has none (not evaluated yet)."""
    path = folder / SCORES
    return json.loads(path.read_text()) if path.is_file() else {}


def write_event(folder: Path, event: dict, first: bool = False) -> None:
    """Append one event to a stage folder's log (`first`: start the log afresh)."""
    with open(folder / EVENTS, "w" if first else "a") as f:
        f.write(json.dumps(event, default=float) + "\n")


def read_events(folder: Path) -> list[dict]:
    """A stage folder's events, in the order they were logged; [] when it has none."""
    path = folder / EVENTS
    return [json.loads(line) for line in path.read_text().splitlines()] if path.is_file() else []


def write_step_trajectories(folder: Path, step: int, rows: list[dict]) -> Path:
    """One GRPO step's kept trajectories (JSON rows), gzip-compressed, in a stage folder."""
    path = folder / TRAJECTORIES / f"step_{step:05d}.jsonl.gz"
    path.parent.mkdir(exist_ok=True)
    with atomic_path(path) as tmp, gzip.open(tmp, "wt", encoding="utf-8") as f:
        f.writelines(json.dumps(row) + "\n" for row in rows)
    return path


def read_step_trajectories(folder: Path) -> dict[int, list[dict]]:
    """A stage folder's kept trajectories by GRPO step; {} when it kept none."""
    out = {}
    for path in sorted((folder / TRAJECTORIES).glob("step_*.jsonl.gz")):
        if m := _STEP.fullmatch(path.name):
            with gzip.open(path, "rt", encoding="utf-8") as f:
                out[int(m.group(1))] = [json.loads(line) for line in f]
    return out


class RunDir:
    """Paths and records of one run folder."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.config = self.path / "config.yaml"
        self.metrics = self.path / "metrics.jsonl"
        self.report = self.path / "report.html"

    def round(self, rnd: int) -> Path:
        return self.path / f"round_{rnd:03d}"

    def stage(self, rnd: int, name: str) -> Path:
        """The folder of stage `name` of round `rnd` (a name from `STAGES`)."""
        if name not in STAGES:
            raise ValueError(f"stage {name!r} is not in STAGES")
        return self.round(rnd) / name

    def rounds(self) -> list[int]:
        """The round numbers that have a folder, in order."""
        found = (_ROUND.fullmatch(p.name) for p in self.path.glob("round_*") if p.is_dir())
        return sorted(int(m.group(1)) for m in found if m)

    def scores(self, rnd: int, name: str) -> dict:
        """Scores by eval mode of stage `name` of round `rnd`; {} when it has none."""
        return read_scores(self.stage(rnd, name))

    def events(self, rnd: int, name: str) -> list[dict]:
        return read_events(self.stage(rnd, name))

    def step_trajectories(self, rnd: int) -> dict[int, list[dict]]:
        """The trajectories a GRPO round kept of each training step (`selfplay.grpo.trajectory_rows`)."""
        return read_step_trajectories(self.stage(rnd, CHECKPOINT))

    def rebuild_metrics(self) -> None:
        """`metrics.jsonl` = every stage's events, in round and `STAGES` order."""
        lines = []
        for rnd in self.rounds():
            for name in STAGES:
                path = self.stage(rnd, name) / EVENTS
                lines += path.read_text().splitlines() if path.is_file() else []
        write_atomic(self.metrics, "".join(line + "\n" for line in lines))

    def state(self) -> RunState:
        return RunState.load(self.path)


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
        """The state in `run_dir/state.json`, or a fresh one saved there later. A damaged file (cut
        short, hand-edited, or missing any of the keys `save` always writes, `{}` included) is
        refused with one line naming it and what is wrong: guessing would redo or skip stages of a
        run silently (a `{}` used to re-run every stage over the old outputs). Unknown keys are
        ignored."""
        path = Path(run_dir) / "state.json"
        if not path.exists():
            return cls(path=path)
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except UnicodeDecodeError:
            raise InputError(f"{path}: corrupt run state (not UTF-8 text)") from None
        except json.JSONDecodeError as e:
            raise InputError(f"{path}: corrupt run state (malformed JSON at line {e.lineno}: {e.msg})") from None
        if not isinstance(data, dict):
            raise InputError(f"{path}: corrupt run state (must be a JSON object, got {type(data).__name__})")
        names = {f.name for f in dataclasses.fields(cls)} - {"path"}
        state = {k: v for k, v in data.items() if k in names}
        problem = _problem(state)
        missing = sorted(names - state.keys())
        if not problem and missing:
            problem = f"missing {', '.join(repr(k) for k in missing)}"
        if problem:
            raise InputError(f"{path}: corrupt run state ({problem})")
        return cls(**state, path=path)

    def is_done(self, rnd: int, stage_name: str) -> bool:
        return f"{rnd}:{stage_name}" in self.done

    def mark(self, rnd: int, stage_name: str) -> None:
        self.done.append(f"{rnd}:{stage_name}")
        self.save()

    def save(self) -> None:
        data = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "path"}
        write_atomic(self.path, json.dumps(data, indent=2))


def _problem(data: dict) -> str:
    """What is wrong with the fields of a loaded `state.json`, or "" when nothing is."""
    done = data.get("done", [])
    if not isinstance(done, list):
        return f"'done' must be a list of \"round:stage\" strings, got {done!r}"
    bad = [d for d in done if not (isinstance(d, str) and re.fullmatch(r"\d+:\w+", d))]
    if bad:
        return f"'done' holds {bad[0]!r}, not a \"round:stage\" string"
    policy = data.get("policy")
    if policy is not None and not isinstance(policy, str):
        return f"'policy' must be a checkpoint folder or null, got {policy!r}"
    rnd = data.get("policy_round", 0)
    if type(rnd) is not int or rnd < 0:
        return f"'policy_round' must be a round number, got {rnd!r}"
    promotions = data.get("promotions", {})
    if not (isinstance(promotions, dict) and all(isinstance(v, dict) for v in promotions.values())):
        return f"'promotions' must map rounds to promotion events, got {promotions!r}"
    return ""
