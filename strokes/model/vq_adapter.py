"""What every adapter over a unified model with a VQ image tokenizer shares (Emu3, Janus-Pro).

Such a model turns an image into a fixed grid of codebook indices with its own VQ model and back;
the adapters differ only in how their VQ is called and where their codes sit in the vocabulary. So:

- `VQImageCodec`: the `ImageTokenizer` interface (`encode`, `decode`, `num_codes`,
  `codes_per_image`) over a VQ module it holds (the model's own, never a copy, so it follows the
  model to its device and dtype): a canvas is resized to the VQ's `image_size`, normalised with the
  checkpoint's mean/std, encoded; decoding de-normalises and resizes back to the canvas the judges
  read. Subclasses say how their VQ encodes pixels and decodes codes.
- `VQProcessor`: `Processor` (grammar, loss mask, parser) over the model's own tokenizer, with our
  grammar markers added as special tokens (`add_markers`) and `text_ids` every ordinary token.
- the conversion command's common half (`conversion_parser`, `write_policy`): a downloaded
  checkpoint (or a tiny random one) in, a policy checkpoint out.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import ClassVar

import numpy as np

from ..errors import InputError
from ..io import atomic_path
from .processor import SPECIALS, Processor, join_words


class VQImageCodec:
    """Images <-> codes through a unified model's VQ; subclasses implement `_codes` and `_pixels`."""

    def __init__(self, vq, image_size: int, canvas: int, side: int, num_codes: int,
                 mean: list[float], std: list[float]) -> None:
        self.vq = vq
        self.image_size = image_size
        self.canvas = canvas
        self.side = side
        self.codes_per_image = side * side
        self.num_codes = num_codes
        self.mean = np.asarray(mean, np.float32).reshape(1, 1, 3)
        self.std = np.asarray(std, np.float32).reshape(1, 1, 3)

    def _codes(self, pixels):
        """[n, 3, image_size, image_size] normalised pixels -> [n, side * side] code indices."""
        raise NotImplementedError

    def _pixels(self, codes):
        """[n, side * side] code indices -> [n, 3, image_size, image_size] normalised pixels."""
        raise NotImplementedError

    def _where(self):
        p = next(self.vq.parameters())
        return p.device, p.dtype

    def encode_batch(self, images: list[np.ndarray]) -> list[list[int]]:
        import torch
        from PIL import Image

        arrs = []
        for im in images:
            im = np.asarray(im, np.uint8)
            if im.shape[0] != self.image_size or im.shape[1] != self.image_size:
                im = np.asarray(Image.fromarray(im).resize((self.image_size, self.image_size), Image.BICUBIC))
            arrs.append(((im.astype(np.float32) / 255.0 - self.mean) / self.std).transpose(2, 0, 1))
        device, dtype = self._where()
        pixels = torch.from_numpy(np.stack(arrs)).to(device=device, dtype=dtype)
        with torch.inference_mode():
            codes = self._codes(pixels)
        return [t.reshape(-1).tolist() for t in codes]

    def encode(self, image: np.ndarray) -> list[int]:
        return self.encode_batch([image])[0]

    def decode_batch(self, codes: list[list[int]]) -> list[np.ndarray]:
        import torch
        from PIL import Image

        device, _ = self._where()
        flat = torch.tensor(codes, dtype=torch.long, device=device).view(-1, self.codes_per_image)
        with torch.inference_mode():
            pixels = self._pixels(flat).float().cpu().numpy()  # [n, 3, h, w], normalised
        out = []
        for p in pixels:
            im = np.clip((p.transpose(1, 2, 0) * self.std + self.mean) * 255.0, 0, 255).round().astype(np.uint8)
            if im.shape[0] != self.canvas:
                im = np.asarray(Image.fromarray(im).resize((self.canvas, self.canvas), Image.BICUBIC))
            out.append(im)
        return out

    def decode(self, codes: list[int]) -> np.ndarray:
        return self.decode_batch([list(codes)])[0]


