"""Benchmark: SFT throughput of the trainer (tokens/s and the share of useful tokens), packing on vs off,
full fine-tuning vs LoRA, on the tiny model's production shape. Not a test, because wall-clock numbers
on a shared machine are noisy; run it by hand:

    OMP_NUM_THREADS=1 python benchmarks/train_throughput.py [--steps 10] [--threads 1] [--device auto]

Each arm trains a fresh model for `--steps` timed steps after one untimed warm-up step, with the same
data, batch and sequence length as `configs/base.yaml`, and prints a markdown table with the machine.
"Non-pad" counts every real token (prompts included); "loss-bearing" counts the targets the loss
falls on (no prompt, no deliberate mistakes, no padding). Packed rows pad only to the fullest row of
their batch; without packing each batch pads to its longest trajectory. One more arm runs TRL's own
padding-free collator (the whole batch flattened into one row), which the trainer replaces because
SDPA/eager attention over that row costs (batch x max_length)^2; `--skip-flat` leaves it out.
"""

from __future__ import annotations

import argparse
import os
import platform
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")

SHAPE = dict(hidden_size=192, num_layers=5, num_heads=6, intermediate_size=512)  # configs/base.yaml


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def _timer():
    """Counts tokens and seconds over the steps after the first (which pays one-off setup costs)."""
    from transformers import TrainerCallback

    class StepTimer(TrainerCallback):
        def __init__(self) -> None:
            self.trainer = None
            self.start = None

        def snapshot(self) -> tuple:
            t = self.trainer
            return time.perf_counter(), t._seen_tokens, t._total_train_tokens, t._useful_tokens

        def on_step_end(self, args, state, control, **kw):
            if state.global_step == 1:
                self.start = self.snapshot()
            self.end = self.snapshot()

    return StepTimer()


def run_arm(processor, tokenized, packing: bool, lora: bool, args, tmp: Path, flat: bool = False) -> dict:
    """One arm; `flat` swaps in TRL's own padding-free collator (the whole batch as one row) for
    comparison with the packed rows the trainer uses."""
    import torch

    from selfplay.model.tiny import ModelConfig, Policy
    from trainer.config import LoraConfig, TrainConfig
    from trainer.sft import make_trainer, use_bf16, use_cuda

    policy = Policy.build(ModelConfig(**SHAPE), processor=processor)
    cfg = TrainConfig(max_steps=args.steps + 1, warmup_steps=0, batch_size=args.batch_size,
                      max_length=args.max_length, packing=packing, lora=LoraConfig(enabled=lora),
                      logging_steps=1000, save_steps=10**6, device=args.device, tokenize_workers=1)
    timer = _timer()
    name = f"{'packed' if packing else 'padded'}-{'lora' if lora else 'full'}{'-flat' if flat else ''}"
    trainer = make_trainer(policy, tokenized, cfg, tmp / name, callbacks=[timer])
    if flat:
        from trl.trainer.sft_trainer import DataCollatorForLanguageModeling

        trainer.data_collator = DataCollatorForLanguageModeling(pad_token_id=processor.pad_id, padding_free=True)
    timer.trainer = trainer
    trainable = sum(p.numel() for p in trainer.model.parameters() if p.requires_grad)
    torch.manual_seed(0)
    trainer.train()
    (t0, seen0, real0, useful0), (t1, seen1, real1, useful1) = timer.start, timer.end
    seconds, seen = t1 - t0, seen1 - seen0
    return {
        "packing": ("bfd, one flat row (TRL default)" if flat else "bfd, rows") if packing else "off",
        "method": f"LoRA r={cfg.lora.r}" if lora else "full",
        "trainable": trainable,
        "tokens_per_step": seen / args.steps,
        "tokens_per_s": seen / seconds,
        "useful_per_s": (useful1 - useful0) / seconds,
        "nonpad_share": (real1 - real0) / seen,
        "useful_share": (useful1 - useful0) / seen,
        "seconds_per_step": seconds / args.steps,
        "precision": "bf16" if use_bf16(cfg) else "fp32",
        "device": "cuda" if use_cuda(cfg) else "cpu",
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=10, help="timed steps per arm (after one warm-up step)")
    parser.add_argument("--rows", type=int, default=1000, help="base trajectories to train on")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--max-length", type=int, default=512)
    parser.add_argument("--threads", type=int, default=1, help="torch threads")
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    parser.add_argument("--skip-flat", action="store_true", help="skip the arm with TRL's padding-free collator")
    args = parser.parse_args()

    import datasets
    import torch
    import transformers

    from selfplay.data.build import DataConfig, build, load
    from selfplay.model.tiny import ModelConfig, Policy
    from trainer.sft import tokenize

    torch.set_num_threads(args.threads)
    datasets.disable_progress_bars()
    transformers.logging.set_verbosity_error()
    load_before = os.getloadavg()[0]
    t0 = time.perf_counter()
    processor = Policy.build(ModelConfig(**SHAPE)).processor
    fit_s = time.perf_counter() - t0
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        build(DataConfig(size=args.rows, workers=1), tmp / "data", progress=False)
        tokenized = tokenize(load(tmp / "data"), processor, 1)
        rows = [run_arm(processor, tokenized, packing, lora, args, tmp)
                for packing in (True, False) for lora in (False, True)]
        if not args.skip_flat:
            rows.append(run_arm(processor, tokenized, True, False, args, tmp, flat=True))
    load_after = os.getloadavg()[0]

    params = sum(p.numel() for p in Policy.build(ModelConfig(**SHAPE), processor=processor).model.parameters())
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() and rows[0]["device"] == "cuda" else None
    print(f"machine: {gpu or _cpu_name()}; nproc {os.cpu_count()}; torch threads {torch.get_num_threads()}; "
          f"torch {torch.__version__}; load average {load_before:.1f} before, {load_after:.1f} after")
    print(f"model: Llama hidden {SHAPE['hidden_size']}, {SHAPE['num_layers']} layers, {SHAPE['num_heads']} heads, "
          f"intermediate {SHAPE['intermediate_size']} ({params / 1e6:.2f}M parameters); batch {args.batch_size} rows "
          f"of <= {args.max_length} tokens; {args.steps} timed steps per arm; {rows[0]['device']} "
          f"{rows[0]['precision']}; image-tokenizer fit {fit_s:.0f} s\n")
    print("| packing | method | trainable params | tokens/step | s/step | tokens/s | loss-bearing tokens/s "
          "| non-pad share | loss-bearing share |")
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['packing']} | {r['method']} | {r['trainable']:,} | {r['tokens_per_step']:.0f} | "
              f"{r['seconds_per_step']:.2f} | {r['tokens_per_s']:.0f} | {r['useful_per_s']:.0f} | "
              f"{r['nonpad_share']:.1%} | {r['useful_share']:.1%} |")


if __name__ == "__main__":
    main()
