"""Check a checkpoint folder before anything loads it or writes output for it.

A damaged checkpoint (a truncated `model.safetensors`, a garbage `tokenizer.json`, a missing
`image_tokenizer.npz`) used to fail deep inside transformers with a different traceback each, after
commands had already created their output folders. `check_checkpoint` names the file and what is
wrong in one line (`InputError`), cheaply: it reads headers, not weights.

A hand-edited file loads without a word (two colour words swapped in `tokenizer.json` scored 0% on
colours), so a saved checkpoint records the sha256 of each of its files in `checksums.json`
(`write_checksums`), and a file that no longer matches is refused. The shipped `checkpoints/base`
carries one too (its README and logs included: rewrite it with `write_checksums` after editing any
of its files). A checkpoint without one (saved before checksums existed) is still accepted.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from strokes.errors import InputError

CHECKSUMS = "checksums.json"
# Written into a checkpoint after it is saved (selfplay/loop.py's head stage), so not covered.
UNCOVERED = {CHECKSUMS, "inspect_head.json"}


def sha256(path: Path) -> str:
    """The file's sha256, read in blocks (weights can be larger than memory)."""
    h = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def file_digests(folder: str | Path, skip: set[str] = frozenset()) -> dict[str, str]:
    """sha256 of each file directly in `folder` (not in `skip`), by name, in name order."""
    return {p.name: sha256(p) for p in sorted(Path(folder).iterdir()) if p.is_file() and p.name not in skip}


def write_checksums(folder: str | Path) -> Path:
    """Record the checksum of every file of a just-saved checkpoint; call it after the last file."""
    path = Path(folder) / CHECKSUMS
    path.write_text(json.dumps(file_digests(folder, UNCOVERED), indent=1) + "\n")
    return path


def _json_object(path: Path) -> dict:
    try:
        value = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, ValueError) as e:
        raise InputError(f"{path}: not valid JSON ({e})") from None
    if not isinstance(value, dict):
        raise InputError(f"{path}: expected a JSON object, got {type(value).__name__}")
    return value


def check_checkpoint(folder: str | Path) -> None:
    """Raise a one-line `InputError` naming the file if `folder` is not a loadable checkpoint.

    Always: config.json is a JSON object, processor.json (if any) too, every `*.safetensors` file
    (and each one a `model.safetensors.index.json` lists) has a readable header whose tensors fit in
    the file, and the files match `checksums.json` when there is one. The tiny model's checkpoints
    also need their weights, `tokenizer.json` and `image_tokenizer.npz`; an adapter's (Emu3) other
    files are its own class's business."""
    from safetensors import SafetensorError, safe_open

    folder = Path(folder)
    if not (folder / "config.json").is_file():
        raise InputError(f"{folder}: not a checkpoint folder (no config.json)")
    _json_object(folder / "config.json")
    kind = _json_object(folder / "processor.json").get("processor", "strokes.tiny") \
        if (folder / "processor.json").is_file() else "strokes.tiny"
    weights = sorted(folder.glob("*.safetensors"))
    index = folder / "model.safetensors.index.json"
    if index.is_file():
        shards = sorted(set(_json_object(index).get("weight_map", {}).values()))
        missing = [name for name in shards if not (folder / name).is_file()]
        if missing:
            raise InputError(f"{index}: lists {missing[0]}, which is missing")
    if kind == "strokes.tiny" and not weights:
        raise InputError(f"{folder / 'model.safetensors'}: missing (no weights in the checkpoint)")
    for path in weights:
        try:
            with safe_open(str(path), "pt"):
                pass
        except (SafetensorError, OSError) as e:  # a truncated file, or one that is not safetensors
            raise InputError(f"{path}: unreadable weights (truncated or damaged: {e})") from None
    if kind == "strokes.tiny":
        _check_tiny_processor(folder)
    _check_checksums(folder)


def _check_tiny_processor(folder: Path) -> None:
    """The files `Processor.from_pretrained` reads."""
    import tokenizers

    tokenizer = folder / "tokenizer.json"
    if not tokenizer.is_file():
        raise InputError(f"{tokenizer}: missing (the text tokenizer)")
    try:
        tokenizers.Tokenizer.from_file(str(tokenizer))
    except Exception as e:  # noqa: BLE001  (tokenizers raises a bare Exception)
        raise InputError(f"{tokenizer}: not a tokenizer ({e})") from None
    if not (folder / "image_tokenizer.npz").is_file():
        raise InputError(f"{folder / 'image_tokenizer.npz'}: missing (the image codebook)")


def _check_checksums(folder: Path) -> None:
    if not (folder / CHECKSUMS).is_file():
        return
    for name, digest in _json_object(folder / CHECKSUMS).items():
        if not (folder / name).is_file():
            raise InputError(f"{folder / name}: missing (listed in {CHECKSUMS})")
        if sha256(folder / name) != digest:
            raise InputError(f"{folder / name}: changed since the checkpoint was saved "
                             f"(its sha256 no longer matches {CHECKSUMS})")
