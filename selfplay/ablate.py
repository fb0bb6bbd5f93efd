"""`selfplay ablate`: every arm of one of the paper's ablation tables, with equal compute, one command.

An ablation file names a base run config, the arms, the seeds, and the columns of the table:

    title: "Table 6: source of corrections"
    base: configs/shapeworld.yaml                 # every arm's run config starts here
    set: ["loop.rounds=1", "loop.eval_modes=[process]"]   # overrides for every arm
    seeds: [0, 1]
    columns: [colors, position, color_attr]       # task names, or "overall"
    mode: process                                 # the eval mode read, unless an arm says otherwise
    arms:
      scene-graph (symbolic): ["critique.mode=symbolic", "loop.control=false"]   # short form: overrides
      self-sampled: {set: ["critique.mode=self"]}
      none: {run: self-sampled, source: control_eval}     # read the self arm's control: no new run

An arm gets its numbers in one of three ways (`ArmConfig`):

- its own run (`set`): an ordinary resumable `selfplay run` per seed under
  `runs/<ablation>/<arm>/seed<k>/`; with a table-level `pretrain`, each seed first fine-tunes
  `loop.base_checkpoint` for `pretrain.steps` steps on base data made with the arm's own data config
  (the shared short recipe that gives Tables 5 and 7 their base models on a CPU);
- an evaluation of a checkpoint (`checkpoint`), no training: the held-out suite in the arm's mode
  (process, single_pass, judge = the oracle as external inspector, planner = the oracle as external
  planner), one sampling seed per seed;
- another run's numbers (`run`: another arm of this table; `run_dir`: any run directory, e.g. an arm
  of another table), read from its `eval/` or `control_eval/` (`source`) at any round (`round`), so a
  run that already holds the control or an earlier round is not paid for twice.

Arms run `parallel` at a time, each in its own process with `threads` torch threads. A killed
ablation resumes where it stopped (runs resume, finished evaluations are kept). The result is
`table.md` (the paper's shape: one row per arm, columns = tasks, mean ± spread over seeds),
`results.json` (every value per seed, the per-run sampling SE, where each row came from, the wall
time each job took) and `plot.png`.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

import numpy as np

from strokes.config_loader import from_dict, read, require
from strokes.errors import InputError
from strokes.io import atomic_path
from strokes.records import TASKS

from .config import EVAL_MODES, RunConfig, load_config
from .evaluation import eval_suite, evaluate_mode
from .run_dir import CONTROL_EVAL, EVAL, RunDir, write_event, write_scores
from .stats import SPREADS, spread

SOURCES = (EVAL, CONTROL_EVAL)
EVAL_SEED_STRIDE = 7919  # sampling seed of an evaluation arm's seed k: loop.eval_seed + stride * k


@dataclass
class ArmConfig:
    """One row of the table and where its numbers come from. Checked with the whole table
    (`_check`), since what an arm may say depends on the other arms and on the files it names."""

    set: list[str] = field(default_factory=list)
    """Overrides (`key=value`) on the table's base config, after the table's own `set`. An arm with
    neither `checkpoint` nor `run`/`run_dir` makes its own `selfplay run` per seed with them; an
    evaluation arm uses them for its run config too (sampling, eval suite)."""
    checkpoint: str = ""
    """Evaluate this checkpoint without training (`{seed}` is replaced by the seed)."""
    run: str = ""
    """Read the run of another arm of this table (same seeds) instead of making one."""
    run_dir: str = ""
    """Read this run directory instead (`{seed}` is replaced); a missing one makes the row "not yet
    run" instead of failing the table, so a table may borrow a row from a table that has not run yet."""
    mode: str = ""
    """The eval mode read (process | single_pass | judge | planner); "" = the table's `mode`."""
    source: str = "eval"
    """"eval" (the round's policy) or "control_eval" (the same round's control arm: the same parent
    and steps on base data only, `loop.control: true`)."""
    round: int = -1
    """The round read; -1 = the last round that has the source."""
    seeds: list[int] = field(default_factory=list)
    """This arm's seeds; empty = the table's."""

    @property
    def kind(self) -> str:
        """"train" (own run), "eval" (a checkpoint's evaluation) or "read" (another run)."""
        return "eval" if self.checkpoint else "read" if (self.run or self.run_dir) else "train"


