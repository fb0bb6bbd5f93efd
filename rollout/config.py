"""Rollout settings: sampling, caps, batching, and the Ray pool, in one dataclass with defaults.

It is a plain dataclass so `strokes.config_loader` can load it from the run's YAML (`rollout:`
section) and `validate` gives the one-line error that names the field.
"""

from __future__ import annotations

from dataclasses import dataclass

from strokes.errors import InputError

from .grammar import MODES


@dataclass
class RolloutConfig:
    """How prompts become trajectories."""

    # "process": the model plans, sketches, inspects and refines by itself; "judge": an external
    # judge's verdict is written as each inspection (and its correction as the <refine>);
    # "single_pass": prompt -> one image, the baseline.
    mode: str = "process"
    # Sampling. T=1.0 by default: the prototype found T<1 collapses images toward the blank code.
    temperature: float = 1.0  # 0 means greedy
    top_k: int = 0  # 0: off
    top_p: float = 1.0  # 1.0: off
    # Classifier-free guidance in image spans (Emu3 samples images with it): logits =
    # uncond + cfg_scale * (cond - uncond), the unconditional branch being the same trajectory with
    # an empty prompt. 1.0: off. Each trajectory then takes two rows of `batch_size`. Only a model
    # trained with dropped prompts has a meaningful unconditional branch (docs/adapters.md).
    cfg_scale: float = 1.0
    seed: int = 0  # results are reproducible for a fixed seed, prompt list and batch composition
    # Caps: every trajectory ends with <eos> inside them.
    max_steps: int = 8  # Plan->Sketch->Inspect steps per trajectory (ShapeWorld data needs <= 5)
    max_refines: int = 2  # refinements per step
    # On an inspection that names a conflict (the model's own in process mode, the judge's in judge
    # mode), forget the whole step (plan, sketch, inspection) and draw it again, up to this many times
    # per step, before refining in context. 0: refine only, as the paper does. single_pass has no
    # Inspect and ignores it.
    retries: int = 0
    max_text_tokens: int = 48  # words per text span (<ins>, <des>, <inspect>, <refine>); data needs <= 34
    max_new_tokens: int = 0  # tokens generated per trajectory; 0: up to the model's position limit
    # Batching on one process.
    batch_size: int = 128  # rows decoded together (bigger amortises the per-step cost: 0.8 -> 0.6 ms/token on CPU)
    # Admit waiting prompts once this share of rows is free. 0 = auto: 1.0 on CPU (a batch runs to
    # its end: new rows would attend over the old rows' left padding, which cost 17% per token on
    # CPU) and 0.25 on GPU (where the per-step cost dominates and a full batch is what pays).
    refill_fraction: float = 0.0
    compact_fraction: float = 0.0  # drop finished rows from the cache once this share is finished
    # "growing": a DynamicCache whose layers grow by doubling (one column written per step);
    # "dynamic": Hugging Face's own layers (torch.cat of the whole cache every step).
    kv_cache: str = "growing"
    device: str = "auto"  # "auto": cuda when available, else cpu
    dtype: str = "auto"  # "auto": the checkpoint's dtype on GPU, float32 on CPU; or float32/bfloat16/float16
    # Ray scale-out. actors=0 runs in this process; shards are written by the driver either way.
    actors: int = 0
    actor_cpus: float = 0.5  # fractional CPUs per actor (an actor with 1 CPU holds a whole core)
    num_gpus_per_actor: float = 0.0
    shard_size: int = 128  # prompts per shard: the unit of retry and of resume, and the largest batch
    max_shard_retries: int = 3  # a shard whose actor dies is retried this often, elsewhere
    ray_address: str = ""  # join this cluster; "" starts a local one
    ray_cpus: int = 0  # CPUs of the local cluster; 0: as many as this machine has
    object_store_mb: int = 200  # object store of the local cluster

    def validate(self) -> "RolloutConfig":
        def need(ok: bool, field: str, what: str) -> None:
            if not ok:
                raise InputError(f"rollout.{field}: {what}, got {getattr(self, field)!r}")

        need(self.mode in MODES, "mode", f"must be one of {', '.join(MODES)}")
        need(self.temperature >= 0, "temperature", "must be >= 0")
        need(self.top_k >= 0, "top_k", "must be >= 0")
        need(0 < self.top_p <= 1, "top_p", "must be in (0, 1]")
        need(self.cfg_scale >= 0, "cfg_scale", "must be >= 0")
        need(self.max_steps >= 1, "max_steps", "must be >= 1")
        need(self.max_refines >= 0, "max_refines", "must be >= 0")
        need(self.retries >= 0, "retries", "must be >= 0")
        need(self.max_text_tokens >= 1, "max_text_tokens", "must be >= 1")
        need(self.max_new_tokens >= 0, "max_new_tokens", "must be >= 0")
        need(self.batch_size >= 1, "batch_size", "must be >= 1")
        need(self.cfg_scale == 1 or self.batch_size >= 2, "batch_size",
             "must be >= 2 with cfg_scale != 1 (a trajectory and its unconditional twin)")
        need(0 <= self.refill_fraction <= 1, "refill_fraction", "must be in [0, 1]")
        need(0 <= self.compact_fraction <= 1, "compact_fraction", "must be in [0, 1]")
        need(self.kv_cache in ("growing", "dynamic"), "kv_cache", "must be growing or dynamic")
        need(self.dtype in ("auto", "float32", "bfloat16", "float16"), "dtype",
             "must be auto, float32, bfloat16 or float16")
        need(self.actors >= 0, "actors", "must be >= 0")
        need(self.actor_cpus > 0, "actor_cpus", "must be > 0")
        need(self.num_gpus_per_actor >= 0, "num_gpus_per_actor", "must be >= 0")
        need(self.shard_size >= 1, "shard_size", "must be >= 1")
        need(self.max_shard_retries >= 0, "max_shard_retries", "must be >= 0")
        need(self.ray_cpus >= 0, "ray_cpus", "must be >= 0")
        need(self.object_store_mb >= 50, "object_store_mb", "must be >= 50")
        return self
