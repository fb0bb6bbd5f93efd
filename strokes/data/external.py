"""A team's own interleaved trajectories, read for training (`selfplay train --data`).

Three forms hold the same rows (docs/data.md, "Bring your own trajectories"):

- a Hugging Face dataset saved with `save_to_disk` (what `selfplay data build` and every round
  write), images as an `Image` feature (bytes or files, any format PIL reads);
- a folder holding `trajectories.jsonl` and its images (what `strokes.trajectory.write_jsonl` writes);
- a `.jsonl` file whose rows name their images by paths relative to it.

A row: `prompt` (text); `steps` (a list of step objects, or that list as a JSON string): each
`{"instruction", "description", "inspection", "refinements": [{"instruction", "inspection"}, ...]}`
plus optional loss flags (`wrong_plan`, `wrong_image`, `context`) and `edit`; `images`, one per
visual state in drawing order (each step's sketch, then its refinements'); optional `record` (a
GenEval record, object or JSON text), `source`, `meta`. Every row is checked on reading, so a
malformed one fails here with its row number rather than inside the trainer.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from ..errors import InputError
from ..records import PromptRecord, json_lines
from ..trajectory import Refinement, Step, Trajectory, png_array, to_dataset


def load_trajectories(path: str | Path, image_side: int | None = None):
    """The trajectories at `path` (any of the three forms) as a dataset in our row format; with
    `image_side`, every image must be that many pixels square (a policy whose processor needs it)."""
    p = Path(path)
    if p.is_file() and p.suffix == ".jsonl":
        rows, base = (row for _, row in json_lines(p)), p.parent
    elif (p / "trajectories.jsonl").is_file():
        rows, base = (row for _, row in json_lines(p / "trajectories.jsonl")), p
    elif (p / "dataset_info.json").is_file() or (p / "state.json").is_file():
        import datasets

        data = datasets.load_from_disk(str(p))
        if isinstance(data, datasets.DatasetDict):
            raise InputError(f"{p}: a DatasetDict; save one split (e.g. data['train'].save_to_disk(...))")
        if "images" in data.column_names:
            data = data.cast_column("images", datasets.List(datasets.Image(decode=False)))
        rows, base = iter(data), p
    else:
        raise InputError(f"{p}: no trajectories (a save_to_disk dataset folder, a folder with trajectories.jsonl, "
                         f"or a .jsonl file)")
    trajectories = [_trajectory(row, f"{p}: row {n}", base, image_side) for n, row in enumerate(rows, start=1)]
    if not trajectories:
        raise InputError(f"{p}: no trajectories")
    return to_dataset(trajectories)


def _trajectory(row: object, where: str, base: Path, image_side: int | None) -> Trajectory:
    """One checked row as a `Trajectory`."""
    if not isinstance(row, dict):
        raise InputError(f"{where}: expected an object")
    missing = [k for k in ("prompt", "steps", "images") if k not in row]
    if missing:
        raise InputError(f"{where}: missing field(s) {', '.join(missing)}")
    try:
        steps = json.loads(row["steps"]) if isinstance(row["steps"], str) else row["steps"]
    except json.JSONDecodeError as e:
        raise InputError(f"{where}: 'steps' is not JSON ({e.msg})") from None
    if not isinstance(steps, list) or not steps:
        raise InputError(f"{where}: 'steps' must be a non-empty list of steps")
    images = [_image(im, f"{where}: images[{k}]", base, image_side) for k, im in enumerate(row["images"] or [])]
    states = sum(1 + len(s.get("refinements", [])) if isinstance(s, dict) else 1 for s in steps)
    if len(images) != states:
        raise InputError(f"{where}: needs one image per visual state (steps and refinements: {states}), "
                         f"got {len(images)}")
    it = iter(images)
    out = [_step(s, it, f"{where}: steps[{k}]") for k, s in enumerate(steps)]
    record = row.get("record") or None
    record = json.loads(record) if isinstance(record, str) else record
    if record is not None:
        PromptRecord.from_json(record, f"{where}: record")
    meta = row.get("meta") or {}
    return Trajectory(str(row["prompt"]), out, record, str(row.get("source") or "external"),
                      json.loads(meta) if isinstance(meta, str) else dict(meta))


def _step(s: object, images, where: str) -> Step:
    if not isinstance(s, dict) or not all(isinstance(s.get(k), str) for k in ("instruction", "description", "inspection")):
        raise InputError(f"{where}: a step needs text fields instruction, description and inspection")
    refs = []
    for k, r in enumerate(s.get("refinements", [])):
        if not isinstance(r, dict) or not all(isinstance(r.get(x), str) for x in ("instruction", "inspection")):
            raise InputError(f"{where}: refinements[{k}] needs text fields instruction and inspection")
        refs.append(Refinement(r["instruction"], None, r["inspection"], bool(r.get("wrong_image")),
                               bool(r.get("context"))))
    step = Step(s["instruction"], s["description"], next(images), s["inspection"], refs,
                *(bool(s.get(f)) for f in ("wrong_plan", "wrong_image")), str(s.get("edit", "add")),
                bool(s.get("context")))
    for r in refs:
        r.image = next(images)
    return step


def _image(value: object, where: str, base: Path, side: int | None) -> np.ndarray:
    """An image given as bytes, an undecoded `Image` feature, a PIL image or a path (relative to `base`)."""
    if isinstance(value, dict) and value.get("bytes") is None and value.get("path"):
        value = value["path"]
    try:
        if isinstance(value, str):
            value = (base / value).read_bytes()
        image = png_array(value)
    except Exception as e:  # noqa: BLE001 -- a bad file or bytes fail in many ways; each means the same here
        raise InputError(f"{where}: unreadable image ({type(e).__name__})") from None
    if side is not None and image.shape[:2] != (side, side):
        raise InputError(f"{where}: image is {image.shape[1]}x{image.shape[0]}; this policy reads {side}x{side} images")
    return image