@dataclass
class PretrainConfig:
    """The shared short recipe for arms that need their own base model (other data mixtures): each
    seed of every own-run arm first fine-tunes `loop.base_checkpoint` on `size` base trajectories
    made with the arm's data config, for exactly `steps` optimizer steps (the run config's `train`
    section otherwise), and the arm's loop starts from that checkpoint."""

    SECTION: ClassVar[str] = "pretrain"

    steps: int = 0
    """Optimizer steps of the fine-tune; 0: no fine-tune."""
    size: int = 3000
    """Base trajectories the fine-tune trains on."""
    set: list[str] = field(default_factory=list)
    """Overrides for the fine-tune only (e.g. train.lr)."""

    def __post_init__(self) -> None:
        require(self, "steps", self.steps >= 0, "must be >= 0")
        require(self, "size", self.size >= 1, "must be at least 1")


@dataclass
class AblationConfig:
    """One table. `base` is relative to the working directory, as `selfplay run` takes it."""

    SECTION: ClassVar[str] = ""  # the ablation file's own top-level fields

    base: str
    """The run config every arm starts from."""
    arms: dict[str, ArmConfig]
    """Arm name -> ArmConfig (or a plain list of overrides)."""
    title: str = ""
    """The table's title."""
    seeds: list[int] = field(default_factory=lambda: [0])
    """Seeds every arm runs (unless an arm names its own)."""
    columns: list[str] = field(default_factory=lambda: ["overall"])
    """The table's columns: task names, or "overall"."""
    mode: str = "process"
    """Eval mode read unless an arm names its own."""
    set: list[str] = field(default_factory=list)
    """Overrides applied to every arm's run config."""
    pretrain: PretrainConfig = field(default_factory=PretrainConfig)
    """The shared short recipe for arms that need their own base model."""
    spread: str = "half-range"
    """Over seeds: "half-range" ((max - min) / 2) or "se" (std / sqrt(n))."""
    parallel: int = 1
    """Jobs (arm x seed) at once."""
    threads: int = 1
    """Torch threads per job process (OMP_NUM_THREADS)."""

    def __post_init__(self) -> None:
        require(self, "mode", self.mode in EVAL_MODES, f"must be one of {', '.join(EVAL_MODES)}")
        require(self, "spread", self.spread in SPREADS, f"must be one of {', '.join(SPREADS)}")
        require(self, "parallel", self.parallel >= 1, "must be at least 1")
        require(self, "threads", self.threads >= 1, "must be at least 1")
        require(self, "seeds", bool(self.seeds) and all(type(s) is int for s in self.seeds),
                "must be a non-empty list of integers")
        require(self, "columns", bool(self.columns), "must name at least one task or 'overall'")
        for c in self.columns:
            require(self, "columns", c in (*TASKS, "overall"), f"has {c!r}, not one of {', '.join(TASKS)}, overall")


# ---- loading and checking -------------------------------------------------------------------------

def load_ablation(path: str | Path) -> AblationConfig:
    """The ablation file at `path`, checked field by field (one-line InputError naming the field),
    including every arm's run config, so a typo fails before any compute is spent."""
    raw = read(path)
    arms = raw.get("arms")
    if not isinstance(arms, dict) or not arms:
        raise InputError(f"{path}: field 'arms' must name at least one arm")
    parsed = {}
    for name, spec in arms.items():
        if isinstance(spec, list):
            spec = {"set": spec}
        parsed[str(name)] = from_dict(ArmConfig, spec, f"arms.{name}")
    cfg = from_dict(AblationConfig, {**raw, "arms": {}})
    cfg.arms = parsed
    _check(cfg)
    return cfg


