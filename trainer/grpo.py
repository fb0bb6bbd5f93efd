"""GRPO on whole interleaved trajectories with TRL's `GRPOTrainer`.

This is the one module that touches TRL's experimental `rollout_func` API, so a TRL change touches
one file. TRL does the group-relative advantages, the clipped token-ratio loss, the KL to the
reference policy, the schedules, checkpoints and resume; we give it

- a `sample(prompts, seed)` function (the caller's rollout engine: grammar, caps, batching) that
  returns, for every prompt it is handed (TRL hands each prompt `num_generations` times), the
  prompt's tokens, the generated tokens, their log-probabilities and an `env_mask` that is 1 where
  the model chose the token and 0 where the grammar forced it (one legal token) or an intervention
  wrote it. The log-probabilities are the engine's own, recorded while sampling: log-softmax of the
  model's unmasked logits at the sampling temperature, which is exactly what the trainer's forward
  of the same tokens computes, so the ratio starts at 1. The grammar mask makes the sampling
  distribution the unmasked one renormalised over the legal tokens; the tokens it forces carry no
  choice and are masked out of the loss, and for the others the gradient of the unmasked
  log-probability differs from the masked one only by a term that moves mass between legal and
  illegal tokens, which the mask then ignores;
- reward functions, one per component, each returning a number per trajectory (or None when the
  judge could not score it: TRL leaves such a trajectory out of its group's baseline);
- optionally, per-token credit: an extra field `token_advantages` holding, per trajectory, pairs
  (position in the completion, advantage) that are added to those tokens' advantages on top of the
  group-relative one (TokenCreditGRPOTrainer). The loop uses it for the verdict word of every
  inspection, so a caught mistake or a false alarm is credited to the token that made it rather than
  spread over the two hundred tokens of the trajectory.

Every TRL log line (loss, each reward's mean and std, KL, clip ratios, lengths) goes to
`metrics.jsonl` and wandb through the same callbacks as SFT.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Callable

from strokes.errors import InputError

from .config import REWARDS, TrainConfig
from .sft import (
    peft_config,
    run_and_save,
    setup_wandb,
    train_callbacks,
    use_bf16,
    use_cuda,
)

SampleFn = Callable[[list[str], int], dict]
"""prompts, seed -> {"prompt_ids", "completion_ids", "logprobs", "env_mask", **extra fields}, one
entry per prompt; the extra fields (lists, one item per prompt) reach the reward functions."""
RewardFn = Callable[..., list]
"""TRL's reward signature: (prompts, completions, **fields) -> one float or None per completion."""


def grpo_args(cfg: TrainConfig, out: Path, temperature: float):
    """Our `TrainConfig` as TRL's `GRPOConfig`: one generation per optimizer step of
    `prompts_per_step` x `generations` trajectories, rewards weighted by `grpo.reward_weights`."""
    from trl import GRPOConfig

    g, cuda = cfg.grpo, use_cuda(cfg)
    return GRPOConfig(
        output_dir=str(out),
        learning_rate=cfg.lr,
        lr_scheduler_type="cosine_with_min_lr",
        lr_scheduler_kwargs={"min_lr_rate": cfg.min_lr_ratio},
        warmup_steps=cfg.warmup_steps,
        weight_decay=cfg.weight_decay,
        adam_beta2=cfg.adam_beta2,
        max_grad_norm=cfg.max_grad_norm,
        per_device_train_batch_size=g.prompts_per_step * g.generations,
        gradient_accumulation_steps=1,
        num_generations=g.generations,
        max_steps=g.steps,
        temperature=temperature,  # the trainer's log-probs must be those of the sampling distribution
        beta=g.beta,
        epsilon=g.epsilon,
        loss_type=g.loss_type,
        scale_rewards=g.scale_rewards,
        # with token credit the inspection reward reaches the verdict words instead (logged, weight 0 here)
        reward_weights=[0.0 if name == "inspection" and g.verdict_credit == "token" else g.reward_weights.get(name, 0.0)
                        for name in REWARDS],
        max_completion_length=1 << 20,  # the engine's caps bound a trajectory, not TRL
        seed=cfg.seed,
        data_seed=cfg.seed,
        bf16=use_bf16(cfg),
        use_cpu=not cuda,
        activation_checkpointing=cfg.activation_checkpointing,
        logging_steps=cfg.logging_steps,
        save_steps=cfg.save_steps,
        save_total_limit=cfg.save_total_limit,
        save_only_model=False,
        report_to=[] if cfg.report_to == "none" else [cfg.report_to],
        dataloader_num_workers=0,
        disable_tqdm=True,
    )


