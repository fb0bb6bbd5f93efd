"""What a rollout hands to people and to evaluation: GenEval folders and image strips."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np

from selfplay.geneval import write_samples
from selfplay.shapeworld import PromptRecord
from selfplay.trajectory import Trajectory


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


def strip(traj: Trajectory, scale: int = 4, gap: int = 4) -> np.ndarray:
    """Every visual state of a trajectory side by side (sketches and refined states, in order),
    upscaled `scale` times with nearest neighbours and separated by grey gaps."""
    images = traj.images() or [final_image(traj)]
    big = [np.repeat(np.repeat(np.asarray(im, np.uint8), scale, 0), scale, 1) for im in images]
    h = max(b.shape[0] for b in big)
    sep = np.full((h, gap, 3), 160, np.uint8)
    parts = []
    for n, b in enumerate(big):
        if n:
            parts.append(sep)
        parts.append(b)
    return np.concatenate(parts, 1)


def save_png_atomic(image: np.ndarray, path: str | Path) -> Path:
    from PIL import Image

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    Image.fromarray(np.asarray(image, np.uint8)).save(tmp, format="PNG")
    tmp.replace(path)
    return path


def describe(traj: Trajectory) -> str:
    """The trajectory as text, step by step (what `selfplay sample` prints)."""
    lines = [f"prompt: {traj.prompt}"]
    if traj.single_pass:
        lines.append("  (single pass: one image)")
    else:
        for n, s in enumerate(traj.steps, 1):
            lines.append(f"step {n}")
            lines.append(f"  plan     <ins> {s.instruction}")
            lines.append(f"           <des> {s.description}")
            lines.append(f"  sketch   image {n}.0")
            lines.append(f"  inspect  {s.inspection}")
            for m, r in enumerate(s.refinements, 1):
                lines.append(f"  refine   {r.instruction}")
                lines.append(f"  sketch   image {n}.{m}")
                lines.append(f"  inspect  {r.inspection}")
    if "failed" in traj.meta:
        lines.append(f"failed: {traj.meta['failed']}")
    lines.append(f"{len(traj.images())} visual states, {traj.meta.get('tokens', '?')} tokens")
    return "\n".join(lines)