def _check(cfg: AblationConfig) -> None:
    """What the table's fields cannot check alone: its base config file, and each arm against the
    other arms and the run configs it makes or reads."""
    def need(ok: bool, where: str, what: str) -> None:
        if not ok:
            raise InputError(f"config field '{where}' {what}")

    need(Path(cfg.base).is_file(), "base", f"names no file: {cfg.base!r}")
    for name, arm in cfg.arms.items():
        w = f"arms.{name}"
        need(sum(map(bool, (arm.checkpoint, arm.run, arm.run_dir))) <= 1, w,
             "takes at most one of 'checkpoint', 'run', 'run_dir'")
        mode = arm.mode or cfg.mode
        need(mode in EVAL_MODES, f"{w}.mode", f"must be one of {', '.join(EVAL_MODES)}, got {mode!r}")
        need(arm.source in SOURCES, f"{w}.source", f"must be one of {', '.join(SOURCES)}, got {arm.source!r}")
        need(arm.round >= -1, f"{w}.round", f"must be a round number or -1 (the last), got {arm.round}")
        need(all(type(s) is int for s in arm.seeds), f"{w}.seeds", f"must be a list of integers, got {arm.seeds!r}")
        need(all(isinstance(s, str) for s in arm.set), f"{w}.set", "must be a list of key=value strings")
        if arm.kind == "eval":
            need(arm.source == "eval" and arm.round in (-1, 0), w,
                 "evaluates a checkpoint: it has no control_eval source and no rounds")
        if arm.run:
            other = cfg.arms.get(arm.run)
            need(other is not None and other.kind == "train", f"{w}.run",
                 f"must name an arm of this table that makes its own run, got {arm.run!r}")
            need(not arm.set, f"{w}.set", "is not used by an arm that reads another arm's run")
            need(set(arm.seeds or cfg.seeds) <= set(other.seeds or cfg.seeds), f"{w}.seeds",
                 f"must be among the seeds of arm {arm.run!r}")
        if arm.kind == "read" and not arm.run:
            continue
        source_arm = cfg.arms[arm.run] if arm.run else arm
        try:
            run_cfg = load_config(cfg.base, [*cfg.set, *source_arm.set])
        except InputError as e:
            raise InputError(f"arms.{arm.run or name}.set: {e}") from None
        if arm.kind != "eval":
            need(mode in run_cfg.loop.eval_modes, f"{w}.mode",
                 f"{mode!r} is not among the run's loop.eval_modes {run_cfg.loop.eval_modes}")
            need(arm.source != "control_eval" or run_cfg.loop.control, f"{w}.source",
                 "control_eval needs loop.control: true in the run it reads")


def _slug(name: str) -> str:
    return re.sub(r"[^a-z0-9]+", "_", name.lower()).strip("_") or "arm"


def _seeds(cfg: AblationConfig, arm: ArmConfig) -> list[int]:
    return arm.seeds or cfg.seeds


def run_dir_of(cfg: AblationConfig, root: Path, name: str, seed: int) -> Path:
    """Where arm `name`'s numbers for `seed` live."""
    arm = cfg.arms[name]
    if arm.run:
        return run_dir_of(cfg, root, arm.run, seed)
    if arm.run_dir:
        return Path(arm.run_dir.replace("{seed}", str(seed)))
    return root / _slug(name) / f"seed{seed}"


# ---- jobs ---------------------------------------------------------------------------------------

def _env(cfg: AblationConfig) -> dict:
    env = dict(os.environ)
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        env[var] = str(cfg.threads)
    return env


def _call(cmd: list[str], log: Path, cfg: AblationConfig, what: str) -> None:
    with open(log, "a") as f:
        f.write(f"$ {' '.join(cmd)}\n")
        f.flush()
        proc = subprocess.run(cmd, check=False, stdout=f, stderr=subprocess.STDOUT, env=_env(cfg))
    if proc.returncode != 0:
        raise InputError(f"{what} failed; see {log}")


def _seed_sets(seed: int) -> list[str]:
    return [f"loop.seed={seed}", f"critique.seed={seed}", f"rollout.seed={seed}", f"train.seed={seed}"]


