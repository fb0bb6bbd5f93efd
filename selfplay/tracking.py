"""Tracking: the run's own `metrics.jsonl` is the record; wandb (offline unless configured) mirrors it.

wandb in offline mode keeps no image files locally (docs/design.md §8), so the trajectory strips and
samples stay in the run directory as PNG; wandb gets them as `wandb.Image`s in per-round tables.

One wandb run holds the whole loop: with `train.report_to: wandb` each round's trainer logs into it
too (transformers' callback joins an open run), advancing wandb's own step once per log line. So the
round metrics never pass `step=round` (wandb drops a row whose step is below the current one: every
round after the first was lost); they are logged on wandb's step like the trainers' lines and plotted
against their own axis, `round` (`define_metric`).
"""

from __future__ import annotations

import os
import uuid
from dataclasses import asdict, dataclass
from typing import ClassVar

from strokes.config_loader import require

from .run_dir import CONTROL_VALIDATE, EVAL, VALIDATE, RunDir


@dataclass
class TrackingConfig:
    """Where metrics go besides `metrics.jsonl`."""

    SECTION: ClassVar[str] = "tracking"

    wandb: bool = False
    """Mirror metrics, per-task tables and trajectory strips to wandb."""
    project: str = "strokes"
    """The wandb project."""
    mode: str = "offline"
    """"offline" needs no network; "online" syncs as it runs; "disabled" turns wandb off."""

    def __post_init__(self) -> None:
        require(self, "mode", self.mode in ("offline", "online", "disabled"), "must be offline, online or disabled")


ROUND = "round"
"""The x-axis of the per-round metrics in wandb."""


class Tracker:
    """The wandb mirror of a run (a no-op unless `tracking.wandb`)."""

    def __init__(self, run_dir: RunDir, cfg: TrackingConfig, run_cfg) -> None:
        self.run_dir = run_dir
        self.cfg = cfg
        self.run = None  # the wandb run
        self.synced_file = run_dir.path / "wandb_rounds"  # rounds already logged: a resumed run logs each once
        self.synced = {int(r) for r in self.synced_file.read_text().split()} if self.synced_file.exists() else set()
        if cfg.wandb:
            import wandb

            path = run_dir.path
            os.environ.setdefault("WANDB_DIR", str(path))
            os.environ.setdefault("WANDB_DATA_DIR", str(path / "wandb"))
            if cfg.mode == "offline":  # the banner and "URL not available" warnings point nowhere offline
                os.environ.setdefault("WANDB_SILENT", "true")
            id_file = path / "wandb_id"
            run_id = id_file.read_text().strip() if id_file.exists() else uuid.uuid4().hex[:8]
            id_file.write_text(run_id)
            self.run = wandb.init(project=cfg.project, mode=cfg.mode, id=run_id, resume="allow",
                                  dir=str(path), name=path.name, config=asdict(run_cfg))
            self.run.define_metric(ROUND)

    def sync(self, rnd: int) -> None:
        """Log round `rnd`'s eval metrics, per-task table and strips (once per round, resumes included)."""
        if self.run is None or rnd in self.synced:
            return
        import wandb

        scores = self.run_dir.scores(rnd, EVAL)
        if not scores:
            return
        row = {f"{mode}/overall": s["overall"] for mode, s in scores.items()}
        for mode, s in scores.items():
            row.update({f"{mode}/{task}": v for task, v in s["per_task"].items()})
        tasks = sorted({t for s in scores.values() for t in s["per_task"]})
        table = wandb.Table(columns=["mode"] + tasks + ["overall"])
        for mode, s in scores.items():
            table.add_data(mode, *[s["per_task"].get(t) for t in tasks], s["overall"])
        row["accuracy_table"] = table
        for arm, stage in (("policy", VALIDATE), ("control", CONTROL_VALIDATE)):
            for e in self.run_dir.events(rnd, stage):
                if e.get("event") == "validate":  # validation score and own-sketch inspection AUCs
                    row.update({f"validate/{arm}/{k}": v for k, v in e.items() if k not in ("event", "round", "arm")})
        ev = self.run_dir.stage(rnd, EVAL)
        strips = sorted((ev / "strips").glob("*.png")) if (ev / "strips").exists() else []
        if strips:
            st = wandb.Table(columns=["round", "prompt", "strip"])
            for p in strips:
                st.add_data(rnd, p.stem.replace("_", " "), wandb.Image(str(p)))
            row["strips"] = st
        for key in row:  # exact names: they win over the trainer callback's "*" -> train/global_step
            self.run.define_metric(key, step_metric=ROUND)
        self.run.log({ROUND: rnd, **row})
        self.synced.add(rnd)
        self.synced_file.write_text("".join(f"{r}\n" for r in sorted(self.synced)))

    def finish(self) -> None:
        if self.run is not None:
            self.run.finish()
