"""TRL's `SFTTrainer` extended the way TRL extends its own trainers: a subclass that overrides
`compute_loss` and `log`, with its state set in `__init__`. Importing this module imports torch,
transformers and TRL (~11 s in a fresh process), so `trainer.sft` imports it only where training
happens.

The loss is next-token cross-entropy weighted per segment kind (`losses.segment_loss`); besides
TRL's logs the trainer logs each kind's unweighted loss, tokens/s and the share of loss-bearing
tokens.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import torch
from transformers import TrainerCallback
from trl import SFTTrainer
from trl.trainer.sft_trainer import DataCollatorForLanguageModeling

from .config import SEGMENTS
from .losses import model_inputs, segment_loss, segment_table


class SegmentWeightedSFTTrainer(SFTTrainer):
    """An `SFTTrainer` whose loss is weighted per segment kind (text, image codes, vision markers).

    `segment_processor` is the policy's processor (it says which token ids are image codes and
    vision markers) and `loss_weights` each kind's weight; every other argument is `SFTTrainer`'s.
    Besides TRL's logs it logs `loss_text`, `loss_image`, `loss_boundary` (unweighted mean CE of each
    kind), `tokens_per_s` (all tokens in the batches, padding included, since the previous log) and
    `useful_token_share` (loss-bearing targets / all tokens, same window).
    """

    def __init__(self, *args, segment_processor, loss_weights: dict[str, float], **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self._segments = segment_table(segment_processor, loss_weights, self.args.device)
        self._useful_tokens = 0  # loss-bearing targets seen in training
        self._seen_tokens = 0  # all tokens in training batches, padding included
        self._window_start: float | None = None
        self._window_tokens = (0, 0)

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        mode = "train" if model.training else "eval"
        if self._window_start is None:
            self._window_start = time.time()
        labels = inputs.pop("labels")
        outputs = model(**model_inputs(inputs), use_cache=False)
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


class PackedRowsCollator(DataCollatorForLanguageModeling):
    """Batches of bfd-packed rows kept as rows (`[batch, <= max_length]`), each with position ids that
    restart at every packed sequence.

    TRL's default for bfd is padding-free: the whole batch flattened into one row, which only pays
    off with varlen flash-attention kernels; with SDPA or eager attention that row costs
    (batch * max_length)^2 attention, about 3x slower per token on our CPUs (docs/training.md).
    Kept as rows, attention costs batch * max_length^2. The model gets no attention mask with these
    batches, so transformers derives a block-diagonal causal mask from the position ids and packed
    sequences never see each other (tests/test_trainer.py checks the losses against unpacked ones).
    """

    def __init__(self, pad_token_id: int) -> None:
        super().__init__(pad_token_id=pad_token_id, padding_free=False, return_position_ids=True)

    def torch_call(self, examples):
        out = super().torch_call(examples)
        out["labels"][out["position_ids"] == 0] = -100  # no target across a sequence border
        return out


class MetricsFile(TrainerCallback):
    """Every log line (the same dict wandb gets) appended to the JSONL file at `path`."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def on_log(self, args, state, control, logs=None, **kw):
        if not state.is_world_process_zero:  # data-parallel workers: the first one writes
            return
        logs = logs or {}
        event = "train_end" if "train_runtime" in logs else "train"
        row = {"event": event, "step": state.global_step, "epoch": state.epoch, **logs, "time": time.time()}
        with open(self.path, "a") as f:
            f.write(json.dumps(row) + "\n")


class ConsoleProgress(TrainerCallback):
    """What a person watching sees of training: a tqdm bar of optimizer steps (`bar`) and at most one
    short line per logging step (`lines`), e.g. `step 20/43 loss 0.086 3.0k tok/s`, in place of
    transformers' raw log dicts; the full record is `MetricsFile`'s."""

    def __init__(self, bar: bool, lines: bool) -> None:
        self.show_bar, self.show_lines = bar, lines
        self.bar = None

    def on_train_begin(self, args, state, control, **kw):
        if self.show_bar and state.is_world_process_zero:
            from tqdm import tqdm

            self.bar = tqdm(total=state.max_steps, initial=state.global_step, unit="step", desc="sft")

    def on_step_end(self, args, state, control, **kw):
        if self.bar is not None:
            self.bar.update(state.global_step - self.bar.n)

    def on_log(self, args, state, control, logs=None, **kw):
        if self.show_lines and state.is_world_process_zero and "loss" in (logs or {}):
            line = step_line(state.global_step, state.max_steps, logs)
            if self.bar is not None:
                self.bar.write(line)
            else:
                print(line, flush=True)

    def on_train_end(self, args, state, control, **kw):
        if self.bar is not None:
            self.bar.close()
            self.bar = None


def step_line(step: int, max_steps: int, logs: dict) -> str:
    """One logging step as a short line: `step 20/43 loss 0.086 3.0k tok/s` (GRPO: `... reward 0.84
    kl 0.0012 judge 32 req 9.1k tok judge 0.4s / rollout 3.2s`)."""
    line = (f"step {step}/{max_steps}" if max_steps > 0 else f"step {step}") + f" loss {float(logs['loss']):.3f}"
    if "reward" in logs:
        line += f" reward {float(logs['reward']):.3f}"
    if "kl" in logs:
        line += f" kl {float(logs['kl']):.4f}"
    if "tokens_per_s" in logs:
        line += f" {logs['tokens_per_s'] / 1000:.1f}k tok/s"
    if "judge/seconds" in logs:  # GRPO: what the step's judge cost, against its rollout
        if logs.get("judge/requests"):
            line += f" judge {logs['judge/requests']:.0f} req {logs.get('judge/tokens', 0) / 1000:.1f}k tok"
        line += f" judge {logs['judge/seconds']:.1f}s / rollout {logs.get('rollout/seconds', 0):.1f}s"
    return line


class TimeBudget(TrainerCallback):
    """Stops training after the step that exhausts `max_minutes` of wall time (0: no budget), saving
    a trainer checkpoint first so that the next call resumes there."""

    def __init__(self, max_minutes: float) -> None:
        self.max_minutes = max_minutes

    def on_train_begin(self, args, state, control, **kw):
        self.t0 = time.time()

    def on_step_end(self, args, state, control, **kw):
        if self.max_minutes <= 0:
            return
        stop = time.time() - self.t0 > 60 * self.max_minutes
        if args.world_size > 1:  # every worker stops at the same step, or the others wait forever
            import torch.distributed as dist

            flag = torch.tensor([float(stop)], device=args.device)
            dist.broadcast(flag, 0)
            stop = bool(flag.item())
        if stop:
            control.should_save = True
            control.should_training_stop = True
