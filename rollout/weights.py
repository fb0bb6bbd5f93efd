"""A policy in memory that takes the next checkpoint without being rebuilt.

A rollout actor keeps one policy for a whole run; between rounds the loop hands it the next
checkpoint, which `trainer/sft.py` writes in one of two forms:

- a **full checkpoint** (`save_pretrained`: `config.json`, safetensors, the processor's files);
- with LoRA and `merge: false`, an **adapter folder**: `adapter_config.json` +
  `adapter_model.safetensors` + the processor's files, no `config.json`. peft records the base the
  adapter was trained on in `base_model_name_or_path` (the folder the trainer loaded the parent
  from).

`PolicySlot.load(folder)` brings either into the model it already holds. Weights of the same
architecture are copied into the existing parameters, tensor by tensor from the safetensors (through
transformers' own key conversion, since e.g. Emu3 saves `text_model.*` for `model.text_model.*`): the
model keeps its device, dtype and identity, so a GPU actor allocates nothing and keeps its CUDA
context. An adapter goes onto the base weights in memory with peft (the base is copied in first when
the slot holds another one); the previous adapter is unloaded first (unmerged, so the base comes
back exactly). Anything else (another architecture, another processor) is loaded afresh: slower,
never wrong.

The processor of an adapter is its base's: training changes weights, not the tokenizer or the
image codebook (the loader checks the adapter folder's processor files are the base's).
"""

from __future__ import annotations

import json
from pathlib import Path

from strokes.errors import InputError
from strokes.model.checkpoint_check import CHECKSUMS, check_checkpoint
from strokes.model.inspect_head import InspectHead
from strokes.model.policy import Policy

ADAPTER_CONFIG = "adapter_config.json"
# config.json fields that differ between checkpoints of one model without changing its forward pass
# (the name is the folder it was loaded from; TRL turns use_cache off while training and aligns the
# special token ids with the tokenizer's, which our decoder takes from the processor anyway).
_VOLATILE = {"_name_or_path", "transformers_version", "dtype", "torch_dtype", "use_cache", "eos_token_id",
             "pad_token_id", "bos_token_id"}


def is_adapter(folder: Path) -> bool:
    return (folder / ADAPTER_CONFIG).is_file() and not (folder / "config.json").is_file()


def checkpoint_path(path: str | Path) -> Path:
    """The resolved folder of a full checkpoint or of an adapter whose base exists; a one-line
    InputError otherwise."""
    folder = Path(path).resolve()
    if (folder / "config.json").is_file():
        return folder
    if is_adapter(folder):
        adapter_base(folder)
        return folder
    raise InputError(f"{folder}: not a checkpoint (no config.json, no {ADAPTER_CONFIG})")


def adapter_base(folder: Path) -> Path:
    """The full checkpoint an adapter folder was trained on (`base_model_name_or_path`, absolute or
    relative to the working directory or to the adapter folder)."""
    path = folder / ADAPTER_CONFIG
    try:
        base = json.loads(path.read_text()).get("base_model_name_or_path") or ""
    except json.JSONDecodeError:
        raise InputError(f"{path}: malformed JSON") from None
    for candidate in ([Path(base)] if Path(base).is_absolute() else [Path.cwd() / base, folder / base]):
        if base and (candidate / "config.json").is_file():
            return candidate.resolve()
    raise InputError(f"{path}: base_model_name_or_path {base!r} is not a checkpoint folder (the adapter's base)")


def _processor_files(folder: Path) -> dict[str, bytes]:
    """The files that define a checkpoint's processor (vocabulary, codebook, `processor.json`): all
    but weights and model config. `tokenizer_config.json` is left out: it holds loading options
    that change when a tokenizer is merely loaded and saved again (`is_local`), while the
    vocabulary and added tokens are in `tokenizer.json`; `checksums.json` covers the weights too."""
    skip = {"config.json", "generation_config.json", ADAPTER_CONFIG, "README.md", "tokenizer_config.json",
            "special_tokens_map.json", CHECKSUMS}
    return {p.name: p.read_bytes() for p in folder.iterdir()
            if p.is_file() and p.name not in skip and ".safetensors" not in p.name and not p.name.endswith(".bin")}


def _model_config(folder: Path) -> dict:
    def strip(c):
        return {k: strip(v) for k, v in c.items() if k not in _VOLATILE} if isinstance(c, dict) else c

    return strip(json.loads((folder / "config.json").read_text()))  # sub-configs too (Emu3's text_config)


def _is_peft(model) -> bool:
    return type(model).__module__.startswith("peft.")