def _pretrain(cfg: AblationConfig, root: Path, name: str, seed: int, log: Path) -> Path:
    """The arm's own base model for `seed`: `loop.base_checkpoint` fine-tuned on the arm's data."""
    arm = cfg.arms[name]
    out = root / _slug(name) / f"pretrain_seed{seed}"
    if (out / "checkpoint" / "config.json").is_file():
        return out / "checkpoint"
    base = load_config(cfg.base, [*cfg.set, *arm.set]).loop.base_checkpoint
    sets = [*cfg.set, *arm.set, f"train.seed={seed}", f"data.seed={seed}", f"data.size={cfg.pretrain.size}",
            f"train.max_steps={cfg.pretrain.steps}", *cfg.pretrain.set]
    cmd = [sys.executable, "-m", "selfplay.cli", "train", "--config", cfg.base, "--out", str(out), "--init", base]
    for s in sets:
        cmd += ["--set", s]
    out.mkdir(parents=True, exist_ok=True)
    _call(cmd, log, cfg, f"pretrain of arm '{name}' seed {seed}")
    for scratch in ("data", "trainer"):  # the data is rebuilt from the config if ever needed
        shutil.rmtree(out / scratch, ignore_errors=True)
    return out / "checkpoint"


def _run_train_arm(cfg: AblationConfig, root: Path, path: Path, name: str, seed: int) -> None:
    """One arm and seed: [fine-tune,] then `selfplay run` (resumable, isolated, one log file)."""
    arm = cfg.arms[name]
    run_dir = run_dir_of(cfg, root, name, seed)
    log = root / f"{_slug(name)}_seed{seed}.log"
    run_dir.parent.mkdir(parents=True, exist_ok=True)
    sets = [*_seed_sets(seed), *cfg.set, *arm.set]
    if cfg.parallel > 1:  # jobs share the cores already: no side process beside each (loop.overlap)
        sets.append("loop.overlap=false")
    if cfg.pretrain.steps > 0:
        sets.append(f"loop.base_checkpoint={_pretrain(cfg, root, name, seed, log).resolve()}")
    cmd = [sys.executable, "-m", "selfplay.cli", "run", cfg.base, "--runs", str(run_dir.parent), "--name", run_dir.name]
    for s in sets:
        cmd += ["--set", s]
    if (run_dir / "state.json").exists():
        cmd.append("--resume")
    _call(cmd, log, cfg, f"arm '{name}' seed {seed}")


def _run_eval_arm(cfg: AblationConfig, root: Path, path: Path, name: str, seed: int) -> None:
    """One evaluation arm and seed, in a child process (`selfplay ablate FILE --only ARM --seed K`)."""
    if _eval_done(run_dir_of(cfg, root, name, seed)):
        return
    cmd = [sys.executable, "-m", "selfplay.cli", "ablate", str(path), "--runs", str(root.parent),
           "--only", name, "--seed", str(seed)]
    _call(cmd, root / f"{_slug(name)}_seed{seed}.log", cfg, f"arm '{name}' seed {seed}")


def _eval_done(run_dir: Path) -> bool:
    return bool(RunDir(run_dir).scores(0, EVAL))


def eval_arm(cfg: AblationConfig, root: Path, name: str, seed: int) -> Path:
    """Evaluate an evaluation arm's checkpoint for `seed` in this process, into round 0's eval stage
    of its run folder (the loop's layout, so the same reader serves every arm)."""
    import torch

    arm = cfg.arms[name]
    run_dir = run_dir_of(cfg, root, name, seed)
    final = RunDir(run_dir).stage(0, EVAL)
    if _eval_done(run_dir):
        return final
    torch.set_num_threads(cfg.threads)
    run_cfg = load_config(cfg.base, [*cfg.set, *arm.set])
    checkpoint = Path(arm.checkpoint.replace("{seed}", str(seed)))
    if not (checkpoint / "config.json").is_file():
        raise InputError(f"arms.{name}.checkpoint: {checkpoint} is not a checkpoint (no config.json)")
    t0 = time.time()
    with atomic_path(final, folder=True) as tmp:
        scores = evaluate_checkpoint(run_cfg, checkpoint, arm.mode or cfg.mode, seed, tmp)
        write_event(tmp, {"event": "eval", "arm": name, "seed": seed, "seconds": round(time.time() - t0, 2), **scores})
    return final


