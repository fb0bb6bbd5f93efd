"""Benchmark for a lent GPU: the rollout engine on ~1B- and 7B-shaped random Llama models (bf16)
against the weight-read roof, beside a plain batched Hugging Face `generate` with the same grammar.

A decode step must read every weight once, so no step can beat

    roof = weight bytes / memory bandwidth        (bandwidth measured here with a device copy)

and "% of roof" is roof ÷ measured time per decode step. Run it on the GPU machine (not yet run to
its end on one: docs/rollout.md, "On a GPU"):

    python benchmarks/gpu_rollout.py                     # 1b at batch 64 and 256, 7b at 64 and 128
                                                         # (7b at 128 wants an H200: the cache grows by copying)
    python benchmarks/gpu_rollout.py --models 7b --batches 256 --prompts 512
    python benchmarks/gpu_rollout.py --models 1b --batches 64 --cudnn   # also the engine with cuDNN attention
    python benchmarks/gpu_rollout.py --tiny              # CPU, small shapes: checks the script runs

Random weights make trajectories run to the caps, which keeps lengths comparable across arms.
"""

from __future__ import annotations

import argparse
import contextlib
import time
from unittest.mock import patch

SHAPES = {  # hidden, layers, heads, kv heads, MLP (Llama 3.2 1B and Llama 2 7B, with our vocabulary)
    "1b": (2048, 16, 32, 8, 8192),
    "7b": (4096, 32, 32, 32, 11008),
    "tiny": (128, 2, 4, 4, 256),
}
DEFAULT_BATCHES = {"1b": (64, 256), "7b": (64, 128), "tiny": (8, 32)}