def train_grpo(policy, prompts: list[str], cfg: TrainConfig, out: str | Path, sample: SampleFn,
               rewards: dict[str, RewardFn], temperature: float = 1.0) -> dict:
    """GRPO of `policy` for `cfg.grpo.steps` steps on `prompts` (strings the `sample` function
    understands); writes `out/checkpoint`, `out/metrics.jsonl`, `out/train_summary.json` like SFT
    and resumes from `out/trainer/` after a kill. `rewards` maps each name in `REWARDS` to its
    function; `temperature` is the one `sample` draws at. The rollout seed of a step is `cfg.seed` and the step, so a resumed run samples what
    the killed one would have."""
    import torch
    from datasets import Dataset

    if not prompts:
        raise InputError(f"no prompts to train on (output folder {out})")
    missing = [name for name in REWARDS if name not in rewards]
    if missing:
        raise InputError(f"train.grpo: no reward function for {', '.join(missing)}")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    if cfg.num_threads > 0:
        torch.set_num_threads(cfg.num_threads)
    own_wandb_run = setup_wandb(cfg, out)
    torch.manual_seed(cfg.seed)
    os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")  # rollout_func is experimental: pinned in pyproject

    def rollout_func(batch: list[str], trainer) -> dict:
        model = trainer.model
        was_training = model.training
        model.eval()
        try:
            return sample(batch, cfg.seed * 1_000_003 + trainer.state.global_step)
        finally:
            model.train(was_training)

    trainer = _token_credit_trainer()(
        model=policy.model,
        reward_funcs=[_named(rewards[name], name) for name in REWARDS],
        args=grpo_args(cfg, out / "trainer", temperature),
        train_dataset=Dataset.from_dict({"prompt": list(prompts)}),
        processing_class=policy.processor.tokenizer,
        callbacks=train_callbacks(out / "metrics.jsonl", cfg.max_minutes),
        peft_config=peft_config(cfg),  # LoRA layers go into policy.model in place: the engine samples with them
        rollout_func=rollout_func,
    )
    from transformers.trainer_callback import PrinterCallback

    trainer.remove_callback(PrinterCallback)
    return run_and_save(trainer, policy, cfg, out, own_wandb_run)


def _token_credit_trainer():
    """`TokenCreditGRPOTrainer`, defined on first use: importing TRL costs seconds."""
    from trl import GRPOTrainer

    class TokenCreditGRPOTrainer(GRPOTrainer):
        """TRL's `GRPOTrainer` with per-token advantages where the rollout function gives them (the
        extra field `token_advantages`: per trajectory, (completion position, advantage) pairs,
        added to the trajectory's group-relative advantage at those tokens). TRL's loss takes
        advantages of shape (batch, tokens) as they are."""

        def _generate_and_score_completions(self, inputs):
            out = super()._generate_and_score_completions(inputs)
            credit = [x.get("token_advantages") or [] for x in inputs]  # rollout_func's fields land in inputs
            if any(credit):
                adv = out["advantages"]
                full = adv[:, None].repeat(1, out["completion_ids"].shape[1])
                for i, pairs in enumerate(credit):
                    for position, value in pairs:
                        if position < full.shape[1]:
                            full[i, position] += value
                out["advantages"] = full
            return out

    return TokenCreditGRPOTrainer


def _named(fn: RewardFn, name: str) -> RewardFn:
    """`fn` under `name`, the name TRL logs it by (`rewards/<name>/mean`)."""

    def reward(*args, **kwargs):
        return fn(*args, **kwargs)

    reward.__name__ = name
    return reward
