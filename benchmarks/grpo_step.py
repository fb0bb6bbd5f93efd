"""Benchmark: one GRPO step of the main job split into its parts, with 0, 1 and 2 rollout actors;
and the rollout engine against Hugging Face `generate` with a grammar logits processor (TRL's own
generation path) on the same batch, model and grammar.

    python benchmarks/grpo_step.py [--config configs/shapeworld.yaml] [--steps 4] [--actors 0,1,2]

Each arm runs in a fresh process, so its peak memory is its own (resident set high-water mark: the
trainer process, plus the actors' with a fleet; on a GPU, the CUDA allocator's peak too).

**GRPO step** (`--arm step`): the config's GRPO round (`grpo_stage`, the main job's settings: its
checkpoint, judge, rollout caps, `prompts_per_step` x `generations` trajectories per step) for
`--steps` steps with `rollout.actors` set; the first step is dropped (actor start, first imports)
and the rest averaged, from the step log lines (`rollout/seconds`, `judge/seconds`, `time/*`, TRL's `step_time`): rollout (sampling,
on the actors with a fleet, the actors' loads of the update included), judge, weight sync
(publishing the step's weights), log-probs (the reference's forward, no gradient), and update (the
loss forward, backward and optimizer step: `step_time` minus generation and scoring); "other" is
the rest of TRL's generation and scoring (rewards, advantages, padding).

**Engine vs HF generate** (`--arm engine`, `--arm hf`): the step's batch (`prompts_per_step` x
`generations` training prompts) sampled once by `Engine.sample` (batched, grammar-masked, log-probs
recorded) and once by one batched `model.generate` call whose logits processor applies the same
grammar (`rollout.grammar.Grammar`) per row, log-probs taken from its processed scores; tokens/s
counts generated tokens up to each row's <eos>.

Not a test: on a shared machine wall times move with the load, so compare ratios from one run.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")

PARTS = ("rollout", "judge", "weight_sync", "logprobs", "update", "other")


def peak_rss_mb(pids: list[int]) -> float:
    """Sum of the processes' resident-set high-water marks (Linux /proc)."""
    total = 0
    for pid in pids:
        try:
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith("VmHWM:"):
                    total += int(line.split()[1])
        except OSError:
            pass
    return total / 1024


def gpu_peak_mb() -> float:
    import torch

    return torch.cuda.max_memory_allocated() / 2**20 if torch.cuda.is_available() else 0.0


def load(args):
    from selfplay.config import load_config

    sets = [f"train.grpo.steps={args.steps}", f"rollout.actors={args.actors}", "train.report_to=none",
            f"train.num_threads={args.threads}", "train.logging_steps=1", "tracking.wandb=false"]
    return load_config(args.config, sets + args.set)


def step_arm(args) -> dict:
    """The config's GRPO round for `--steps` steps; per-part seconds of the steps after the first."""
    import torch

    from rollout import RolloutFleet
    from selfplay.grpo import grpo_prompts, grpo_stage
    from selfplay.judging import policy_judge

    torch.set_num_threads(args.threads)
    cfg = load(args)
    parent = Path(cfg.loop.base_checkpoint).resolve()
    fleet = RolloutFleet(cfg.rollout) if args.actors else None
    if fleet and not cfg.samples_on_fleet:  # train.grpo.sample_on: trainer: the actors are up, idle
        fleet.hold(parent)
    with tempfile.TemporaryDirectory() as out:
        t0 = time.perf_counter()
        grpo_stage(cfg, parent, grpo_prompts(cfg, 1), Path(out), policy_judge(cfg.judge, parent, cfg.rollout),
                   fleet=fleet if cfg.samples_on_fleet else None)
        wall = time.perf_counter() - t0
        lines = [json.loads(x) for x in (Path(out) / "metrics.jsonl").read_text().splitlines()]
    steps = [x for x in lines if "step_time" in x][1:]
    pids = [os.getpid()] + (fleet.pids() if fleet else [])
    memory = peak_rss_mb(pids)
    if fleet:
        fleet.close()

    def mean(key: str) -> float:
        return sum(x.get(key, 0.0) for x in steps) / len(steps)

    parts = {"rollout": mean("rollout/seconds"), "judge": mean("judge/seconds"),
             "weight_sync": mean("time/weight_sync"), "logprobs": mean("time/logprobs")}
    parts["update"] = mean("step_time") - mean("time/generate")
    parts["other"] = mean("time/generate") - parts["rollout"] - parts["judge"] - parts["logprobs"]
    batch = cfg.train.grpo.prompts_per_step * cfg.train.grpo.generations
    tokens = mean("completions/mean_length") * batch
    return {"arm": f"GRPO step, actors {args.actors}", "steps": len(steps), "step_s": mean("step_time"),
            "parts": parts, "tokens": tokens, "rollout_tokens_per_s": tokens / max(parts["rollout"], 1e-9),
            "peak_mb": memory, "gpu_peak_mb": gpu_peak_mb(), "wall_s": wall}


