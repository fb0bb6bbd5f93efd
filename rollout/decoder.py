"""Batched, cached, grammar-constrained decoding of many contexts at once.

The loop owns the model call: a left-padded batch is prefilled once into a Hugging Face KV cache
(`DynamicCache`), then every step feeds one token per row with explicit `attention_mask` and
`position_ids`. That lets rows live independent lives inside one batch:

- a row that finishes leaves: the last rows move into the finished rows' slots (only moved rows are
  copied), at once or once `compact_fraction` of the rows have finished;
- waiting contexts join when enough rows are free (`refill_fraction`): they are prefilled on their
  own and their cache is left-padded to the batch's length, so nobody waits for the longest row;
- a row can pause after a chosen token (a sketch's `<vision_end>`, a plan's `</des>`); when every
  live row is paused or done, `on_pause` sees them all at once (one judge call for the whole batch)
  and answers with edits: tokens to append (fed through the same steps, checked by the grammar) and
  tokens to drop (masked out of the cache, so nothing is re-encoded);
- rows that feed nothing in a step (paused or finished) feed padding under a zero mask column and
  keep their position, so the cache holds holes but every row's attention sees exactly its tokens.

Classifier-free guidance (`uncond` contexts given to `run`, mixed by `guidance_scale`): every
context gets a twin row, admitted, fed and dropped with it, that holds the unconditional context
(Emu3's own CFG drops the prompt: an empty or negative prompt) followed by exactly the tokens its
lead generates. Inside image spans the lead samples from `cond + (scale - 1) * (cond - uncond)`
(= `uncond + scale * (cond - uncond)`, written so that scale 1 gives `cond` bit for bit); elsewhere
from its own logits. A twin never decides anything: it takes its lead's token, mask, forced
tokens, pauses and drops, and it is never shown to a pause handler or returned. Twins are ordinary
rows of the batch (one forward for both branches, as Hugging Face's CFG doubles the batch), so
`batch_size` counts them: half the rows are twins.

Sampling draws from one `torch.Generator` per run, so a fixed seed, context list and batch size give
the same outputs. Everything per step stays on the model's device; the host reads a few flags.

On CUDA, decoding keeps PyTorch's cuDNN attention kernel out of `scaled_dot_product_attention`
(`decode_attention`): with the cache one column longer every step, cuDNN's kernel spent ~2.8 ms of
host time per layer call (measured on an H200, a 1B Llama shape at batch 64: 79 ms a decode step
with it, 19 ms without; docs/rollout.md, "On a GPU").
"""

from __future__ import annotations

import contextlib
import inspect
import math
from dataclasses import dataclass, field
from typing import Callable, Sequence

import torch
from torch.nn.attention import SDPBackend, sdpa_kernel

from . import kvcache
from .grammar import IMAGE, INSPECT, M_NONE, M_PAD, Grammar


def decode_attention(device: torch.device | str) -> contextlib.AbstractContextManager:
    """The attention kernels a decode loop runs under: on CUDA every SDPA backend but cuDNN's,
    whose host cost per call made decoding host-bound (module docstring); elsewhere PyTorch's own
    choice, so CPU numbers stay bit for bit."""
    if torch.device(device).type != "cuda":
        return contextlib.nullcontext()
    return sdpa_kernel([SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION, SDPBackend.MATH])


@dataclass
class Edit:
    """What an intervention does to one paused row: drop its last `drop` generated tokens (masked
    out of the cache), then append `append` (fed one per step, each checked by the grammar)."""

    drop: int = 0
    append: list[int] = field(default_factory=list)