def sync(device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


def copy_bandwidth(device, megabytes: int) -> float:
    """Bytes per second a device-to-device copy moves (read + write counted)."""
    import torch

    x = torch.empty(megabytes << 20, dtype=torch.uint8, device=device)
    y = torch.empty_like(x)
    for _ in range(3):
        y.copy_(x)
    sync(device)
    n, t = 20, time.perf_counter()
    for _ in range(n):
        y.copy_(x)
    sync(device)
    return 2 * x.numel() * n / (time.perf_counter() - t)


def random_llama(shape: str, vocab: int, device, dtype):
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    hidden, layers, heads, kv, mlp = SHAPES[shape]
    cfg = LlamaConfig(vocab_size=vocab, hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=heads,
                      num_key_value_heads=kv, intermediate_size=mlp, max_position_embeddings=1024,
                      tie_word_embeddings=False)
    default = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with torch.device(device):
            model = LlamaForCausalLM(cfg)
    finally:
        torch.set_default_dtype(default)
    return model.eval()


def generate_baseline(model, processor, grammar, prompts, batch: int, device) -> tuple[int, int, float]:
    """Batched `generate` (left-padded) with the grammar as a logits processor, under the engine's
    attention kernels (`decode_attention`: no cuDNN on CUDA), so the arms differ in the loop, not
    the kernel. Returns (tokens generated, decode steps, seconds)."""
    import torch
    from transformers import LogitsProcessor, LogitsProcessorList

    from rollout.decoder import decode_attention

    max_pos = model.config.max_position_embeddings

    class GrammarProcessor(LogitsProcessor):
        def __init__(self, contexts):
            states = [grammar.replay(c) for c in contexts]
            self.state = [torch.tensor([getattr(s, f) for s in states], device=device)
                          for f in ("state", "span", "steps", "refines")]
            self.lens = torch.tensor([len(c) for c in contexts], device=device)
            self.start = None

        def __call__(self, input_ids, scores):
            if self.start is None:
                self.start = input_ids.shape[1]
            else:
                self.state = list(grammar.advance(input_ids[:, -1], *self.state))
            left = max_pos - self.lens - (input_ids.shape[1] - self.start)
            mid = grammar.mask_ids(*self.state, left)  # finished rows (DONE) may only pad
            return scores.masked_fill(~grammar.masks[mid], float("-inf"))

    tokens = steps = 0
    sync(device)
    t = time.perf_counter()
    for i in range(0, len(prompts), batch):
        ctx = [processor.prompt_ids(p.text) for p in prompts[i: i + batch]]
        width = max(map(len, ctx))
        ids = torch.tensor([[processor.pad_id] * (width - len(c)) + c for c in ctx], device=device)
        attn = (torch.arange(width, device=device)[None] >= torch.tensor([width - len(c) for c in ctx],
                                                                           device=device)[:, None]).long()
        with decode_attention(device):
            out = model.generate(ids, attention_mask=attn, do_sample=True, temperature=1.0, top_k=0, top_p=1.0,
                                 max_new_tokens=max_pos - width, eos_token_id=processor.eos_id,
                                 pad_token_id=processor.pad_id,
                                 logits_processor=LogitsProcessorList([GrammarProcessor(ctx)]))
        gen = out[:, width:]
        steps += gen.shape[1]
        tokens += int((gen != processor.pad_id).sum())
    sync(device)
    return tokens, steps, time.perf_counter() - t


def engine_arm(engine, prompts, batch: int, device) -> tuple[list, int, float]:
    """The engine over `prompts` after a warm-up (kernels, allocator); also gpu_check's rollout arm.
    Returns (trajectories, decode steps, seconds)."""
    engine.run(prompts[: min(batch, 8)])
    before = engine.decoder.stats["steps"]
    sync(device)
    t = time.perf_counter()
    trajs = engine.run(prompts)
    sync(device)
    wall = time.perf_counter() - t
    return trajs, engine.decoder.stats["steps"] - before, wall


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="1b,7b", help="comma-separated: 1b, 7b")
    parser.add_argument("--batches", default="", help="comma-separated batch sizes (default per model)")
    parser.add_argument("--prompts", type=int, default=0, help="prompts per arm (default: 2 x batch)")
    parser.add_argument("--max-steps", type=int, default=2)
    parser.add_argument("--max-refines", type=int, default=1)
    parser.add_argument("--max-text-tokens", type=int, default=16)
    parser.add_argument("--no-generate", action="store_true", help="skip the plain generate baseline")
    parser.add_argument("--cudnn", action="store_true",
                        help="also time the engine with PyTorch's own attention choice (cuDNN allowed on CUDA)")
    parser.add_argument("--tiny", action="store_true", help="tiny shapes on CPU (float32): checks the script")
    args = parser.parse_args()

    import torch

    from rollout import Engine, RolloutConfig, decoder
    from rollout.grammar import Grammar
    from strokes.model.policy import Policy
    from strokes.model.tiny import ModelConfig
    from strokes.shapeworld import make_suite

    if args.tiny:
        torch.set_num_threads(1)
        device, dtype, models = torch.device("cpu"), torch.float32, ["tiny"]
    else:
        if not torch.cuda.is_available():
            raise SystemExit("no GPU here: run with --tiny to check the script on CPU")
        device, dtype, models = torch.device("cuda"), torch.bfloat16, args.models.split(",")
    bw = copy_bandwidth(device, 64 if args.tiny else 2048)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU (1 thread)"
    print(f"device: {name}; copy bandwidth {bw / 1e9:.0f} GB/s; torch {torch.__version__}", flush=True)
    processor = Policy.build(ModelConfig(hidden_size=32, num_layers=1, num_heads=1, intermediate_size=32)).processor
    rows = []
    for shape in models:
        model = random_llama(shape, processor.vocab_size, device, dtype)
        weight_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
        roof = weight_bytes / bw
        batches = [int(b) for b in args.batches.split(",") if b] or DEFAULT_BATCHES[shape]
        for batch in batches:
            prompts = make_suite("test", -(-(args.prompts or 2 * batch) // 6), 0)[: args.prompts or 2 * batch]
            cfg = RolloutConfig(batch_size=batch, max_steps=args.max_steps, max_refines=args.max_refines,
                                max_text_tokens=args.max_text_tokens, device=device.type,
                                dtype=str(dtype).removeprefix("torch."))
            trajs, steps, wall = engine_arm(Engine(Policy(model, processor), cfg), prompts, batch, device)
            tokens = sum(tr.meta["tokens"] for tr in trajs)
            row = {"model": shape, "params_B": weight_bytes / dtype.itemsize / 1e9, "weights_GB": weight_bytes / 1e9,
                   "batch": batch, "prompts": len(prompts), "engine_tok_s": tokens / wall,
                   "engine_step_ms": 1e3 * wall / steps, "roof_step_ms": 1e3 * roof,
                   "engine_pct_roof": 100 * roof * steps / wall}
            if args.cudnn:  # the same engine with PyTorch's own attention choice (cuDNN's kernel on CUDA)
                with patch.object(decoder, "decode_attention", lambda _device: contextlib.nullcontext()):
                    _, csteps, cwall = engine_arm(Engine(Policy(model, processor), cfg), prompts, batch, device)
                row["cudnn_step_ms"] = 1e3 * cwall / csteps
            if not args.no_generate:
                grammar = Grammar(processor, model.config.vocab_size, max_steps=args.max_steps,
                                  max_refines=args.max_refines, max_text_tokens=args.max_text_tokens, device=device)
                gtok, gsteps, gwall = generate_baseline(model, processor, grammar, prompts, batch, device)
                row.update(generate_tok_s=gtok / gwall, generate_step_ms=1e3 * gwall / gsteps,
                           generate_pct_roof=100 * roof * gsteps / gwall)
            rows.append(row)
            print(row, flush=True)
        del model
        if device.type == "cuda":
            torch.cuda.empty_cache()
    cols = ["model", "params_B", "batch", "engine_tok_s", "engine_step_ms", "roof_step_ms", "engine_pct_roof",
            "generate_tok_s", "generate_step_ms", "generate_pct_roof"] + (["cudnn_step_ms"] if args.cudnn else [])
    print("\n| " + " | ".join(cols) + " |\n|" + "---|" * len(cols))
    for r in rows:
        cells = [f"{r[c]:.2f}" if isinstance(r.get(c), float) else str(r.get(c, "-")) for c in cols]
        print("| " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
