"""`selfplay run --dry-run`: what a config would do, without a cluster or a model.

It validates the config (loading it already did) and the files it names (`loop.base_checkpoint` by
the full checkpoint check every load runs, or with --from-scratch `loop.base_recipe`), then prints
the plan: rounds and their sizes, batch sizes, and what runs where, stage by stage (rollout actors,
the GRPO trainer and its rollouts, SFT training, the judge, evaluation), with a memory estimate per
device set against what one such device holds (parameters from the base checkpoint's config.json, or
with --from-scratch from the recipe's model section). Warnings name what would fail or waste the
run: memory beyond a device, `train.max_length` beyond the model's positions, GPUs idle while GRPO
trains (or a trainer sharing its GPU with an actor, `selfplay.placement`), a cluster config left on
the tiny model, wandb online without a login.

Each stage's line is one function in `PLACEMENTS` (config and shape in, a `Placement` or None out),
so a new stage, or a new field deciding where one runs, is one function here.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

from strokes.errors import InputError
from strokes.model.checkpoint_check import check_checkpoint
from strokes.model.policy import check_kind
from strokes.model.tiny import ModelConfig
from strokes.records import TASKS

from .config import RunConfig, load_config
from .placement import grpo_placement
from .side_process import uses_side_process

GPU_MEMORY_GB = 80.0
"""Memory of one GPU the plan is checked against unless `--gpu-memory` says otherwise (A100/H100 80 GB)."""


def _start(cfg: RunConfig, from_scratch: bool) -> ModelConfig | Path:
    """What round 0 starts from: the recipe's model shape (--from-scratch) or the base checkpoint's
    config.json, the checkpoint checked in full (weights' headers, tokenizer, checksums) here so that
    a wrong path or a damaged file fails the dry run, not the real one minutes in."""
    if from_scratch:
        recipe = cfg.loop.base_recipe
        if not Path(recipe).is_file():
            raise InputError(f"loop.base_recipe: {recipe}: no such config file (--from-scratch trains from it)")
        try:
            return load_config(recipe).model
        except InputError as e:
            raise InputError(f"loop.base_recipe {recipe}: {e}") from None
    folder = Path(cfg.loop.base_checkpoint)
    if not (folder / "config.json").is_file():
        hint = "; pass --from-scratch to train one" if cfg.world.kind == "shapeworld" else ": convert your model first"
        raise InputError(f"loop.base_checkpoint: {folder}: no base checkpoint (no config.json{hint})")
    try:
        check_checkpoint(folder)
    except InputError as e:
        raise InputError(f"loop.base_checkpoint: {e}") from None
    check_kind(folder, cfg.model.kind)
    return folder / "config.json"


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


@dataclass
class Placement:
    """One line of "what runs where": a stage, the work it does, where, and its memory per device."""

    stage: str
    work: str
    where: str
    gpus: float = 0.0
    """GPUs the stage holds while it runs (0: none)."""
    memory_gb: float | None = None
    """Estimated memory per device (per actor, per worker, or of the process); None: not ours."""
    per: str = "process"
    """What one `memory_gb` is of: "actor", "worker", "process"."""
    budget_gb: float | None = None
    """What one such device holds: a GPU's memory, or this machine's RAM on CPU; None: unknown."""
    during_grpo: bool = False
    """Whether its GPUs work while a GRPO round trains (the trainer, and the actors sampling its steps)."""


@dataclass
class Shape:
    """What every placement reads: the policy's size and shape, and the devices the plan is checked against."""

    parameters: int
    shape: dict
    gpu_memory_gb: float
    ram_gb: float | None


def _ram_gb() -> float | None:
    """This machine's memory (the budget of work planned on CPU), where the OS says."""
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 1e9
    except (ValueError, OSError, AttributeError):
        return None


def _on_gpu(device: str, cluster: bool) -> bool:
    """Whether a `device` field runs on a GPU: "cuda", or "auto" on a config that plans GPUs."""
    return device.startswith("cuda") or (device == "auto" and cluster)


def _cluster(cfg: RunConfig) -> bool:
    return cfg.rollout.num_gpus_per_actor > 0 or cfg.train.device == "cuda" or cfg.rollout.device.startswith("cuda")


def _weight_bytes(cfg: RunConfig, gpu: bool) -> int:
    """Bytes per weight of a rollout model: bf16/fp16, or "auto" on a GPU (the checkpoint's, bf16), else fp32."""
    d = cfg.rollout.dtype
    return 2 if d in ("bfloat16", "float16") or (d == "auto" and gpu) else 4


def _kv_bytes(cfg: RunConfig, m: Shape, gpu: bool) -> int:
    """A rollout engine's KV cache: `rollout.batch_size` rows of the model's positions."""
    s = m.shape
    per_token = 2 * s["layers"] * s["hidden"] * s["kv_heads"] // s["heads"] * _weight_bytes(cfg, gpu)
    return cfg.rollout.batch_size * s["positions"] * per_token


def _rollout_gb(cfg: RunConfig, m: Shape, gpu: bool) -> float:
    """A rollout engine: its weights and its KV cache."""
    return (m.parameters * _weight_bytes(cfg, gpu) + _kv_bytes(cfg, m, gpu)) / 1e9


def _train_weight_bytes(cfg: RunConfig, gpu: bool) -> int:
    """Bytes per weight of a trainer: bf16 when `train.bf16` is on ("auto": on a GPU), else fp32."""
    return 2 if cfg.train.bf16 is True or (cfg.train.bf16 == "auto" and gpu) else 4


def _training_bytes(cfg: RunConfig, m: Shape, gpu: bool, rows: int, tokens: int) -> int:
    """A trainer's weights, fp32 gradients and Adam moments of what it trains, and the activations of
    `rows` x `tokens` (about 34 values per hidden unit, layer and token, 2 bytes each; a tenth with
    activation checkpointing)."""
    t, s = cfg.train, m.shape
    act = rows * tokens * s["hidden"] * s["layers"] * 34 * 2 // (10 if t.activation_checkpointing else 1)
    return m.parameters * _train_weight_bytes(cfg, gpu) + _trainable(cfg, m) * 16 + act


def _trainable(cfg: RunConfig, m: Shape) -> int:
    lora = cfg.train.lora
    return int(2 * lora.r * m.shape["hidden"] * m.shape["layers"] * len(lora.target_modules)) if lora.enabled \
        else m.parameters


def _grpo_tokens(cfg: RunConfig, m: Shape) -> int:
    """Tokens of one GRPO trajectory at most: the engine's cap, else the model's positions."""
    cap = cfg.rollout.max_new_tokens
    return min(cap, m.shape["positions"]) if cap else m.shape["positions"]


def _grpo_rounds(cfg: RunConfig) -> bool:
    return any(cfg.train.round_method(r) == "grpo" for r in range(1, cfg.loop.rounds + 1))


def _sft_rounds(cfg: RunConfig) -> bool:
    return any(cfg.train.round_method(r) == "sft" for r in range(1, cfg.loop.rounds + 1))


def _budget(m: Shape, gpu: bool) -> float | None:
    return m.gpu_memory_gb if gpu else m.ram_gb


def _ids(gpus: list[int]) -> str:
    """GPU ids as people write them: 0, 1-7."""
    return f"{gpus[0]}-{gpus[-1]}" if len(gpus) > 2 and gpus == list(range(gpus[0], gpus[-1] + 1)) \
        else ", ".join(map(str, gpus))


SIDE = "; %s in a side process beside validation, never training (loop.overlap, 1 thread)"
"""How a placement says that some of its stages run in the side process (`selfplay/side_process.py`)."""


def rollout_actors(cfg: RunConfig, m: Shape) -> Placement:
    """Evaluation, validation, Inspect-head and SFT rounds' rollouts, and with actors GRPO's step
    rollouts: on the Ray fleet or in the loop's process."""
    r = cfg.rollout
    grpo_steps = _grpo_rounds(cfg) and cfg.samples_on_fleet
    stages = ["eval", "validate"] + (["rollouts (SFT rounds)"] if _sft_rounds(cfg) else []) \
        + (["GRPO step rollouts"] if grpo_steps else []) + (["inspect_head"] if cfg.inspect_head.enabled else [])
    if r.actors:
        gpu = r.num_gpus_per_actor > 0
        ids = sorted({g for a in grpo_placement(cfg, 0)["actors"] for g in a})
        each = f"{r.num_gpus_per_actor:g} GPU (GPUs {_ids(ids)})" if gpu else f"{r.actor_cpus:g} CPU"
        where = f"{r.actors} Ray actor{'s' if r.actors != 1 else ''} x {each}"
        # an engine runs on one device: a fraction of a GPU holds that fraction of its memory
        budget = m.gpu_memory_gb * min(r.num_gpus_per_actor, 1.0) if gpu else m.ram_gb
        return Placement(", ".join(stages), f"rollouts, batch {r.batch_size}", where, gpus=float(len(ids)),
                         memory_gb=_rollout_gb(cfg, m, gpu), per="actor", budget_gb=budget, during_grpo=grpo_steps)
    gpu = _on_gpu(r.device, _cluster(cfg))
    where = f"the loop's process ({r.device})" + (SIDE % "eval" if uses_side_process(cfg) else "")
    return Placement(", ".join(stages), f"rollouts, batch {r.batch_size}", where,
                     gpus=float(gpu), memory_gb=_rollout_gb(cfg, m, gpu), budget_gb=_budget(m, gpu))


def grpo_training(cfg: RunConfig, m: Shape) -> Placement | None:
    """A GRPO round's trainer, in the loop's process on the GPUs `rollout.reserved_gpus` keeps for it
    (`selfplay.placement`); its step rollouts run on the fleet's actors (`rollout_actors`), or without
    actors in this process from the live weights."""
    if not _grpo_rounds(cfg):
        return None
    t, g = cfg.train, cfg.train.grpo
    gpu = _on_gpu(t.device, _cluster(cfg))
    rows = g.prompts_per_step * g.generations
    on_fleet = cfg.samples_on_fleet
    trainer = grpo_placement(cfg, 0)["trainer"] if gpu else []
    # a reference copy for the KL unless LoRA (TRL then disables the adapters), and, sampling here, the KV cache
    reference = m.parameters * _train_weight_bytes(cfg, gpu) if g.beta > 0 and not t.lora.enabled else 0
    if t.distributed == "ray":  # every worker a rank with its own policy, reference, engine and judge
        share = rows // t.workers
        memory = (_training_bytes(cfg, m, gpu, share, _grpo_tokens(cfg, m)) + reference + _kv_bytes(cfg, m, gpu)) / 1e9
        return Placement("checkpoint (GRPO)", f"GRPOTrainer ranks, {share} of {rows} trajectories/step sampled by each",
                         f"{t.workers} Ray Train workers x 1 {'GPU' if gpu else 'CPU'}",
                         gpus=float(t.workers) if gpu else 0.0, memory_gb=memory, per="worker",
                         budget_gb=_budget(m, gpu), during_grpo=True)
    kv = 0 if on_fleet else _kv_bytes(cfg, m, gpu)
    memory = (_training_bytes(cfg, m, gpu, rows, _grpo_tokens(cfg, m)) + reference + kv) / 1e9
    work = f"GRPOTrainer, {rows} trajectories/step" + (" sampled by the actors" if on_fleet else " sampled here")
    if g.max_staleness:
        work += f", up to {g.max_staleness} step{'s' if g.max_staleness > 1 else ''} ahead of training"
    where = f"the loop's process, GPU {trainer[0]}" if trainer else "the loop's process (CPU)"
    if len(trainer) > 1:  # reserved for it, but one process trains on one device
        where += f" (GPU {_ids(trainer[1:])} reserved too, unused)"
    return Placement("checkpoint (GRPO)", work, where, gpus=float(bool(trainer)), memory_gb=memory,
                     budget_gb=_budget(m, gpu), during_grpo=True)


def sft_training(cfg: RunConfig, m: Shape) -> Placement | None:
    """SFT: the rounds' training (method sft) and the control arm's, in the loop's process or on Ray Train workers."""
    users = (["checkpoint (SFT rounds)"] if _sft_rounds(cfg) else []) + (["control"] if cfg.loop.control else [])
    if not users:
        return None
    t = cfg.train
    gpu = _on_gpu(t.device, _cluster(cfg))
    workers = t.workers if t.distributed == "ray" else 1
    tokens = min(t.max_length, m.shape["positions"])
    where = (f"{workers} Ray Train workers x 1 {'GPU' if gpu else 'CPU'}" if t.distributed == "ray"
             else f"the loop's process ({t.device})" + (SIDE % "control" if uses_side_process(cfg) else ""))
    return Placement(", ".join(users), f"SFTTrainer, {t.batch_size} x {tokens} tokens a micro-batch", where,
                     gpus=float(workers) if gpu else 0.0,
                     memory_gb=_training_bytes(cfg, m, gpu, t.batch_size, tokens) / 1e9,
                     per="worker" if t.distributed == "ray" else "process", budget_gb=_budget(m, gpu))


def judge(cfg: RunConfig, m: Shape) -> Placement:
    """Whoever gives the verdicts: the exact judge in the loop, an endpoint, or the policy's Inspect."""
    j = cfg.judge
    where = {"oracle": "the loop's process (CPU, exact)",
             "gpt": f"served by the run ({j.serve} judge, loopback)" if j.serve else f"endpoint {j.base_url or 'api.openai.com'}",
             "self": f"the loop's process ({cfg.rollout.device})"}.get(j.kind, j.kind)
    if cfg.train.distributed == "ray" and _grpo_rounds(cfg) and j.kind in ("oracle", "self"):
        where += "; in GRPO rounds each Ray Train worker's own, for its share"
    if j.kind == "self":
        how = ("a frozen copy of the round's parent, one forward per trajectory" if cfg.train.method == "grpo"
               else "the policy's Inspect, writing each inspection")
        return Placement("judge", f"self judge: {how}", where)
    return Placement("judge", f"{j.kind} judge, {j.concurrency} requests at a time", where)


PLACEMENTS: tuple[Callable[[RunConfig, Shape], Placement | None], ...] = (rollout_actors, grpo_training,
                                                                         sft_training, judge)
"""The stages of "what runs where", in the order the table prints them."""


def plan(cfg: RunConfig, from_scratch: bool = False, gpu_memory_gb: float = GPU_MEMORY_GB) -> dict:
    """What `cfg` would do: rounds and their sizes, batches, what runs where and its memory."""
    n, shape = _params(_start(cfg, from_scratch))
    m = Shape(n, shape, gpu_memory_gb, _ram_gb())
    t, g = cfg.train, cfg.train.grpo
    workers = t.workers if t.distributed == "ray" else 1
    training = {}
    if _grpo_rounds(cfg):
        rows = g.prompts_per_step * g.generations
        training["grpo"] = {"steps": g.steps, "trajectories_per_step": rows, "rollouts": g.steps * rows,
                            "prompts": g.prompts, "beta": g.beta, "reward_weights": g.reward_weights,
                            "tokens_per_step_at_most": rows * _grpo_tokens(cfg, m)}
    if _sft_rounds(cfg) or cfg.loop.control:
        training["sft"] = {"for": [x for x, on in (("rounds", _sft_rounds(cfg)), ("control arm", cfg.loop.control)) if on],
                           "workers": workers, "batch_size": t.batch_size, "grad_accum": t.grad_accum,
                           "max_length": t.max_length, "global_batch": t.batch_size * t.grad_accum * workers,
                           "tokens_per_step": t.batch_size * t.grad_accum * min(t.max_length, shape["positions"]) * workers}
    return {
        "rounds": cfg.loop.rounds,
        "per_round": {"method": t.method,
                      "rollout_prompts": cfg.loop.prompts_per_round * cfg.loop.samples_per_prompt if _sft_rounds(cfg) else 0,
                      "eval_records": len(TASKS) * cfg.loop.eval_per_task, "eval_modes": cfg.loop.eval_modes,
                      "validation_records": len(TASKS) * cfg.loop.validation_per_task,
                      "inspect_head_prompts": cfg.inspect_head.prompts if cfg.inspect_head.enabled else 0,
                      "inspect": cfg.rollout.inspect, "retries": cfg.rollout.retries,
                      "judge": cfg.judge.kind, "critique": cfg.critique.mode, "control_arm": cfg.loop.control},
        "policy": {"parameters": n, **shape,
                   "from": f"--from-scratch: {cfg.loop.base_recipe}" if from_scratch else cfg.loop.base_checkpoint},
        "training": {**training, "lora": asdict(t.lora), "trainable_parameters": _trainable(cfg, m),
                     "device": t.device, "bf16": t.bf16},
        "placement": [{k: round(v, 3) if isinstance(v, float) else v for k, v in asdict(p).items()}
                      for f in PLACEMENTS if (p := f(cfg, m)) is not None],
        "devices": {"gpu_memory_gb": gpu_memory_gb, "ram_gb": round(m.ram_gb, 1) if m.ram_gb else None},
    }


def placement_table(planned: dict) -> str:
    """The plan's "what runs where", one line per stage."""
    rows = [("stage", "runs", "where", "memory")]
    for p in planned["placement"]:
        memory = "-" if p["memory_gb"] is None else f"{p['memory_gb']:.1f} GB per {p['per']}"
        if p["memory_gb"] is not None and p["budget_gb"]:
            memory += f" (of {p['budget_gb']:.0f})"
        rows.append((p["stage"], p["work"], p["where"], memory))
    widths = [max(len(r[k]) for r in rows) for k in range(3)]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r[:3], widths)) + "  " + r[3] for r in rows)


