"""GPU check of the Janus-Pro adapter, one command for a lent GPU (a few minutes): random-weight
Janus-Pro-1B- and -7B-shaped policies (`JanusUnified`: the real Janus classes with the released
shapes, bf16, nothing downloaded) run the rollout engine at batch 1, 64 and 256 and GRPO steps
through the project's own trainer, each number beside its roof:

    rollout decode steps/s  vs  weight-read roof = measured copy bandwidth / weight bytes
                                (every decode step reads every weight once)
    GRPO step time              one TRL step: a group of whole trajectories sampled by the engine,
                                judged by the oracle, one optimizer step (the loop's GRPO round)
    peak memory                 torch.cuda.max_memory_allocated per arm

Shapes (Janus-Pro's released configs): a Llama text model (1B: hidden 2048, 24 layers, MLP 5632;
7B: hidden 4096, 30 layers, MLP 11008; vocabulary 102,400 rows, 16,384 positions), SigLIP-L/16 at
384 px (kept, unused by the adapter), the VQ (16,384 codes, 24 x 24 = 576 per image, 384 px) and the
generation embeddings, aligner and head. Rollouts are process mode with one step and no refinement
(plan, 576 codes, inspection: ~650 tokens), so a batch of 256 fits the 7B's KV cache; a batch whose
cache would not fit the free memory is reported as skipped. GRPO: the 1B arm trains every weight
(beta 0: no reference model, which TRL would load from a checkpoint folder), the 7B arm LoRA r=16
with beta 0.02 (the reference is the base with adapters off).

    python benchmarks/gpu_check_janus.py            # on the GPU machine (estimated 8 min; batch 1 of the 1B ran on an H200); --json FILE
    python benchmarks/gpu_check_janus.py --models janus-pro-7b   # one shape per call (estimated 5 min)
    python benchmarks/gpu_check_janus.py --tiny     # same code, CPU, a tiny random Janus: checks the script
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

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("WANDB_MODE", "disabled")
sys.path.insert(0, str(Path(__file__).resolve().parent))

from gpu_check import rollout_arm  # noqa: E402  (the same rollout measurement as the Llama-shaped check)
from gpu_rollout import copy_bandwidth  # noqa: E402

TEXT_SHAPES = {
    "janus-pro-1b": dict(hidden_size=2048, num_hidden_layers=24, num_attention_heads=16, num_key_value_heads=16,
                         intermediate_size=5632),
    "janus-pro-7b": dict(hidden_size=4096, num_hidden_layers=30, num_attention_heads=32, num_key_value_heads=32,
                         intermediate_size=11008),
}
ARMS = {"gpu": [("janus-pro-1b", "full"), ("janus-pro-7b", "lora")], "tiny": [("tiny", "full"), ("tiny", "lora")]}
TOKENS_PER_TRAJECTORY = 700
"""Upper estimate of a one-step trajectory (prompt, plan, 576 codes, inspection), for the KV check."""


def janus_policy(shape: str, device, dtype):
    """A random-weight `JanusPolicy` of `shape`, built on `device` in `dtype` (no checkpoint on disk)."""
    import torch
    from transformers import JanusConfig

    from strokes.model.janus import JanusModelConfig, JanusPolicy, tiny_config, word_tokenizer
    from strokes.model.janus_model import JanusUnified

    tokenizer = word_tokenizer()
    if shape == "tiny":
        config = tiny_config(JanusModelConfig(), tokenizer)
    else:
        text = TEXT_SHAPES[shape]
        h = text["hidden_size"]
        config = JanusConfig(text_config=dict(model_type="llama", vocab_size=102400, max_position_embeddings=16384,
                                              **text),
                             vision_config=dict(projection_dim=h),  # SigLIP-L/16, 384 px: the class defaults
                             vq_config=dict(projection_dim=h, image_token_embed_dim=h),  # 16,384 codes, 384 px
                             tie_word_embeddings=False)
    torch.manual_seed(0)
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with torch.device(device):
            model = JanusUnified(config)
    finally:
        torch.set_default_dtype(previous)
    return JanusPolicy.adapt(model.eval(), tokenizer)


def kv_bytes_per_token(model, dtype) -> int:
    c = model.config.get_text_config()
    head = c.hidden_size // c.num_attention_heads
    return 2 * c.num_hidden_layers * c.num_key_value_heads * head * dtype.itemsize


def grpo_arm(policy, mode: str, device, out: Path, steps: int, prompts_per_step: int, generations: int) -> dict:
    """`steps` GRPO steps (the first one untimed) through the loop's sampler and TRL's trainer; the
    step time is TRL's own `step_time` log (sampling, judging, the loss and the optimizer step)."""
    import torch

    from judges import OracleJudge
    from rollout import Engine, RolloutConfig
    from selfplay.grpo import make_sampler
    from selfplay.rewards import reward_functions
    from strokes.shapeworld import is_correct, make_suite
    from trainer.config import GrpoConfig, LoraConfig, TrainConfig
    from trainer.grpo import train_grpo

    engine = Engine(policy, RolloutConfig(batch_size=prompts_per_step * generations, max_steps=1, max_refines=0,
                                          max_text_tokens=16, device=device.type,
                                          dtype="bfloat16" if device.type == "cuda" else "float32"))
    prompts = [json.dumps(r.to_json()) for r in make_suite("train", 4, 0, tasks=("counting", "position"))]
    lora = mode == "lora"
    cfg = TrainConfig(method="grpo", lr=1e-5, warmup_steps=0, logging_steps=1, save_steps=100000, num_threads=1,
                      device=device.type, bf16=device.type == "cuda", report_to="none",
                      lora=LoraConfig(enabled=lora, r=16, alpha=32, merge=False),
                      grpo=GrpoConfig(steps=steps, prompts_per_step=prompts_per_step, generations=generations,
                                      beta=0.02 if lora else 0.0))
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    train_grpo(policy, prompts, cfg, out, make_sampler(engine, OracleJudge(), exact=is_correct), reward_functions(),
               engine.legal_sets)
    logged = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    times = [e["step_time"] for e in logged if "step_time" in e][1:] or [float("nan")]
    row = {"grpo_trajectories_per_step": prompts_per_step * generations, "grpo_step_s": sum(times) / len(times)}
    if device.type == "cuda":
        row["grpo_peak_gb"] = torch.cuda.max_memory_allocated(device) / 1e9
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tiny", action="store_true", help="CPU, a tiny random Janus, float32: checks the script")
    parser.add_argument("--batches", default="", help="rollout batches, comma-separated (default 1,64,256; tiny 1,4,8)")
    parser.add_argument("--grpo-steps", type=int, default=3, help="GRPO steps per arm (the first one untimed)")
    parser.add_argument("--models", default="", help="on the GPU, which shapes (default: janus-pro-1b,janus-pro-7b); "
                                                     "one per call keeps each call short")
    parser.add_argument("--json", default="", help="also write the rows to this file")
    args = parser.parse_args()

    import torch

    from strokes.shapeworld import make_suite

    if args.tiny:
        torch.set_num_threads(1)
        device, dtype, arms, group = torch.device("cpu"), torch.float32, ARMS["tiny"], (1, 4)
        batches = [int(b) for b in (args.batches or "1,4,8").split(",")]
    else:
        if not torch.cuda.is_available():
            raise SystemExit("no GPU here: run with --tiny to check the script on CPU")
        device, dtype, arms, group = torch.device("cuda"), torch.bfloat16, ARMS["gpu"], (4, 8)
        if args.models:
            arms = [(shape, mode) for shape, mode in arms if shape in args.models.split(",")]
        batches = [int(b) for b in (args.batches or "1,64,256").split(",")]
    t_start = time.perf_counter()
    bw = copy_bandwidth(device, 64 if args.tiny else 2048)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU (1 thread)"
    print(f"device: {name}; copy bandwidth {bw / 1e9:.0f} GB/s; torch {torch.__version__}", flush=True)
    rows = []
    for shape, mode in arms:
        policy = janus_policy(shape, device, dtype)
        weight_bytes = sum(p.numel() * p.element_size() for p in policy.model.parameters())
        base = {"model": shape, "params_B": weight_bytes / dtype.itemsize / 1e9, "weights_GB": weight_bytes / 1e9,
                "codes_per_image": policy.processor.codes_per_image, "vocab": policy.processor.vocab_size,
                "roof_steps_per_s": bw / weight_bytes}
        for batch in batches:
            row = dict(base, rollout_batch=batch)
            need = batch * TOKENS_PER_TRAJECTORY * kv_bytes_per_token(policy.model, dtype) * 1.5  # growing cache room
            if device.type == "cuda" and need > torch.cuda.mem_get_info(device)[0]:
                row["skipped"] = f"KV cache needs ~{need / 1e9:.0f} GB"
            else:
                if device.type == "cuda":
                    torch.cuda.reset_peak_memory_stats(device)
                prompts = make_suite("test", -(-batch // 6), 0)[:batch]
                row.update(rollout_arm(policy, prompts, batch, 0, device, dtype, max_steps=1, max_refines=0))
                row["pct_of_read_roof"] = 100 * row["decode_steps_per_s"] / row["roof_steps_per_s"]
                if device.type == "cuda":
                    row["rollout_peak_gb"] = torch.cuda.max_memory_allocated(device) / 1e9
            rows.append(row)
            print(json.dumps({k: round(v, 4) if isinstance(v, float) else v for k, v in row.items()}), flush=True)
            gc.collect()
            if device.type == "cuda":
                torch.cuda.empty_cache()
        with tempfile.TemporaryDirectory() as tmp:
            row = dict(base, train=mode)
            row.update(grpo_arm(policy, mode, device, Path(tmp), args.grpo_steps, *group))
        rows.append(row)
        print(json.dumps({k: round(v, 4) if isinstance(v, float) else v for k, v in row.items()}), flush=True)
        del policy
        gc.collect()
        if device.type == "cuda":
            torch.cuda.empty_cache()
    print(f"\n{name}; copy {bw / 1e9:.0f} GB/s; total {time.perf_counter() - t_start:.0f} s\n")
    rollout_cols = [("model", "model"), ("rollout_batch", "batch"), ("rollout_tokens_per_s", "rollout tok/s"),
                    ("decode_steps_per_s", "decode steps/s"), ("roof_steps_per_s", "read roof steps/s"),
                    ("pct_of_read_roof", "% of roof"), ("rollout_peak_gb", "peak GB"), ("skipped", "skipped")]
    grpo_cols = [("model", "model"), ("train", "GRPO"), ("grpo_trajectories_per_step", "trajectories/step"),
                 ("grpo_step_s", "step s"), ("grpo_peak_gb", "peak GB")]
    for cols, kind in ((rollout_cols, "rollout_batch"), (grpo_cols, "train")):
        print("| " + " | ".join(c for _, c in cols) + " |\n|" + "---|" * len(cols))
        for r in rows:
            if kind in r:
                cells = [f"{r[k]:.3g}" if isinstance(r.get(k), float) else str(r.get(k, "")) for k, _ in cols]
                print("| " + " | ".join(cells) + " |")
        print()
    if args.json:
        Path(args.json).write_text(json.dumps({"device": name, "copy_bandwidth": bw, "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
