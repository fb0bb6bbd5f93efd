"""The wire format of a judge request: a step as OpenAI chat messages, and back again.

The GPT judge builds the messages (`build_messages`), the judge server reads them back
(`parse_messages`); both follow the labels in the prompts file (judges/prompts.yaml), so a step
survives the round trip exactly (texts, record, earlier steps and every image). The verdict's
structured-output schema is derived here from the shared `Verdict` model (`response_format`).
"""

from __future__ import annotations

import base64
import io
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import yaml
from PIL import Image

from strokes.errors import InputError
from strokes.records import PromptRecord
from strokes.trajectory import Refinement, Step, png_bytes
from strokes.verdict import StepContext, Verdict

MAX_SIDE = 1024
"""The largest image side a judge server reads for a judge that reads any size (no `image_side`)."""
DEFAULT_PROMPTS = Path(__file__).with_name("prompts.yaml")
BUILTIN_PROMPTS = {"": DEFAULT_PROMPTS, "shapeworld": DEFAULT_PROMPTS,
                   "natural": Path(__file__).with_name("prompts_natural.yaml")}
"""Prompt files shipped with the package, by name: ShapeWorld's flat shapes (the default), and
natural images judged in GenEval's terms (an open world's)."""
_FIELDS = ("prompt", "record", "history", "instruction", "description")
_IMAGES = ("image", "previous", "history")


@dataclass(frozen=True)
class Prompts:
    """The contents of a prompts file."""

    system: str
    user: str
    labels: dict[str, str]
    image_labels: dict[str, str]
    image_detail: str = "low"


def load_prompts(path: str | Path = "") -> Prompts:
    """Read a prompts file, or a built-in one by name (`BUILTIN_PROMPTS`; "" is ShapeWorld's); a
    missing key fails naming the file and key."""
    p = BUILTIN_PROMPTS.get(str(path), Path(path))
    try:
        data = yaml.safe_load(p.read_text())
    except FileNotFoundError:
        raise InputError(f"{p}: prompts file not found") from None
    except yaml.YAMLError as e:
        raise InputError(f"{p}: not valid YAML ({str(e).splitlines()[0]})") from None
    if not isinstance(data, dict):
        raise InputError(f"{p}: expected a mapping of prompts")
    for key in ("system", "user"):
        if not isinstance(data.get(key), str):
            raise InputError(f"{p}: key '{key}' must be a string")
    for key, names in (("labels", _FIELDS), ("image_labels", _IMAGES)):
        got = data.get(key)
        if not isinstance(got, dict) or any(not isinstance(got.get(n), str) or not got[n] for n in names):
            raise InputError(f"{p}: key '{key}' must map each of {', '.join(names)} to a label")
    labels = [data["labels"][n] for n in _FIELDS]
    if len(set(labels)) != len(labels):
        raise InputError(f"{p}: key 'labels' must give every field its own label")
    return Prompts(data["system"].strip(), data["user"].strip(), {n: data["labels"][n] for n in _FIELDS},
                   {n: data["image_labels"][n] for n in _IMAGES}, str(data.get("image_detail", "low")))


# ---- images ----------------------------------------------------------------------------------------

def image_url(image: np.ndarray) -> str:
    """A base64 PNG data URL, the form OpenAI-compatible endpoints accept in image_url parts."""
    return "data:image/png;base64," + base64.b64encode(png_bytes(image)).decode("ascii")


def image_of_url(url: str, side: int | None = None) -> np.ndarray:
    """The RGB array in a base64 data URL; ValueError for anything else (remote URLs included:
    a judge server fetches nothing) and for an image the judge cannot read: with `side` (a judge
    that reads one size, e.g. the exact judge's 64-px canvas) anything but side x side, else a side
    over MAX_SIDE. The size is read from the header before anything is decoded: a few KB of PNG can
    declare gigapixels."""
    m = re.match(r"^data:image/[a-z]+;base64,(.*)$", url, re.S)
    if not m:
        raise ValueError("image_url must be a base64 data URL (data:image/png;base64,...)")
    try:
        with Image.open(io.BytesIO(base64.b64decode(m.group(1), validate=True))) as im:
            size = im.size
            if size == (side, side) or (side is None and max(size) <= MAX_SIDE):
                return np.asarray(im.convert("RGB"))
    except Exception as e:  # noqa: BLE001
        # A decoder fed untrusted bytes fails in many ways (OSError, SyntaxError for a broken chunk,
        # zlib.error, DecompressionBombError); to the client each means the same.
        raise ValueError(f"image_url does not hold a readable image ({type(e).__name__}: {e})") from None
    if side is not None:
        raise ValueError(f"image_url holds a {size[0]}x{size[1]} image; this judge reads {side}x{side} images")
    raise ValueError(f"image_url holds a {size[0]}x{size[1]} image; the largest judged is {MAX_SIDE}x{MAX_SIDE}")


# ---- messages ----------------------------------------------------------------------------------------

def _history_json(steps: list[Step]) -> str:
    return json.dumps([{"instruction": s.instruction, "description": s.description, "inspection": s.inspection,
                        "refinements": [{"instruction": r.instruction, "inspection": r.inspection}
                                        for r in s.refinements]} for s in steps])


