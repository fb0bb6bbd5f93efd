"""Building the base dataset: prompts from the train split, one pipeline per trajectory by the
configured mixture, made in parallel worker processes, saved as an HF dataset with a summary."""

from __future__ import annotations

import json
import random
import re
import time
from collections import Counter
from dataclasses import dataclass, field
from multiprocessing import get_context
from pathlib import Path
from typing import ClassVar

import numpy as np

from ..config_loader import require
from ..errors import InputError
from ..io import atomic_path
from ..records import TASKS
from ..shapeworld import sample_record
from ..trajectory import Trajectory, features, from_row, to_row
from .pipelines import SOURCES, PipelineConfig, TrajectoryMaker


@dataclass
class DataConfig:
    """The base data: how much, from which pipelines, over which tasks."""

    SECTION: ClassVar[str] = "data"

    size: int = 10000
    """Trajectories in the base dataset."""
    mixture: dict[str, float] = field(default_factory=lambda: {"scene_graph": 2.0, "conflict": 1.0, "alignment": 1.0,
                                                                "single_pass": 1.0})
    """Relative weight of each pipeline (scene_graph, conflict, alignment, single_pass)."""
    tasks: dict[str, float] = field(default_factory=lambda: {t: 1.0 for t in TASKS})
    """Relative weight of each GenEval task among the sampled prompts."""
    pipelines: PipelineConfig = field(default_factory=PipelineConfig)
    """How each pipeline makes its trajectories."""
    image_size: int = 64
    """Canvas side in pixels."""
    seed: int = 0
    """Seed of the prompts and of every pipeline choice."""
    workers: int = 2
    """Processes that make trajectories."""

    def __post_init__(self) -> None:
        for name, table, known in (("mixture", self.mixture, SOURCES), ("tasks", self.tasks, TASKS)):
            bad = [k for k in table if k not in known]
            require(self, f"{name}.{bad[0] if bad else ''}", not bad, f"is not one of {', '.join(known)}")
            # the loader refuses a non-number already; this covers a DataConfig built in code, which
            # would otherwise fail below as "'<' not supported between 'str' and 'float'"
            text = [k for k, v in table.items() if isinstance(v, bool) or not isinstance(v, (int, float))]
            require(self, f"{name}.{text[0] if text else ''}", not text, "must be a number")
            require(self, name, bool(table) and min(table.values()) >= 0 and sum(table.values()) > 0,
                    "needs non-negative weights with a positive sum")


CHUNK = 500
_VERB_KIND = {"add": "add", "make": "recolor", "move": "move", "remove": "remove", "swap": "swap", "replace": "replace"}


def _make_chunk(args: tuple[DataConfig, int, int]) -> list[dict]:
    cfg, chunk, n = args
    rng = random.Random(f"{cfg.seed}:{chunk}")
    maker = TrajectoryMaker(cfg.pipelines, cfg.image_size)
    sources, sw = zip(*cfg.mixture.items())
    tasks, tw = zip(*cfg.tasks.items())
    rows = []
    for _ in range(n):
        rec = sample_record(rng.choices(tasks, tw)[0], rng, "train")
        rows.append(to_row(maker.make(rng.choices(sources, sw)[0], rec, rng)))
    return rows


def make_rows(cfg: DataConfig, progress: bool = True) -> list[dict]:
    """`cfg.size` trajectory rows; the same config gives the same rows whatever the worker count."""
    from tqdm import tqdm

    jobs = [(cfg, c, min(CHUNK, cfg.size - c * CHUNK)) for c in range((cfg.size + CHUNK - 1) // CHUNK)]
    rows: list[dict] = []
    bar = tqdm(total=cfg.size, desc="trajectories", unit="traj", disable=not progress or None)
    if cfg.workers > 1 and len(jobs) > 1:
        with get_context("fork").Pool(cfg.workers) as pool:
            for part in pool.imap(_make_chunk, jobs):
                rows.extend(part)
                bar.update(len(part))
    else:
        for job in jobs:
            rows.extend(_make_chunk(job))
            bar.update(job[2])
    bar.close()
    return rows


def _token_count(text: str) -> int:
    return len(re.findall(r"\w+|[^\w\s]+", text))


def summarize(trajs: list[Trajectory], codes_per_image: int = 64) -> dict:
    """Counts per source, edit kind and error kind, steps per trajectory, and token lengths."""
    lengths, steps = [], []
    edits, errors, sources = Counter(), Counter(), Counter()
    for t in trajs:
        sources[t.source] += 1
        errors[f"{t.source}:{t.meta.get('error', t.meta.get('detour', 'none'))}"] += 1
        steps.append(len(t.steps))
        n = 2 + _token_count(t.prompt) + 1
        if t.single_pass:  # <prompt> … </prompt> <vision_start> codes <vision_end> <eos>: no step text
            lengths.append(n + codes_per_image + 2)
            continue
        for s in t.steps:
            edits[s.edit] += 1
            n += 6 + _token_count(s.instruction) + _token_count(s.description) + _token_count(s.inspection)
            n += codes_per_image + 2
            for r in s.refinements:
                edits[f"refine:{_VERB_KIND.get(r.instruction.split()[0], 'other')}"] += 1
                n += 4 + _token_count(r.instruction) + _token_count(r.inspection) + codes_per_image + 2
        lengths.append(n)
    lengths_a = np.array(lengths)
    return {
        "trajectories": len(trajs),
        "per_source": dict(sources),
        "per_edit_kind": dict(sorted(edits.items())),
        "per_variant": dict(sorted(errors.items())),
        "mean_steps": float(np.mean(steps)),
        "mean_steps_per_source": {src: float(np.mean([n for n, t in zip(steps, trajs) if t.source == src]))
                                  for src in sorted(sources)},
        "tokens": {"mean": float(lengths_a.mean()), "p50": float(np.median(lengths_a)),
                   "p95": float(np.percentile(lengths_a, 95)), "max": int(lengths_a.max()),
                   "total": int(lengths_a.sum())},
    }


def build(cfg: DataConfig, out: str | Path, progress: bool = True) -> dict:
    """Make the base dataset and save it with `summary.json` at `out`, atomically."""
    import datasets

    out = Path(out)
    t0 = time.time()
    rows = make_rows(cfg, progress)
    made = time.time() - t0
    cols = {k: [r[k] for r in rows] for k in ("prompt", "record", "source", "meta", "steps")}
    cols["images"] = [[{"bytes": b, "path": None} for b in r["images"]] for r in rows]
    ds = datasets.Dataset.from_dict(cols, features=features())
    with atomic_path(out, folder=True) as tmp:
        ds.save_to_disk(str(tmp))
        summary = summarize([from_row(r) for r in rows])
        summary["seconds_to_make"] = round(made, 2)
        summary["seconds_total"] = round(time.time() - t0, 2)
        summary["workers"] = cfg.workers
        (tmp / "summary.json").write_text(json.dumps(summary, indent=2))
    return summary


def load(path: str | Path):
    """The HF dataset saved by `build` (or by a round's critique builder)."""
    import datasets

    p = Path(path)
    if not (p / "dataset_info.json").is_file() and not (p / "state.json").is_file():
        raise InputError(f"{p}: not a saved dataset (run `selfplay data build` first)")
    return datasets.load_from_disk(str(p))
