"""SFT on interleaved trajectories with TRL's `SFTTrainer`.

Rows are tokenized by the policy's processor into `input_ids` + `completion_mask`, which
`SFTTrainer` takes as they are (with `completion_only_loss=True`, or it would silently train on the
prompt and on the deliberately wrong plans and images). The only thing we change in TRL is the loss:
cross-entropy weighted per segment kind (text, image codes, vision markers), the kind read off each
target token's id, with each kind's loss logged on its own, plus tokens/s and the share of
loss-bearing tokens in every log. Everything else — packing, schedules, checkpoints, resume, LoRA —
is TRL's and transformers'. The trainer class is `sft_trainer.SegmentWeightedSFTTrainer`, the loss
`losses.segment_loss`; docs/training.md explains the choices.
"""

from __future__ import annotations

from pathlib import Path

from strokes import console
from strokes.errors import InputError
from strokes.trajectory import from_row

from .config import TrainConfig
from .trl_common import peft_config, run_and_save, setup_wandb, train_callbacks, trainer_args


def tokenize(dataset, processor, workers: int = 1):
    """Trajectory rows -> `input_ids` + `completion_mask` (the processor's grammar and loss mask)."""
    import datasets

    def encode(row: dict) -> dict:
        enc = processor.encode(from_row(row))
        return {"input_ids": enc.input_ids, "completion_mask": enc.completion_mask}

    raw = dataset.cast_column("images", datasets.List(datasets.Image(decode=False)))
    return raw.map(encode, remove_columns=raw.column_names, num_proc=workers if workers > 1 else None,
                   desc="tokenize")


def sft_config(cfg: TrainConfig, out: Path):
    """Our `TrainConfig` as TRL's `SFTConfig` (pre-tokenized rows, completion-only loss, bfd packing)."""
    from trl import SFTConfig

    return SFTConfig(
        **trainer_args(cfg, out, cfg.lr),
        per_device_train_batch_size=cfg.batch_size,
        gradient_accumulation_steps=cfg.grad_accum,
        num_train_epochs=cfg.epochs,
        max_steps=cfg.max_steps,
        max_length=cfg.max_length,
        packing=cfg.packing,
        train_sampling_strategy="group_by_length" if cfg.group_by_length else "random",
        packing_strategy="bfd",  # padding-free: one flat row per batch, sequences isolated by position_ids
        completion_only_loss=True,  # labels = -100 wherever completion_mask is 0
        dataset_kwargs={},
        dataset_num_proc=None,
    )


def make_trainer(policy, train_dataset, cfg: TrainConfig, out: str | Path, callbacks=()):
    """A `SegmentWeightedSFTTrainer` (`trainer/sft_trainer.py`) over tokenized rows: TRL's
    `SFTTrainer` with the loss weighted per segment kind (module docstring) and packed rows kept as
    rows (`PackedRowsCollator`)."""
    from .sft_trainer import PackedRowsCollator, SegmentWeightedSFTTrainer

    trainer = SegmentWeightedSFTTrainer(
        model=policy.model,
        args=sft_config(cfg, Path(out)),
        train_dataset=train_dataset,
        processing_class=policy.processor.tokenizer,
        peft_config=peft_config(cfg),
        callbacks=list(callbacks),
        segment_processor=policy.processor,
        loss_weights=cfg.loss_weights,
    )
    if cfg.packing:
        trainer.data_collator = PackedRowsCollator(trainer.data_collator.pad_token_id)
    from transformers.trainer_callback import PrinterCallback

    trainer.remove_callback(PrinterCallback)
    return trainer


def train(policy, dataset, cfg: TrainConfig, out: str | Path) -> dict:
    """Train `policy` on trajectory rows; write `out/checkpoint` (model + processor, atomically).

    `out/trainer/` keeps TRL's checkpoints: if one exists the run resumes from it, so calling this
    again after a kill (or after `max_minutes` ran out) continues where it stopped. Returns a summary
    (steps, whether the schedule finished, losses, tokens/s, useful-token share), also written to
    `out/train_summary.json`; `policy.model` is the trained (with LoRA: merged) model afterwards.
    """
    import torch

    if len(dataset) == 0:
        raise InputError(f"no trajectories to train on (empty dataset; output folder {out})")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    if cfg.num_threads > 0:
        torch.set_num_threads(cfg.num_threads)
    own_wandb_run = setup_wandb(cfg, out)
    console.hush_deprecations()  # peft warns as it wraps the model in LoRA, TRL every step
    torch.manual_seed(cfg.seed)
    tokenized = tokenize(dataset, policy.processor, cfg.tokenize_workers)
    trainer = make_trainer(policy, tokenized, cfg, out / "trainer",
                           callbacks=train_callbacks(out / "metrics.jsonl", cfg.max_minutes))
    return run_and_save(trainer, policy, cfg, out, own_wandb_run)