def step_batch(cfg):
    from selfplay.grpo import grpo_prompts
    from strokes.records import PromptRecord

    g = cfg.train.grpo
    records = [PromptRecord.from_json(json.loads(p)) for p in grpo_prompts(cfg, 1)[: g.prompts_per_step]]
    return [r for r in records for _ in range(g.generations)]


def engine_arm(args) -> dict:
    import dataclasses

    import torch

    from rollout import Engine
    from selfplay.evaluation import sampled_verdicts
    from strokes.model.policy import Policy

    torch.set_num_threads(args.threads)
    cfg = load(args)
    records = step_batch(cfg)
    rcfg = dataclasses.replace(sampled_verdicts(cfg.rollout), mode="process", actors=0, batch_size=len(records))
    engine = Engine(Policy.from_pretrained(cfg.loop.base_checkpoint), rcfg)
    engine.sample(records[:2], seed=1)  # warm-up: first-call allocations
    t0 = time.perf_counter()
    rolled = engine.sample(records, seed=args.seed)
    seconds = time.perf_counter() - t0
    tokens = sum(len(s.completion_ids) for s in rolled)
    return {"arm": f"engine, batch {len(records)}", "seconds": seconds, "tokens": tokens,
            "tokens_per_s": tokens / seconds, "ok": sum("failed" not in s.trajectory.meta for s in rolled),
            "rows": len(records), "peak_mb": peak_rss_mb([os.getpid()]), "gpu_peak_mb": gpu_peak_mb()}


def hf_arm(args) -> dict:
    """One batched `generate` over the step's batch, the grammar applied per row by a logits
    processor, log-probabilities of the sampled tokens from the processed scores."""
    import dataclasses

    import torch
    from transformers import LogitsProcessor, LogitsProcessorList

    from rollout.engine import resolve_device, resolve_dtype
    from rollout.grammar import Grammar
    from selfplay.evaluation import sampled_verdicts
    from strokes.model.policy import Policy

    torch.set_num_threads(args.threads)
    cfg = load(args)
    records = step_batch(cfg)
    rcfg = dataclasses.replace(sampled_verdicts(cfg.rollout), mode="process")
    policy = Policy.from_pretrained(cfg.loop.base_checkpoint)
    device = resolve_device(rcfg.device)
    model = policy.model.to(device=device, dtype=resolve_dtype(rcfg.dtype, device)).eval()
    p = policy.processor
    vocab = int(model.get_output_embeddings().weight.shape[0])
    g = Grammar(p, vocab, mode="process", max_steps=rcfg.max_steps, max_refines=rcfg.max_refines,
                max_text_tokens=rcfg.max_text_tokens, device=device)
    max_pos = model.config.max_position_embeddings
    contexts = [p.prompt_ids(r.text) for r in records]
    width = max(len(c) for c in contexts)
    ids = torch.tensor([[p.pad_id] * (width - len(c)) + c for c in contexts], device=device)
    mask = (torch.arange(width, device=device)[None] >= torch.tensor([width - len(c) for c in contexts],
                                                                      device=device)[:, None]).long()
    lengths = torch.tensor([len(c) for c in contexts], device=device)

    class GrammarProcessor(LogitsProcessor):
        """The engine's grammar as a logits processor: per-row state advanced by the token
        `generate` appended last (finished rows sit in the final state, which allows only padding)."""

        def __init__(self) -> None:
            rows = [g.replay(c) for c in contexts]
            self.state = [torch.tensor([getattr(r, k) for r in rows], device=device)
                          for k in ("state", "span", "steps", "refines")]
            self.first = True

        def __call__(self, input_ids, scores):
            if not self.first:
                self.state = list(g.advance(input_ids[:, -1], *self.state))
            self.first = False
            left = max_pos - lengths - (input_ids.shape[1] - width)
            return scores.masked_fill(~g.masks[g.mask_ids(*self.state, left)], float("-inf"))

    def generate():
        out = model.generate(ids, attention_mask=mask, do_sample=True, temperature=rcfg.temperature, top_k=0,
                             top_p=1.0, max_new_tokens=max_pos - int(lengths.min()), eos_token_id=p.eos_id,
                             pad_token_id=p.pad_id, logits_processor=LogitsProcessorList([GrammarProcessor()]),
                             output_scores=True, return_dict_in_generate=True)
        gen = out.sequences[:, width:]
        logps = torch.stack([torch.log_softmax(s.float(), -1) for s in out.scores], 1).gather(-1, gen[..., None])
        return gen, logps.squeeze(-1)

    torch.manual_seed(args.seed)
    t0 = time.perf_counter()
    with torch.no_grad():
        gen, _ = generate()
    seconds = time.perf_counter() - t0
    ended = (gen == p.eos_id).int()
    has_eos = ended.any(1)
    lengths_out = torch.where(has_eos, ended.argmax(1) + 1, torch.full_like(has_eos, gen.shape[1], dtype=torch.long))
    tokens = int(lengths_out.sum())
    return {"arm": f"HF generate + grammar processor, batch {len(records)}", "seconds": seconds, "tokens": tokens,
            "tokens_per_s": tokens / seconds, "ok": int(has_eos.sum()), "rows": len(records),
            "peak_mb": peak_rss_mb([os.getpid()]), "gpu_peak_mb": gpu_peak_mb()}