def build_messages(ctx: StepContext, prompts: Prompts) -> list[dict]:
    """The system prompt and one user message holding the step (see the prompts file's header)."""
    lab, ilab = prompts.labels, prompts.image_labels
    lines = [f"{lab['prompt']}: {ctx.prompt}",
             f"{lab['record']}: {json.dumps(ctx.record) if ctx.record is not None else 'none'}"]
    if ctx.history:
        lines.append(f"{lab['history']}: {_history_json(ctx.history)}")
    lines += [f"{lab['instruction']}: {ctx.instruction}", f"{lab['description']}: {ctx.description}"]
    parts: list[dict] = [{"type": "text", "text": prompts.user + "\n\n" + "\n".join(lines)}]

    def add_image(label: str, img: np.ndarray) -> None:
        parts.append({"type": "text", "text": f"{label}:"})
        parts.append({"type": "image_url", "image_url": {"url": image_url(img), "detail": prompts.image_detail}})

    add_image(ilab["image"], ctx.image)
    if ctx.previous_image is not None:
        add_image(ilab["previous"], ctx.previous_image)
    n = 0
    for s in ctx.history:
        for img in [s.image] + [r.image for r in s.refinements]:
            n += 1
            add_image(f"{ilab['history']} {n}", img)
    return [{"role": "system", "content": prompts.system}, {"role": "user", "content": parts}]


def parse_messages(messages: Any, prompts: Prompts, side: int | None = None) -> StepContext:
    """The step in the last user message; ValueError naming what is wrong with a malformed one
    (an image the judge cannot read, `image_of_url`, and a record that is not a prompt record included)."""
    if not isinstance(messages, list) or not messages:
        raise ValueError("'messages' must be a non-empty list")
    user = next((m for m in reversed(messages) if isinstance(m, dict) and m.get("role") == "user"), None)
    if user is None:
        raise ValueError("'messages' holds no user message")
    content = user.get("content")
    if isinstance(content, str):
        content = [{"type": "text", "text": content}]
    if not isinstance(content, list):
        raise ValueError("the user message's 'content' must be a string or a list of parts")
    fields: dict[str, str] = {}
    images: dict[str, np.ndarray] = {}
    by_label = {v: k for k, v in prompts.labels.items()}
    ilab = prompts.image_labels
    pending: str | None = None  # the label of the image part that comes next
    for i, part in enumerate(content):
        kind = part.get("type") if isinstance(part, dict) else None
        if kind == "text":
            text = str(part.get("text", ""))
            label = text.strip().removesuffix(":")
            if text.strip().endswith(":") and _image_key(label, ilab) is not None:
                pending = _image_key(label, ilab)
                continue
            for line in text.splitlines():
                name, sep, value = line.partition(": ")
                if sep and name in by_label and by_label[name] not in fields:
                    fields[by_label[name]] = value.strip()
        elif kind == "image_url":
            spec = part.get("image_url")
            url = spec.get("url", "") if isinstance(spec, dict) else str(spec or "")
            key = pending or ("image" if "image" not in images else None)
            if key is None:
                raise ValueError(f"content part {i}: an image without a label")
            images[key] = image_of_url(url, side)
            pending = None
        else:
            raise ValueError(f"content part {i}: unsupported type {kind!r} (text and image_url are)")
    for name in ("prompt", "instruction", "description"):
        if name not in fields:
            raise ValueError(f"the user message has no '{prompts.labels[name]}: ...' line")
    if "image" not in images:
        raise ValueError("the user message has no image to judge")
    record = None
    if fields.get("record", "none") != "none":
        try:
            record = json.loads(fields["record"])
        except json.JSONDecodeError:
            raise ValueError(f"'{prompts.labels['record']}' is not JSON") from None
        PromptRecord.from_json(record, f"'{prompts.labels['record']}'")  # InputError, a ValueError
    history = _history_steps(fields.get("history"), images, prompts)
    return StepContext(fields["prompt"], fields["instruction"], fields["description"], images["image"],
                       record, history, images.get("previous"))


def _image_key(label: str, ilab: dict[str, str]) -> str | None:
    if label == ilab["image"]:
        return "image"
    if label == ilab["previous"]:
        return "previous"
    m = re.fullmatch(re.escape(ilab["history"]) + r" (\d+)", label)
    return f"history {int(m.group(1))}" if m else None


def _history_steps(text: str | None, images: dict[str, np.ndarray], prompts: Prompts) -> list[Step]:
    if not text:
        return []
    try:
        raw = json.loads(text)
        n = 0
        steps = []
        for s in raw:
            n += 1
            img = images[f"history {n}"]
            refs = []
            for r in s.get("refinements", []):
                n += 1
                refs.append(Refinement(r["instruction"], images[f"history {n}"], r["inspection"]))
            steps.append(Step(s["instruction"], s["description"], img, s["inspection"], refs))
        return steps
    except json.JSONDecodeError:
        raise ValueError(f"'{prompts.labels['history']}' is not JSON") from None
    except (KeyError, TypeError, AttributeError) as e:
        raise ValueError(f"'{prompts.labels['history']}' does not match its images ({e})") from None


# ---- structured output ---------------------------------------------------------------------------------

def verdict_schema() -> dict:
    """`Verdict`'s JSON schema in OpenAI's strict form: every field required, no additional
    properties and no defaults (strict mode rejects them), derived from the shared model so the
    two can never drift apart. A strict answer still validates as a `Verdict`."""
    def strict(node: Any) -> Any:
        if isinstance(node, list):
            return [strict(v) for v in node]
        if not isinstance(node, dict):
            return node
        out = {k: strict(v) for k, v in node.items() if k != "default"}
        if out.get("type") == "object" and "properties" in out:
            out["required"] = list(out["properties"])
            out["additionalProperties"] = False
        return out

    return strict(Verdict.model_json_schema())


def response_format() -> dict:
    """The `response_format` of every judge request."""
    return {"type": "json_schema", "json_schema": {"name": "verdict", "strict": True, "schema": verdict_schema()}}
