"""A policy: a unified model plus its processor, the thing rollouts sample from and the trainer trains.

One folder holds everything a policy needs: the model (`save_pretrained`), the processor (text
tokenizer, image tokenizer, `processor.json` naming the adapter) and `checksums.json`, so
`Policy.from_pretrained(folder)` restores it offline. The built-in policy is the tiny Llama
(`strokes/model/tiny.py`); real unified models load through their adapter (`ADAPTERS`), chosen by
the `processor` name their `processor.json` records.
"""

from __future__ import annotations

import importlib
import json
from pathlib import Path

from ..errors import InputError
from .checkpoint_check import check_checkpoint, write_checksums
from .inspect_head import InspectHead
from .processor import Processor
from .tiny import ModelConfig, build_tiny

TINY = "strokes.tiny"
"""The processor name of the built-in tiny model."""
ADAPTERS = {"strokes.emu3": ("strokes.model.emu3", "Emu3Policy"),
            "strokes.janus": ("strokes.model.janus", "JanusPolicy")}
"""Policy classes of real models, by the `processor` name their processor.json records."""


def checkpoint_kind(folder: str | Path) -> str:
    """Which policy class a checkpoint folder belongs to (processor.json's `processor`)."""
    meta = Path(folder) / "processor.json"
    return json.loads(meta.read_text()).get("processor", TINY) if meta.is_file() else TINY


def check_kind(folder: str | Path, kind: str) -> None:
    """Refuse, in one line, a checkpoint folder that holds another architecture than `model.kind`
    says: the run would otherwise load whatever the folder holds and train it under the wrong plan."""
    found = checkpoint_kind(folder).removeprefix("strokes.")
    if found != kind:
        raise InputError(f"model.kind: {kind!r}, but {folder} holds a {found!r} checkpoint (its processor.json); "
                         f"set model.kind: {found}, or point loop.base_checkpoint at a checkpoint of kind {kind}")


def checkpoint_image_side(folder: str | Path) -> int:
    """The side in pixels of the images a checkpoint's policy draws and reads (processor.json's
    `canvas`; the tiny model's codebook covers a 64-px canvas), without loading the model."""
    meta = Path(folder) / "processor.json"
    return int(json.loads(meta.read_text()).get("canvas", 64)) if meta.is_file() else 64


def adapter(kind: str) -> type:
    """The policy class for a checkpoint kind; a one-line error for an unknown one."""
    if kind not in ADAPTERS:
        raise InputError(f"processor.json: unknown policy kind {kind!r} (known: {TINY}, {', '.join(ADAPTERS)})")
    module, name = ADAPTERS[kind]
    return getattr(importlib.import_module(module), name)


class Policy:
    """A unified model plus its processor."""

    def __init__(self, model, processor: Processor) -> None:
        self.model = model
        self.processor = processor
        self.inspect_head: InspectHead | None = None  # the Inspect head saved with the checkpoint, if any

    @classmethod
    def build(cls, cfg: ModelConfig, processor: Processor | None = None) -> "Policy":
        """A freshly initialised tiny model (and, unless given, a processor fitted on random scenes)."""
        return cls(*build_tiny(cfg, processor))

    def save_pretrained(self, folder: str | Path) -> None:
        """Model, processor and, last, `checksums.json` over them (checked on load)."""
        self.model.save_pretrained(folder)
        self.processor.save_pretrained(folder)
        write_checksums(folder)

    @classmethod
    def from_pretrained(cls, folder: str | Path, dtype=None) -> "Policy":
        from transformers import AutoModelForCausalLM

        folder = Path(folder)
        check_checkpoint(folder)  # one line naming a damaged file, instead of a traceback from deep inside
        kind = checkpoint_kind(folder)
        if kind != TINY:  # a real model behind an adapter: its own class loads it
            policy = adapter(kind).from_pretrained(folder, dtype=dtype)
        else:
            policy = cls(AutoModelForCausalLM.from_pretrained(folder, dtype=dtype), Processor.from_pretrained(folder))
        policy.inspect_head = InspectHead.load(folder)  # None unless the folder holds one
        return policy

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.model.parameters())
