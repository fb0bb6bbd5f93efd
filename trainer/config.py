"""`TrainConfig`: everything that decides how one round trains: SFT (TRL's `SFTTrainer`, `sft.py`)
or GRPO (TRL's `GRPOTrainer`, `grpo.py`, with its own section `train.grpo`)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

from strokes.config_loader import require
from strokes.records import TASKS

SEGMENTS = ("text", "image", "boundary")  # segment kinds that carry loss, each with its own weight
METHODS = ("sft", "grpo", "sft_then_grpo")  # how a round trains (TrainConfig.method)
REWARDS = ("final", "inspection", "refine", "steps")  # GRPO reward components (selfplay/rewards.py)
ADVANTAGES = ("signed", "positive", "accepted")  # what the GRPO update weighs each token by (GRPOConfig.advantages)


@dataclass
class LoraConfig:
    """LoRA adapters (peft). Off by default for the tiny model; the default for 7B-class models."""

    SECTION: ClassVar[str] = "train.lora"

    enabled: bool = False
    """Train LoRA adapters instead of every weight."""
    r: int = 16
    """Adapter rank."""
    alpha: int = 32
    """LoRA scaling numerator (the update is scaled by alpha / r)."""
    dropout: float = 0.0
    """Dropout on the adapters' input."""
    target_modules: list[str] = field(default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj",
                                                               "gate_proj", "up_proj", "down_proj"])
    """Names of the linear layers that get adapters."""
    merge: bool = True
    """Merge adapters into a plain checkpoint after training, so rollouts load one model with
    `Policy.from_pretrained`. With `merge: false`, `checkpoint/` holds only the adapter + processor."""

    def __post_init__(self) -> None:
        require(self, "r", self.r >= 1, "must be >= 1")
        require(self, "dropout", 0 <= self.dropout < 1, "must be in [0, 1)")


