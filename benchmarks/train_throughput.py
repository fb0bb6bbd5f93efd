"""Benchmark: SFT throughput of the trainer (tokens/s and the share of useful tokens), packing on vs off,
full fine-tuning vs LoRA, on the tiny model's production shape. Not a test, because wall-clock numbers
on a shared machine are noisy; run it by hand:

    OMP_NUM_THREADS=1 python benchmarks/train_throughput.py [--steps 10] [--threads 1] [--device auto]

Each arm trains a fresh model for `--steps` timed steps after one untimed warm-up step, with the model
shape, batch and sequence length of `configs/base.yaml` (or `--config`), on base data, and prints a
markdown table with the machine.
"Non-pad" counts every real token (prompts included); "loss-bearing" counts the targets the loss
falls on (no prompt, no deliberate mistakes, no padding). Packed rows pad only to the fullest row of
their batch; without packing each batch pads to its longest trajectory, with batches drawn at random
or grouped by length (transformers' `group_by_length` sampler). One more arm runs TRL's own
padding-free collator (the whole batch flattened into one row), which the trainer replaces because
SDPA/eager attention over that row costs (batch x max_length)^2; `--skip-flat` leaves it out.
Throughput is given per wall second and per CPU second of the process (fairer on a busy machine).
"""

from __future__ import annotations

import argparse
import os
import platform
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")

BASE = Path(__file__).resolve().parent.parent / "configs" / "base.yaml"  # model shape and batch come from here


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def _timer():
    """Counts tokens, wall seconds and CPU seconds over the steps after the first (which pays one-off
    setup costs). CPU seconds of this process are what a 1-thread run spends however busy the machine
    is, so they compare arms more fairly than wall time on a shared machine."""
    from transformers import TrainerCallback

    class StepTimer(TrainerCallback):
        def __init__(self) -> None:
            self.trainer = None
            self.start = None

        def snapshot(self) -> tuple:
            t = self.trainer
            return time.perf_counter(), time.process_time(), t._seen_tokens, t._total_train_tokens, t._useful_tokens

        def on_step_end(self, args, state, control, **kw):
            if state.global_step == 1:
                self.start = self.snapshot()
            self.end = self.snapshot()

    return StepTimer()


# arm -> (packing, how batches are made); every arm runs full fine-tuning and LoRA unless noted
ARMS = {
    "bfd, rows": (True, None),  # the trainer's default: packed rows kept as rows
    "off, random batches": (False, None),  # each batch pads to its longest trajectory
    "off, length-grouped": (False, "grouped"),  # transformers' group_by_length sampler: less padding
    "bfd, one flat row (TRL default)": (True, "flat"),  # TRL's padding-free collator, full only
}