def evaluate_checkpoint(cfg: RunConfig, checkpoint: Path, mode: str, seed: int, out: Path) -> dict:
    """The loop's held-out suite (`loop.eval_per_task`, `loop.eval_seed`, `loop.eval_samples`) in one
    mode, GenEval layout in `out/<mode>/geneval` and the scores as the loop writes them.
    Seed k samples with `loop.eval_seed + EVAL_SEED_STRIDE * k`: seed 0 is the loop's own eval."""
    sample_seed = cfg.loop.eval_seed + EVAL_SEED_STRIDE * seed
    scores = {mode: evaluate_mode(cfg, checkpoint, eval_suite(cfg), mode, sample_seed, out)}
    write_scores(out, scores)
    return scores


# ---- reading --------------------------------------------------------------------------------------

def scores_at(run_dir: Path, mode: str, source: str = "eval", rnd: int = -1) -> dict | None:
    """Scores of `mode` in `run_dir`'s round `rnd` (-1: the last round that has `source`): task
    accuracies, overall, its sampling SE and the round read; None when there is none yet."""
    run = RunDir(run_dir)
    for r in [rnd] if rnd >= 0 else reversed(run.rounds()):
        data = run.scores(r, source)
        if data:
            if mode not in data:
                raise InputError(f"{run.stage(r, source)}: no {mode!r} scores (it has {', '.join(data)})")
            s = data[mode]
            return {"overall": s["overall"], "overall_se": s["overall_se"], **s["per_task"], "round": r}
    return None


def _origin(cfg: AblationConfig, name: str) -> str:
    arm = cfg.arms[name]
    mode = arm.mode or cfg.mode
    rnd = "last round" if arm.round < 0 else f"round {arm.round}"
    if arm.kind == "eval":
        return f"{arm.checkpoint}, {mode} mode, no training"
    where = f"arm '{arm.run}'" if arm.run else arm.run_dir if arm.run_dir else "own run"
    if arm.kind == "train" and cfg.pretrain.steps:
        where += f" (after a {cfg.pretrain.steps}-step fine-tune on its data)"
    return f"{where}, {arm.source}, {rnd}, {mode} mode"


# ---- the whole table --------------------------------------------------------------------------------

def run_ablation(path: str | Path, runs: str | Path = "runs", only: list[str] | None = None,
                 seed: int | None = None) -> dict | None:
    """Run (or resume) every arm and seed, then tabulate. With `only`, run just those arms (and
    `seed`, if given) and tabulate nothing; an evaluation arm then runs in this process."""
    path = Path(path)
    cfg = load_ablation(path)
    root = Path(runs) / path.stem
    bad = [a for a in only or [] if a not in cfg.arms]
    if bad:
        raise InputError(f"--only: no arm {bad[0]!r} (arms: {', '.join(cfg.arms)})")
    root.mkdir(parents=True, exist_ok=True)
    if only:
        for name in only:
            for k in ([seed] if seed is not None else _seeds(cfg, cfg.arms[name])):
                if cfg.arms[name].kind == "eval":
                    eval_arm(cfg, root, name, k)
                elif cfg.arms[name].kind == "train":
                    _run_train_arm(cfg, root, path, name, k)
        return None
    # Seed-major: an ablation stopped early has every arm at its first seeds (the table shows how many).
    seeds = sorted({k for arm in cfg.arms.values() for k in _seeds(cfg, arm)})
    jobs = [(name, k) for k in seeds for name, arm in cfg.arms.items() if arm.kind != "read" and k in _seeds(cfg, arm)]
    timings_file = root / "timings.json"
    timings = json.loads(timings_file.read_text()) if timings_file.is_file() else {}
    lock = threading.Lock()

    def job(j: tuple[str, int]) -> None:
        """One arm and seed; its wall time adds to `timings.json` (summed over invocations)."""
        name, k = j
        t0 = time.time()
        if cfg.arms[name].kind == "eval":
            _run_eval_arm(cfg, root, path, name, k)
        else:
            _run_train_arm(cfg, root, path, name, k)
        with lock:
            arm_t = timings.setdefault(name, {})
            arm_t[str(k)] = round(arm_t.get(str(k), 0.0) + time.time() - t0, 1)
            timings_file.write_text(json.dumps(timings, indent=2))

    t0 = time.time()
    with ThreadPoolExecutor(max_workers=cfg.parallel) as pool:
        for _ in pool.map(job, jobs):
            pass
    timings["_last_invocation_seconds"] = round(time.time() - t0, 1)
    timings_file.write_text(json.dumps(timings, indent=2))
    return tabulate(cfg, root)


