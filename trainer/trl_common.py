"""What every TRL trainer of ours shares (SFT in `sft.py`, GRPO in `grpo.py`): `TrainConfig` as
`transformers.TrainingArguments` fields (schedule, optimizer, precision, device, seeds, logging,
checkpoints), the LoRA config, the callbacks (metrics file, console, wall-time budget), wandb
set-up, and running a trainer to a saved, checksummed checkpoint with its summary."""

from __future__ import annotations

import json
import os
import time
import warnings
from pathlib import Path

from strokes.io import atomic_path, write_atomic

from .config import TrainConfig
from .plots import plot_losses


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


# TRL 1.16 reads transformers' deprecated `is_gradient_checkpointing` alias around its generation and
# reference forwards: two FutureWarnings in every run's console that no user of ours can act on (the
# fix is TRL's). Silenced by their message alone, so every other warning still shows.
TRL_DEPRECATION = r"`is_gradient_checkpointing` is deprecated"


def run_and_save(trainer, policy, cfg: TrainConfig, out: Path, own_wandb_run: bool) -> dict:
    """Run a TRL trainer (SFT or GRPO) whose checkpoints live in `out/trainer/`, resuming from the
    last one if any; then `policy.model` becomes the trained model (LoRA merged when asked), the
    checkpoint lands atomically in `out/checkpoint`, the loss plot and the summary beside it.
    Returns the summary."""
    resume = any((out / "trainer").glob("checkpoint-*"))
    warnings.filterwarnings("ignore", message=TRL_DEPRECATION, category=FutureWarning)
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
