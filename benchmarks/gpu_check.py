"""GPU check, one command for a lent GPU (191 s on an H200): random-weight 1B- and 7B-shaped
policies (Llama shapes with our vocabulary and image codes, bf16) run the rollout engine and SFT
steps through the project's own trainer, and each number is printed beside its hardware roof:

    decode steps/s   vs  weight-read roof = measured copy bandwidth / weight bytes
                         (every decode step reads every weight once)
    train model-FLOP/s vs measured bf16 matmul rate (an 8192^3 matmul loop)
                         model FLOPs = tokens x k x N (N: weights in matmuls, k = 6 for full
                         fine-tuning, 4 with LoRA: no weight gradients for the frozen base);
                         attention-score FLOPs are left out (under 10% at 1024 tokens)

The 1B arm fine-tunes every weight, the 7B arm trains LoRA adapters (the default for 7B).

    python benchmarks/gpu_check.py              # on the GPU machine; --json results.json to keep them
    python benchmarks/gpu_check.py --tiny       # same code, CPU, tiny shapes: checks the script

Tokenizing and data-loading subprocesses are capped at one thread each (OMP_NUM_THREADS=1, set
before torch loads) so they cannot starve the GPU's feeding process.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")  # inherited by every tokenizing / data-loading worker
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("WANDB_MODE", "disabled")
sys.path.insert(0, str(Path(__file__).resolve().parent))

from gpu_rollout import copy_bandwidth, engine_arm, random_llama, sync  # noqa: E402  (shapes and probes shared with it)

ARMS = {"gpu": [("1b", "full", 8), ("7b", "lora", 4)], "tiny": [("tiny", "full", 4), ("tiny", "lora", 4)]}


def matmul_rate(device, dtype, n: int, reps: int) -> float:
    """FLOP/s of a square matmul loop in `dtype` (the compute roof training is measured against)."""
    import torch

    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    for _ in range(3):
        a @ b
    sync(device)
    t = time.perf_counter()
    for _ in range(reps):
        a @ b
    sync(device)
    return 2 * n ** 3 * reps / (time.perf_counter() - t)


def matmul_weights(model) -> int:
    """Weights that take part in matmuls (all but the input embedding table, a lookup)."""
    emb = model.get_input_embeddings().weight
    return sum(p.numel() for p in model.parameters() if p is not emb)


def rollout_arm(policy, prompts, batch: int, max_new_tokens: int, device, dtype, max_steps: int = 2,
                max_refines: int = 1) -> dict:
    from rollout import Engine, RolloutConfig

    cfg = RolloutConfig(batch_size=batch, max_steps=max_steps, max_refines=max_refines, max_text_tokens=16,
                        device=device.type, dtype=str(dtype).removeprefix("torch."), max_new_tokens=max_new_tokens)
    trajs, steps, wall = engine_arm(Engine(policy, cfg), prompts, batch, device)
    return {"rollout_tokens_per_s": sum(tr.meta["tokens"] for tr in trajs) / wall,
            "decode_steps_per_s": steps / wall, "decode_steps": steps, "rollout_s": wall,
            "failed": sum("failed" in tr.meta for tr in trajs)}


def train_arm(policy, tokenized, mode: str, batch: int, max_length: int, steps: int, device, out: Path) -> dict:
    """`steps` timed SFT steps (after one untimed) through trainer.sft's own trainer."""
    from transformers import TrainerCallback

    from trainer.config import LoraConfig, TrainConfig
    from trainer.sft import make_trainer

    times: list[float] = []

    class Clock(TrainerCallback):
        def on_step_begin(self, args, state, control, **kw):
            sync(device)
            self.t = time.perf_counter()

        def on_step_end(self, args, state, control, **kw):
            sync(device)
            times.append(time.perf_counter() - self.t)

    cfg = TrainConfig(max_steps=steps + 1, batch_size=batch, max_length=max_length, lr=1e-4, warmup_steps=0,
                      logging_steps=1000, save_steps=100000, tokenize_workers=1, device=device.type,
                      bf16=device.type == "cuda", lora=LoraConfig(enabled=mode == "lora", r=16, alpha=32))
    trainer = make_trainer(policy, tokenized, cfg, out, callbacks=[Clock()])
    if device.type == "cuda":
        import torch

        torch.cuda.reset_peak_memory_stats(device)
    trainer.train()
    timed = times[1:]
    seen = trainer._seen_tokens * len(timed) / len(times)  # tokens in the timed steps (rows are ~full)
    k = 6 if mode == "full" else 4
    # `policy.model` is the base model (LoRA layers, if any, were injected into it: a few weights more).
    row = {"train_steps": len(timed), "train_step_s": sum(timed) / len(timed),
           "train_tokens_per_s": seen / sum(timed),
           "train_model_flops": k * matmul_weights(policy.model) * seen / sum(timed)}
    if device.type == "cuda":
        import torch

        row["train_peak_gb"] = torch.cuda.max_memory_allocated(device) / 1e9
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tiny", action="store_true", help="CPU, tiny shapes, float32: checks the script")
    parser.add_argument("--batch", type=int, default=0, help="rollout batch (default 64 on GPU, 8 tiny)")
    parser.add_argument("--train-steps", type=int, default=3, help="timed SFT steps per arm (plus one untimed)")
    parser.add_argument("--max-length", type=int, default=1024, help="packed row length for SFT")
    parser.add_argument("--json", default="", help="also write the rows to this file")
    args = parser.parse_args()

    import torch

    from strokes.data.build import DataConfig, make_rows
    from strokes.model.image_tokenizer import ImageTokenizer, fitting_images
    from strokes.model.processor import Processor, build_text_tokenizer
    from strokes.model.policy import Policy
    from strokes.shapeworld import make_suite
    from strokes.trajectory import from_row, to_dataset
    from trainer.sft import tokenize

    if args.tiny:
        torch.set_num_threads(1)
        device, dtype, arms = torch.device("cpu"), torch.float32, ARMS["tiny"]
        batch, max_new, mm = args.batch or 8, 256, (512, 5)
    else:
        if not torch.cuda.is_available():
            raise SystemExit("no GPU here: run with --tiny to check the script on CPU")
        device, dtype, arms = torch.device("cuda"), torch.bfloat16, ARMS["gpu"]
        batch, max_new, mm = args.batch or 64, 0, (8192, 50)
    t_start = time.perf_counter()
    bw = copy_bandwidth(device, 64 if args.tiny else 2048)
    flops = matmul_rate(device, dtype, *mm)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU (1 thread)"
    print(f"device: {name}; copy bandwidth {bw / 1e9:.0f} GB/s; {str(dtype)[6:]} matmul {flops / 1e12:.1f} "
          f"TFLOP/s; torch {torch.__version__}", flush=True)
    tok = ImageTokenizer.fit(fitting_images(600, 64, 0), 256, 8, 0)
    processor = Processor(build_text_tokenizer(tok.num_codes), tok)
    rows_data = make_rows(DataConfig(size=40 if args.tiny else 240, seed=0, workers=1), progress=False)
    tokenized = tokenize(to_dataset([from_row(r) for r in rows_data]), processor, workers=1)
    prompts = make_suite("test", -(-batch // 6), 0)[:batch]
    rows = []
    for shape, mode, train_batch in arms:
        model = random_llama(shape, processor.vocab_size, device, dtype)
        weight_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
        policy = Policy(model, processor)
        row = {"model": shape, "train": mode, "params_B": weight_bytes / dtype.itemsize / 1e9,
               "weights_GB": weight_bytes / 1e9, "rollout_batch": batch, "train_batch": train_batch}
        row.update(rollout_arm(policy, prompts, batch, max_new, device, dtype))
        row["roof_steps_per_s"] = bw / weight_bytes
        row["pct_of_read_roof"] = 100 * row["decode_steps_per_s"] / row["roof_steps_per_s"]
        model.train()
        with tempfile.TemporaryDirectory() as tmp:
            row.update(train_arm(policy, tokenized, mode, train_batch, args.max_length, args.train_steps, device,
                                 Path(tmp)))
        row["matmul_flops"] = flops
        row["pct_of_matmul"] = 100 * row["train_model_flops"] / flops
        rows.append(row)
        print(json.dumps({k: round(v, 4) if isinstance(v, float) else v for k, v in row.items()}), flush=True)
        del policy, model
        gc.collect()  # the trainer and engine of this arm hold the model until collected
        if device.type == "cuda":
            torch.cuda.empty_cache()
    cols = [("model", "model"), ("train", "train"), ("params_B", "params (B)"),
            ("rollout_tokens_per_s", "rollout tok/s"), ("decode_steps_per_s", "decode steps/s"),
            ("roof_steps_per_s", "read roof steps/s"), ("pct_of_read_roof", "% of roof"),
            ("train_tokens_per_s", "train tok/s"), ("train_model_flops", "model TFLOP/s"),
            ("pct_of_matmul", "% of matmul")]
    print(f"\n{name}; copy {bw / 1e9:.0f} GB/s; matmul {flops / 1e12:.1f} TFLOP/s; "
          f"total {time.perf_counter() - t_start:.0f} s\n")
    print("| " + " | ".join(c for _, c in cols) + " |\n|" + "---|" * len(cols))
    for r in rows:
        cells = []
        for key, _ in cols:
            v = r[key]
            v = v / 1e12 if key == "train_model_flops" else v
            cells.append(f"{v:.3g}" if isinstance(v, float) else str(v))
        print("| " + " | ".join(cells) + " |")
    if args.json:
        Path(args.json).write_text(json.dumps({"device": name, "copy_bandwidth": bw, "matmul_flops": flops,
                                               "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
