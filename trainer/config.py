"""`TrainConfig`: everything that decides how one round's SFT runs (TRL `SFTTrainer` underneath)."""

from __future__ import annotations

from dataclasses import dataclass, field

from strokes.errors import InputError

SEGMENTS = ("text", "image", "boundary")  # segment kinds that carry loss, each with its own weight


@dataclass
class LoraConfig:
    """LoRA adapters (peft). Off by default for the tiny model; the default for 7B-class models."""

    enabled: bool = False
    r: int = 16
    alpha: int = 32
    dropout: float = 0.0
    target_modules: list[str] = field(default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj",
                                                               "gate_proj", "up_proj", "down_proj"])
    # Merge adapters into a plain checkpoint after training, so rollouts load one model with
    # `Policy.from_pretrained`. With `merge: false`, `checkpoint/` holds only the adapter + processor.
    merge: bool = True


@dataclass
class TrainConfig:
    """One SFT run. Defaults suit the tiny model on a CPU; on CUDA, bf16 switches on by itself."""

    lr: float = 2e-3
    min_lr_ratio: float = 0.1  # cosine decays to lr * min_lr_ratio
    warmup_steps: int = 100
    weight_decay: float = 0.01
    adam_beta2: float = 0.98
    max_grad_norm: float = 1.0
    batch_size: int = 8  # rows per step (packed rows of `max_length` tokens when packing)
    grad_accum: int = 1
    max_length: int = 1024  # tokens per packed row; longer trajectories are truncated (either way)
    packing: bool = True  # TRL's best-fit-decreasing packing ('bfd'); sequences stay isolated
    # Without packing: draw batches of similar length (transformers' `group_by_length` sampler), which
    # pads little and keeps attention short; tokens per step then vary with the batch's lengths.
    group_by_length: bool = False
    epochs: float = 1.0
    max_steps: int = -1  # overrides epochs when > 0
    max_minutes: float = 0.0  # stop (and save a resumable trainer checkpoint) after this much wall time; 0 = no limit
    # Per-token multipliers on the cross-entropy of each segment kind; the loss stays a mean over
    # loss-bearing tokens, so all-ones is plain CE and `image: 0` trains on text and markers only.
    loss_weights: dict[str, float] = field(default_factory=lambda: {s: 1.0 for s in SEGMENTS})
    lora: LoraConfig = field(default_factory=LoraConfig)
    seed: int = 0
    device: str = "auto"  # "cpu", "cuda" or "auto" (CUDA when available)
    bf16: bool | str = "auto"  # "auto" = on for CUDA, off on CPU (fp32 is faster there); or true / false
    # Recompute activations in the backward pass: for large models on GPUs short of memory; off by
    # default (TRL's default is on), since it made the tiny model 21x slower on CPU (measured).
    activation_checkpointing: bool = False
    num_threads: int = 0  # torch threads on CPU; 0 = leave torch's default
    logging_steps: int = 10
    save_steps: int = 200  # trainer checkpoints for resume
    save_total_limit: int = 2
    tokenize_workers: int = 2
    report_to: str = "none"  # "wandb" mirrors the metrics to wandb (offline unless WANDB_MODE says otherwise)
    # Where SFT runs: "none" = this process; "ray" = `workers` data-parallel processes through Ray Train
    # (trainer/distributed.py; one per GPU with device cuda). Global batch = batch_size * grad_accum * workers.
    distributed: str = "none"
    workers: int = 1
    worker_cpus: float = 1.0  # CPUs Ray reserves per training worker

    def __post_init__(self) -> None:
        def bad(name: str, why: str) -> InputError:
            return InputError(f"train.{name} {why}")

        unknown = [k for k in self.loss_weights if k not in SEGMENTS]
        if unknown:
            raise bad(f"loss_weights.{unknown[0]}", f"is not a segment kind ({', '.join(SEGMENTS)})")
        if any(not isinstance(v, (int, float)) or v < 0 for v in self.loss_weights.values()):
            raise bad("loss_weights", "must be non-negative numbers")
        if self.device not in ("auto", "cpu", "cuda"):
            raise bad("device", f"must be auto, cpu or cuda, got {self.device!r}")
        if self.bf16 not in ("auto", True, False):
            raise bad("bf16", f"must be auto, true or false, got {self.bf16!r}")
        if self.report_to not in ("none", "wandb"):
            raise bad("report_to", f"must be none or wandb, got {self.report_to!r}")
        if self.distributed not in ("none", "ray"):
            raise bad("distributed", f"must be none or ray, got {self.distributed!r}")
        if self.workers < 1 or (self.workers > 1 and self.distributed == "none"):
            raise bad("workers", f"must be 1 without distributed training, and >= 1 with it, got {self.workers!r}")
        if self.worker_cpus <= 0:
            raise bad("worker_cpus", f"must be positive, got {self.worker_cpus!r}")
        if self.group_by_length and self.packing:
            raise bad("group_by_length", "needs packing: false (packed rows are all about max_length long)")
        for name in ("lr", "batch_size", "grad_accum", "max_length", "logging_steps", "save_steps"):
            if getattr(self, name) <= 0:
                raise bad(name, f"must be positive, got {getattr(self, name)!r}")
