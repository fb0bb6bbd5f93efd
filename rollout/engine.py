"""The engine: prompts in, trajectories out, with one policy in one process.

`Engine.run` decodes prompts in the configured mode (see `RolloutConfig.mode`) with the batched
`Decoder`, and turns each sequence into a `Trajectory` with its record attached. A sequence that
fails (no room in the budget, a broken intervention) is still returned, with `meta["failed"]`
saying why: failures are data, counted and reported, never fatal.

`Engine.inspect` is the policy's own Inspect (and Refine) on judge step contexts: the self judge
gets it as a plain callable, so `judges/` never imports this package.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable, Sequence

import torch

from strokes.errors import InputError
from strokes.records import PromptRecord
from strokes.trajectory import Trajectory
from strokes.verdict import Judge, StepContext

from .config import RolloutConfig
from .decoder import Decoder, InspectRule, Output
from .grammar import Grammar
from .interventions import JudgeInTheLoop, PlanHook, PlanReview, RetryOnConflict

Prompt = PromptRecord | str


@dataclass
class Sampled:
    """One rollout as an RL trainer needs it: the trajectory, its tokens split into the prompt's and
    the generated ones, and per generated token: its log-probability under the distribution it was
    sampled from (the model's at the sampling temperature, renormalised over the tokens the grammar
    allowed), the grammar's legal set (a row of `Engine.legal_sets`), and whether the model chose it
    (1) or the grammar or an intervention did (0)."""

    trajectory: Trajectory
    prompt_ids: list[int]
    completion_ids: list[int]
    logprobs: list[float]
    chosen: list[int]
    legal: list[int]


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def resolve_dtype(name: str, device: torch.device) -> torch.dtype:
    if name == "auto":
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    return getattr(torch, name)


def prompt_text(p: Prompt) -> str:
    return p.text if isinstance(p, PromptRecord) else p


def prompt_record(p: Prompt) -> dict | None:
    return p.to_json() if isinstance(p, PromptRecord) else None


class Engine:
    """One policy, one device, batched decoding in any mode. The policy's model is moved to the
    configured device and dtype and put in eval mode."""

    def __init__(self, policy, cfg: RolloutConfig | None = None, judge: Judge | None = None) -> None:
        self.cfg = cfg = (cfg or RolloutConfig()).validate()
        if cfg.mode == "judge" and judge is None:
            raise InputError("rollout.mode: 'judge' needs a judge")
        self.policy = policy
        self.processor = policy.processor
        self.judge = judge
        self.device = resolve_device(cfg.device)
        model = policy.model
        model.to(device=self.device, dtype=resolve_dtype(cfg.dtype, self.device))
        model.eval()
        self.model = model
        self.decoder = self._decoder(cfg.mode)
        self._sampling_decoder: Decoder | None = None  # the same, recording log-probs (`sample`)
        self._inspect_decoder: Decoder | None = None
        self.stats = {"trajectories": 0, "failed": 0, "tokens": 0, "seconds": 0.0}

    def _decoder(self, mode: str, record_logprobs: bool = False) -> Decoder:
        c = self.cfg
        vocab = self.processor.vocab_size  # the width of the model's logits
        grammar = Grammar(self.processor, vocab, mode=mode, max_steps=c.max_steps, max_refines=c.max_refines,
                          max_text_tokens=c.max_text_tokens, device=self.device)
        return Decoder(self.model, grammar, temperature=c.temperature, top_k=c.top_k, top_p=c.top_p,
                       batch_size=c.batch_size, max_new_tokens=c.max_new_tokens,
                       refill_fraction=c.refill_fraction or (0.25 if self.device.type == "cuda" else 1.0),
                       compact_fraction=c.compact_fraction,
                       kv_cache=c.kv_cache, guidance_scale=c.cfg_scale, inspect_rule=self._inspect_rule(mode),
                       record_logprobs=record_logprobs)

    def _inspect_rule(self, mode: str) -> InspectRule | None:
        """In process mode the decoder records the model's P(conflict) at every inspection (and
        thresholds it with `rollout.inspect: threshold`); None where the two verdict words do not
        start with distinct tokens (an adapter's tokenizer) or the model does not inspect."""
        if mode != "process":
            return None
        conflict, aligned = self.processor.text_ids_of("conflict"), self.processor.text_ids_of("aligned")
        if not conflict or not aligned or conflict[0] == aligned[0]:
            if self.cfg.inspect != "sample":
                raise InputError(f"rollout.inspect: {self.cfg.inspect!r} needs single-token verdict words")
            return None
        if self.cfg.inspect == "head":
            head = getattr(self.policy, "inspect_head", None)
            if head is None:
                raise InputError("rollout.inspect: 'head' needs a checkpoint with an Inspect head "
                                 "(inspect_head.json; the loop fits one with inspect_head.enabled)")
            weight = torch.tensor(head.weight, dtype=torch.float32, device=self.device)
            return InspectRule(conflict[0], aligned[0], head.threshold, weight, head.bias, self.cfg.checklist)
        threshold = self.cfg.inspect_threshold if self.cfg.inspect == "threshold" else None
        return InspectRule(conflict[0], aligned[0], threshold, checklist=self.cfg.checklist)

    def generator(self, seed: int) -> torch.Generator:
        return torch.Generator(device=self.device).manual_seed(int(seed))

    # ---- rollouts -------------------------------------------------------------------------------------

    def run(self, prompts: Sequence[Prompt], seed: int | None = None, plan_hook: PlanHook | None = None,
            on_done: Callable[[int, Trajectory], None] | None = None) -> list[Trajectory]:
        """Trajectories for `prompts`, in order. `plan_hook(prompt, step, instruction, description)`
        may accept (None) or rewrite ((instruction, description)) each plan before its sketch."""
        return self._run(self.decoder, prompts, seed, plan_hook, on_done)[0]

    def sample(self, prompts: Sequence[Prompt], seed: int | None = None) -> list[Sampled]:
        """Rollouts with their tokens and log-probabilities, for RL (`Sampled`). Guidance would make
        the sampling distribution one the trainer's forward cannot reproduce, so it is refused."""
        c = self.cfg
        if c.cfg_scale != 1 or c.top_k or c.top_p < 1 or c.temperature <= 0:
            raise InputError("rollout: RL rollouts sample from the policy's own distribution: cfg_scale 1, "
                             "top_k 0, top_p 1 and a temperature above 0")
        if self._sampling_decoder is None:
            self._sampling_decoder = self._decoder(c.mode, record_logprobs=True)
        trajs, outs = self._run(self._sampling_decoder, prompts, seed)
        return [Sampled(t, o.ids[: o.context_length], o.generated, o.logprobs, [int(x) for x in o.chosen], o.legal)
                for t, o in zip(trajs, outs)]

    @property
    def legal_sets(self) -> torch.Tensor:
        """The grammar's legal-token sets (bool, sets x vocabulary) that `Sampled.legal` indexes."""
        return self.decoder.grammar.masks

    def _run(self, decoder: Decoder, prompts: Sequence[Prompt], seed: int | None = None,
             plan_hook: PlanHook | None = None,
             on_done: Callable[[int, Trajectory], None] | None = None) -> tuple[list[Trajectory], list[Output]]:
        t0 = time.perf_counter()
        records = [prompt_record(p) for p in prompts]
        texts = [prompt_text(p) for p in prompts]
        contexts = [self.processor.prompt_ids(t) for t in texts]
        handler = None
        if self.cfg.mode == "judge":
            handler = JudgeInTheLoop(self.judge, self.processor, decoder.grammar, records, self.cfg.retries,
                                     verdict_only=self.cfg.judge_writes == "verdict")
            if plan_hook is not None:
                raise InputError("rollout.mode: plan review works in process mode, not judge mode")
        elif plan_hook is not None:
            if self.cfg.retries:
                raise InputError("rollout.retries: plan review and step retries do not combine yet")
            handler = PlanReview(plan_hook, self.processor, decoder.grammar)
        elif self.cfg.retries and self.cfg.mode == "process":
            handler = RetryOnConflict(self.processor, self.cfg.retries, accept=self.cfg.after_retries == "accept")

        built: dict[int, Trajectory] = {}

        def done(k: int, out: Output) -> None:
            built[k] = self._trajectory(decoder, out, k, texts[k], records[k], handler)
            on_done(k, built[k])

        # Classifier-free guidance: the unconditional branch is the same trajectory without the prompt.
        uncond = [self.processor.prompt_ids("")] * len(contexts) if self.cfg.cfg_scale != 1 else None
        outs = decoder.run(contexts, self.generator(self.cfg.seed if seed is None else seed),
                                pause_tokens=handler.pause_tokens if handler else (),
                                on_pause=handler, on_done=done if on_done else None, uncond=uncond)
        trajs = [built[k] if k in built else self._trajectory(decoder, o, k, texts[k], records[k], handler)
                 for k, o in enumerate(outs)]
        self.stats["trajectories"] += len(trajs)
        self.stats["failed"] += sum("failed" in t.meta for t in trajs)
        self.stats["tokens"] += sum(t.meta["tokens"] for t in trajs)
        self.stats["seconds"] += time.perf_counter() - t0
        return trajs, outs

    def _trajectory(self, decoder: Decoder, out: Output, key: int, text: str, record: dict | None,
                    handler) -> Trajectory:
        error = out.error
        try:
            traj = self.processor.decode(out.ids, partial=bool(error))
        except ValueError as e:  # cannot happen under the grammar; counted, never fatal
            error = error or f"ungrammatical: {e}"
            traj = Trajectory(text, [], source="rollout")
        if not error and not traj.steps:
            error = "no steps"
        traj.prompt = text
        traj.record = record
        traj.source = "rollout"
        traj.meta["mode"] = "single_pass" if self.cfg.mode == "single_pass" else self.cfg.mode
        traj.meta["tokens"] = len(out.generated)
        if key in decoder.inspect_scores:  # every inspection written, retried steps' included
            traj.meta["inspect_scores"] = [round(x, 5) for x in decoder.inspect_scores[key]]
        if isinstance(handler, JudgeInTheLoop):
            traj.meta["verdicts"] = handler.verdicts.get(key, [])
        if isinstance(handler, (JudgeInTheLoop, RetryOnConflict)) and handler.retries.used.get(key):
            traj.meta["retries"] = handler.retries.used[key]
        if error:
            traj.meta["failed"] = error
        return traj

    # ---- the policy's own Inspect -------------------------------------------------------------------

    def inspect(self, contexts: list[StepContext], seed: int | None = None) -> list[tuple[str, str]]:
        """(inspection text, corrective instruction or '') the policy writes for each step: its
        <inspect> span and, when it chooses to refine next, its <refine> span. A context too long for
        the model gives ('', '')."""
        if self._inspect_decoder is None:
            self._inspect_decoder = self._decoder("process")
        p, s = self.processor, self.processor.special
        seqs = []
        for c in contexts:
            history = p.encode(Trajectory(c.prompt, list(c.history)), with_eos=False).input_ids
            step = [s["<ins>"], *p.text_ids_of(c.instruction), s["</ins>"],
                    s["<des>"], *p.text_ids_of(c.description), s["</des>"],
                    s["<vision_start>"], *p.image_ids(c.image), s["<vision_end>"]]
            seqs.append(history + step)
        stop = [s["</refine>"], s["<ins>"], s["<eos>"]]
        outs = self._inspect_decoder.run(seqs, self.generator(self.cfg.seed if seed is None else seed),
                                         stop_tokens=stop)
        return [self._inspection(o.generated) if not o.error else ("", "") for o in outs]

    def _inspection(self, gen: list[int]) -> tuple[str, str]:
        p, s = self.processor, self.processor.special

        def span(open_: str, close: str) -> str:
            if s[open_] not in gen or s[close] not in gen:
                return ""
            return p.words(gen[gen.index(s[open_]) + 1: gen.index(s[close])])

        return span("<inspect>", "</inspect>"), span("<refine>", "</refine>")