@dataclass
class GrpoConfig:
    """GRPO rounds (`train.method: grpo`): TRL's `GRPOTrainer` on whole interleaved trajectories that
    the rollout engine samples from the current weights at every step (trainer/grpo.py)."""

    SECTION: ClassVar[str] = "train.grpo"

    steps: int = 40
    """GRPO optimizer steps per round (one generation of trajectories per step)."""
    lr: float = 0.0
    """Peak learning rate of GRPO rounds; 0 = `train.lr` (set it when SFT and GRPO rounds share a run,
    `method: sft_then_grpo`: RL wants a smaller step than SFT)."""
    prompts_per_step: int = 8
    """Distinct training prompts per optimizer step."""
    generations: int = 8
    """Trajectories per prompt (the group whose rewards are compared)."""
    beta: float = 0.02
    """KL penalty to the round's starting policy (0: no reference model, one forward fewer per step)."""
    epsilon: float = 0.2
    """PPO clip range of the token ratio."""
    loss_type: str = "dapo"
    """TRL's loss aggregation: dapo | grpo | dr_grpo | bnpo."""
    scale_rewards: str = "group"
    """Advantage scaling: "group" (divide by the group's std), "batch" or "none" (Dr. GRPO)."""
    reward_weights: dict[str, float] = field(default_factory=lambda: {
        "final": 1.0, "inspection": 0.5, "refine": 0.5, "steps": 0.05})
    """Weight of each reward component: `final` (the last image satisfies the prompt), `inspection`
    (right verdicts minus wrong ones, per visual state), `refine` (minus the steps whose last state is
    wrong: a repair earns back what the mistake cost), `steps` (minus the steps beyond the scene's
    objects). None pays for making a mistake (selfplay/rewards.py)."""
    verdict_credit: str = "token"
    """Where the `inspection` reward is credited: "token" (each verdict word gets its own advantage:
    right or wrong against the judge, minus the batch's mean for states of the same label) or
    "sequence" (the trajectory's right-minus-wrong verdict share joins its group-relative reward)."""
    advantages: str = "signed"
    """"signed": TRL's group-relative advantages as they are; "positive": every negative advantage set
    to zero, so the update only raises trajectories (and verdict words) better than their group's mean
    and never pushes the wrong ones down — advantage-weighted rejection sampling; "accepted": 1 for
    every trajectory whose final reward is 1 (the judge accepted the image), 0 otherwise, no verdict
    credit — the SFT loss on the accepted rollouts of every step, i.e. online rejection-sampling
    fine-tuning (RAFT). The last two are the ablations that tell which part of GRPO's update makes
    its gain (docs/loop.md)."""
    sample_on: str = "fleet"
    """Where each step's rollouts are sampled when the run has rollout actors (`rollout.actors` > 0):
    "fleet": on the actors, from the step's weights published through the object store (a cluster,
    where the actors have devices of their own); "trainer": in the trainer's process from its live
    weights, as without actors, the actors then serving evaluation only. Measured on 2 CPU cores
    (docs/rollout.md): there one process samples a step's batch as fast as two actors sample its
    shards and evaluation runs 1.6x faster on the actors, but idle actors cost each step a few
    percent, so the main job keeps no actors at all."""
    max_staleness: int = 0
    """With each step's rollouts on the fleet (`sample_on: fleet`, `rollout.actors` > 0): how many
    optimizer steps older than the step that trains on them a step's rollouts may be. 0: every step
    samples from its own weights and waits for them (on-policy). k > 0: while step t trains, the
    actors already sample steps t+1..t+k from the weights of the step that sent them (each
    trajectory records it, `weights_step`), and the loss's PPO ratio is taken against the log-probs
    the rollouts were sampled with (the engine records them) instead of the current ones, which
    corrects the update for the older policy that drew them (decoupled, off-policy PPO as in AReaL)."""
    prompts: int = 600
    """Training-split prompts per round to draw the steps' prompts from."""
    tasks: list[str] = field(default_factory=lambda: list(TASKS))
    """Tasks the prompts come from (equal shares). A task the policy always gets right gives groups
    whose rewards are all equal: zero advantage, no signal, but the full cost of their rollouts and
    backward pass."""

    def __post_init__(self) -> None:
        for name in ("steps", "prompts_per_step", "generations", "prompts"):
            require(self, name, getattr(self, name) >= 1, "must be >= 1")
        require(self, "generations", self.generations >= 2, "must be >= 2 (advantages compare a group)")
        require(self, "beta", self.beta >= 0, "must be >= 0")
        require(self, "lr", self.lr >= 0, "must be >= 0 (0: train.lr)")
        require(self, "epsilon", 0 < self.epsilon < 1, "must be in (0, 1)")
        require(self, "loss_type", self.loss_type in ("dapo", "grpo", "dr_grpo", "bnpo"),
                "must be dapo, grpo, dr_grpo or bnpo")
        require(self, "scale_rewards", self.scale_rewards in ("group", "batch", "none"),
                "must be group, batch or none")
        unknown = [k for k in self.reward_weights if k not in REWARDS]
        require(self, f"reward_weights.{unknown[0] if unknown else ''}", not unknown,
                f"is not a reward ({', '.join(REWARDS)})")
        require(self, "verdict_credit", self.verdict_credit in ("token", "sequence"), "must be token or sequence")
        require(self, "sample_on", self.sample_on in ("fleet", "trainer"), "must be fleet or trainer")
        require(self, "max_staleness", self.max_staleness >= 0, "must be >= 0")
        require(self, "advantages", self.advantages in ADVANTAGES, f"must be {', '.join(ADVANTAGES)}")
        bad = [t for t in self.tasks if t not in TASKS]
        require(self, "tasks", self.tasks and not bad, f"must be a non-empty list of {', '.join(TASKS)}")


