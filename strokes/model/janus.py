"""Janus-Pro (`transformers.JanusForConditionalGeneration`) behind the policy interface.

Janus-Pro is structurally unlike Emu3: its image codes are not tokens of the language model's
vocabulary. It generates an image through its own generation embeddings + aligner (codes in) and a
generation head over a 16,384-code VQ codebook (codes out), 576 codes for a 384x384 image. The
adapter makes it look like every other policy by giving the model one vocabulary
(`strokes/model/janus_model.py`, `JanusUnified`): text ids `0..V-1` (Janus's tokenizer, then our
grammar markers), then the codes `V..V+K-1`, with logits over all `V + K`. The rollout grammar,
log-probs, the trainer's cross-entropy, LoRA and GRPO then need no special case.

- text goes through Janus's own tokenizer, our 15 grammar markers added as special tokens (in the
  embedding rows Janus's vocabulary keeps spare past its tokenizer, or grown when there are none);
- images go through Janus's own VQ (`model.model.vqmodel`, shared with the model, frozen): a canvas
  is resized to the VQ's image size (`vision_config.image_size`, 384 for Janus-Pro), normalised with
  the checkpoint's mean/std and encoded into its fixed grid of codes (24 x 24 = 576); decoding runs
  the VQ decoder and resizes back to the canvas the judges read;
- the token grammar, the loss mask and the parser are `Processor`'s.

Janus's own image framing (`<begin_of_image>` … `<end_of_image>` after a chat template) is not used:
`<vision_start>`/`<vision_end>` frame the codes, as for every policy; a fine-tune from real weights
learns this framing with the rest of the grammar (docs/adapters.md). Classifier-free guidance is the
engine's (`rollout.cfg_scale`: a twin row with an empty prompt, mixed into image spans only; Janus
samples with scale 5), refused in GRPO rollouts as for every policy.

`base` in `JanusModelConfig` points at a real checkpoint folder (Hugging Face layout, e.g. a local
copy of deepseek-community/Janus-Pro-7B); empty, a tiny random Janus of the real classes is built in
memory, with a word-level tokenizer over the ShapeWorld words that carries Janus's own token names,
so the tiny path and the real path run the same code.
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

KIND = "strokes.janus"
# Tokens Janus-Pro's tokenizer brings (names as in the released checkpoints); the tiny base carries
# them too, so that the tiny and the real tokenizer differ only in size.
JANUS_TOKENS = ["<｜begin▁of▁sentence｜>", "<｜end▁of▁sentence｜>", "<｜▁pad▁｜>", "<image_placeholder>",
                "<begin_of_image>", "<end_of_image>"]
PAD = JANUS_TOKENS[2]


@dataclass
class JanusModelConfig:
    """Where the Janus policy comes from; the shape fields build a tiny random one."""

    SECTION: ClassVar[str] = "model"

    base: str = ""
    """A folder holding a Janus checkpoint in Hugging Face's layout (`JanusForConditionalGeneration`
    weights + config + tokenizer), e.g. a local copy of deepseek-community/Janus-Pro-7B. Empty:
    build a tiny random Janus from the shape fields below (tests, CPU runs)."""
    canvas: int = 64
    """Side of the images the world renders and the judges read."""
    dtype: str = "auto"
    """Weights of `base` as loaded: "auto" keeps the checkpoint's (bf16 for Janus-Pro), or float32."""
    image_size: int = 64
    """Tiny random shape (`base` fixes its own: 384): side of the square image the VQ encodes, a
    multiple of the VQ's spatial factor; codes per image = (image_size / factor)^2."""
    hidden_size: int = 64
    """Tiny random shape: width of the transformer."""
    num_layers: int = 2
    """Tiny random shape: transformer layers."""
    num_heads: int = 2
    """Tiny random shape: attention heads."""
    intermediate_size: int = 128
    """Tiny random shape: width of the MLP."""
    max_positions: int = 1024
    """Tiny random shape: longest sequence in tokens."""
    codebook_size: int = 64
    """Tiny random shape: VQ codebook entries (Janus-Pro: 16,384)."""
    vq_channels: int = 32
    """Tiny random shape: VQ channels, a multiple of 32 (the VQ's group norms have 32 groups)."""
    vq_levels: int = 4
    """Tiny random shape: VQ resolution levels; spatial factor 2^(levels-1): 4 -> 8 (Janus-Pro: 5 -> 16)."""
    seed: int = 0
    """Seed of the tiny random weights and of the marker embeddings a conversion adds."""

    def __post_init__(self) -> None:
        factor = 2 ** (self.vq_levels - 1)
        require(self, "image_size", self.image_size > 0 and self.image_size % factor == 0,
                f"must be a positive multiple of {factor}")
        require(self, "vq_channels", self.vq_channels > 0 and self.vq_channels % 32 == 0, "must be a multiple of 32")


# ---- images <-> codes with Janus's VQ ------------------------------------------------------------------

