"""GRPO on whole interleaved trajectories with TRL's `GRPOTrainer`.

This is the one module that touches TRL's experimental `rollout_func` API, so a TRL change touches
one file. TRL does the group-relative advantages, the clipped token-ratio loss, the KL to the
reference policy, the schedules, checkpoints and resume; we give it

- a `sample(prompts, seed)` function (the caller's rollout engine: grammar, caps, batching) that
  returns, for every prompt it is handed (TRL hands each prompt `num_generations` times), the
  prompt's tokens, the generated tokens and per generated token: its log-probability as sampled, the
  grammar's legal set (`legal`, a row of `legal_sets`) and an `env_mask` that is 1 where the model
  chose the token and 0 where the grammar forced it (one legal token), an intervention wrote it or a
  threshold decided it;
- reward functions, one per component, each returning a number per trajectory (or None when the
  judge could not score it: TRL leaves such a trajectory out of its group's baseline);
- optionally, per-token credit: an extra field `token_advantages` holding, per trajectory, pairs
  (position in the completion, advantage) that are added to those tokens' advantages on top of the
  group-relative one. The loop uses it for the verdict word of every inspection, so a caught mistake
  or a false alarm is credited to the token that made it rather than spread over the two hundred
  tokens of the trajectory.

**The grammar mask and the ratio.** The engine samples from the model's distribution at the
sampling temperature renormalised over the tokens the grammar allows, and records that
log-probability. `InterleavedGRPOTrainer` computes the policy's (and the reference's) log-probabilities
the same way: the model's logits at the same temperature, masked to each token's legal set, so the
ratio compares the distributions the tokens were actually drawn from and starts at 1 (tests check the
engine's numbers against a teacher-forced masked forward). Tokens the model did not choose carry
`env_mask` 0 and no loss.

**Rollouts ahead of training** (`train.grpo.max_staleness` k > 0): the rollout function also
hands `sample` the next k steps' prompts and seeds, replayed from TRL's own sampler (a fresh copy
with the same seed draws the same order; a sampler that checks them samples afresh where the
prediction was wrong), so their rollouts can start while this step trains. Such rollouts come from
older weights, so the loss's PPO ratio is taken against the log-probabilities they were sampled with
(the `logprobs` the engine recorded: TRL's `old_per_token_logps`) instead of the current policy's,
and clipping bounds how far a stale trajectory moves the update.

Every TRL log line (loss, each reward's mean and std, KL, clip ratios, lengths) goes to
`metrics.jsonl` and wandb through the same callbacks as SFT.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Callable

from strokes import console
from strokes.errors import InputError

from .config import REWARDS, TrainConfig
from .trl_common import peft_config, run_and_save, setup_wandb, train_callbacks, trainer_args

SampleFn = Callable[..., dict]
"""(prompts, seed, step[, upcoming]) -> {"prompt_ids", "completion_ids", "logprobs", "env_mask",
"legal", **extra fields}, one entry per prompt, plus "metrics": {name: number} for the step's log
line; the extra fields (lists, one item per prompt) reach the reward functions. `upcoming`, given
only with `max_staleness` > 0: the next steps' (prompts, seed), which the function may start early."""
RewardFn = Callable[..., list]
"""TRL's reward signature: (prompts, completions, **fields) -> one float or None per completion."""


def grpo_args(cfg: TrainConfig, out: Path, temperature: float):
    """Our `TrainConfig` as TRL's `GRPOConfig`: one generation per optimizer step of
    `prompts_per_step` x `generations` trajectories (split between the ranks with distributed: ray),
    rewards weighted by `grpo.reward_weights`."""
    from trl import GRPOConfig

    g = cfg.grpo
    workers = cfg.workers if cfg.distributed == "ray" else 1
    return GRPOConfig(
        **trainer_args(cfg, out, g.lr or cfg.lr),
        per_device_train_batch_size=g.prompts_per_step * g.generations // workers,  # each rank's share
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
    )