@dataclass
class InspectRule:
    """The first word of every inspection the model writes ("conflict" or "aligned") is its verdict;
    for a policy that opens its inspections with a check list (`checklist`, a base trained with
    `data.pipelines.checklist`) it is the first of those two words it writes after the list. The
    decoder records P(conflict) = softmax over those two words' logits at that position (per
    context, in order: the model's own confidence that the state it just drew is wrong) and, with a
    `threshold`, chooses the verdict by it instead of sampling it (`rollout.inspect: threshold`): a
    sampled verdict at T = 1 flags a state the model finds 30% suspicious one time in three. With a
    `head` (the policy's Inspect head: a linear verdict over those same logits, `strokes/model/
    inspect_head.py`), P(conflict) = sigmoid(logits · head + head_bias) instead. A check-list
    inspection closed without a verdict word gets no score (`inspect_eval` leaves its trajectory out)."""

    conflict_id: int
    aligned_id: int
    threshold: float | None = None
    head: torch.Tensor | None = None
    head_bias: float = 0.0
    checklist: bool = False

    def p_conflict(self, logits: torch.Tensor) -> torch.Tensor:
        if self.head is not None:
            return torch.sigmoid(logits @ self.head + self.head_bias)
        return torch.sigmoid(logits[:, self.conflict_id] - logits[:, self.aligned_id])


@dataclass
class Paused:
    """A paused row as an intervention sees it."""

    key: int  # index of its context in the run's input
    ids: list[int]  # the whole sequence so far: context and generated tokens
    left: int  # tokens it may still emit
    steps: int
    refines: int


@dataclass
class Output:
    ids: list[int]  # context + generated tokens
    context_length: int
    error: str = ""  # why the row did not end inside the grammar ("" when it did)
    logprobs: list[float] = field(default_factory=list)  # per generated token, with `record_logprobs`
    chosen: list[bool] = field(default_factory=list)  # per generated token: did the model choose it?
    legal: list[int] = field(default_factory=list)  # per generated token: its row of `Grammar.masks`

    @property
    def generated(self) -> list[int]:
        return self.ids[self.context_length:]


class _Rows:
    """The live batch: per-row tensors on the device plus the shared KV cache."""

    LONG = ("key", "state", "span", "steps", "refines", "left", "pos", "n_out", "f_pos", "f_len")
    BOOL = ("paused", "done", "judged")  # judged: the open inspection's verdict word is written
    MATRIX = ("logits", "out", "vcol", "forced", "attn", "lp", "chosen", "mid")

    def __init__(self) -> None:
        self.cache = None
        self.origin = 0  # virtual column of cache column 0 (trimming and left padding move it)
        for name in self.LONG + self.BOOL + self.MATRIX:
            setattr(self, name, None)

    def __len__(self) -> int:
        return 0 if self.key is None else int(self.key.shape[0])

    @property
    def columns(self) -> int:
        return int(self.attn.shape[1])

    def drop(self, gone: torch.Tensor) -> None:
        """Remove the rows marked `gone`: the last kept rows move into their slots, so only the
        moved rows' cache is copied (not the whole cache, as a selection would)."""
        n = len(self) - int(gone.sum())
        holes = gone[:n].nonzero().flatten()
        movers = (~gone[n:]).nonzero().flatten() + n
        order = torch.arange(n, device=gone.device)
        order[holes] = movers
        for name in self.LONG + self.BOOL + self.MATRIX:
            setattr(self, name, getattr(self, name).index_select(0, order))
        kvcache.move_rows(self.cache, holes, movers, n)

    def pad_left(self, p: int) -> None:
        """Prepend p empty (masked) cache columns."""
        if p <= 0:
            return
        self.attn = torch.nn.functional.pad(self.attn, (p, 0))
        kvcache.pad_left(self.cache, p)
        self.origin -= p

    def trim_left(self) -> None:
        """Drop leading cache columns that no row attends to any more."""
        used = self.attn.any(0)
        first = int(used.to(torch.int8).argmax()) if bool(used.any()) else self.columns
        if first == 0:
            return
        self.attn = self.attn[:, first:]
        kvcache.trim_left(self.cache, first)
        self.origin += first

    def append(self, other: "_Rows") -> None:
        """Concatenate another batch's rows (both already padded to the same cache length)."""
        for name in self.LONG + self.BOOL + self.MATRIX:
            a, b = getattr(self, name), getattr(other, name)
            if a.dim() == 2 and a.shape[1] != b.shape[1]:  # buffers of different widths
                w = max(a.shape[1], b.shape[1])
                a = torch.nn.functional.pad(a, (0, w - a.shape[1]))
                b = torch.nn.functional.pad(b, (0, w - b.shape[1]))
            setattr(self, name, torch.cat([a, b]))
        kvcache.concat_rows(self.cache, other.cache)