class JanusImageCodec(VQImageCodec):
    """`VQImageCodec` over Janus's VQ: its grid is fixed by the checkpoint (`quant_state_dims`, from
    `vision_config.image_size / patch_size`), so is the image size (grid x spatial factor)."""

    def __init__(self, vq, canvas: int, mean: list[float], std: list[float]) -> None:
        side = int(vq.quantize.quant_state_dims[0])
        factor = 2 ** (len(vq.config.channel_multiplier) - 1)
        super().__init__(vq, side * factor, canvas, side, int(vq.config.num_embeddings), mean, std)

    def _codes(self, pixels):
        return self.vq.encode(pixels, return_dict=True).image_tokens.view(pixels.shape[0], -1)

    def _pixels(self, codes):
        return self.vq.decode(codes)


class JanusProcessor(VQProcessor):
    """`VQProcessor` over Janus's tokenizer and VQ: the codes follow the language model's vocabulary
    (`code_offset` = V), so the vocabulary the engine and the trainer see is V + K wide."""

    KIND = KIND

    def __init__(self, tokenizer, vq, code_offset: int, canvas: int = 64, mean: list[float] | None = None,
                 std: list[float] | None = None) -> None:
        if len(tokenizer) > code_offset:
            raise InputError(f"model: the tokenizer has {len(tokenizer)} tokens, more than the language "
                             f"model's {code_offset} rows")
        super().__init__(tokenizer, JanusImageCodec(vq, canvas, mean or [0.5] * 3, std or [0.5] * 3), code_offset)

    @property
    def vocab_size(self) -> int:
        return self.code_offset + self.num_codes

    @classmethod
    def from_pretrained(cls, folder: str | Path, vq=None) -> "JanusProcessor":
        """The processor of a saved Janus policy; `vq` is the loaded model's `vqmodel` (without it, the
        VQ's weights are read from the checkpoint's files)."""
        from transformers import AutoTokenizer, JanusConfig, JanusVQVAE

        folder = Path(folder)
        meta = json.loads((folder / "processor.json").read_text())
        config = JanusConfig.from_pretrained(folder)
        if vq is None:
            vq = load_submodule(JanusVQVAE(config.vq_config), folder, ("model.vqmodel.",))
        return cls(AutoTokenizer.from_pretrained(folder), vq, config.text_config.vocab_size, meta["canvas"],
                   meta["mean"], meta["std"])


# ---- building and loading policies ----------------------------------------------------------------------

def word_tokenizer(words: list[str] = ()):
    """A word-level tokenizer over the ShapeWorld words (and `words`) that carries Janus-Pro's token
    names: the stand-in for Janus's own tokenizer in tiny checkpoints and the GPU check."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab: dict[str, int] = {}
    for t in JANUS_TOKENS + vocabulary() + list(words):
        vocab.setdefault(t, len(vocab))
    tk = Tokenizer(models.WordLevel(vocab=vocab, unk_token=PAD))
    tk.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=tk, pad_token=PAD)
    tokenizer.add_tokens(JANUS_TOKENS, special_tokens=True)
    return tokenizer


def tiny_base(cfg: JanusModelConfig, words: list[str] = ()):
    """A tiny random Janus of the real classes (text model, SigLIP encoder, VQ, generation embeddings,
    aligner and head) and `word_tokenizer(words)`: a stand-in for a downloaded checkpoint, with no
    grammar markers yet."""
    import torch
    from transformers import JanusForConditionalGeneration

    tokenizer = word_tokenizer(words)
    config = tiny_config(cfg, tokenizer)
    torch.manual_seed(cfg.seed)
    return JanusForConditionalGeneration(config), tokenizer


def tiny_config(cfg: JanusModelConfig, tokenizer):
    """A `JanusConfig` of `cfg`'s tiny shape over `tokenizer` (`word_tokenizer`): every part of Janus,
    each as small as its classes allow (one SigLIP layer, a 4-level VQ with 32 channels)."""
    from transformers import JanusConfig

    vocab = tokenizer.get_vocab()
    factor = 2 ** (cfg.vq_levels - 1)
    h = cfg.hidden_size
    return JanusConfig(
        text_config=dict(model_type="llama", vocab_size=len(tokenizer), hidden_size=h,
                         intermediate_size=cfg.intermediate_size, num_hidden_layers=cfg.num_layers,
                         num_attention_heads=cfg.num_heads, num_key_value_heads=cfg.num_heads,
                         max_position_embeddings=cfg.max_positions, attention_dropout=0.0,
                         pad_token_id=vocab[PAD], bos_token_id=vocab[JANUS_TOKENS[0]], eos_token_id=vocab[JANUS_TOKENS[1]]),
        vision_config=dict(hidden_size=32, num_hidden_layers=1, num_attention_heads=1, mlp_ratio=2.0,
                           image_size=cfg.image_size, patch_size=factor, projection_dim=h,
                           num_image_tokens=(cfg.image_size // factor) ** 2),
        vq_config=dict(num_embeddings=cfg.codebook_size, embed_dim=8, latent_channels=8,
                       base_channels=cfg.vq_channels, channel_multiplier=[1] * cfg.vq_levels, num_res_blocks=1,
                       projection_dim=h, image_token_embed_dim=h, num_hidden_layers=2),
        image_token_id=vocab["<image_placeholder>"], tie_word_embeddings=False)


def save_tiny_base(cfg: JanusModelConfig, folder: str | Path, words: list[str] = ()) -> Path:
    """Write a tiny random Janus checkpoint in Hugging Face's layout (what `base:` points at)."""
    return save_base(*tiny_base(cfg, words), folder)