class VQProcessor(Processor):
    """`Processor` over a unified model's tokenizer and a `VQImageCodec`.

    Differences from the tiny processor, all inside the fields the rest of the code reads: the
    grammar markers are added tokens of the model's tokenizer, the codes sit where the adapter says
    (`code_offset`), and `text_ids` are every ordinary (not added, not code) token."""

    KIND: ClassVar[str] = ""
    """The `processor` name `processor.json` records (a key of `strokes.model.policy.ADAPTERS`)."""

    def __init__(self, tokenizer, codec: VQImageCodec, code_offset: int) -> None:
        self.tokenizer = tokenizer
        self.image_tokenizer = codec
        ids = tokenizer.convert_tokens_to_ids
        self.special = {t: ids(t) for t in SPECIALS}
        missing = [t for t, i in self.special.items() if i is None or tokenizer.convert_ids_to_tokens(i) != t]
        if missing:
            raise InputError(f"model: the tokenizer lacks the grammar markers {missing} (build it with add_markers)")
        self.num_codes = codec.num_codes
        self.codes_per_image = codec.codes_per_image
        self.code_offset = code_offset
        added = set(tokenizer.added_tokens_decoder)
        self.text_ids = [i for i in range(len(tokenizer)) if i not in added and not self.is_code(i)]
        self.pad_id = self.special["<pad>"]
        self.eos_id = self.special["<eos>"]
        backend = getattr(getattr(tokenizer, "backend_tokenizer", None), "model", None)
        self._word_level = type(backend).__name__ == "WordLevel"  # words join as ShapeWorld text does
        self._cache: dict[str, list[int]] = {}

    def words(self, ids: list[int]) -> str:
        if self._word_level:
            return join_words(self.tokenizer.convert_ids_to_tokens(list(ids)))
        return self.tokenizer.decode(list(ids)).strip()

    def meta(self) -> dict:
        c = self.image_tokenizer
        return {"processor": self.KIND, "version": 1, "image_size": c.image_size, "canvas": c.canvas,
                "mean": c.mean.ravel().tolist(), "std": c.std.ravel().tolist()}

    def save_pretrained(self, folder: str | Path) -> None:
        """Tokenizer and `processor.json`; the VQ's weights live in the model's own files."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        self.tokenizer.save_pretrained(folder)
        (folder / "processor.json").write_text(json.dumps(self.meta()))


def add_markers(tokenizer) -> int:
    """Add the grammar markers a model's tokenizer lacks, as special tokens; returns how many."""
    missing = [t for t in SPECIALS if t not in tokenizer.get_vocab()]
    n = tokenizer.add_tokens(missing, special_tokens=True) if missing else 0
    tokenizer.pad_token = "<pad>"
    tokenizer.eos_token = "<eos>"
    tokenizer.unk_token = "<unk>"
    return n


def image_normalisation(folder: Path) -> tuple[list[float], list[float]]:
    """Image mean/std from a checkpoint's image processor config (Emu3's and Janus-Pro's: 0.5, 0.5),
    else 0.5."""
    path = folder / "preprocessor_config.json"
    if path.is_file():
        c = json.loads(path.read_text())
        mean, std = c.get("image_mean", [0.5] * 3), c.get("image_std", [0.5] * 3)
        as3 = lambda v: [float(v)] * 3 if isinstance(v, (int, float)) else [float(x) for x in v]  # noqa: E731
        return as3(mean), as3(std)
    return [0.5] * 3, [0.5] * 3


def load_submodule(module, folder: Path, prefixes: tuple[str, ...]):
    """`module` (a freshly built VQ) with its weights read from a checkpoint's safetensors, where they
    sit under one of `prefixes`; frozen and in eval mode, as the unified models keep their VQs."""
    from safetensors import safe_open

    state = {}
    for file in sorted(folder.glob("*.safetensors")):
        with safe_open(str(file), "pt") as f:
            for k in f.keys():
                for prefix in prefixes:
                    if k.startswith(prefix):
                        state[k[len(prefix):]] = f.get_tensor(k)
    missing, _ = module.load_state_dict(state, strict=False)
    if missing:
        raise InputError(f"{folder}: the checkpoint holds no VQ weights for {missing[0]} (and {len(missing) - 1} more)")
    return module.eval().requires_grad_(False)


def prompt_words(path: str | Path) -> list[str]:
    """Every word of a prompt file's prompts (GenEval JSONL or plain text), in first-seen order."""
    from ..records import read_prompts

    return list(dict.fromkeys(w for r in read_prompts(path) for w in r.text.lower().split()))


def checkpoint_folder(folder: str | Path, field: str) -> Path:
    """`folder` when it holds a Hugging Face checkpoint (`config.json`); else a one-line error naming
    `field` (what the folder came from)."""
    folder = Path(folder)
    if not (folder / "config.json").is_file():
        raise InputError(f"{field}: {folder} is not a checkpoint folder (no config.json)")
    return folder


def save_base(model, tokenizer, folder: str | Path) -> Path:
    """Write a model and its tokenizer in Hugging Face's layout, as a downloaded checkpoint is."""
    folder = Path(folder)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def conversion_parser(doc: str, model: str) -> argparse.ArgumentParser:
    """The arguments every `python -m strokes.model.<adapter>` conversion takes: `--base DIR` or
    `--tiny [--words PROMPTS]`, `--out`, `--canvas`, `--dtype`."""
    parser = argparse.ArgumentParser(description=doc.splitlines()[0])
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--base", help=f"{model} checkpoint folder (Hugging Face layout)")
    source.add_argument("--tiny", action="store_true", help=f"a tiny random {model} instead (CPU runs and tests)")
    parser.add_argument("--words", help="with --tiny: a prompt file whose words the tokenizer must know")
    parser.add_argument("--out", required=True, help="policy checkpoint folder to write")
    parser.add_argument("--canvas", type=int, default=64, help="side of the images it draws and judges read: "
                                                               "64 for ShapeWorld, the VQ's size for an open world")
    parser.add_argument("--dtype", default="auto", help="auto (the checkpoint's) or float32")
    return parser


def write_policy(policy, out: str | Path) -> None:
    """Save a converted policy atomically and say what it is in one line."""
    out = Path(out)
    with atomic_path(out, folder=True) as tmp:
        policy.save_pretrained(tmp)
    p = policy.processor
    print(f"{out}: {policy.num_parameters() / 1e6:.1f}M parameters, {p.num_codes} codes at ids "
          f"{p.code_offset}..{p.code_offset + p.num_codes - 1}, {p.codes_per_image} codes per image "
          f"({p.image_tokenizer.image_size} px), markers at ids {min(p.special.values())}..{max(p.special.values())}")