def train_grpo(policy, prompts: list[str], cfg: TrainConfig, out: str | Path, sample: SampleFn,
               rewards: dict[str, RewardFn], legal_sets, temperature: float = 1.0,
               should_stop: Callable[[], str | None] | None = None) -> dict:
    """GRPO of `policy` for `cfg.grpo.steps` steps on `prompts` (strings the `sample` function
    understands); writes `out/checkpoint`, `out/metrics.jsonl`, `out/train_summary.json` like SFT
    and resumes from `out/trainer/` after a kill. `should_stop`, asked after every step, ends the
    training there when it gives a reason (printed, and kept in the summary as `stopped`): a judge
    budget that cannot pay for another step. `rewards` maps each name in `REWARDS` to its
    function; `legal_sets` the grammar's legal-token sets (bool, sets x vocabulary) that the
    `legal` field of `sample`'s output indexes per token; `temperature` the one `sample` draws at. The rollout seed of a step is `cfg.seed` and the step, so a resumed run samples what
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
    console.hush_deprecations()  # peft warns as it wraps the model in LoRA, TRL every step
    torch.manual_seed(cfg.seed)
    os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")  # rollout_func is experimental: pinned in pyproject

    ahead = cfg.grpo.max_staleness

    def seed_of(step: int, trainer) -> int:  # ranks (distributed: ray) sample their shares with seeds of their own
        return cfg.seed * 1_000_003 + step + 7_919 * trainer.accelerator.process_index

    def rollout_func(batch: list[str], trainer) -> dict:
        model = trainer.model
        was_training = model.training
        model.eval()
        try:
            step = trainer.state.global_step
            if ahead:
                later_steps = range(step + 1, min(step + ahead, cfg.grpo.steps - 1) + 1)
                upcoming = [(later, seed_of(s, trainer)) for s in later_steps
                            if (later := trainer.planned_batch(s)) is not None]
                out = sample(batch, seed_of(step, trainer), step, upcoming)
            else:
                out = sample(batch, seed_of(step, trainer), step)
        finally:
            model.train(was_training)
        for name, value in out.pop("metrics", {}).items():
            trainer._log_metric(name, value)
        trainer._legal_ids = trainer.legal_ids([ids or [trainer._legal_sets.shape[0] - 1] for ids in out.pop("legal")])
        if ahead:
            trainer._behaviour = list(zip(out["logprobs"], out["env_mask"]))
        return out

    stop = _stop_when(should_stop)
    trainer = _trainer_class()(
        model=policy.model,
        reward_funcs=[_named(rewards[name], name) for name in REWARDS],
        args=grpo_args(cfg, out / "trainer", temperature),
        train_dataset=Dataset.from_dict({"prompt": list(prompts)}),
        processing_class=policy.processor.tokenizer,
        callbacks=[*train_callbacks(out / "metrics.jsonl", cfg.max_minutes), stop],
        peft_config=peft_config(cfg),  # LoRA layers go into policy.model in place: the engine samples with them
        rollout_func=rollout_func,
        legal_sets=legal_sets,
        advantages=cfg.grpo.advantages,
        behaviour_ratio=ahead > 0,
    )
    from transformers.trainer_callback import PrinterCallback

    trainer.remove_callback(PrinterCallback)
    summary = run_and_save(trainer, policy, cfg, out, own_wandb_run)
    if stop.reason:
        summary["stopped"] = stop.reason
    return summary


def _stop_when(ask: Callable[[], str | None] | None):
    """A callback that ends training after the step at which `ask()` first gives a reason (none
    without `ask`)."""
    from transformers import TrainerCallback

    class StopWhen(TrainerCallback):
        def __init__(self) -> None:
            self.ask, self.reason = ask, None

        def on_step_end(self, args, state, control, **kw):
            if self.ask is not None and self.reason is None and (reason := self.ask()):
                self.reason = reason
                print(reason, flush=True)
                control.should_training_stop = True

    return StopWhen()


def _trainer_class():
    """`InterleavedGRPOTrainer`, defined on first use: importing TRL costs seconds."""
    import torch
    import torch.nn.functional as F
    from trl import GRPOTrainer

    class InterleavedGRPOTrainer(GRPOTrainer):
        """TRL's `GRPOTrainer` for grammar-constrained interleaved trajectories:

        - log-probabilities under the distribution the engine sampled from: the model's logits at
          the trainer's temperature, renormalised over the tokens the grammar allowed at each
          position (`legal_sets[legal_ids]`), instead of TRL's fused unmasked head. With the unmasked
          log-probability, a token sampled where the model preferred an illegal one has a tiny
          probability whose ratio and KL explode (measured: KL spikes of 10^3-10^4 within 40 steps at
          lr 5e-4) and whose gradient moves mass to tokens the grammar never lets through;
        - per-token advantages where the rollout function gives them (`token_advantages`: per
          trajectory, (completion position, advantage) pairs, added to the group-relative one);
        - `train.grpo.advantages`: "positive" sets negative advantages to zero; "accepted" replaces
          them by 1 where the `final` reward is 1 and 0 elsewhere (the SFT loss on the step's
          accepted rollouts, no verdict credit);
        - with `behaviour_ratio` (`max_staleness` > 0) the PPO ratio against the log-probs the
          rollouts were sampled with, which may be older weights' (`old_per_token_logps`).
        """

        chunk_rows = 16
        """Trajectories per forward when computing log-probabilities (each chunk cut to its own span)."""
        _logp_seconds = 0.0
        """Time in forwards without gradient during this step's generation and scoring."""
        behaviour_ratio = False
        """The PPO ratio against the log-probs the rollouts were sampled with (`max_staleness` > 0)."""

        def __init__(self, *args, legal_sets: torch.Tensor, advantages: str = "signed", behaviour_ratio: bool = False,
                     **kwargs) -> None:
            super().__init__(*args, **kwargs)
            self.advantages = advantages  # train.grpo.advantages
            self.behaviour_ratio = behaviour_ratio
            self._behaviour: list[tuple[list[float], list[int]]] = []  # per row: sampled log-probs, env_mask
            self._planned: list[str] = []  # prompts in the order TRL's sampler hands them out
            self._planner = None
            self._rewards: torch.Tensor | None = None  # (all ranks' batch, reward functions) of the step
            everything = torch.ones((1, legal_sets.shape[1]), dtype=torch.bool, device=legal_sets.device)
            self._legal_sets = torch.cat([legal_sets.bool(), everything])  # last row: padding
            self._legal_ids: torch.Tensor | None = None  # (batch, completion length) of the batch in hand

        def planned_batch(self, step: int) -> list[str] | None:
            """The prompts TRL's sampler will hand step `step`'s generation (None past its end): a
            second sampler built as TRL builds its own, with the same seed, draws the same order."""
            rows = self.args.per_device_train_batch_size * self.args.steps_per_generation
            if self._planner is None:
                self._planner = self._get_train_sampler(self.train_dataset), self.train_dataset["prompt"]
            sampler, prompts = self._planner
            while len(self._planned) < (step + 1) * rows:
                before = len(self._planned)
                self._planned.extend(prompts[i] for i in sampler)  # one more epoch
                if len(self._planned) == before:
                    return None
            return self._planned[step * rows:(step + 1) * rows]

        def legal_ids(self, rows: list[list[int]]) -> torch.Tensor:
            """Per-token legal-set ids, right-padded like TRL pads completions."""
            pad = self._legal_sets.shape[0] - 1
            width = max(len(r) for r in rows)
            return torch.tensor([r + [pad] * (width - len(r)) for r in rows], dtype=torch.long)

        def _generate_and_score_completions(self, inputs):
            """TRL's generation and scoring (our rollout function, rewards, the reference's
            log-probs), timed for the step's log line: `time/generate` in all, `time/logprobs` the
            forwards without gradient (the rollout function logs its own parts); the rest of TRL's
            `step_time` is the loss forward, backward and optimizer step."""
            t0, self._logp_seconds = time.perf_counter(), 0.0
            out = super()._generate_and_score_completions(inputs)
            self._metrics["train"]["time/generate"].append(time.perf_counter() - t0)
            self._metrics["train"]["time/logprobs"].append(self._logp_seconds)
            out["legal_ids"] = self._legal_ids.to(out["completion_ids"].device)  # shuffled with the batch
            if self.behaviour_ratio:
                out["old_per_token_logps"] = self._sampled_logps(out["completion_ids"].shape[1]).to(
                    out["completion_ids"].device)
            if self.advantages == "accepted":  # the SFT loss: no group baseline, no verdict credit
                out["advantages"] = self._accepted(len(inputs)).to(out["advantages"].device)
                return out
            credit = [x.get("token_advantages") or [] for x in inputs]  # rollout_func's fields land in inputs
            if any(credit):
                full = out["advantages"][:, None].repeat(1, out["completion_ids"].shape[1])
                for i, pairs in enumerate(credit):
                    for position, value in pairs:
                        if position < full.shape[1]:
                            full[i, position] += value
                out["advantages"] = full
            if self.advantages == "positive":
                out["advantages"] = out["advantages"].clamp(min=0)
            return out

        def _sampled_logps(self, width: int) -> torch.Tensor:
            """The log-probabilities the rollouts were sampled with, right-padded to `width`; 0 where
            the model did not choose the token (no loss there, and a ratio that cannot overflow)."""
            rows = [[lp if chosen else 0.0 for lp, chosen in zip(logps, mask)] for logps, mask in self._behaviour]
            return torch.tensor([r + [0.0] * (width - len(r)) for r in rows], dtype=torch.float32)

        def _calculate_rewards(self, *args, **kwargs):
            self._rewards = super()._calculate_rewards(*args, **kwargs)  # gathered over the ranks
            return self._rewards

        def _accepted(self, rows: int) -> torch.Tensor:
            """1.0 for this rank's trajectories whose `final` reward is 1 (a graded final reward
            counts only when full), 0.0 for the rest and the unscored (NaN)."""
            start = self.accelerator.process_index * rows  # TRL's process slice of the gathered rewards
            final = self._rewards[start:start + rows, self.reward_func_names.index("final")]
            return (final == 1.0).float()

        def _compute_loss(self, model, inputs):
            self._legal_ids = inputs["legal_ids"]
            return super()._compute_loss(model, inputs)

        def _get_per_token_logps_and_entropies(self, model, input_ids, attention_mask, logits_to_keep,
                                               batch_size=None, compute_entropy=False, compute_aux_loss=False,
                                               **multimodal):
            """Masked log-probabilities of the completion tokens, in length-sorted chunks.

            TRL pads the batch to its longest trajectory (prompts on the left, completions on the
            right); trajectories here range from ~150 to ~450 tokens, so a forward of the padded batch
            spends about half its work on padding. Each chunk of `chunk_rows` trajectories of similar
            length is cut to its own span: RoPE attends by relative position, so dropping leading
            padding does not change a token's log-probability."""
            if any(v is not None for v in multimodal.values()):
                raise ValueError("interleaved GRPO takes image codes as tokens, not pixel inputs")
            t0 = time.perf_counter()
            rows, width = input_ids.shape
            prompt_width = width - logits_to_keep
            legal = self._legal_ids.to(input_ids.device)
            if legal.shape[1] < logits_to_keep:  # TRL padded further (pad_to_multiple_of)
                legal = F.pad(legal, (0, logits_to_keep - legal.shape[1]), value=self._legal_sets.shape[0] - 1)
            legal = legal[:, :logits_to_keep]
            real = attention_mask.bool()
            first = real.int().argmax(1)                                  # first real token of each row
            end = width - real.flip(1).int().argmax(1)                    # one past its last real token
            order = torch.argsort(end - first)
            chunk = min(batch_size or rows, self.chunk_rows)
            logps, entropies = [], []
            for part in order.split(chunk):
                lo, hi = int(first[part].min()), max(int(end[part].max()), prompt_width + 1)
                keep = hi - prompt_width                                  # completion positions in the span
                with self.accelerator.autocast():
                    logits = model(input_ids=input_ids[part, lo:hi], attention_mask=attention_mask[part, lo:hi],
                                   logits_to_keep=keep + 1).logits
                logits = logits[:, :-1].float() / self.temperature
                target = input_ids[part, prompt_width:hi]
                allowed = self._legal_sets[legal[part, :keep]].scatter(-1, target[..., None], True)
                lp = torch.log_softmax(logits.masked_fill(~allowed, float("-inf")), -1)
                pad = (0, logits_to_keep - keep)                          # positions past every row's end
                logps.append(F.pad(lp.gather(-1, target[..., None]).squeeze(-1), pad))
                if compute_entropy:
                    entropies.append(F.pad(-(lp.exp() * lp.masked_fill(~allowed, 0.0)).sum(-1), pad))
            back = torch.argsort(order)                                   # chunks back into batch order
            if not torch.is_grad_enabled():
                self._logp_seconds += time.perf_counter() - t0
            return torch.cat(logps)[back], torch.cat(entropies)[back] if compute_entropy else None, None

    return InterleavedGRPOTrainer


def _named(fn: RewardFn, name: str) -> RewardFn:
    """`fn` under `name`, the name TRL logs it by (`rewards/<name>/mean`)."""

    def reward(*args, **kwargs):
        return fn(*args, **kwargs)

    reward.__name__ = name
    return reward
