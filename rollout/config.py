"""Rollout settings: sampling, caps, batching, and the Ray pool, in one dataclass with defaults.

It is a plain dataclass so `strokes.config_loader` can load it from the run's YAML (`rollout:`
section); it checks itself on construction with a one-line error that names the field.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from strokes.config_loader import require
from strokes.trajectory import MODES


@dataclass
class RolloutConfig:
    """How prompts become trajectories."""

    SECTION: ClassVar[str] = "rollout"

    mode: str = "process"
    """"process": the model plans, sketches, inspects and refines by itself; "judge": an external
    judge's verdict is written as each inspection (and its correction as the <refine>);
    "single_pass": prompt -> one image, the baseline."""
    temperature: float = 1.0
    """Sampling temperature; 0 means greedy. 1.0 by default: the prototype found T<1 collapses images
    toward the blank code."""
    top_k: int = 0
    """Sample among the k most likely tokens; 0: off."""
    top_p: float = 1.0
    """Nucleus sampling: sample among the most likely tokens holding this much probability; 1.0: off."""
    cfg_scale: float = 1.0
    """Classifier-free guidance in image spans (Emu3 samples images with it): logits =
    uncond + cfg_scale * (cond - uncond), the unconditional branch being the same trajectory with an
    empty prompt. 1.0: off. Each trajectory then takes two rows of `batch_size`. Only a model trained
    with dropped prompts has a meaningful unconditional branch (docs/adapters.md)."""
    seed: int = 0
    """Sampling seed: results are reproducible for a fixed seed, prompt list and batch composition."""
    max_steps: int = 8
    """Cap on Plan->Sketch->Inspect steps per trajectory (ShapeWorld data needs <= 5); every trajectory
    ends with <eos> inside the caps."""
    max_refines: int = 2
    """Cap on refinements per step."""
    retries: int = 0
    """On an inspection that names a conflict (the model's own in process mode, the judge's in judge
    mode), forget the whole step (plan, sketch, inspection) and draw it again, up to this many times per
    step, before refining in context. 0: refine only, as the paper does. single_pass ignores it."""
    judge_writes: str = "inspection"
    """Judge mode: the judge writes its whole "inspection" (and correction), or only the "verdict"
    word, the model writing the rest; the second isolates what the verdict's accuracy alone is worth."""
    after_retries: str = "refine"
    """When a flagged step has used its retries: "refine" in context (the paper's Refine), or "accept"
    the last attempt (its inspection is rewritten to "aligned"), for inspectors whose flags are better
    acted on by redrawing than by the model's own repair."""
    inspect: str = "sample"
    """How the model's verdict on each visual state (the first word of its inspection) is chosen:
    "sample" draws it like every token; "threshold" says conflict exactly when the model's
    P(conflict) >= `inspect_threshold` (pick it on a validation split with `selfplay inspect-eval`,
    which reports the threshold for 5% and 10% false alarms); "head" decides with the checkpoint's
    Inspect head and the threshold saved with it (a checkpoint without one is refused). Process
    mode only."""
    inspect_threshold: float = 0.5
    """P(conflict) at or above which `inspect: threshold` says conflict."""
    checklist: bool = False
    """The policy opens each inspection with a check list of its described objects (a base trained
    with `data.pipelines.checklist`): its verdict is then the first "aligned" or "conflict" it writes
    after the list, not its first word. Raise `max_text_tokens` to 64 for such a policy (a list of
    five objects takes 25 words before the verdict)."""
    max_text_tokens: int = 48
    """Cap on words per text span (<ins>, <des>, <inspect>, <refine>); the data needs <= 34."""
    max_new_tokens: int = 0
    """Cap on tokens generated per trajectory; 0: up to the model's position limit."""
    batch_size: int = 128
    """Rows decoded together on one process (bigger amortises the per-step cost: 0.8 -> 0.6 ms/token
    on CPU)."""
    refill_fraction: float = 0.0
    """Admit waiting prompts once this share of rows is free. 0 = auto: 1.0 on CPU (a batch runs to its
    end: new rows would attend over the old rows' left padding, which cost 17% per token on CPU) and
    0.25 on GPU (where the per-step cost dominates and a full batch is what pays)."""
    compact_fraction: float = 0.0
    """Drop finished rows from the cache once this share of rows is finished."""
    kv_cache: str = "growing"
    """"growing": a DynamicCache whose layers grow by doubling (one column written per step);
    "dynamic": Hugging Face's own layers (torch.cat of the whole cache every step)."""
    device: str = "auto"
    """"auto": cuda when available, else cpu."""
    dtype: str = "auto"
    """"auto": the checkpoint's dtype on GPU, float32 on CPU; or float32, bfloat16, float16."""
    actors: int = 0
    """Ray rollout actors; 0 runs in this process. Shards are written by the driver either way."""
    actor_cpus: float = 0.5
    """Fractional CPUs per actor (an actor with 1 CPU holds a whole core)."""
    num_gpus_per_actor: float = 0.0
    """GPUs Ray reserves per actor (fractions share a GPU)."""
    shard_size: int = 128
    """Prompts per shard: the unit of retry and of resume, and the largest batch."""
    max_shard_retries: int = 3
    """A shard whose actor dies is retried this often, elsewhere."""
    ray_address: str = ""
    """Join this Ray cluster; "" starts a local one."""
    reserved_gpus: int = 0
    """GPUs of this machine (the first visible ones) that a local Ray cluster leaves to this process:
    a GRPO trainer trains on them while the fleet's actors sample on the others. 0: Ray gets them
    all. A cluster joined by `ray_address` was started with its own GPU count: start it without
    the trainer's (docs/training.md)."""
    ray_cpus: int = 0
    """CPUs of the local cluster; 0: as many as this machine has."""
    object_store_mb: int = 200
    """Object store of the local cluster, in MB."""

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> "RolloutConfig":
        """Check every field (a one-line InputError naming the first bad one); returns self, so a
        caller that changed fields after construction can check again."""
        require(self, "mode", self.mode in MODES, f"must be one of {', '.join(MODES)}")
        require(self, "temperature", self.temperature >= 0, "must be >= 0")
        require(self, "top_k", self.top_k >= 0, "must be >= 0")
        require(self, "top_p", 0 < self.top_p <= 1, "must be in (0, 1]")
        require(self, "cfg_scale", self.cfg_scale >= 0, "must be >= 0")
        require(self, "max_steps", self.max_steps >= 1, "must be >= 1")
        require(self, "max_refines", self.max_refines >= 0, "must be >= 0")
        require(self, "retries", self.retries >= 0, "must be >= 0")
        require(self, "judge_writes", self.judge_writes in ("inspection", "verdict"), "must be inspection or verdict")
        require(self, "after_retries", self.after_retries in ("refine", "accept"), "must be refine or accept")
        require(self, "inspect", self.inspect in ("sample", "threshold", "head"), "must be sample, threshold or head")
        require(self, "inspect_threshold", 0 < self.inspect_threshold < 1, "must be in (0, 1)")
        require(self, "max_text_tokens", self.max_text_tokens >= 1, "must be >= 1")
        require(self, "max_new_tokens", self.max_new_tokens >= 0, "must be >= 0")
        require(self, "batch_size", self.batch_size >= 1, "must be >= 1")
        require(self, "batch_size", self.cfg_scale == 1 or self.batch_size >= 2,
                "must be >= 2 with cfg_scale != 1 (a trajectory and its unconditional twin)")
        require(self, "refill_fraction", 0 <= self.refill_fraction <= 1, "must be in [0, 1]")
        require(self, "compact_fraction", 0 <= self.compact_fraction <= 1, "must be in [0, 1]")
        require(self, "kv_cache", self.kv_cache in ("growing", "dynamic"), "must be growing or dynamic")
        require(self, "dtype", self.dtype in ("auto", "float32", "bfloat16", "float16"),
                "must be auto, float32, bfloat16 or float16")
        require(self, "actors", self.actors >= 0, "must be >= 0")
        require(self, "actor_cpus", self.actor_cpus > 0, "must be > 0")
        require(self, "num_gpus_per_actor", self.num_gpus_per_actor >= 0, "must be >= 0")
        require(self, "shard_size", self.shard_size >= 1, "must be >= 1")
        require(self, "max_shard_retries", self.max_shard_retries >= 0, "must be >= 0")
        require(self, "ray_cpus", self.ray_cpus >= 0, "must be >= 0")
        require(self, "reserved_gpus", self.reserved_gpus >= 0, "must be >= 0")
        require(self, "reserved_gpus", not (self.reserved_gpus and self.ray_address),
                "applies to a local cluster; a joined cluster's GPUs are set when it starts (ray start --num-gpus)")
        require(self, "object_store_mb", self.object_store_mb >= 50, "must be >= 50")
        return self
