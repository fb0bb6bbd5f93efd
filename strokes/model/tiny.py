"""The tiny unified model: a `transformers` Llama over text tokens and image codes, built from a config.

One directory holds everything a policy needs: the model (`save_pretrained`), the text tokenizer
and the image codebook (the processor), so `Policy.from_pretrained(dir)` restores it offline.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import ClassVar

from ..config_loader import require
from ..errors import InputError
from .checkpoint_check import check_checkpoint, write_checksums
from .image_tokenizer import ImageTokenizer, fitting_images
from .inspect_head import InspectHead
from .processor import Processor, build_text_tokenizer


@dataclass
class ModelConfig:
    """Shape of the tiny unified model (a LlamaForCausalLM)."""

    SECTION: ClassVar[str] = "model"

    hidden_size: int = 256
    """Width of the transformer."""
    num_layers: int = 6
    """Transformer layers."""
    num_heads: int = 4
    """Attention heads (as many key/value heads)."""
    intermediate_size: int = 768
    """Width of the MLP."""
    max_positions: int = 1024
    """Longest sequence in tokens."""
    num_codes: int = 256
    """Codebook size asked of k-means (fewer when the world has fewer patches)."""
    image_size: int = 64
    """Canvas side in pixels."""
    patch: int = 8
    """Side of an image patch; one code per patch."""
    seed: int = 0
    """Seed of the weights and of the codebook fit."""

    def __post_init__(self) -> None:
        for name in ("hidden_size", "num_layers", "num_heads", "intermediate_size", "max_positions", "num_codes",
                     "image_size", "patch"):
            require(self, name, getattr(self, name) >= 1, "must be >= 1")
        # attention splits the width into equal heads, and rotary embeddings rotate each head's
        # halves: a remainder or an odd head width fails only in the first forward pass
        require(self, "num_heads", self.hidden_size % self.num_heads == 0
                and self.hidden_size // self.num_heads % 2 == 0,
                f"must divide hidden_size ({self.hidden_size}) into heads of even width")
        require(self, "patch", self.image_size % self.patch == 0, f"must divide image_size ({self.image_size})")


# Policy classes of real models, by the `processor` name their processor.json records.
ADAPTERS = {"strokes.emu3": ("strokes.model.emu3", "Emu3Policy")}


def checkpoint_kind(folder: str | Path) -> str:
    """Which policy class a checkpoint folder belongs to (processor.json's `processor`)."""
    import json

    meta = Path(folder) / "processor.json"
    return json.loads(meta.read_text()).get("processor", "strokes.tiny") if meta.is_file() else "strokes.tiny"


def adapter(kind: str) -> type:
    """The policy class for a checkpoint kind; a one-line error for an unknown one."""
    import importlib

    if kind not in ADAPTERS:
        raise InputError(f"processor.json: unknown policy kind {kind!r} (known: strokes.tiny, {', '.join(ADAPTERS)})")
    module, name = ADAPTERS[kind]
    return getattr(importlib.import_module(module), name)


class Policy:
    """A unified model plus its processor: the thing rollouts sample from and the trainer trains."""

    def __init__(self, model, processor: Processor) -> None:
        self.model = model
        self.processor = processor
        self.inspect_head: InspectHead | None = None  # the Inspect head saved with the checkpoint, if any

    @classmethod
    def build(cls, cfg: ModelConfig, processor: Processor | None = None) -> "Policy":
        """A freshly initialised model (and, unless given, a processor fitted on random scenes)."""
        import torch
        from transformers import LlamaConfig, LlamaForCausalLM

        if processor is None:
            images = fitting_images(3000, cfg.image_size, cfg.seed)
            it = ImageTokenizer.fit(images, cfg.num_codes, cfg.patch, cfg.seed)
            processor = Processor(build_text_tokenizer(it.num_codes), it)
        torch.manual_seed(cfg.seed)
        config = LlamaConfig(
            vocab_size=processor.vocab_size,
            hidden_size=cfg.hidden_size,
            intermediate_size=cfg.intermediate_size,
            num_hidden_layers=cfg.num_layers,
            num_attention_heads=cfg.num_heads,
            num_key_value_heads=cfg.num_heads,
            max_position_embeddings=cfg.max_positions,
            tie_word_embeddings=True,
            pad_token_id=processor.pad_id,
            eos_token_id=processor.eos_id,
            bos_token_id=processor.special["<prompt>"],
            rope_theta=10000.0,
        )
        model = LlamaForCausalLM(config)
        model.generation_config.pad_token_id = processor.pad_id
        return cls(model, processor)

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
        if kind != "strokes.tiny":  # a real model behind an adapter: its own class loads it
            policy = adapter(kind).from_pretrained(folder, dtype=dtype)
        else:
            policy = cls(AutoModelForCausalLM.from_pretrained(folder, dtype=dtype), Processor.from_pretrained(folder))
        policy.inspect_head = InspectHead.load(folder)  # None unless the folder holds one
        return policy

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.model.parameters())

    @staticmethod
    def config_dict(cfg: ModelConfig) -> dict:
        return asdict(cfg)
