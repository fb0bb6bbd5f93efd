"""SFT on interleaved trajectories with TRL's `SFTTrainer`.

Rows are tokenized by the policy's processor into `input_ids` + `completion_mask`, which
`SFTTrainer` takes as they are (with `completion_only_loss=True`, or it would silently train on the
prompt and on the deliberately wrong plans and images). The only thing we change in TRL is the loss:
cross-entropy weighted per segment kind (text, image codes, vision markers), the kind read off each
target token's id, with each kind's loss logged on its own, plus tokens/s and the share of
loss-bearing tokens in every log. Everything else — packing, schedules, checkpoints, resume, LoRA —
is TRL's and transformers'. docs/training.md explains the choices.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path

from .config import SEGMENTS, TrainConfig


def tokenize(dataset, processor, workers: int = 1):
    """Trajectory rows -> `input_ids` + `completion_mask` (the processor's grammar and loss mask)."""
    import datasets

    from strokes.trajectory import from_row

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


def sft_config(cfg: TrainConfig, out: Path):
    """Our `TrainConfig` as TRL's `SFTConfig` (pre-tokenized rows, completion-only loss, bfd packing)."""
    from trl import SFTConfig

    cuda = use_cuda(cfg)
    return SFTConfig(
        output_dir=str(out),
        learning_rate=cfg.lr,
        lr_scheduler_type="cosine_with_min_lr",
        lr_scheduler_kwargs={"min_lr_rate": cfg.min_lr_ratio},
        warmup_steps=cfg.warmup_steps,
        weight_decay=cfg.weight_decay,
        adam_beta2=cfg.adam_beta2,
        max_grad_norm=cfg.max_grad_norm,
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
        disable_tqdm=False,
        dataset_num_proc=None,
    )


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


def packed_rows_collator(pad_token_id: int):
    """Batches of bfd-packed rows kept as rows (`[batch, <= max_length]`), each with position ids that
    restart at every packed sequence.

    TRL's default for bfd is padding-free: the whole batch flattened into one row, which only pays
    off with varlen flash-attention kernels; with SDPA or eager attention that row costs
    (batch * max_length)^2 attention, about 3x slower per token on our CPUs (docs/training.md).
    Kept as rows, attention costs batch * max_length^2. The model gets no attention mask with these
    batches, so transformers derives a block-diagonal causal mask from the position ids and packed
    sequences never see each other (tests/test_trainer.py checks the losses against unpacked ones).
    """
    from trl.trainer.sft_trainer import DataCollatorForLanguageModeling

    class PackedRowsCollator(DataCollatorForLanguageModeling):
        def torch_call(self, examples):
            out = super().torch_call(examples)
            out["labels"][out["position_ids"] == 0] = -100  # no target across a sequence border
            return out

    return PackedRowsCollator(pad_token_id=pad_token_id, padding_free=False, return_position_ids=True)


def _model_inputs(inputs: dict) -> dict:
    """Packed batches carry position ids and no mask may reach the model (see `packed_rows_collator`);
    unpacked batches carry the padding mask."""
    if "position_ids" in inputs:
        return {"input_ids": inputs["input_ids"], "position_ids": inputs["position_ids"]}
    return {"input_ids": inputs["input_ids"], "attention_mask": inputs["attention_mask"]}


def make_trainer(policy, train_dataset, cfg: TrainConfig, out: str | Path, callbacks=()):
    """An `SFTTrainer` over tokenized rows whose loss is weighted per segment kind (module docstring).

    Besides TRL's logs it logs `loss_text`, `loss_image`, `loss_boundary` (unweighted mean CE of each
    kind), `tokens_per_s` (all tokens in the batches, padding included, since the previous log) and
    `useful_token_share` (loss-bearing targets / all tokens, same window).
    """
    import torch
    from trl import SFTTrainer

    class SegmentWeightedSFTTrainer(SFTTrainer):
        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            mode = "train" if model.training else "eval"
            if self._window_start is None:
                self._window_start = time.time()
            labels = inputs.pop("labels")
            outputs = model(**_model_inputs(inputs), use_cache=False)
            table, weights = self._segments
            loss, ce, valid, seg = segment_loss(outputs.logits, labels, table, weights, num_items_in_batch)
            with torch.no_grad():
                for i, name in enumerate(SEGMENTS):
                    m = valid & (seg == i)
                    if m.any():
                        self._metrics[mode][f"loss_{name}"].append((ce[m].sum() / m.sum()).item())
                if mode == "train":
                    n = inputs["attention_mask"].sum() if "attention_mask" in inputs else inputs["input_ids"].numel()
                    self._total_train_tokens += int(n)
                    self._useful_tokens += int(valid.sum())
                    self._seen_tokens += int(inputs["input_ids"].numel())
                self._metrics[mode]["num_tokens"] = [self._total_train_tokens]
            return (loss, outputs) if return_outputs else loss

        def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
            if "loss" in logs and self._window_start is not None:
                now = time.time()
                seen = self._seen_tokens - self._window_tokens[0]
                logs["tokens_per_s"] = seen / max(now - self._window_start, 1e-9)
                logs["useful_token_share"] = (self._useful_tokens - self._window_tokens[1]) / max(seen, 1)
                self._window_start, self._window_tokens = now, (self._seen_tokens, self._useful_tokens)
            super().log(logs, start_time)

    trainer = SegmentWeightedSFTTrainer(
        model=policy.model,
        args=sft_config(cfg, Path(out)),
        train_dataset=train_dataset,
        processing_class=policy.processor.tokenizer,
        peft_config=_peft_config(cfg),
        callbacks=list(callbacks),
    )
    if cfg.packing:
        trainer.data_collator = packed_rows_collator(trainer.data_collator.pad_token_id)
    trainer._segments = segment_table(policy.processor, cfg.loss_weights, trainer.args.device)
    trainer._useful_tokens = 0  # loss-bearing targets seen in training
    trainer._seen_tokens = 0  # all tokens in training batches, padding included
    trainer._window_start = None
    trainer._window_tokens = (0, 0)
    return trainer


def _peft_config(cfg: TrainConfig):
    if not cfg.lora.enabled:
        return None
    from peft import LoraConfig as PeftLoraConfig

    return PeftLoraConfig(r=cfg.lora.r, lora_alpha=cfg.lora.alpha, lora_dropout=cfg.lora.dropout,
                          target_modules=list(cfg.lora.target_modules), task_type="CAUSAL_LM")


def _callbacks(path: Path, max_minutes: float) -> list:
    """`metrics.jsonl` gets every log line (the same dict wandb gets); a wall-time budget stops the
    run after a step, saving a trainer checkpoint first so that the next call resumes there."""
    from transformers import TrainerCallback

    class MetricsFile(TrainerCallback):
        def on_log(self, args, state, control, logs=None, **kw):
            if not state.is_world_process_zero:  # data-parallel workers: the first one writes
                return
            logs = logs or {}
            event = "train_end" if "train_runtime" in logs else "train"
            row = {"event": event, "step": state.global_step, "epoch": state.epoch, **logs, "time": time.time()}
            with open(path, "a") as f:
                f.write(json.dumps(row) + "\n")

    class TimeBudget(TrainerCallback):
        def on_train_begin(self, args, state, control, **kw):
            self.t0 = time.time()

        def on_step_end(self, args, state, control, **kw):
            if max_minutes <= 0:
                return
            stop = time.time() - self.t0 > 60 * max_minutes
            if args.world_size > 1:  # every worker stops at the same step, or the others wait forever
                import torch
                import torch.distributed as dist

                flag = torch.tensor([float(stop)], device=args.device)
                dist.broadcast(flag, 0)
                stop = bool(flag.item())
            if stop:
                control.should_save = True
                control.should_training_stop = True

    return [MetricsFile(), TimeBudget()]


def _save_atomically(policy, folder: Path) -> None:
    tmp = folder.with_name(folder.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    policy.save_pretrained(tmp)
    old = folder.with_name(folder.name + ".old")
    if folder.exists():
        shutil.rmtree(old, ignore_errors=True)
        os.replace(folder, old)
    os.replace(tmp, folder)
    shutil.rmtree(old, ignore_errors=True)


def train(policy, dataset, cfg: TrainConfig, out: str | Path) -> dict:
    """Train `policy` on trajectory rows; write `out/checkpoint` (model + processor, atomically).

    `out/trainer/` keeps TRL's checkpoints: if one exists the run resumes from it, so calling this
    again after a kill (or after `max_minutes` ran out) continues where it stopped. Returns a summary
    (steps, whether the schedule finished, losses, tokens/s, useful-token share), also written to
    `out/train_summary.json`; `policy.model` is the trained (with LoRA: merged) model afterwards.
    """
    import torch

    from strokes.errors import InputError

    from .plots import plot_losses

    if len(dataset) == 0:
        raise InputError(f"no trajectories to train on (empty dataset; output folder {out})")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    if cfg.num_threads > 0:
        torch.set_num_threads(cfg.num_threads)
    own_wandb_run = False
    if cfg.report_to == "wandb":  # offline unless the user says otherwise; files stay in the run folder
        import wandb

        os.environ.setdefault("WANDB_MODE", "offline")
        os.environ.setdefault("WANDB_DIR", str(out))
        os.environ.setdefault("WANDB_PROJECT", "strokes")
        own_wandb_run = wandb.run is None  # transformers' callback joins a caller's run, else starts one
    torch.manual_seed(cfg.seed)
    tokenized = tokenize(dataset, policy.processor, cfg.tokenize_workers)
    trainer = make_trainer(policy, tokenized, cfg, out / "trainer",
                           callbacks=_callbacks(out / "metrics.jsonl", cfg.max_minutes))
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
        _save_atomically(policy, out / "checkpoint")
        plot_losses(out / "metrics.jsonl", out / "loss.png")
    logs = [h for h in trainer.state.log_history if "loss" in h]
    summary = {
        "steps": trainer.state.global_step,
        "max_steps": trainer.state.max_steps,
        "complete": trainer.state.global_step >= trainer.state.max_steps,
        "train_loss": result.training_loss,
        "last": logs[-1] if logs else {},
        "seconds": seconds,
        "tokens_seen": trainer._seen_tokens,
        "tokens_per_s": trainer._seen_tokens / max(seconds, 1e-9),
        "useful_token_share": trainer._useful_tokens / max(trainer._seen_tokens, 1),
        "resumed": resume,
        "world_size": trainer.args.world_size,  # data-parallel processes (trainer/distributed.py)
    }
    if main:
        tmp = out / "train_summary.json.tmp"
        tmp.write_text(json.dumps(summary, indent=2, default=float))
        os.replace(tmp, out / "train_summary.json")
    return summary
