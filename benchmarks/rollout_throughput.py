"""Benchmark: rollout throughput of (a) a naive loop calling Hugging Face `generate` per prompt, (b) the
batched engine, (c) the engine on 2 Ray actors: same checkpoint, prompts, grammar and caps.

Not a test, since a shared machine makes wall-clock assertions flaky; run it by hand:

    OMP_NUM_THREADS=1 python benchmarks/rollout_throughput.py [--prompts 256] [--checkpoint DIR]

The model is production-sized (hidden 256, 6 layers, 4 heads, MLP 768) with random weights, built
once into `--checkpoint` (default: a temporary folder). Random weights make trajectories run to the
caps, so the caps (`--max-steps`, `--max-text-tokens`) keep lengths near a trained model's and tokens/s
is reported beside trajectories/s. The naive loop gets the same grammar through a `LogitsProcessor`
built on `rollout.grammar.Grammar`, one prompt at a time. Every arm uses one torch thread per process
(the Ray arm: two actors, one per core). CPU seconds are printed beside wall seconds for the
in-process arms, since other work on a shared machine stretches wall time.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from dataclasses import replace
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")


def naive_generate(policy, prompts, cfg, seed: int) -> tuple[int, int]:
    """One `generate` call per prompt, grammar enforced by a logits processor. Returns (ok, tokens)."""
    import torch
    from transformers import LogitsProcessor, LogitsProcessorList

    from rollout.grammar import Grammar

    p, model = policy.processor, policy.model
    g = Grammar(p, model.config.vocab_size, mode=cfg.mode, max_steps=cfg.max_steps, max_refines=cfg.max_refines,
                max_text_tokens=cfg.max_text_tokens)
    max_pos = model.config.max_position_embeddings

    class GrammarProcessor(LogitsProcessor):
        """The engine's state machine, advanced by the last token `generate` appended."""

        def __init__(self, context: list[int]) -> None:
            r = g.replay(context)
            self.state = [torch.tensor([v]) for v in (r.state, r.span, r.steps, r.refines)]
            self.n = len(context)
            self.first = True

        def __call__(self, input_ids, scores):
            if not self.first:
                self.state = list(g.advance(input_ids[:, -1], *self.state))
            self.first = False
            left = torch.tensor([max_pos - self.n - (input_ids.shape[1] - self.n)])
            mid = g.mask_ids(*self.state, left)
            return scores.masked_fill(~g.masks[mid], float("-inf"))

    torch.manual_seed(seed)
    ok = tokens = 0
    for prompt in prompts:
        ids = p.prompt_ids(prompt.text)
        x = torch.tensor([ids])
        out = model.generate(x, attention_mask=torch.ones_like(x), do_sample=True, temperature=cfg.temperature,
                             top_k=0, top_p=1.0, max_new_tokens=max_pos - len(ids), eos_token_id=p.eos_id,
                             pad_token_id=p.pad_id, logits_processor=LogitsProcessorList([GrammarProcessor(ids)]))
        seq = out[0].tolist()
        tokens += len(seq) - len(ids)
        try:
            p.decode(seq)
            ok += 1
        except ValueError:
            pass
    return ok, tokens


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prompts", type=int, default=256)
    parser.add_argument("--checkpoint", default=None, help="reuse (or create) the random checkpoint here")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--max-steps", type=int, default=3)
    parser.add_argument("--max-refines", type=int, default=1)
    parser.add_argument("--max-text-tokens", type=int, default=16)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--skip", default="", help="comma-separated arms to skip: naive,ray,variants")
    parser.add_argument("--with-batch1", action="store_true", help="also the engine at batch 1 (as slow as (a))")
    parser.add_argument("--tiny", action="store_true", help="a tiny model, to check the script runs")
    args = parser.parse_args()

    import torch

    torch.set_num_threads(1)
    from rollout import Engine, RolloutConfig, rollout
    from rollout.cluster import connect
    from strokes.model.policy import Policy
    from strokes.model.tiny import ModelConfig
    from strokes.shapeworld import make_suite

    skip = set(filter(None, args.skip.split(",")))
    tiny = ModelConfig(hidden_size=64, num_layers=2, num_heads=2, intermediate_size=128)
    shape = tiny if args.tiny else ModelConfig()
    tmp = tempfile.TemporaryDirectory()
    ckpt = Path(args.checkpoint or Path(tmp.name) / "policy")
    if not (ckpt / "config.json").is_file():
        Policy.build(shape).save_pretrained(ckpt)
    policy = Policy.from_pretrained(ckpt)
    records = make_suite("test", -(-args.prompts // 6), args.seed)[: args.prompts]
    cfg = RolloutConfig(batch_size=args.batch_size, max_steps=args.max_steps, max_refines=args.max_refines,
                        max_text_tokens=args.max_text_tokens, seed=args.seed, device="cpu")
    rows = []  # (arm, trajectories, ok, tokens, wall, cpu)

    def timed(fn):
        w, c = time.perf_counter(), time.process_time()
        out = fn()
        return out, time.perf_counter() - w, time.process_time() - c

    print(f"model: {policy.num_parameters() / 1e6:.2f}M parameters; {len(records)} prompts; caps: "
          f"{args.max_steps} steps, {args.max_refines} refines/step, {args.max_text_tokens} words/span; "
          f"torch threads {torch.get_num_threads()}; cores {os.cpu_count()}", flush=True)
    if "naive" not in skip:
        (ok, tokens), wall, cpu = timed(lambda: naive_generate(policy, records, cfg, args.seed))
        rows.append(("(a) naive: HF generate per prompt", len(records), ok, tokens, wall, cpu))
        print(rows[-1], flush=True)

    def engine_arm(name: str, c: RolloutConfig) -> None:
        engine = Engine(policy, c)
        trajs, wall, cpu = timed(lambda: engine.run(records))
        ok = sum("failed" not in t.meta for t in trajs)
        rows.append((name, len(trajs), ok, sum(t.meta["tokens"] for t in trajs), wall, cpu))
        print(rows[-1], engine.decoder.stats, flush=True)

    engine_arm(f"(b) engine, batch {args.batch_size} (CPU default: a batch runs to its end)", cfg)
    if "variants" not in skip:
        engine_arm("(b1) finished rows kept masked until a refill", replace(cfg, compact_fraction=1.0))
        engine_arm("(b2) HF DynamicLayer cache (torch.cat per step)", replace(cfg, kv_cache="dynamic"))
        engine_arm("(b3) continuous refill (at 25% free rows)", replace(cfg, refill_fraction=0.25))
    if args.with_batch1:
        engine_arm("(b4) engine, batch 1", replace(cfg, batch_size=1))
    if "ray" not in skip:
        connect(num_cpus=2, object_store_mb=100)
        rcfg = replace(cfg, actors=2, actor_cpus=1.0, shard_size=args.batch_size)
        with tempfile.TemporaryDirectory() as out:
            summary, wall, _ = timed(lambda: rollout(records, out, rcfg, checkpoint=ckpt, progress=False))
        ok = summary.trajectories - summary.failed
        rows.append((f"(c) engine on 2 Ray actors, shards of {rcfg.shard_size} (wall incl. "
                     f"{summary.startup_seconds:.0f} s actor start)", summary.trajectories, ok, summary.tokens, wall,
                     float("nan")))
        rows.append(("(c) the same, rolling out only (after actor start)", summary.trajectories, ok, summary.tokens,
                     wall - summary.startup_seconds, float("nan")))
        print(rows[-1], flush=True)

    base = next((r for r in rows if r[0].startswith("(a)")), rows[0])
    print("\n| arm | trajectories (ok) | tokens | wall s | CPU s | traj/s | tokens/s | traj/s vs (a) |")
    print("|---|---|---|---|---|---|---|---|")
    for name, n, ok, tokens, wall, cpu in rows:
        print(f"| {name} | {n} ({ok}) | {tokens} | {wall:.1f} | {cpu:.1f} | {n / wall:.2f} | {tokens / wall:.0f} | "
              f"{(n / wall) / (base[1] / base[4]):.1f}x |")
    tmp.cleanup()


if __name__ == "__main__":
    main()