def run_arm(processor, tokenized, arm: str, lora: bool, args, tmp: Path) -> dict:
    import torch

    from strokes.model.policy import Policy
    from trainer.config import LoraConfig, TrainConfig
    from trainer.sft import make_trainer
    from trainer.trl_common import use_bf16, use_cuda

    packing, variant = ARMS[arm]
    policy = Policy.build(args.model, processor=processor)
    cfg = TrainConfig(max_steps=args.steps + 1, warmup_steps=0, batch_size=args.batch_size,
                      max_length=args.max_length, packing=packing, group_by_length=variant == "grouped",
                      lora=LoraConfig(enabled=lora),
                      logging_steps=1000, save_steps=10**6, device=args.device, tokenize_workers=1)
    timer = _timer()
    trainer = make_trainer(policy, tokenized, cfg, tmp / f"{arm}-{lora}", callbacks=[timer])
    if variant == "flat":
        from trl.trainer.sft_trainer import DataCollatorForLanguageModeling

        trainer.data_collator = DataCollatorForLanguageModeling(pad_token_id=processor.pad_id, padding_free=True)
    timer.trainer = trainer
    trainable = sum(p.numel() for p in trainer.model.parameters() if p.requires_grad)
    torch.manual_seed(0)
    trainer.train()
    (w0, c0, seen0, real0, useful0), (w1, c1, seen1, real1, useful1) = timer.start, timer.end
    wall, cpu, seen, useful = w1 - w0, c1 - c0, seen1 - seen0, useful1 - useful0
    return {
        "arm": arm,
        "method": f"LoRA r={cfg.lora.r}" if lora else "full",
        "trainable": trainable,
        "tokens_per_step": seen / args.steps,
        "seconds_per_step": wall / args.steps,
        "tokens_per_s": seen / wall,
        "useful_per_s": useful / wall,
        "useful_per_cpu_s": useful / cpu,
        "nonpad_share": (real1 - real0) / seen,
        "useful_share": useful / seen,
        "precision": "bf16" if use_bf16(cfg) else "fp32",
        "device": "cuda" if use_cuda(cfg) else "cpu",
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=10, help="timed steps per arm (after one warm-up step)")
    parser.add_argument("--rows", type=int, default=1000, help="base trajectories to train on")
    parser.add_argument("--config", default=str(BASE), help="run config giving the model shape and batch")
    parser.add_argument("--batch-size", type=int, help="rows per step (default: the config's)")
    parser.add_argument("--max-length", type=int, help="tokens per row (default: the config's)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads")
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    parser.add_argument("--skip-flat", action="store_true", help="skip the arm with TRL's padding-free collator")
    args = parser.parse_args()

    import datasets
    import torch
    import transformers

    from selfplay.config import load_config
    from strokes.data.build import DataConfig, build, load
    from strokes.model.policy import Policy
    from trainer.sft import tokenize

    run = load_config(args.config)
    args.model = run.model
    args.batch_size = args.batch_size or run.train.batch_size
    args.max_length = args.max_length or run.train.max_length
    torch.set_num_threads(args.threads)
    datasets.disable_progress_bars()
    transformers.logging.set_verbosity_error()
    load_before = os.getloadavg()[0]
    t0 = time.perf_counter()
    processor = Policy.build(args.model).processor
    fit_s = time.perf_counter() - t0
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        build(DataConfig(size=args.rows, workers=1), tmp / "data", progress=False)
        tokenized = tokenize(load(tmp / "data"), processor, 1)
        rows = []
        for arm, (_, variant) in ARMS.items():
            if variant == "flat" and args.skip_flat:
                continue
            for lora in (False,) if variant == "flat" else (False, True):
                rows.append(run_arm(processor, tokenized, arm, lora, args, tmp))
    load_after = os.getloadavg()[0]

    params = sum(p.numel() for p in Policy.build(args.model, processor=processor).model.parameters())
    m = args.model
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() and rows[0]["device"] == "cuda" else None
    print(f"machine: {gpu or _cpu_name()}; nproc {os.cpu_count()}; torch threads {torch.get_num_threads()}; "
          f"torch {torch.__version__}; load average {load_before:.1f} before, {load_after:.1f} after")
    print(f"model: Llama hidden {m.hidden_size}, {m.num_layers} layers, {m.num_heads} heads, "
          f"intermediate {m.intermediate_size} ({params / 1e6:.2f}M parameters); batch {args.batch_size} rows "
          f"of <= {args.max_length} tokens; {args.steps} timed steps per arm; {rows[0]['device']} "
          f"{rows[0]['precision']}; image-tokenizer fit {fit_s:.0f} s\n")
    print("| batches | method | trainable params | tokens/step | s/step | tokens/s | loss-bearing tokens/s "
          "| loss-bearing tokens per CPU-s | non-pad share | loss-bearing share |")
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['arm']} | {r['method']} | {r['trainable']:,} | {r['tokens_per_step']:.0f} | "
              f"{r['seconds_per_step']:.2f} | {r['tokens_per_s']:.0f} | {r['useful_per_s']:.0f} | "
              f"{r['useful_per_cpu_s']:.0f} | {r['nonpad_share']:.1%} | {r['useful_share']:.1%} |")


if __name__ == "__main__":
    main()