@dataclass
class TrainConfig:
    """One round's training, SFT or GRPO. Defaults suit the tiny model on a CPU; on CUDA, bf16 switches on
    by itself."""

    SECTION: ClassVar[str] = "train"

    method: str = "sft"
    """"sft": SFT on the round's critique traces (TRL `SFTTrainer`); "grpo": GRPO on the policy's own
    rollouts, rewarded by the judge (TRL `GRPOTrainer`, `train.grpo`); "sft_then_grpo": round 1 by
    SFT, every later round by GRPO."""

    lr: float = 2e-3
    """Peak learning rate."""
    min_lr_ratio: float = 0.1
    """The cosine schedule decays to lr * min_lr_ratio."""
    warmup_steps: int = 100
    """Linear warmup steps."""
    weight_decay: float = 0.01
    """AdamW weight decay."""
    adam_beta2: float = 0.98
    """AdamW beta2."""
    max_grad_norm: float = 1.0
    """Gradient clipping norm."""
    batch_size: int = 8
    """Rows per step (packed rows of `max_length` tokens when packing)."""
    grad_accum: int = 1
    """Gradient accumulation steps."""
    max_length: int = 1024
    """Tokens per packed row; longer trajectories are truncated (packed or not)."""
    packing: bool = True
    """TRL's best-fit-decreasing packing ('bfd'); sequences stay isolated."""
    group_by_length: bool = False
    """Without packing: draw batches of similar length (transformers' `group_by_length` sampler), which
    pads little and keeps attention short; tokens per step then vary with the batch's lengths."""
    epochs: float = 1.0
    """Passes over the dataset (unless `max_steps` is set)."""
    max_steps: int = -1
    """Optimizer steps; overrides epochs when > 0."""
    max_minutes: float = 0.0
    """Stop (and save a resumable trainer checkpoint) after this much wall time; 0 = no limit."""
    loss_weights: dict[str, float] = field(default_factory=lambda: {s: 1.0 for s in SEGMENTS})
    """Per-token multipliers on the cross-entropy of each segment kind; the loss stays a mean over
    loss-bearing tokens, so all-ones is plain CE and `image: 0` trains on text and markers only."""
    lora: LoraConfig = field(default_factory=LoraConfig)
    """LoRA adapters instead of full fine-tuning."""
    grpo: GrpoConfig = field(default_factory=GrpoConfig)
    """GRPO settings (with method: grpo)."""
    seed: int = 0
    """Seed of initialisation order, data order and dropout."""
    device: str = "auto"
    """"cpu", "cuda" or "auto" (CUDA when available)."""
    bf16: bool | str = "auto"
    """"auto" = on for CUDA, off on CPU (fp32 is faster there); or true / false."""
    activation_checkpointing: bool = False
    """Recompute activations in the backward pass: for large models on GPUs short of memory; off by
    default (TRL's default is on), since it made the tiny model 21x slower on CPU (measured)."""
    num_threads: int = 0
    """Torch threads on CPU; 0 = leave torch's default."""
    logging_steps: int = 10
    """Steps between log lines (metrics.jsonl, wandb)."""
    save_steps: int = 200
    """Steps between trainer checkpoints (for resume)."""
    save_total_limit: int = 2
    """Trainer checkpoints kept."""
    tokenize_workers: int = 2
    """Processes that tokenize the dataset."""
    report_to: str = "none"
    """"wandb" mirrors the metrics to wandb (offline unless WANDB_MODE says otherwise); "none"."""
    distributed: str = "none"
    """Where a round trains: "none" = this process; "ray" = `workers` data-parallel processes through
    Ray Train (trainer/distributed.py; one per GPU with device cuda). SFT: global batch = batch_size *
    grad_accum * workers. GRPO: each worker samples and trains its share of a step's trajectories."""
    workers: int = 1
    """Data-parallel training processes (with distributed: ray)."""
    worker_cpus: float = 1.0
    """CPUs Ray reserves per training worker."""
    worker_restarts: int = 1
    """With distributed: ray, times Ray Train starts the workers again after one dies; each start
    resumes from the last trainer checkpoint (`save_steps`)."""

    def round_method(self, rnd: int) -> str:
        """How round `rnd` (>= 1) trains: "sft" or "grpo"."""
        if self.method == "sft_then_grpo":
            return "sft" if rnd <= 1 else "grpo"
        return self.method

    def __post_init__(self) -> None:
        require(self, "method", self.method in METHODS, f"must be {' or '.join(METHODS)}")
        unknown = [k for k in self.loss_weights if k not in SEGMENTS]
        require(self, f"loss_weights.{unknown[0] if unknown else ''}", not unknown,
                f"is not a segment kind ({', '.join(SEGMENTS)})")
        require(self, "loss_weights", all(isinstance(v, (int, float)) and v >= 0 for v in self.loss_weights.values()),
                "must be non-negative numbers")
        require(self, "device", self.device in ("auto", "cpu", "cuda"), "must be auto, cpu or cuda")
        require(self, "bf16", self.bf16 in ("auto", True, False), "must be auto, true or false")
        require(self, "report_to", self.report_to in ("none", "wandb"), "must be none or wandb")
        require(self, "distributed", self.distributed in ("none", "ray"), "must be none or ray")
        require(self, "workers", self.workers >= 1 and (self.workers == 1 or self.distributed != "none"),
                "must be 1 without distributed training, and >= 1 with it")
        require(self, "worker_cpus", self.worker_cpus > 0, "must be positive")
        require(self, "worker_restarts", self.worker_restarts >= 0, "must be >= 0")
        require(self, "workers", "grpo" not in self.method
                or self.grpo.prompts_per_step * self.grpo.generations % self.workers == 0,
                f"must divide a GRPO step's trajectories ({self.grpo.prompts_per_step} x {self.grpo.generations}): "
                "each worker samples and trains its share")
        require(self, "group_by_length", not (self.group_by_length and self.packing),
                "needs packing: false (packed rows are all about max_length long)")
        for name in ("lr", "batch_size", "grad_accum", "max_length", "logging_steps", "save_steps"):
            require(self, name, getattr(self, name) > 0, "must be positive")
        for name in ("weight_decay", "max_grad_norm", "epochs", "max_minutes", "warmup_steps"):
            require(self, name, getattr(self, name) >= 0, "must be >= 0")
        require(self, "min_lr_ratio", 0 <= self.min_lr_ratio <= 1, "must be in [0, 1]")
        require(self, "adam_beta2", 0 <= self.adam_beta2 < 1, "must be in [0, 1)")