class JanusPolicy(Policy):
    """A `JanusUnified` (Janus with one vocabulary) and its `JanusProcessor`."""

    kind = KIND

    @classmethod
    def build(cls, cfg: JanusModelConfig, processor=None, words: list[str] = ()) -> "JanusPolicy":
        """From `cfg.base` (a real checkpoint), or a tiny random Janus when it is empty (its tokenizer
        also knowing `words`). Seeded: new marker embeddings are drawn the same way every time."""
        import tempfile

        import torch

        torch.manual_seed(cfg.seed)
        if cfg.base:
            return cls.from_base(cfg.base, cfg.canvas, dtype=cfg.dtype)
        with tempfile.TemporaryDirectory() as tmp:  # the tiny base goes through the path real weights take
            save_tiny_base(cfg, tmp, words)
            torch.manual_seed(cfg.seed)
            return cls.from_base(tmp, cfg.canvas)

    @classmethod
    def from_base(cls, folder: str | Path, canvas: int = 64, dtype=None) -> "JanusPolicy":
        """A policy from a Janus checkpoint that has never seen our grammar (real weights)."""
        from transformers import AutoTokenizer

        from .janus_model import JanusUnified

        folder = checkpoint_folder(folder, "model.base")
        kind = json.loads((folder / "config.json").read_text()).get("model_type")
        if kind != "janus":
            raise InputError(f"model.base: {folder} holds a {kind!r} checkpoint, not transformers' Janus "
                             "('janus'); DeepSeek's original layout converts with transformers' "
                             "convert_janus_weights_to_hf.py (docs/adapters.md)")
        model = JanusUnified.from_pretrained(folder, dtype=dtype)
        mean, std = image_normalisation(folder)
        return cls.adapt(model, AutoTokenizer.from_pretrained(folder), canvas, mean, std)

    @classmethod
    def adapt(cls, model, tokenizer, canvas: int = 64, mean=None, std=None) -> "JanusPolicy":
        """Add the grammar markers to a `JanusUnified`'s tokenizer (in spare embedding rows, or grown
        ones when there are none) and wrap model and processor."""
        if add_markers(tokenizer) and len(tokenizer) > model.code_offset:
            model.resize_token_embeddings(len(tokenizer), mean_resizing=False)
        _finish(model)
        return cls(model, JanusProcessor(tokenizer, model.model.vqmodel, model.code_offset, canvas, mean, std))

    @classmethod
    def from_pretrained(cls, folder: str | Path, dtype=None) -> "JanusPolicy":
        from .janus_model import JanusUnified

        folder = checkpoint_folder(folder, "checkpoint")
        model = JanusUnified.from_pretrained(folder, dtype=dtype)
        _finish(model)
        return cls(model, JanusProcessor.from_pretrained(folder, vq=model.model.vqmodel))


def _finish(model) -> None:
    """Expose the text model's position limit where generic code looks for it (the rollout decoder
    reads `model.config.max_position_embeddings`) and an `auto_map` (how TRL finds the class of its
    reference model, `janus_model.py`); freeze the VQ as Janus does, and the SigLIP understanding
    encoder this adapter does not use (sketches are read back as codes)."""
    from .janus_model import JANUS_AUTO_MAP

    model.config.max_position_embeddings = model.config.get_text_config().max_position_embeddings
    model.config.auto_map = JANUS_AUTO_MAP
    for part in (model.model.vqmodel, model.model.vision_model, model.model.aligner):
        part.requires_grad_(False)
        part.eval()


TINY_SHAPE = dict(hidden_size=64, num_layers=2, num_heads=2, intermediate_size=128, codebook_size=64)
"""The `--tiny` policy's shape: a random Janus that runs a round on two CPU cores in minutes."""


def main(argv: list[str] | None = None) -> None:
    """`python -m strokes.model.janus --base DIR --out DIR`: turn a downloaded Janus(-Pro) checkpoint
    into a policy checkpoint (grammar markers added, processor saved) that `loop.base_checkpoint`
    can name; `--tiny [--words PROMPTS]` writes a tiny random one instead."""
    args = conversion_parser(main.__doc__, "Janus").parse_args(argv)
    try:
        cfg = JanusModelConfig(base=args.base or "", canvas=args.canvas, dtype=args.dtype,
                               **(TINY_SHAPE if args.tiny else {}))
        policy = JanusPolicy.build(cfg, words=prompt_words(args.words) if args.words else ())
    except InputError as e:
        raise SystemExit(f"error: {e}") from None
    write_policy(policy, args.out)


if __name__ == "__main__":
    main()