ARMS = {"step": step_arm, "engine": engine_arm, "hf": hf_arm}


def run_arm(arm: str, args, actors: int = 0) -> dict:
    """One arm in a fresh process (its own peak memory, its own Ray cluster)."""
    cmd = [sys.executable, __file__, "--arm", arm, "--config", args.config, "--steps", str(args.steps),
           "--actors", str(actors), "--threads", str(args.threads), "--seed", str(args.seed)]
    for s in args.set:
        cmd += ["--set", s]
    done = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "PYTHONPATH": os.getcwd()})
    lines = [x for x in done.stdout.splitlines() if x.startswith("{")]
    if done.returncode or not lines:
        sys.exit(f"arm {arm} (actors {actors}) failed:\n{done.stderr[-3000:]}")
    print(lines[-1], flush=True)
    return json.loads(lines[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="configs/shapeworld.yaml")
    parser.add_argument("--steps", type=int, default=4, help="GRPO steps per arm (the first is dropped)")
    parser.add_argument("--actors", default="0,1,2", help="comma-separated actor counts (a number with --arm)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads of the trainer process")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--set", action="append", default=[], help="config override, as selfplay run --set")
    parser.add_argument("--arm", choices=sorted(ARMS), help="run one arm in this process (the script runs each so)")
    parser.add_argument("--skip", default="", help="comma-separated: steps,generate")
    args = parser.parse_args()
    if args.arm:
        args.actors = int(args.actors.split(",")[0])
        print(json.dumps(ARMS[args.arm](args)), flush=True)
        return

    skip = set(filter(None, args.skip.split(",")))
    load_avg = os.getloadavg()
    print(f"config {args.config}; {os.cpu_count()} cores, load average {load_avg[0]:.2f} at the start; "
          f"torch threads {args.threads} per process", flush=True)
    steps = [] if "steps" in skip else [run_arm("step", args, int(n)) for n in args.actors.split(",")]
    gens = [] if "generate" in skip else [run_arm("engine", args), run_arm("hf", args)]
    print(f"\nload average at the end {os.getloadavg()[0]:.2f}")
    if steps:
        print("\n| actors | step s | " + " | ".join(PARTS) + " | rollout tokens/s | peak MB (all processes) |")
        print("|---" * (len(PARTS) + 4) + "|")
        for r in steps:
            share = " | ".join(f"{r['parts'][k]:.2f} ({100 * r['parts'][k] / r['step_s']:.0f}%)" for k in PARTS)
            print(f"| {r['arm'].split()[-1]} | {r['step_s']:.2f} | {share} | {r['rollout_tokens_per_s']:.0f} | "
                  f"{r['peak_mb']:.0f} |")
    if gens:
        print("\n| arm | rows (ended) | tokens | seconds | tokens/s | peak MB | GPU peak MB |")
        print("|---|---|---|---|---|---|---|")
        for r in gens:
            print(f"| {r['arm']} | {r['rows']} ({r['ok']}) | {r['tokens']} | {r['seconds']:.1f} | "
                  f"{r['tokens_per_s']:.0f} | {r['peak_mb']:.0f} | {r['gpu_peak_mb']:.0f} |")
        print(f"\nengine / HF generate, tokens/s: {gens[0]['tokens_per_s'] / gens[1]['tokens_per_s']:.1f}x")


if __name__ == "__main__":
    main()
