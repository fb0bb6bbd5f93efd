"""`selfplay run --dry-run`: what a config would do, without a cluster or a model.

It validates the config (loading it already did) and the files it names (`loop.base_checkpoint`, or
with --from-scratch `loop.base_recipe`), then prints the plan: rounds and their sizes, rollout actors
and GPUs, batch sizes, and a memory estimate per rollout actor and for training (parameters from the
base checkpoint's config.json, or with --from-scratch from the recipe's model section).
"""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

from strokes.errors import InputError
from strokes.model.tiny import ModelConfig
from strokes.records import TASKS

from .config import RunConfig, load_config


def _start(cfg: RunConfig, from_scratch: bool) -> ModelConfig | Path:
    """What round 0 starts from: the recipe's model shape (--from-scratch) or the base checkpoint's
    config.json, checked here so that a wrong path fails the dry run, not the real one minutes in."""
    if from_scratch:
        recipe = cfg.loop.base_recipe
        if not Path(recipe).is_file():
            raise InputError(f"loop.base_recipe: {recipe}: no such config file (--from-scratch trains from it)")
        try:
            return load_config(recipe).model
        except InputError as e:
            raise InputError(f"loop.base_recipe {recipe}: {e}") from None
    cfg_file = Path(cfg.loop.base_checkpoint) / "config.json"
    if not cfg_file.is_file():
        hint = "; pass --from-scratch to train one" if cfg.world.kind == "shapeworld" else ": convert your model first"
        raise InputError(f"loop.base_checkpoint: {cfg_file.parent}: no base checkpoint (no config.json{hint})")
    return cfg_file


def _params(start: ModelConfig | Path) -> tuple[int, dict]:
    """Parameter count and shape of the policy the run starts from."""
    if isinstance(start, Path):
        c = json.loads(start.read_text())
        c = c.get("text_config") or c  # multimodal models (Emu3) keep the LM's shape there
        shape = {"hidden": c["hidden_size"], "layers": c["num_hidden_layers"], "vocab": c["vocab_size"],
                 "intermediate": c["intermediate_size"], "kv_heads": c.get("num_key_value_heads", c["num_attention_heads"]),
                 "heads": c["num_attention_heads"], "positions": c["max_position_embeddings"]}
    else:
        m = start
        shape = {"hidden": m.hidden_size, "layers": m.num_layers, "vocab": 16 + 60 + m.num_codes,
                 "intermediate": m.intermediate_size, "kv_heads": m.num_heads, "heads": m.num_heads,
                 "positions": m.max_positions}
    h, L = shape["hidden"], shape["layers"]
    kv = h * shape["kv_heads"] // shape["heads"]
    per_layer = 2 * h * h + 2 * h * kv + 3 * h * shape["intermediate"]
    return L * per_layer + shape["vocab"] * h, shape


def plan(cfg: RunConfig, from_scratch: bool = False) -> dict:
    """What `cfg` would do: rounds and their sizes, actors, batches, memory estimates."""
    n, shape = _params(_start(cfg, from_scratch))
    r, t = cfg.rollout, cfg.train
    bytes_w = 2 if r.dtype in ("bfloat16", "float16") or (r.dtype == "auto" and r.num_gpus_per_actor > 0) else 4
    kv_bytes = 2 * shape["layers"] * shape["hidden"] * shape["kv_heads"] // shape["heads"] * bytes_w
    kv_per_row = kv_bytes * shape["positions"]
    trainable = n if not t.lora.enabled else int(2 * t.lora.r * shape["hidden"] * shape["layers"] * len(t.lora.target_modules))
    train_bytes = n * (2 if t.bf16 is True else 4) + trainable * 16  # weights + fp32 grads and Adam moments
    act = t.batch_size * t.max_length * shape["hidden"] * shape["layers"] * 34 * 2
    rounds = cfg.loop.rounds
    g = t.grpo
    grpo = {"grpo": {"steps": g.steps, "trajectories_per_step": g.prompts_per_step * g.generations,
                     "rollouts": g.steps * g.prompts_per_step * g.generations, "prompts": g.prompts,
                     "beta": g.beta, "reward_weights": g.reward_weights}} if "grpo" in t.method else {}
    return {
        "rounds": rounds,
        "per_round": {"method": t.method,
                      "rollout_prompts": 0 if t.method == "grpo" else cfg.loop.prompts_per_round * cfg.loop.samples_per_prompt,
                      "eval_records": len(TASKS) * cfg.loop.eval_per_task, "eval_modes": cfg.loop.eval_modes,
                      "validation_records": len(TASKS) * cfg.loop.validation_per_task,
                      "inspect_head_prompts": cfg.inspect_head.prompts if cfg.inspect_head.enabled else 0,
                      "inspect": cfg.rollout.inspect, "retries": cfg.rollout.retries,
                      "judge": cfg.judge.kind, "critique": cfg.critique.mode, "control_arm": cfg.loop.control,
                      **grpo},
        "policy": {"parameters": n, **shape,
                   "from": f"--from-scratch: {cfg.loop.base_recipe}" if from_scratch else cfg.loop.base_checkpoint},
        "rollout": {"actors": r.actors or 1, "in_process": r.actors == 0, "cpus_per_actor": r.actor_cpus,
                    "gpus_per_actor": r.num_gpus_per_actor, "ray_address": r.ray_address or "local",
                    "batch_size": r.batch_size,
                    "memory_per_actor_gb": round((n * bytes_w + r.batch_size * kv_per_row) / 1e9, 3)},
        "train": {"distributed": t.distributed, "workers": t.workers if t.distributed == "ray" else 1,
                  "batch_size": t.batch_size, "grad_accum": t.grad_accum, "max_length": t.max_length,
                  "global_batch": t.batch_size * t.grad_accum * (t.workers if t.distributed == "ray" else 1),
                  "tokens_per_step": t.batch_size * t.grad_accum * t.max_length
                  * (t.workers if t.distributed == "ray" else 1), "lora": asdict(t.lora),
                  "trainable_parameters": trainable, "device": t.device, "bf16": t.bf16,
                  "memory_gb": round((train_bytes + act) / 1e9, 3)},
        "judge": {"kind": cfg.judge.kind, "base_url": cfg.judge.base_url, "concurrency": cfg.judge.concurrency},
    }


TINY = 100_000_000  # parameters; the shipped ShapeWorld model has about 2.3M


def warnings(cfg: RunConfig, planned: dict) -> list[str]:
    """What a dry run should say out loud: a cluster config (GPU actors or Ray Train) pointed at a tiny
    model (the shipped one, left in place of `loop.base_checkpoint`), and wandb online, which needs
    `wandb login` before the run, not an hour into it."""
    out = []
    cluster = cfg.rollout.num_gpus_per_actor > 0 or cfg.train.distributed == "ray"
    n = planned["policy"]["parameters"]
    if cluster and n < TINY:
        out.append(f"warning: a cluster config (GPU rollout actors or Ray Train) for a {n / 1e6:.1f}M-parameter "
                   f"model ({planned['policy']['from']}); point loop.base_checkpoint at your model")
    if cfg.tracking.wandb and cfg.tracking.mode == "online":
        out.append("warning: tracking.mode online syncs to wandb: run `wandb login` first "
                   "(or --set tracking.mode=offline)")
    return out