class Decoder:
    """Decodes contexts under a `Grammar` with one model; see the module docstring."""

    def __init__(self, model, grammar: Grammar, *, temperature: float = 1.0, top_k: int = 0,
                 top_p: float = 1.0, batch_size: int = 64, max_new_tokens: int = 0,
                 refill_fraction: float = 0.25, compact_fraction: float = 0.0, kv_cache: str = "growing",
                 guidance_scale: float = 1.0, inspect_rule: InspectRule | None = None,
                 record_logprobs: bool = False) -> None:
        self.model = model
        self.grammar = grammar
        self.temperature = temperature
        self.top_k = top_k
        self.top_p = top_p
        self.batch_size = batch_size
        self.max_positions = int(getattr(model.config, "max_position_embeddings", 1 << 30))
        self.max_new_tokens = max_new_tokens or self.max_positions
        self.refill_fraction = refill_fraction
        self.compact_fraction = compact_fraction
        self.kv_cache = kv_cache
        self.guidance_scale = guidance_scale
        self.inspect_rule = inspect_rule
        # RL needs, per generated token, log p(token) under the distribution it was sampled from (the
        # model's at the sampling temperature, renormalised over the grammar's legal tokens), the row
        # of `Grammar.masks` that was legal (so a trainer can recompute the same distribution), and
        # whether the model chose it: a token the grammar forced (one legal token), an intervention
        # appended or a threshold decided was not sampled from the model, so it has no policy gradient.
        self.record_logprobs = record_logprobs
        self.inspect_scores: dict[int, list[float]] = {}  # per context: P(conflict) of each inspection
        self._leads = 0  # with guidance: rows with key >= _leads are twins of key - _leads (see run)
        self.device = grammar.device
        self.pad_id = int(torch.nonzero(grammar.masks[M_PAD])[0])
        # The cache keyword of the model itself (a peft wrapper passes keywords through to it).
        inner = model.get_base_model() if hasattr(model, "get_base_model") else model
        params = inspect.signature(inner.forward).parameters
        self._cache_kw = "cache" if "cache" in params else "past_key_values"
        # When a list, every fed token's logits go here as (key, index in the sequence, logits): for
        # tests that compare the cached decoding with a plain forward. Off (None) otherwise.
        self.trace: list[tuple[int, int, torch.Tensor]] | None = None
        self.stats = {"steps": 0, "row_steps": 0, "fed_tokens": 0, "prefill_tokens": 0, "compactions": 0,
                      "refills": 0, "merges": 0, "interventions": 0}

    # ---- model calls -------------------------------------------------------------------------------

    def _forward(self, ids: torch.Tensor, attn: torch.Tensor, pos: torch.Tensor, cache) -> torch.Tensor:
        out = self.model(input_ids=ids, attention_mask=attn, position_ids=pos, use_cache=True,
                         logits_to_keep=1, **{self._cache_kw: cache})
        return out.logits[:, -1].float()

    def _sample(self, logits: torch.Tensor, allowed: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        x = logits.masked_fill(~allowed, float("-inf"))
        if self.temperature == 0:
            return x.argmax(-1)
        x = x / self.temperature
        if self.top_k:
            kth = x.topk(min(self.top_k, x.shape[-1]), dim=-1).values[:, -1:]
            x = x.masked_fill(x < kth, float("-inf"))
        if self.top_p < 1.0:
            srt, order = x.sort(-1, descending=True)
            cum = srt.softmax(-1).cumsum(-1)
            drop = cum - srt.softmax(-1) >= self.top_p  # keep the smallest prefix reaching top_p
            x = x.masked_fill(torch.zeros_like(drop).scatter(-1, order, drop), float("-inf"))
        return torch.multinomial(x.softmax(-1), 1, generator=gen).squeeze(1)

    # ---- admission ----------------------------------------------------------------------------------

    def _prefill(self, keys: list[int], contexts: Sequence[list[int]]) -> _Rows:
        g, dev = self.grammar, self.device
        n = len(keys)
        length = max(len(contexts[k]) for k in keys)
        ids = torch.full((n, length), self.pad_id, dtype=torch.long)
        attn = torch.zeros((n, length), dtype=torch.long)
        starts = []
        for i, k in enumerate(keys):
            c = contexts[k]
            ids[i, length - len(c):] = torch.tensor(c, dtype=torch.long)
            attn[i, length - len(c):] = 1
            starts.append(g.replay(c))
        ids, attn = ids.to(dev), attn.to(dev)
        pos = (attn.cumsum(-1) - 1).clamp(min=0)
        r = _Rows()
        r.cache = kvcache.make_cache(self.kv_cache, self.model.config)
        with torch.inference_mode():
            r.logits = self._forward(ids, attn, pos, r.cache)
        self.stats["prefill_tokens"] += int(attn.sum())
        lens = torch.tensor([len(contexts[k]) for k in keys], dtype=torch.long, device=dev)

        def col(values) -> torch.Tensor:
            return torch.tensor(values, dtype=torch.long, device=dev)

        r.key = col(keys)
        r.state = col([s.state for s in starts])
        r.span = col([s.span for s in starts])
        r.steps = col([s.steps for s in starts])
        r.refines = col([s.refines for s in starts])
        r.left = torch.minimum(torch.full_like(lens, self.max_new_tokens), self.max_positions - lens)
        r.pos = lens.clone()
        r.n_out = torch.zeros_like(lens)
        r.f_pos = torch.zeros_like(lens)
        r.f_len = torch.zeros_like(lens)
        r.paused = torch.zeros(n, dtype=torch.bool, device=dev)
        r.done = torch.zeros(n, dtype=torch.bool, device=dev)
        r.judged = torch.tensor([self._judged(contexts[k]) for k in keys], dtype=torch.bool, device=dev)
        width = int(r.left.max().clamp(min=1))
        r.out = torch.full((n, width), self.pad_id, dtype=torch.long, device=dev)
        r.vcol = torch.zeros((n, width), dtype=torch.long, device=dev)
        r.lp = torch.zeros((n, width if self.record_logprobs else 1), dtype=torch.float32, device=dev)
        r.chosen = torch.zeros((n, width if self.record_logprobs else 1), dtype=torch.bool, device=dev)
        r.mid = torch.zeros((n, width if self.record_logprobs else 1), dtype=torch.long, device=dev)
        r.forced = torch.zeros((n, 1), dtype=torch.long, device=dev)
        r.attn = attn
        return r

    def _judged(self, context: list[int]) -> bool:
        """Whether a context ends inside an inspection whose verdict word it already holds."""
        rule, inspect_id = self.inspect_rule, self.grammar.special["<inspect>"]
        if rule is None or inspect_id not in context:
            return False
        tail = set(context[len(context) - context[::-1].index(inspect_id):])
        return not tail & set(self.grammar.special.values()) and bool(tail & {rule.conflict_id, rule.aligned_id})

    def _admit(self, rows: _Rows, keys: list[int], contexts: Sequence[list[int]],
               outputs: dict[int, Output]) -> tuple[_Rows, list[int]]:
        """Prefill `keys` and merge them into `rows`. Contexts that no token may follow within the
        budget fail at once: their outputs are written and their keys returned."""
        g = self.grammar
        ok, failed = [], []
        for k in keys:
            st = g.replay(contexts[k])
            left = min(self.max_new_tokens, self.max_positions - len(contexts[k]))
            mid = g.mask_ids(*(torch.tensor([v], device=self.device) for v in
                               (st.state, st.span, st.steps, st.refines, left)))
            if int(mid) == M_NONE or left <= 0:
                outputs[k] = Output(list(contexts[k]), len(contexts[k]), "no legal continuation within the budget")
                failed.append(k)
            else:
                ok.append(k)
        if not ok:
            return rows, failed
        new = self._prefill(ok + [k + self._leads for k in ok] if self._leads else ok, contexts)
        self.stats["refills"] += 1
        if len(rows) == 0:
            return new, failed
        self.stats["merges"] += 1
        diff = rows.columns - new.columns
        new.pad_left(diff)
        rows.pad_left(-diff)
        new.origin = rows.origin
        rows.append(new)
        return rows, failed

    # ---- the loop -----------------------------------------------------------------------------------

    def run(self, contexts: Sequence[list[int]], generator: torch.Generator, *,
            stop_tokens: Sequence[int] = (), pause_tokens: Sequence[int] = (),
            on_pause: Callable[[list[Paused]], list[Edit]] | None = None,
            on_done: Callable[[int, Output], None] | None = None,
            uncond: Sequence[list[int]] | None = None) -> list[Output]:
        """Decode every context to its end (an `<eos>`, a stop token, or a failure). Outputs come
        back in context order; `on_done(key, output)` is called as each row finishes. `uncond[k]`,
        when given, is context k's unconditional context for classifier-free guidance in image
        spans (module docstring; the engine passes them only when its `cfg_scale` != 1)."""
        outputs: dict[int, Output] = {}
        n = len(contexts)
        if uncond is not None and (len(uncond) != n or self.batch_size < 2):
            raise ValueError(f"guidance needs one unconditional context per context ({len(uncond)} for {n}) "
                             f"and batch_size >= 2 (got {self.batch_size})")
        self._leads = n if uncond is not None else 0
        self.inspect_scores = {}
        per = 2 if self._leads else 1  # rows per context
        if self._leads:
            contexts = list(contexts) + list(uncond)
        pending = list(range(n))[::-1]  # a stack: pop() takes the next context in order
        rows = _Rows()
        stop = torch.tensor(sorted({*stop_tokens, self.grammar.eos_id}), device=self.device)
        pause = torch.tensor(sorted(set(pause_tokens)), dtype=torch.long, device=self.device)
        errors: dict[int, str] = {}

        def finish(which: torch.Tensor) -> None:
            for i in which.nonzero().flatten().tolist():
                k = int(rows.key[i])
                if k >= n:  # a twin
                    continue
                ctx = list(contexts[k])
                n_out = int(rows.n_out[i])
                gen = rows.out[i, :n_out].tolist()
                outputs[k] = Output(ctx + gen, len(ctx), errors.get(k, ""))
                if self.record_logprobs:
                    outputs[k].logprobs = rows.lp[i, :n_out].tolist()
                    outputs[k].chosen = rows.chosen[i, :n_out].tolist()
                    outputs[k].legal = rows.mid[i, :n_out].tolist()
                if on_done is not None:
                    on_done(k, outputs[k])

        with torch.inference_mode(), decode_attention(self.device):
            while True:
                live = len(rows) - (int(rows.done.sum()) if len(rows) else 0)
                free = self.batch_size - live
                want = min(free // per, len(pending))
                if want and (live == 0 or free >= math.ceil(self.refill_fraction * self.batch_size)):
                    if len(rows):
                        rows = self._compact(rows, force=True)
                    rows, failed = self._admit(rows, [pending.pop() for _ in range(want)], contexts, outputs)
                    for k in failed:
                        if on_done is not None:
                            on_done(k, outputs[k])
                    continue
                if live == 0:
                    break
                active = ~rows.done & ~rows.paused
                if not bool(active.any()):
                    self._intervene(rows, contexts, on_pause)
                    continue
                newly_done = self._step(rows, active, generator, stop, pause, errors)
                if bool(newly_done.any()):
                    finish(newly_done)
                    rows = self._compact(rows)
        return [outputs[k] for k in range(n)]

    def _step(self, r: _Rows, feed: torch.Tensor, gen: torch.Generator, stop: torch.Tensor,
              pause: torch.Tensor, errors: dict[int, str]) -> torch.Tensor:
        """Feed one token to every active row (the others get a masked pad); returns rows that
        finished in this step."""
        g = self.grammar
        has_f = r.f_pos < r.f_len
        mid = g.mask_ids(r.state, r.span, r.steps, r.refines, r.left, forced=has_f)
        logits = r.logits
        if self._leads:  # twins take their lead's mask (and token, below), so they fail and end with it
            lead, twin = self._pairs(r)
            has_f, mid = has_f[lead], mid[lead]
            image = (r.key < self._leads) & (r.state == IMAGE)
            guided = logits + (self.guidance_scale - 1.0) * (logits - logits[twin])
            logits = torch.where(image[:, None], guided, logits)
        stuck = feed & (mid == M_NONE)
        mid = torch.where(feed & ~stuck, mid, torch.full_like(mid, M_PAD))
        allowed = g.masks[mid]
        tok = self._sample(logits, allowed, gen)
        decided = None
        if self.inspect_rule is not None:
            tok, decided = self._verdict(r, feed & ~has_f, logits, tok)
        if r.forced.shape[1] and bool(has_f.any()):
            ftok = r.forced.gather(1, r.f_pos.clamp(max=r.forced.shape[1] - 1)[:, None]).squeeze(1)
            tok = torch.where(has_f, ftok, tok)
        if self._leads:
            tok = tok[lead]
        bad = feed & ~allowed.gather(1, tok[:, None]).squeeze(1)  # a forced token the grammar refuses
        failed = stuck | bad
        if bool(failed.any()):
            for i in failed.nonzero().flatten().tolist():
                why = "no legal token" if bool(stuck[i]) else "an intervention broke the grammar"
                errors[int(r.key[i])] = why
        feed = feed & ~failed
        tok = torch.where(feed, tok, torch.full_like(tok, self.pad_id))
        if self.trace is not None:
            for i in feed.nonzero().flatten().tolist():
                self.trace.append((int(r.key[i]), int(r.pos[i]), logits[i].clone()))
        # Record the token and the cache column it lands in.
        idx = r.n_out.clamp(max=r.out.shape[1] - 1)[:, None]
        r.out.scatter_(1, idx, torch.where(feed, tok, r.out.gather(1, idx).squeeze(1))[:, None])
        vcol = torch.full_like(tok, r.columns + r.origin)
        r.vcol.scatter_(1, idx, torch.where(feed, vcol, r.vcol.gather(1, idx).squeeze(1))[:, None])
        if self.record_logprobs:
            scaled = logits.masked_fill(~allowed, float("-inf")) / (self.temperature or 1.0)
            lp = torch.log_softmax(scaled, -1).gather(1, tok[:, None]).squeeze(1)
            chosen = ~has_f & (allowed.sum(-1) > 1)
            if decided is not None:
                chosen &= ~decided
            for buf, value in ((r.lp, lp), (r.chosen, chosen), (r.mid, mid)):
                buf.scatter_(1, idx, torch.where(feed, value, buf.gather(1, idx).squeeze(1))[:, None])
        r.n_out += feed
        if self.inspect_rule is not None and self.inspect_rule.checklist:
            rule = self.inspect_rule
            verdict_word = feed & (r.state == INSPECT) & ((tok == rule.conflict_id) | (tok == rule.aligned_id))
            r.judged = (r.judged | verdict_word) & ~(feed & (tok == g.special["<inspect>"]))
        state, span, steps, refines = g.advance(tok, r.state, r.span, r.steps, r.refines)
        r.state = torch.where(feed, state, r.state)
        r.span = torch.where(feed, span, r.span)
        r.steps = torch.where(feed, steps, r.steps)
        r.refines = torch.where(feed, refines, r.refines)
        r.f_pos += feed & has_f
        r.left -= feed.long()
        ended = feed & torch.isin(tok, stop)
        if pause.numel():
            r.paused |= feed & ~has_f & torch.isin(tok, pause)
        newly_done = ended | failed
        r.done |= newly_done
        pos = r.pos.clone()
        r.pos += feed.long()
        # One forward for the batch: rows that fed nothing add a masked column and keep their logits.
        r.attn = torch.cat([r.attn, feed.long()[:, None]], 1)
        if bool((feed & ~ended).any()):
            logits = self._forward(tok[:, None], r.attn, pos[:, None], r.cache)
            r.logits = torch.where(feed[:, None], logits, r.logits)
            self.stats["steps"] += 1
            self.stats["row_steps"] += len(r)
            self.stats["fed_tokens"] += int(feed.sum())
        else:  # nothing left to predict: keep the cache in step with the mask
            kvcache.append_empty_column(r.cache)
        return newly_done

    def _verdict(self, r: _Rows, sampling: torch.Tensor, logits: torch.Tensor,
                 tok: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Rows writing their inspection's verdict (`InspectRule`) with the token they sampled:
        record P(conflict) and, with a threshold, put the verdict it chooses in place of that token.
        Returns the tokens and the rows whose verdict the threshold decided (None: none)."""
        rule = self.inspect_rule
        at = sampling & (r.state == INSPECT)
        if rule.checklist:
            at &= ~r.judged & ((tok == rule.conflict_id) | (tok == rule.aligned_id))
        else:
            at &= r.span == 0
        if not bool(at.any()):
            return tok, None
        p = rule.p_conflict(logits)
        for i in at.nonzero().flatten().tolist():
            if not self._leads or int(r.key[i]) < self._leads:  # a twin's verdict is its lead's
                self.inspect_scores.setdefault(int(r.key[i]), []).append(float(p[i]))
        if rule.threshold is None:
            return tok, None
        choice = torch.where(p >= rule.threshold, rule.conflict_id, rule.aligned_id)
        return torch.where(at, choice, tok), at

    def _compact(self, r: _Rows, force: bool = False) -> _Rows:
        """Drop finished rows from the batch when enough have finished (or when `force`d)."""
        n_done = int(r.done.sum())
        if n_done == 0 or (not force and n_done < self.compact_fraction * len(r)):
            return r
        if n_done == len(r):
            return _Rows()
        r.drop(r.done)
        r.trim_left()
        self.stats["compactions"] += 1
        return r

    def _intervene(self, r: _Rows, contexts: Sequence[list[int]],
                   on_pause: Callable[[list[Paused]], list[Edit]] | None) -> None:
        """Every live row is paused: show them to `on_pause` at once and apply its edits."""
        shown = r.paused & ~r.done
        if self._leads:  # twins follow their leads' edits; handlers never see them
            shown &= r.key < self._leads
        idx = shown.nonzero().flatten().tolist()
        views = []
        for i in idx:
            k = int(r.key[i])
            views.append(Paused(k, list(contexts[k]) + r.out[i, : int(r.n_out[i])].tolist(),
                                int(r.left[i]), int(r.steps[i]), int(r.refines[i])))
        edits = on_pause(views) if on_pause is not None else [Edit() for _ in views]
        if len(edits) != len(views):
            raise ValueError(f"on_pause returned {len(edits)} edits for {len(views)} paused rows")
        self.stats["interventions"] += 1
        width = max([r.forced.shape[1]] + [len(e.append) for e in edits])
        if width > r.forced.shape[1]:
            r.forced = torch.nn.functional.pad(r.forced, (0, width - r.forced.shape[1]))
        twin = self._pairs(r)[1] if self._leads else None
        for i, view, e in zip(idx, views, edits):
            if e.drop:
                n = int(r.n_out[i])
                if not 0 < e.drop <= n or not e.append:
                    raise ValueError(f"an edit may drop 1..{n} generated tokens and must append some")
                for row in (i,) if twin is None else (i, int(twin[i])):
                    self._rewind(r, row, e.drop)
                kept = view.ids[: len(view.ids) - e.drop]
                st = self.grammar.replay(kept)
                r.state[i], r.span[i], r.steps[i], r.refines[i] = st.state, st.span, st.steps, st.refines
                r.judged[i] = self._judged(kept)
            if e.append:
                r.forced[i, : len(e.append)] = torch.tensor(e.append, dtype=torch.long, device=self.device)
                r.f_pos[i] = 0
                r.f_len[i] = len(e.append)
        r.paused[idx] = False
        if twin is not None:
            r.paused[twin[idx]] = False

    @staticmethod
    def _rewind(r: _Rows, i: int, drop: int) -> None:
        """Forget row i's last `drop` generated tokens: mask their cache columns, step back."""
        n = int(r.n_out[i])
        r.attn[i, r.vcol[i, n - drop: n] - r.origin] = 0
        r.n_out[i] = n - drop
        r.pos[i] -= drop
        r.left[i] += drop

    def _pairs(self, r: _Rows) -> tuple[torch.Tensor, torch.Tensor]:
        """With guidance: for every row, the row of its lead (a lead's is itself) and the row of
        its twin (a twin's is itself). Leads and twins enter and leave the batch together."""
        n = self._leads
        where = torch.full((2 * n,), -1, dtype=torch.long, device=self.device)
        where[r.key] = torch.arange(len(r), device=self.device)
        lead = where[torch.where(r.key >= n, r.key - n, r.key)]
        twin = where[torch.where(r.key >= n, r.key, r.key + n)]
        return lead, twin
