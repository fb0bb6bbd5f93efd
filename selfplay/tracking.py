"""Tracking: the run's own `metrics.jsonl` is the record; wandb (offline unless configured) mirrors it.

wandb in offline mode keeps no image files locally (DESIGN.md §8), so the trajectory strips and
samples stay in the run directory as PNG; wandb gets them as `wandb.Image`s in per-round tables.
"""

from __future__ import annotations

import json
import os
import uuid
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import ClassVar

from strokes.config_loader import require


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


class Tracker:
    """The wandb mirror of a run (a no-op unless `tracking.wandb`)."""

    def __init__(self, run_dir: Path, cfg: TrackingConfig, run_cfg) -> None:
        self.run_dir = run_dir
        self.cfg = cfg
        self.run = None
        if cfg.wandb:
            import wandb

            os.environ.setdefault("WANDB_DIR", str(run_dir))
            os.environ.setdefault("WANDB_DATA_DIR", str(run_dir / "wandb"))
            if cfg.mode == "offline":  # the banner and "URL not available" warnings point nowhere offline
                os.environ.setdefault("WANDB_SILENT", "true")
            id_file = run_dir / "wandb_id"
            run_id = id_file.read_text().strip() if id_file.exists() else uuid.uuid4().hex[:8]
            id_file.write_text(run_id)
            self.run = wandb.init(project=cfg.project, mode=cfg.mode, id=run_id, resume="allow",
                                  dir=str(run_dir), name=run_dir.name, config=asdict(run_cfg))

    def sync(self, rnd: int) -> None:
        """Log round `rnd`'s eval metrics, per-task table and strips (once per round)."""
        if self.run is None:
            return
        import wandb

        ev = self.run_dir / f"round_{rnd:03d}" / "eval"
        if not (ev / "scores.json").exists():
            return
        scores = json.loads((ev / "scores.json").read_text())
        row = {f"{mode}/overall": s["overall"] for mode, s in scores.items()}
        for mode, s in scores.items():
            row.update({f"{mode}/{task}": v for task, v in s["per_task"].items()})
        tasks = sorted({t for s in scores.values() for t in s["per_task"]})
        table = wandb.Table(columns=["mode"] + tasks + ["overall"])
        for mode, s in scores.items():
            table.add_data(mode, *[s["per_task"].get(t) for t in tasks], s["overall"])
        row["accuracy_table"] = table
        for arm, folder in (("policy", "validate"), ("control", "control_validate")):
            events = self.run_dir / f"round_{rnd:03d}" / folder / "events.jsonl"
            for e in map(json.loads, events.read_text().splitlines() if events.exists() else []):
                if e.get("event") == "validate":  # validation score and own-sketch inspection AUCs
                    row.update({f"validate/{arm}/{k}": v for k, v in e.items() if k not in ("event", "round", "arm")})
        strips = sorted((ev / "strips").glob("*.png")) if (ev / "strips").exists() else []
        if strips:
            st = wandb.Table(columns=["round", "prompt", "strip"])
            for p in strips:
                st.add_data(rnd, p.stem.replace("_", " "), wandb.Image(str(p)))
            row["strips"] = st
        self.run.log({"round": rnd, **row}, step=rnd)

    def finish(self) -> None:
        if self.run is not None:
            self.run.finish()