TINY = 100_000_000  # parameters; the shipped ShapeWorld model has about 2.3M


def warnings(cfg: RunConfig, planned: dict) -> list[str]:
    """What a dry run should say out loud: memory beyond the device a stage runs on; `train.max_length`
    beyond the model's positions; GPUs the plan holds that sit idle while GRPO trains; a cluster
    config (GPU actors or Ray Train) pointed at a tiny model (the shipped one, left in place of
    `loop.base_checkpoint`); and wandb online, which needs `wandb login` before the run, not an hour
    into it."""
    out = []
    placements = planned["placement"]
    for p in placements:
        if p["memory_gb"] is not None and p["budget_gb"] and p["memory_gb"] > p["budget_gb"]:
            device = "GPU share" if p["gpus"] and p["per"] == "actor" else "GPU" if p["gpus"] else "this machine"
            out.append(f"warning: {p['stage']} needs about {p['memory_gb']:.1f} GB per {p['per']}, beyond the "
                       f"{p['budget_gb']:.0f} GB of its {device} ({p['where']}); shrink the batch, use LoRA or "
                       f"more devices (--gpu-memory sets a GPU's size)")
    positions = planned["policy"]["positions"]
    if "sft" in planned["training"] and cfg.train.max_length > positions:
        out.append(f"warning: train.max_length {cfg.train.max_length} is beyond the model's {positions} positions "
                   f"(max_position_embeddings): no row can be longer; set train.max_length <= {positions}")
    if any(p["during_grpo"] for p in placements):
        layout = grpo_placement(cfg, 0)
        held = max([layout["gpus_needed"]] + [p["gpus"] for p in placements])
        busy = sum(p["gpus"] for p in placements if p["during_grpo"])
        if held > busy:
            out.append(f"warning: {held - busy:g} of the {held:g} GPUs the run plans for sit idle while GRPO "
                       f"trains (the trainer uses one, the actors sampling its steps {busy - 1:g}); give the actors "
                       "the rest (rollout.actors, rollout.num_gpus_per_actor) or reserve fewer (rollout.reserved_gpus)")
        out += [line for line in layout["warnings"] if line.startswith("warning:") and "the machine has" not in line]
    cluster = cfg.rollout.num_gpus_per_actor > 0 or cfg.train.distributed == "ray"
    n = planned["policy"]["parameters"]
    if cluster and n < TINY:
        out.append(f"warning: a cluster config (GPU rollout actors or Ray Train) for a {n / 1e6:.1f}M-parameter "
                   f"model ({planned['policy']['from']}); point loop.base_checkpoint at your model")
    if cfg.tracking.wandb and cfg.tracking.mode == "online":
        out.append("warning: tracking.mode online syncs to wandb: run `wandb login` first "
                   "(or --set tracking.mode=offline)")
    return out