class PolicySlot:
    """Holds one policy and loads checkpoints into it (module docstring). `policy` is None until
    the first `load`; `checkpoint` is the folder last loaded (full or adapter), `base` the full
    checkpoint whose weights are in the model."""

    def __init__(self, policy=None) -> None:
        self.policy = policy
        self.checkpoint: Path | None = None
        self.base: Path | None = None
        self.adapters = 0  # adapters attached so far (names must be unique within a PeftModel)
        self.update: str | None = None  # the trainer's update applied on top of `checkpoint` (`apply`)

    def load(self, folder: str | Path) -> str:
        """Bring `folder` into the policy; returns how: "same" (already held), "fresh" (loaded from
        scratch), "in_place" (weights copied into the model in memory), each + "+adapter" when an
        adapter went on top."""
        folder = checkpoint_path(folder)
        if folder == self.checkpoint and self.update is None:
            return "same"
        self.checkpoint = None  # until this load completes
        if self.policy is not None and _is_peft(self.policy.model):
            self.policy.model = self.policy.model.unload()  # unmerged: the base weights come back exactly
        if is_adapter(folder):
            base = adapter_base(folder)
            if _processor_files(folder) and _processor_files(folder) != _processor_files(base):
                raise InputError(f"{folder}: the adapter's processor files differ from its base's ({base})")
            how = self._load_base(base) + "+adapter"
            self._attach(folder)
        else:
            how = self._load_base(folder)
        self.policy.inspect_head = InspectHead.load(folder)  # the folder's own head (or none), never a stale one
        self.checkpoint, self.update = folder, None
        return how

    def _load_base(self, folder: Path) -> str:
        if self.policy is not None and folder == self.base and self.update is None:
            return "in_place"  # the weights in memory are this checkpoint's already
        if self.policy is not None and self.base is not None and self._same_model(folder):
            check_checkpoint(folder)  # as Policy.from_pretrained does on the fresh path
            if self._copy_weights(folder):
                self.base = folder
                return "in_place"
        self.base = None
        self.policy = None  # let the old model go before the new one loads
        self.policy = Policy.from_pretrained(folder)
        self.base = folder
        return "fresh"

    def _same_model(self, folder: Path) -> bool:
        """Same model config and processor files as the base in memory (whose folder may be gone)."""
        try:
            return (_model_config(folder) == _model_config(self.base)
                    and _processor_files(folder) == _processor_files(self.base))
        except (OSError, json.JSONDecodeError):
            return False

    def _copy_weights(self, folder: Path) -> bool:
        """Copy the safetensors of `folder` into the model's own tensors. Every file tensor must land
        on a model tensor of the same shape and every model tensor must be written (tied weights
        count once), or nothing is copied and False is returned."""
        import torch
        from safetensors import safe_open

        model = self.policy.model
        state = model.state_dict()
        try:  # saved names, as save_pretrained writes them (renamings keep the same tensors)
            from transformers.core_model_loading import revert_weight_conversion

            saved = revert_weight_conversion(model, dict(state))
        except ImportError:  # an older transformers: no conversions
            saved = dict(state)
        owned = {t.data_ptr() for t in state.values()}
        files = sorted(folder.glob("*.safetensors"))
        plan: dict[Path, list] = {}
        written = set()
        for file in files:
            with safe_open(str(file), "pt") as f:
                for key in f.keys():
                    target = saved.get(key)
                    if (target is None or target.data_ptr() not in owned
                            or tuple(target.shape) != tuple(f.get_slice(key).get_shape())):
                        return False
                    plan.setdefault(file, []).append((key, target))
                    written.add(target.data_ptr())
        if not files or written != owned:
            return False
        with torch.no_grad():
            for file, pairs in plan.items():
                with safe_open(str(file), "pt") as f:
                    for key, target in pairs:
                        target.copy_(f.get_tensor(key))
        return True

    def apply(self, key: str, tensors: dict, lora=None) -> None:
        """Put a trainer's weights on top of the checkpoint held (`rollout/sync.py`): `tensors` are
        the parameters it trains, by the names its model gives them. Full fine-tuning: they are
        copied into the model. LoRA (`lora`, peft's `LoraConfig`): the model gets those adapter
        layers (once per update series) and their tensors, unmerged, so the forward is the trainer's
        own. `key` names the update; the next `load` of any checkpoint takes it off again (a peft
        model is unloaded, base weights are copied back)."""
        import torch

        if lora is not None and not _is_peft(self.policy.model):
            if self.update is not None:  # a full update went into the base weights: the model is not the base
                raise InputError("rollout: a LoRA update needs the base weights in memory; load the checkpoint first")
            from peft import get_peft_model

            self.policy.model = get_peft_model(self.policy.model, lora).eval()
        model = self.policy.model.base_model.model if lora is not None else self.policy.model
        params = dict(model.named_parameters())
        missing = [name for name in tensors if name not in params or params[name].shape != tensors[name].shape]
        if missing:
            raise InputError(f"rollout: the trainer's weights do not fit the model held (first: {missing[0]})")
        with torch.no_grad():
            for name, value in tensors.items():
                params[name].copy_(value)
        self.update = key

    def _attach(self, folder: Path) -> None:
        from peft import PeftModel

        self.adapters += 1
        model = PeftModel.from_pretrained(self.policy.model, str(folder), adapter_name=f"round{self.adapters}",
                                          is_trainable=False)
        self.policy.model = model.eval()

