"""What a rollout hands to evaluation: final images in GenEval folders (strips and text for people
are in `selfplay.visualize`)."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np

from strokes.geneval import write_samples
from strokes.io import atomic_path
from strokes.records import PromptRecord
from strokes.trajectory import Trajectory


def final_image(traj: Trajectory, size: int = 64) -> np.ndarray:
    """The last visual state; a blank canvas for a trajectory that produced none (it scores as wrong)."""
    img = traj.final_image
    return np.full((size, size, 3), 255, np.uint8) if img is None else img


def write_geneval(trajectories: Sequence[Trajectory], records: Sequence[PromptRecord], out: str | Path,
                  size: int = 64) -> int:
    """Final images in GenEval's layout (`selfplay score` reads it): record `meta["index"]`, sample
    `meta["sample"]`. Every record gets as many samples as the most-sampled record."""
    by_record: dict[int, dict[int, np.ndarray]] = {i: {} for i in range(len(records))}
    for t in trajectories:
        by_record[int(t.meta["index"])][int(t.meta["sample"])] = final_image(t, size)
    samples = max((len(v) for v in by_record.values()), default=0)
    blank = np.full((size, size, 3), 255, np.uint8)
    items = [(rec, [by_record[i].get(k, blank) for k in range(samples)]) for i, rec in enumerate(records)]
    return write_samples(Path(out), items)


def save_png_atomic(image: np.ndarray, path: str | Path) -> Path:
    from PIL import Image

    path = Path(path)
    with atomic_path(path) as tmp:
        Image.fromarray(np.asarray(image, np.uint8)).save(tmp, format="PNG")
    return path