def tabulate(cfg: AblationConfig, root: Path) -> dict:
    """Read every arm's numbers and write `results.json`, `table.md` and `plot.png`; returns the
    results. Seeds without numbers yet are left out of a row (its `seeds` column counts the rest)."""
    results: dict[str, dict] = {}
    for name, arm in cfg.arms.items():
        mode = arm.mode or cfg.mode
        row: dict = {"origin": _origin(cfg, name), "seeds": [], "rounds": [], "eval_se": [],
                     **{c: [] for c in cfg.columns}}
        for k in _seeds(cfg, arm):
            d = run_dir_of(cfg, root, name, k)
            s = scores_at(d, mode, arm.source, arm.round)
            if s is None:  # not run yet (a stopped ablation, a table borrowed from): the seeds column says so
                continue
            row["seeds"].append(k)
            row["rounds"].append(s["round"])
            row["eval_se"].append(s["overall_se"])
            for c in cfg.columns:
                row[c].append(s[c])
        results[name] = row
    timings = root / "timings.json"
    out = {"title": cfg.title, "mode": cfg.mode, "seeds": cfg.seeds, "spread": cfg.spread,
           "columns": cfg.columns, "results": results,
           "seconds": json.loads(timings.read_text()) if timings.is_file() else {}}
    (root / "results.json").write_text(json.dumps(out, indent=2))
    (root / "table.md").write_text(markdown(out, cfg.columns))
    _plot(out, cfg.columns, root / "plot.png")
    return out


def markdown(out: dict, columns: list[str]) -> str:
    """Mean ± spread over seeds, in points, one row per arm; where each row came from below."""
    how = out.get("spread", "half-range")
    head = "| arm | " + " | ".join(columns) + " | seeds |\n|---|" + "---|" * (len(columns) + 1) + "\n"
    rows, notes = [], []
    for arm, row in out["results"].items():
        if not row.get("seeds", [0]):
            rows.append(f"| {arm} | " + " | ".join("not yet run" for _ in columns) + " | - |")
        else:
            cells = []
            for c in columns:
                v = 100 * np.array(row[c])
                cells.append(f"{v.mean():.1f} ± {spread(v, how):.1f}" if len(v) > 1 else f"{v.mean():.1f}")
            rows.append(f"| {arm} | " + " | ".join(cells) + f" | {', '.join(map(str, row.get('seeds', [])))} |")
        if "origin" in row:
            se = f"; eval sampling SE of overall per run ≈ {100 * np.mean(row['eval_se']):.1f}" if row.get("eval_se") else ""
            notes.append(f"- {arm}: {row['origin']}{se}")
    title = f"{out['title']} (mean ± {how} over seeds {out['seeds']}, points)\n\n" if out["title"] else ""
    return title + head + "\n".join(rows) + "\n" + ("\n" + "\n".join(notes) + "\n" if notes else "")


def _plot(out: dict, columns: list[str], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    arms = [a for a, row in out["results"].items() if row.get("seeds", [0]) and row[columns[0]]]
    how = out.get("spread", "half-range")
    fig, ax = plt.subplots(figsize=(1.6 + 1.3 * len(columns) * max(len(arms), 1) / 3, 3.4))
    width = 0.8 / max(len(arms), 1)
    for i, arm in enumerate(arms):
        vals = [100 * np.mean(out["results"][arm][c]) for c in columns]
        errs = [100 * spread(np.array(out["results"][arm][c]), how) for c in columns]
        ax.bar(np.arange(len(columns)) + i * width, vals, width, yerr=errs, capsize=2, label=arm)
    ax.set_xticks(np.arange(len(columns)) + width * (len(arms) - 1) / 2, columns)
    ax.set_ylabel("accuracy (%)")
    ax.set_title(out["title"] or "ablation")
    ax.legend(fontsize=7)
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)
