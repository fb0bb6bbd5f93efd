"""`selfplay ablate`: every arm of one of the paper's ablation tables, with equal compute, one command.

An ablation file names a base run config, the arms (each a list of `--set` overrides on it), the
seeds, and which metrics make the table's columns:

    base: configs/shapeworld.yaml
    seeds: [0, 1]
    columns: [colors, position, color_attr]       # tasks, or "overall"
    mode: process                                 # which eval mode the table reports
    arms:
      additive only:      ["data.pipelines.detour_prob=0.0", "loop.rounds=0"]
      + self-critique:    ["data.pipelines.detour_prob=0.0"]

Each arm and seed is an ordinary resumable run under `runs/<ablation>/<arm>/seed<k>/`, so a killed
ablation continues where it stopped; arms run `parallel` at a time. The result is a markdown table in
the paper's shape (mean ± spread over seeds, final round), a plot, and `results.json`.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .errors import InputError


@dataclass
class AblationConfig:
    base: str  # the run config every arm starts from
    arms: dict[str, list[str]]  # arm name -> overrides (key=value)
    title: str = ""
    seeds: list[int] = field(default_factory=lambda: [0])
    columns: list[str] = field(default_factory=lambda: ["overall"])
    mode: str = "process"
    parallel: int = 1  # arms run at once (each uses `train.num_threads` threads)


def load_ablation(path: str | Path) -> AblationConfig:
    from .configuration import load

    cfg = load(AblationConfig, path)
    if not cfg.arms:
        raise InputError(f"{path}: field 'arms' must name at least one arm")
    return cfg


def _slug(name: str) -> str:
    return re.sub(r"[^a-z0-9]+", "_", name.lower()).strip("_") or "arm"


def _run_arm(cfg: AblationConfig, root: Path, arm: str, seed: int) -> Path:
    """One arm and seed as a `selfplay run` subprocess (resumable, isolated, one log file)."""
    name = f"{_slug(arm)}/seed{seed}"
    run_dir = root / name
    sets = [f"loop.seed={seed}", f"critique.seed={seed}", f"rollout.seed={seed}", f"train.seed={seed}",
            *cfg.arms[arm]]
    cmd = [sys.executable, "-m", "selfplay.cli", "run", cfg.base, "--runs", str(root), "--name", name]
    for s in sets:
        cmd += ["--set", s]
    if (run_dir / "state.json").exists():
        cmd.append("--resume")
    run_dir.parent.mkdir(parents=True, exist_ok=True)
    with open(root / f"{_slug(arm)}_seed{seed}.log", "a") as log:
        proc = subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT)
    if proc.returncode != 0:
        raise InputError(f"arm '{arm}' seed {seed} failed; see {root / f'{_slug(arm)}_seed{seed}.log'}")
    return run_dir


def final_scores(run_dir: Path, mode: str) -> dict:
    """The last evaluated round's scores in `mode` (task accuracies and overall)."""
    rounds = sorted(run_dir.glob("round_[0-9][0-9][0-9]"))
    for rd in reversed(rounds):
        f = rd / "eval" / "scores.json"
        if f.exists():
            s = json.loads(f.read_text())[mode]
            return {"overall": s["overall"], **s["per_task"]}
    raise InputError(f"{run_dir}: no evaluated round")


def run_ablation(path: str | Path, runs: str | Path = "runs") -> dict:
    cfg = load_ablation(path)
    root = Path(runs) / Path(path).stem
    root.mkdir(parents=True, exist_ok=True)
    jobs = [(arm, seed) for arm in cfg.arms for seed in cfg.seeds]
    with ThreadPoolExecutor(max_workers=max(cfg.parallel, 1)) as pool:
        dirs = list(pool.map(lambda j: _run_arm(cfg, root, *j), jobs))
    results: dict[str, dict[str, list[float]]] = {}
    for (arm, seed), d in zip(jobs, dirs):
        s = final_scores(d, cfg.mode)
        for col in cfg.columns:
            results.setdefault(arm, {}).setdefault(col, []).append(s[col])
    out = {"title": cfg.title, "mode": cfg.mode, "seeds": cfg.seeds, "results": results}
    (root / "results.json").write_text(json.dumps(out, indent=2))
    (root / "table.md").write_text(markdown(out, cfg.columns))
    _plot(out, cfg.columns, root / "plot.png")
    return out


def markdown(out: dict, columns: list[str]) -> str:
    """Mean ± half-range over seeds, in points, one row per arm."""
    head = "| arm | " + " | ".join(columns) + " |\n|---|" + "---|" * len(columns) + "\n"
    rows = []
    for arm, cols in out["results"].items():
        cells = []
        for c in columns:
            v = 100 * np.array(cols[c])
            cells.append(f"{v.mean():.1f} ± {(v.max() - v.min()) / 2:.1f}" if len(v) > 1 else f"{v.mean():.1f}")
        rows.append(f"| {arm} | " + " | ".join(cells) + " |")
    return (f"{out['title']} ({out['mode']} mode, seeds {out['seeds']})\n\n" if out["title"] else "") + head + "\n".join(rows) + "\n"


def _plot(out: dict, columns: list[str], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    arms = list(out["results"])
    fig, ax = plt.subplots(figsize=(1.6 + 1.3 * len(columns) * max(len(arms), 1) / 3, 3.4))
    width = 0.8 / max(len(arms), 1)
    for i, arm in enumerate(arms):
        vals = [100 * np.mean(out["results"][arm][c]) for c in columns]
        errs = [100 * (np.max(out["results"][arm][c]) - np.min(out["results"][arm][c])) / 2 for c in columns]
        ax.bar(np.arange(len(columns)) + i * width, vals, width, yerr=errs, capsize=2, label=arm)
    ax.set_xticks(np.arange(len(columns)) + width * (len(arms) - 1) / 2, columns)
    ax.set_ylabel("accuracy (%)")
    ax.set_title(out["title"] or "ablation")
    ax.legend(fontsize=7)
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)
