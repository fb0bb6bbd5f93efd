"""The segment-weighted loss: next-token cross-entropy weighted per segment kind (text, image codes,
vision markers), the kind read off each target token's id. torch is imported where it is used, so
this module is cheap to import."""

from __future__ import annotations

from .config import SEGMENTS


def segment_table(processor, weights: dict[str, float], device=None):
    """Per-token-id segment index (0 text, 1 image code, 2 vision marker) and each segment's weight.

    The kind is a property of the target token's id, so packed, padded or truncated batches need no
    side channel: `<eos>` and all words are text, `<img_k>` are image, `<vision_start/end>` boundary.
    """
    import torch

    kind = torch.zeros(processor.vocab_size, dtype=torch.long)
    kind[processor.code_offset: processor.code_offset + processor.num_codes] = 1
    kind[processor.special["<vision_start>"]] = 2
    kind[processor.special["<vision_end>"]] = 2
    w = torch.tensor([float(weights.get(s, 1.0)) for s in SEGMENTS])
    return kind.to(device), w.to(device)


def segment_loss(logits, labels, kind, weights, num_items=None):
    """Next-token CE weighted per segment kind, summed over targets and divided by the number of
    loss-bearing targets (`num_items` when the trainer counts them across gradient accumulation).

    Returns `(loss, ce, valid, seg)`: the scalar loss and, per target position, the unweighted CE,
    whether it bears loss (label != -100) and its segment index, for logging.
    """
    import torch
    import torch.nn.functional as F

    logits = logits[:, :-1].float()
    target = labels[:, 1:]
    valid = target != -100
    safe = target.clamp(min=0)
    ce = F.cross_entropy(logits.reshape(-1, logits.size(-1)), safe.reshape(-1),
                         reduction="none").view_as(target)
    seg = kind[safe]
    w = weights[seg] * valid
    denom = valid.sum() if num_items is None else num_items
    loss = (ce * w).sum() / torch.as_tensor(denom, device=ce.device).clamp(min=1)
    return loss, ce, valid, seg


def model_inputs(inputs: dict) -> dict:
    """Packed batches carry position ids and no mask may reach the model (see `sft_trainer.PackedRowsCollator`);
    unpacked batches carry the padding mask."""
    if "position_ids" in inputs:
        return {"input_ids": inputs["input_ids"], "position_ids": inputs["position_ids"]}
    return {"input_ids": inputs["input_ids"], "attention_mask": inputs["attention_mask"]}
