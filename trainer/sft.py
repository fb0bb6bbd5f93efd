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

import json
import os
import time
from pathlib import Path

from strokes.errors import InputError
from strokes.io import atomic_path, write_atomic
from strokes.trajectory import from_row

from .config import TrainConfig
from .plots import plot_losses


def tokenize(dataset, processor, workers: int = 1):
    """Trajectory rows -> `input_ids` + `completion_mask` (the processor's grammar and loss mask)."""
    import datasets

    def encode(row: dict) -> dict:
        enc = processor.encode(from_row(row))
        return {"input_ids": enc.input_ids, "completion_mask": enc.completion_mask}

    raw = dataset.cast_column("images", datasets.List(datasets.Image(decode=False)))
    return raw.map(encode, remove_columns=raw.column_names, num_proc=workers if workers > 1 else None,
                   desc="tokenize")


def use_cuda(cfg: TrainConfig) -> bool:
    """Whether this run trains on CUDA (`device: auto` picks it whenever torch sees a GPU)."""
    import torch

    return cfg.device == "cuda" or (cfg.device == "auto" and torch.cuda.is_available())


def use_bf16(cfg: TrainConfig) -> bool:
    """bf16 mixed precision: on by default on CUDA; off on CPU, where fp32 matmuls are faster."""
    return use_cuda(cfg) if cfg.bf16 == "auto" else bool(cfg.bf16)


def trainer_args(cfg: TrainConfig, out: Path, lr: float) -> dict:
    """What every TRL trainer of ours (SFT, GRPO) takes from `TrainConfig`: schedule, optimizer,
    precision, device, seeds, logging and checkpoints (`transformers.TrainingArguments` fields)."""
    cuda = use_cuda(cfg)
    return dict(
        output_dir=str(out),
        learning_rate=lr,
        lr_scheduler_type="cosine_with_min_lr",
        lr_scheduler_kwargs={"min_lr_rate": cfg.min_lr_ratio},
        warmup_steps=cfg.warmup_steps,
        weight_decay=cfg.weight_decay,
        adam_beta2=cfg.adam_beta2,
        max_grad_norm=cfg.max_grad_norm,
        seed=cfg.seed,
        data_seed=cfg.seed,
        bf16=use_bf16(cfg),
        use_cpu=not cuda,
        activation_checkpointing=cfg.activation_checkpointing,
        logging_steps=cfg.logging_steps,
        save_steps=cfg.save_steps,
        save_total_limit=cfg.save_total_limit,
        save_only_model=False,  # optimizer, scheduler and RNG states too, so a resumed run continues exactly
        report_to=[] if cfg.report_to == "none" else [cfg.report_to],
        dataloader_num_workers=0,
        dataloader_pin_memory=cuda,
        disable_tqdm=True,  # transformers' own bar and printer print raw log dicts; ConsoleProgress replaces them
    )


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


def peft_config(cfg: TrainConfig):
    if not cfg.lora.enabled:
        return None
    from peft import LoraConfig as PeftLoraConfig

    return PeftLoraConfig(r=cfg.lora.r, lora_alpha=cfg.lora.alpha, lora_dropout=cfg.lora.dropout,
                          target_modules=list(cfg.lora.target_modules), task_type="CAUSAL_LM")


def train_callbacks(path: Path, max_minutes: float) -> list:
    """`metrics.jsonl` gets every log line (the same dict wandb gets); the console a bar and one short
    line per logging step (`strokes.console`); a wall-time budget stops the run after a step, saving
    a trainer checkpoint first so that the next call resumes there."""
    from strokes import console

    from .sft_trainer import ConsoleProgress, MetricsFile, TimeBudget

    return [MetricsFile(path), ConsoleProgress(bar=console.bars(), lines=console.lines()), TimeBudget(max_minutes)]


def setup_wandb(cfg: TrainConfig, out: Path) -> bool:
    """Prepare wandb when `report_to` is wandb (offline unless the user says otherwise; files stay in
    the run folder). Returns whether the training will start its own wandb run, which the caller then
    finishes: transformers' callback joins a caller's open run, else starts one."""
    if cfg.report_to != "wandb":
        return False
    import wandb

    os.environ.setdefault("WANDB_MODE", "offline")
    if os.environ["WANDB_MODE"] == "offline":  # no banner, no "URL not available" warnings: nothing to visit
        os.environ.setdefault("WANDB_SILENT", "true")
    os.environ.setdefault("WANDB_DIR", str(out))
    os.environ.setdefault("WANDB_PROJECT", "strokes")
    return wandb.run is None


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
    torch.manual_seed(cfg.seed)
    tokenized = tokenize(dataset, policy.processor, cfg.tokenize_workers)
    trainer = make_trainer(policy, tokenized, cfg, out / "trainer",
                           callbacks=train_callbacks(out / "metrics.jsonl", cfg.max_minutes))
    return run_and_save(trainer, policy, cfg, out, own_wandb_run)


def run_and_save(trainer, policy, cfg: TrainConfig, out: Path, own_wandb_run: bool) -> dict:
    """Run a TRL trainer (SFT or GRPO) whose checkpoints live in `out/trainer/`, resuming from the
    last one if any; then `policy.model` becomes the trained model (LoRA merged when asked), the
    checkpoint lands atomically in `out/checkpoint`, the loss plot and the summary beside it.
    Returns the summary."""
    resume = any((out / "trainer").glob("checkpoint-*"))
    t0 = time.time()
    try:
        result = trainer.train(resume_from_checkpoint=True if resume else None)
    finally:
        if own_wandb_run:  # flush and close the run we started; a caller's run stays open
            import wandb

            wandb.finish()
    seconds = time.time() - t0
    model = trainer.model
    if cfg.lora.enabled and cfg.lora.merge:
        model = model.merge_and_unload()
    policy.model = model
    main = trainer.is_world_process_zero()  # with data-parallel workers, only the first one writes
    if main:
        with atomic_path(out / "checkpoint", folder=True) as tmp:
            policy.save_pretrained(tmp)
        plot_losses(out / "metrics.jsonl", out / "loss.png")
    summary = _summary(trainer, result.training_loss, seconds, resume)
    if main:
        write_atomic(out / "train_summary.json", json.dumps(summary, indent=2, default=float))
    return summary


def _summary(trainer, train_loss: float, seconds: float, resume: bool) -> dict:
    """What a finished (or budget-stopped) training call reports: steps, losses, throughput."""
    logs = [h for h in trainer.state.log_history if "loss" in h]
    seen = getattr(trainer, "_seen_tokens", trainer.state.num_input_tokens_seen)  # SFT counts padding too
    return {
        "steps": trainer.state.global_step,
        "max_steps": trainer.state.max_steps,
        "complete": trainer.state.global_step >= trainer.state.max_steps,
        "train_loss": train_loss,
        "last": logs[-1] if logs else {},
        "seconds": seconds,
        "tokens_seen": seen,
        "tokens_per_s": seen / max(seconds, 1e-9),
        "useful_token_share": getattr(trainer, "_useful_tokens", seen) / max(seen, 1),
        "resumed": resume,
        "world_size": trainer.args.world_size,  # data-parallel processes (trainer/distributed.py)
    }
