"""The model-agnostic trajectory (docs/design.md §4) and its storage as JSONL + PNG or an HF dataset.

A trajectory is a prompt and ordered steps. A step is a Plan (`instruction` for <ins>, `description`
of the whole scene so far for <des>), a Sketch (`image`), an Inspect (`inspection` text), and zero or
more Refines (corrective instruction, re-drawn image, its own inspection). Two flags mark deliberate
mistakes that exist only to be inspected: `wrong_plan` (no loss on the plan or its sketch) and
`wrong_image` (no loss on the sketch). A third, `context`, marks a model's own plan and sketch kept in a
self-sampled trace as context: not wrong, but not to be imitated either (no loss on them; its
inspection is still trained); on a refinement it keeps all of its tokens as context. Only a policy's
processor turns this into tokens.
"""

from __future__ import annotations

import io
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable

import numpy as np
from PIL import Image

from .io import atomic_path

MODES = ("process", "judge", "single_pass")
"""How a trajectory is made: "process" (the model plans, sketches, inspects and refines by itself),
"judge" (an external judge writes each inspection and correction), "single_pass" (prompt -> one image)."""


@dataclass
class Refinement:
    instruction: str  # the <refine> corrective instruction
    image: np.ndarray  # the corrected visual state
    inspection: str  # inspection of the corrected state
    wrong_image: bool = False
    context: bool = False  # kept as context only: no loss on any of its tokens


@dataclass
class Step:
    instruction: str
    description: str
    image: np.ndarray
    inspection: str
    refinements: list[Refinement] = field(default_factory=list)
    wrong_plan: bool = False
    wrong_image: bool = False
    edit: str = "add"  # the kind of edit the instruction makes (metadata only)
    context: bool = False  # the model's own plan and sketch, kept as context only

    @property
    def final_image(self) -> np.ndarray:
        return self.refinements[-1].image if self.refinements else self.image

    @property
    def conflict_found(self) -> bool:
        return bool(self.refinements)


@dataclass
class Trajectory:
    prompt: str
    steps: list[Step]
    record: dict | None = None  # the GenEval-format record the prompt came from, when known
    source: str = ""  # scene_graph | conflict | alignment | self | symbolic | rollout
    meta: dict = field(default_factory=dict)

    @property
    def final_image(self) -> np.ndarray | None:
        return self.steps[-1].final_image if self.steps else None

    @property
    def single_pass(self) -> bool:
        """A single-pass trajectory is the prompt and one image, with no plan or inspection."""
        return self.meta.get("mode") == "single_pass"

    def images(self) -> list[np.ndarray]:
        """Every visual state in order (sketches and refined states)."""
        out = []
        for s in self.steps:
            out.append(s.image)
            out.extend(r.image for r in s.refinements)
        return out


def single_pass_trajectory(prompt: str, image: np.ndarray, record: dict | None = None) -> Trajectory:
    return Trajectory(prompt, [Step("", "", image, "")], record, "single_pass", {"mode": "single_pass"})


# ---- rows: the storage form (text + PNG bytes), shared by JSONL and HF datasets ------------------

def png_bytes(image: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.asarray(image, dtype=np.uint8)).save(buf, format="PNG", compress_level=1)
    return buf.getvalue()


def png_array(data: bytes | dict | Image.Image) -> np.ndarray:
    if isinstance(data, dict):  # HF datasets Image feature, undecoded
        data = data["bytes"]
    if isinstance(data, Image.Image):
        return np.asarray(data.convert("RGB"))
    with Image.open(io.BytesIO(data)) as im:
        return np.asarray(im.convert("RGB"))


def to_row(t: Trajectory) -> dict:
    """A flat row: text fields plus `images`, a list of PNGs in `Trajectory.images()` order."""
    steps = []
    for s in t.steps:
        steps.append({
            "instruction": s.instruction, "description": s.description, "inspection": s.inspection,
            "wrong_plan": s.wrong_plan, "wrong_image": s.wrong_image, "edit": s.edit, "context": s.context,
            "refinements": [{"instruction": r.instruction, "inspection": r.inspection,
                             "wrong_image": r.wrong_image, "context": r.context} for r in s.refinements],
        })
    return {
        "prompt": t.prompt,
        "record": json.dumps(t.record) if t.record is not None else "",
        "source": t.source,
        "meta": json.dumps(t.meta),
        "steps": json.dumps(steps),
        "images": [png_bytes(im) for im in t.images()],
    }


def from_row(row: dict) -> Trajectory:
    images = iter([png_array(b) for b in row["images"]])
    steps = []
    for s in json.loads(row["steps"]):
        image = next(images)
        refs = [Refinement(r["instruction"], next(images), r["inspection"], r["wrong_image"], r.get("context", False))
                for r in s["refinements"]]
        steps.append(Step(s["instruction"], s["description"], image, s["inspection"], refs,
                          s["wrong_plan"], s["wrong_image"], s["edit"], s.get("context", False)))
    return Trajectory(row["prompt"], steps, json.loads(row["record"]) if row["record"] else None,
                      row["source"], json.loads(row["meta"]))


# ---- JSONL + PNG folder ------------------------------------------------------------------------

def write_jsonl(trajectories: Iterable[Trajectory], folder: str | Path) -> int:
    """`folder/trajectories.jsonl` plus `folder/images/<n:06d>_<k:02d>.png`, written atomically."""
    n = 0
    with atomic_path(folder, folder=True) as tmp, open(tmp / "trajectories.jsonl", "w") as f:
        (tmp / "images").mkdir()
        for n, t in enumerate(trajectories, start=1):
            row = to_row(t)
            names = []
            for k, data in enumerate(row.pop("images")):
                name = f"images/{n - 1:06d}_{k:02d}.png"
                (tmp / name).write_bytes(data)
                names.append(name)
            row["images"] = names
            f.write(json.dumps(row) + "\n")
    return n


def read_jsonl(folder: str | Path) -> list[Trajectory]:
    folder = Path(folder)
    out = []
    for line in (folder / "trajectories.jsonl").read_text().splitlines():
        row = json.loads(line)
        row["images"] = [(folder / name).read_bytes() for name in row["images"]]
        out.append(from_row(row))
    return out


# ---- Hugging Face datasets ---------------------------------------------------------------------

def features():
    import datasets

    return datasets.Features({
        "prompt": datasets.Value("string"),
        "record": datasets.Value("string"),
        "source": datasets.Value("string"),
        "meta": datasets.Value("string"),
        "steps": datasets.Value("string"),
        "images": datasets.List(datasets.Image()),
    })


def to_dataset(trajectories: Iterable[Trajectory]):
    """An HF `datasets.Dataset` with images as `Image` features (PNG bytes, decoded on access)."""
    import datasets

    rows = [to_row(t) for t in trajectories]
    cols = {k: [r[k] for r in rows] for k in ("prompt", "record", "source", "meta", "steps")}
    cols["images"] = [[{"bytes": b, "path": None} for b in r["images"]] for r in rows]
    return datasets.Dataset.from_dict(cols, features=features())


def from_dataset(ds) -> list[Trajectory]:
    """Trajectories back from a dataset made by `to_dataset` (images read without a decode pass)."""
    import datasets

    raw = ds.cast_column("images", datasets.List(datasets.Image(decode=False)))
    return [from_row(row) for row in raw]
