"""The tiny unified model: a `transformers` Llama over text tokens and image codes, built from a config.

`build_tiny` makes a fresh one (and, unless given, a processor whose codebook is fitted on random
ShapeWorld scenes); `strokes.model.policy.Policy` wraps it with its processor, saves and loads it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from ..config_loader import require
from .image_tokenizer import ImageTokenizer, fitting_images
from .processor import Processor, build_text_tokenizer

KINDS = ("tiny", "emu3", "janus")
"""`model.kind` values: the built-in tiny model and the adapters of real architectures."""


@dataclass
class ModelConfig:
    """Which policy a run trains (`kind`) and, for the built-in tiny model, its shape (a LlamaForCausalLM)."""

    SECTION: ClassVar[str] = "model"

    kind: str = "tiny"
    """The policy's architecture: tiny (built in), emu3 or janus (`strokes.model.policy.ADAPTERS`). The
    base checkpoint must hold this kind (its processor.json says which); the fields below shape only
    the tiny model --from-scratch trains."""
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
        require(self, "kind", self.kind in KINDS, f"must be one of {', '.join(KINDS)}")
        for name in ("hidden_size", "num_layers", "num_heads", "intermediate_size", "max_positions", "num_codes",
                     "image_size", "patch"):
            require(self, name, getattr(self, name) >= 1, "must be >= 1")
        # attention splits the width into equal heads, and rotary embeddings rotate each head's
        # halves: a remainder or an odd head width fails only in the first forward pass
        require(self, "num_heads", self.hidden_size % self.num_heads == 0
                and self.hidden_size // self.num_heads % 2 == 0,
                f"must divide hidden_size ({self.hidden_size}) into heads of even width")
        require(self, "patch", self.image_size % self.patch == 0, f"must divide image_size ({self.image_size})")


def build_tiny(cfg: ModelConfig, processor: Processor | None = None):
    """A freshly initialised tiny model and its processor (unless given, one whose codebook is fitted
    on random scenes), as (LlamaForCausalLM, Processor)."""
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
    return model, processor
