"""Emu3 (`transformers.Emu3ForConditionalGeneration`) behind the policy interface.

Emu3 is the closest real model to our grammar: its image tokens are ordinary vocabulary tokens
(`<|visual token 000000|>` …, one contiguous block of ids in every released checkpoint), so the
rollout decoder's masks, the trainer's cross-entropy and log-probs apply to them unchanged. The
adapter is therefore only a processor:

- text goes through Emu3's own tokenizer, with our grammar markers (`<prompt>`, `<ins>`, …,
  `<vision_start>`, `<eos>`) added as new special tokens (the embeddings grow by those 15 rows);
- images go through Emu3's own VQ-VAE (`model.model.vqmodel`, shared with the model, never copied):
  a ShapeWorld canvas is resized to `image_size` (a multiple of the VQ's spatial factor, 8),
  normalised as Emu3's image processor does, and encoded into (image_size / 8)^2 codes; decoding
  runs the VQ decoder and resizes back to the canvas the judges expect;
- the token grammar, the loss mask and the parser are `Processor`'s (strokes/model/processor.py).

Emu3's own image framing (`<|image start|>H*W<|image token|>`, an end-of-row token after every row
of codes, `<|extra_201|><|image end|>`) is not used: our `<vision_start>`/`<vision_end>` frame a
fixed number of codes, the same for every image, which the grammar and the parser need. A fine-tune
from real weights learns this framing along with the rest of the grammar (docs/adapters.md).

`base` in `Emu3ModelConfig` points at a real checkpoint folder (HF layout); empty, a tiny random
Emu3 of the real classes is built in memory, with a word-level tokenizer over the ShapeWorld words
that carries Emu3's own token names, so the tiny path and the real path run the same code.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

from ..config_loader import require
from ..errors import InputError
from .policy import Policy
from .processor import vocabulary
from .vq_adapter import (VQImageCodec, VQProcessor, add_markers, checkpoint_folder, conversion_parser,
                         image_normalisation, load_submodule, prompt_words, save_base, write_policy)

KIND = "strokes.emu3"
# Tokens Emu3's tokenizer brings (names as in the released checkpoints). The tiny base carries them
# too, so that `Emu3ForConditionalGeneration`'s own image helpers find what they look for.
EMU3_TOKENS = ["<|endoftext|>", "<|extra_200|>", "<|extra_201|>", "<image>", "<|image start|>",
               "<|image end|>", "<|image token|>"]


def visual_token(k: int) -> str:
    return f"<|visual token {k:06d}|>"


@dataclass
class Emu3ModelConfig:
    """Where the Emu3 policy comes from, and the image resolution its VQ sees."""

    SECTION: ClassVar[str] = "model"

    base: str = ""
    """A folder holding an Emu3 checkpoint in Hugging Face's layout (`Emu3ForConditionalGeneration`
    weights + config with `vocabulary_map` + tokenizer), e.g. a local copy of BAAI/Emu3-Gen-hf.
    Empty: build a tiny random Emu3 from the shape fields below (tests, CPU runs)."""
    image_size: int = 64
    """Side of the square image the VQ encodes; a multiple of the VQ's spatial factor (8). Codes per
    image = (image_size / 8)^2: 64 -> 64 codes (ShapeWorld's native size), 128 -> 256 codes."""
    canvas: int = 64
    """Side of the images the world renders and the judges read."""
    dtype: str = "auto"
    """Weights of `base` as loaded: "auto" keeps the checkpoint's (bf16 for Emu3), or float32."""
    hidden_size: int = 256
    """Tiny random shape (ignored when `base` is set): width of the transformer."""
    num_layers: int = 6
    """Tiny random shape: transformer layers."""
    num_heads: int = 4
    """Tiny random shape: attention heads."""
    intermediate_size: int = 768
    """Tiny random shape: width of the MLP."""
    max_positions: int = 1024
    """Tiny random shape: longest sequence in tokens."""
    codebook_size: int = 256
    """Tiny random shape: VQ codebook entries."""
    vq_channels: int = 32
    """Tiny random shape: VQ channels, a multiple of 32 (the VQ's group norms have 32 groups)."""
    vq_levels: int = 4
    """Tiny random shape: VQ resolution levels; spatial factor 2^(levels-1): 4 levels -> 8, as in Emu3."""
    vq_attention: bool = True
    """Tiny random shape: an attention block at the lowest VQ resolution, as in Emu3."""
    seed: int = 0
    """Seed of the tiny random weights."""

    def __post_init__(self) -> None:
        factor = 2 ** (self.vq_levels - 1)
        require(self, "image_size", self.image_size > 0 and self.image_size % factor == 0,
                f"must be a positive multiple of {factor}")
        require(self, "vq_channels", self.vq_channels % 32 == 0, "must be a multiple of 32")


# ---- images <-> codes with Emu3's VQ --------------------------------------------------------------------

class Emu3ImageCodec(VQImageCodec):
    """`VQImageCodec` over Emu3's VQ-VAE: any `image_size` that is a multiple of its spatial factor."""

    def __init__(self, vq, image_size: int, canvas: int, mean: list[float], std: list[float]) -> None:
        factor = int(vq.vision_spatial_factor)
        if image_size % factor:
            raise InputError(f"model.image_size must be a multiple of the VQ's spatial factor {factor}, "
                             f"got {image_size}")
        super().__init__(vq, image_size, canvas, image_size // factor, int(vq.config.codebook_size), mean, std)

    def _codes(self, pixels):
        import torch

        sizes = torch.tensor([[self.image_size, self.image_size]] * pixels.shape[0])
        return self.vq.encode(pixels, sizes, return_dict=True).image_tokens

    def _pixels(self, codes):
        return self.vq.decode(codes.view(-1, self.side, self.side))


# ---- the processor ---------------------------------------------------------------------------------------

def code_block(vocabulary_map: dict[str, int], num_codes: int) -> int:
    """First id of Emu3's visual tokens, read with Emu3's own mapping; they must form one block."""
    from transformers.models.emu3.modeling_emu3 import Emu3ImageVocabularyMapping

    img2bpe = Emu3ImageVocabularyMapping(vocabulary_map).img2bpe
    if not img2bpe:
        raise InputError("model: the checkpoint's vocabulary_map has no '<|visual token …|>' entries")
    offset = img2bpe.get(0)
    if offset is None or any(img2bpe.get(k) != offset + k for k in range(num_codes)):
        raise InputError("model: Emu3's visual tokens are not one contiguous block of ids "
                         f"(codes 0..{num_codes - 1}); this adapter needs them to be")
    return offset


class Emu3Processor(VQProcessor):
    """`VQProcessor` over Emu3's tokenizer and VQ: the codes are Emu3's visual token block."""

    KIND = KIND

    def __init__(self, tokenizer, vq, vocabulary_map: dict[str, int], image_size: int = 64, canvas: int = 64,
                 mean: list[float] | None = None, std: list[float] | None = None) -> None:
        codec = Emu3ImageCodec(vq, image_size, canvas, mean or [0.5] * 3, std or [0.5] * 3)
        super().__init__(tokenizer, codec, code_block(vocabulary_map, codec.num_codes))

    @classmethod
    def from_pretrained(cls, folder: str | Path, vq=None) -> "Emu3Processor":
        """The processor of a saved Emu3 policy; `vq` is the loaded model's `vqmodel` (without it, the
        VQ's weights are read from the checkpoint's files)."""
        from transformers import AutoTokenizer, Emu3Config, Emu3VQVAE

        folder = Path(folder)
        meta = json.loads((folder / "processor.json").read_text())
        config = Emu3Config.from_pretrained(folder)
        if vq is None:
            vq = load_submodule(Emu3VQVAE(config.vq_config), folder, ("model.vqmodel.", "vqmodel."))
        return cls(AutoTokenizer.from_pretrained(folder), vq, config.vocabulary_map, meta["image_size"],
                   meta["canvas"], meta["mean"], meta["std"])


# ---- building and loading policies ----------------------------------------------------------------------

def tiny_base(cfg: Emu3ModelConfig, words: list[str] = ()):
    """A tiny random Emu3 of the real classes and a word-level tokenizer over the ShapeWorld words
    (and `words`: another world's prompt words) that carries Emu3's own token names (its specials,
    then the visual tokens): a stand-in for a downloaded checkpoint, with no grammar markers yet."""
    import torch
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import Emu3Config, Emu3ForConditionalGeneration, PreTrainedTokenizerFast

    vocab: dict[str, int] = {}
    for t in EMU3_TOKENS + vocabulary() + list(words) + [visual_token(k) for k in range(cfg.codebook_size)]:
        vocab.setdefault(t, len(vocab))
    tk = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<|endoftext|>"))
    tk.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=tk, pad_token="<|endoftext|>")
    tokenizer.add_tokens(EMU3_TOKENS, special_tokens=True)
    levels = cfg.vq_levels
    config = Emu3Config(
        vq_config=dict(codebook_size=cfg.codebook_size, embed_dim=4, latent_channels=4,
                       base_channels=cfg.vq_channels, channel_multiplier=[1] * levels, num_res_blocks=1,
                       attn_resolutions=[levels - 1] if cfg.vq_attention else [],
                       temporal_downsample_factor=1, hidden_size=cfg.vq_channels, num_attention_heads=1),
        text_config=dict(vocab_size=len(tokenizer), hidden_size=cfg.hidden_size,
                         intermediate_size=cfg.intermediate_size, num_hidden_layers=cfg.num_layers,
                         num_attention_heads=cfg.num_heads, num_key_value_heads=cfg.num_heads,
                         max_position_embeddings=cfg.max_positions, attention_dropout=0.0,
                         pad_token_id=vocab["<|endoftext|>"], bos_token_id=vocab["<|endoftext|>"],
                         eos_token_id=vocab["<|endoftext|>"]),
        vocabulary_map=tokenizer.get_vocab())
    torch.manual_seed(cfg.seed)
    return Emu3ForConditionalGeneration(config), tokenizer


def save_tiny_base(cfg: Emu3ModelConfig, folder: str | Path) -> Path:
    """Write a tiny random Emu3 checkpoint in Hugging Face's layout (what `base:` points at)."""
    return save_base(*tiny_base(cfg), folder)


class Emu3Policy(Policy):
    """An `Emu3ForConditionalGeneration` and its `Emu3Processor`."""

    kind = KIND

    @classmethod
    def build(cls, cfg: Emu3ModelConfig, processor=None, words: list[str] = ()) -> "Emu3Policy":
        """From `cfg.base` (a real checkpoint), or a tiny random Emu3 when it is empty (its tokenizer
        also knowing `words`). Seeded: the new marker embeddings are drawn the same way every time."""
        import torch

        torch.manual_seed(cfg.seed)
        if cfg.base:
            return cls.from_base(cfg.base, cfg.image_size, cfg.canvas, dtype=cfg.dtype)
        model, tokenizer = tiny_base(cfg, words)
        return cls.adapt(model, tokenizer, cfg.image_size, cfg.canvas)

    @classmethod
    def from_base(cls, folder: str | Path, image_size: int = 64, canvas: int = 64, dtype=None) -> "Emu3Policy":
        """A policy from an Emu3 checkpoint that has never seen our grammar (real weights)."""
        from transformers import AutoTokenizer, Emu3ForConditionalGeneration

        folder = checkpoint_folder(folder, "model.base")
        model = Emu3ForConditionalGeneration.from_pretrained(folder, dtype=dtype)
        mean, std = image_normalisation(folder)
        return cls.adapt(model, AutoTokenizer.from_pretrained(folder), image_size, canvas, mean, std)

    @classmethod
    def adapt(cls, model, tokenizer, image_size: int, canvas: int, mean=None, std=None) -> "Emu3Policy":
        """Add the grammar markers (growing the embeddings) and wrap model and processor."""
        if add_markers(tokenizer) or len(tokenizer) > model.get_input_embeddings().num_embeddings:
            model.resize_token_embeddings(len(tokenizer), mean_resizing=False)
        _finish(model)
        return cls(model, Emu3Processor(tokenizer, model.model.vqmodel, model.config.vocabulary_map,
                                        image_size, canvas, mean, std))

    @classmethod
    def from_pretrained(cls, folder: str | Path, dtype=None) -> "Emu3Policy":
        from transformers import Emu3ForConditionalGeneration

        folder = checkpoint_folder(folder, "checkpoint")
        model = Emu3ForConditionalGeneration.from_pretrained(folder, dtype=dtype)
        _finish(model)
        return cls(model, Emu3Processor.from_pretrained(folder, vq=model.model.vqmodel))


def _finish(model) -> None:
    """Expose the text model's position limit where generic code looks for it (the rollout decoder
    reads `model.config.max_position_embeddings`), and freeze the VQ as Emu3 does."""
    model.config.max_position_embeddings = model.config.get_text_config().max_position_embeddings
    model.model.vqmodel.requires_grad_(False)
    model.model.vqmodel.eval()


TINY_SHAPE = dict(hidden_size=64, num_layers=2, num_heads=2, intermediate_size=128, codebook_size=64)
"""The `--tiny` policy's shape: a random Emu3 that runs a round on two CPU cores in minutes."""


def main(argv: list[str] | None = None) -> None:
    """`python -m strokes.model.emu3 --base DIR --out DIR`: turn a downloaded Emu3 checkpoint into a
    policy checkpoint (grammar markers added, processor saved) that `loop.base_checkpoint` can name;
    `--tiny --words PROMPTS` writes a tiny random one whose tokenizer knows the prompts' words."""
    parser = conversion_parser(main.__doc__, "Emu3")
    parser.add_argument("--image-size", type=int, default=64, help="side the VQ encodes (multiple of 8)")
    args = parser.parse_args(argv)
    try:
        shape = TINY_SHAPE if args.tiny else {}
        cfg = Emu3ModelConfig(base=args.base or "", image_size=args.image_size, canvas=args.canvas,
                              dtype=args.dtype, **shape)
        policy = Emu3Policy.build(cfg, words=prompt_words(args.words) if args.words else ())
    except InputError as e:
        raise SystemExit(f"error: {e}") from None
    write_policy(policy, args.out)


if __name__ == "__main__":
    main()
