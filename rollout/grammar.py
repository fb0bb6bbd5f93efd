"""The token grammar as a state machine that runs on whole batches, and the logits masks it allows.

The grammar is the one in `strokes/model/processor.py`'s docstring:

    <prompt> … </prompt>
    ( <ins> … </ins> <des> … </des> <vision_start> codes <vision_end> <inspect> … </inspect>
      ( <refine> … </refine> <vision_start> codes <vision_end> <inspect> … </inspect> )* )+
    <eos>

or, single-pass, `<prompt> … </prompt> <vision_start> codes <vision_end> <eos>`.

Every special token decides the state that follows it, whatever came before (the mask only lets it
appear where it is legal), and words and codes never change the state. So the state of a row is a
handful of integers (`state`, `span` = tokens since the last special, `steps`, `refines` in this step,
`left` = tokens the row may still emit) and one step of the machine is a few tensor operations over
the batch, with no per-row Python and no host round trip. `replay` runs the same machine in plain
Python over a whole context, to start a row from any point of a trajectory (the self judge's
contexts, a rewritten plan).

Budget: a row may open a step (`<ins>`) or a refinement (`<refine>`) only while the tokens it has
left can hold the longest such unit (every text span capped at `max_text_tokens`) plus the final
`<eos>`. Every row therefore ends with `<eos>` inside its budget and every output parses.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from strokes.trajectory import MODES

# Grammar states: where a row is, i.e. what the last special token it read opened or closed.
PROMPT, PROMPT_END, INS, AFTER_INS, DES, AFTER_DES, IMAGE, AFTER_IMAGE, INSPECT, AFTER_INSPECT, \
    REFINE, AFTER_REFINE, DONE = range(13)
STATE_NAMES = ("prompt", "prompt_end", "ins", "after_ins", "des", "after_des", "image", "after_image",
               "inspect", "after_inspect", "refine", "after_refine", "done")
_NEXT_STATE = {"<prompt>": PROMPT, "</prompt>": PROMPT_END, "<ins>": INS, "</ins>": AFTER_INS,
               "<des>": DES, "</des>": AFTER_DES, "<vision_start>": IMAGE, "<vision_end>": AFTER_IMAGE,
               "<inspect>": INSPECT, "</inspect>": AFTER_INSPECT, "<refine>": REFINE,
               "</refine>": AFTER_REFINE, "<eos>": DONE}
_TEXT_SPANS = ((INS, "</ins>"), (DES, "</des>"), (INSPECT, "</inspect>"), (REFINE, "</refine>"))

# Mask ids: rows of `Grammar.masks`.
(M_NONE, M_PAD, M_INS, M_VSTART, M_WORDS, M_WORDS_CLOSE, M_CLOSE, M_DES, M_CODES, M_VEND, M_INSPECT,
 M_EOS, M_CHOICE) = (0, 1, 2, 3, 4, 5, 9, 13, 14, 15, 16, 17, 18)
NUM_MASKS = M_CHOICE + 4  # AFTER_INSPECT: <eos>, plus <refine> (bit 0) and/or <ins> (bit 1)


@dataclass
class RowState:
    """One row's grammar state in plain Python (what `replay` returns)."""

    state: int
    span: int
    steps: int
    refines: int


class Grammar:
    """Masks and transitions for one processor, mode and set of caps, on one device.

    `mode`: "process" (the model writes the whole trajectory, refinements included), "judge" (the
    same tokens, but <inspect>/<refine> spans are written by an external judge, so the model never
    opens a <refine> itself) or "single_pass" (prompt, then one image).
    """

    def __init__(self, processor, vocab_size: int, *, mode: str = "process", max_steps: int = 8,
                 max_refines: int = 2, max_text_tokens: int = 48, device: str | torch.device = "cpu") -> None:
        if mode not in MODES:
            raise ValueError(f"mode must be one of {', '.join(MODES)}, got {mode!r}")
        s = processor.special
        self.special = s
        self.mode = mode
        self.max_steps = max_steps
        self.max_refines = max_refines
        self.model_refines = mode == "process"  # in judge mode only the judge's forced text refines
        self.cap = max_text_tokens
        self.cpi = processor.codes_per_image
        self.device = torch.device(device)
        # Longest step (<ins> and <des> and <inspect> spans at the cap, one image) and refinement.
        self.worst_step = 3 * (self.cap + 2) + self.cpi + 2
        self.worst_refine = 2 * (self.cap + 2) + self.cpi + 2
        self.single_pass_length = self.cpi + 3  # <vision_start> codes <vision_end> <eos>

        self._next = {s[t]: st for t, st in _NEXT_STATE.items()}
        nxt = torch.full((vocab_size,), -1, dtype=torch.long)
        for tok, st in self._next.items():
            nxt[tok] = st
        self.next_state = nxt.to(self.device)
        self.ins_id, self.refine_id, self.eos_id = s["<ins>"], s["<refine>"], s["<eos>"]

        m = torch.zeros((NUM_MASKS, vocab_size), dtype=torch.bool)
        words = torch.tensor(processor.text_ids, dtype=torch.long)
        codes = torch.arange(processor.code_offset, processor.code_offset + processor.num_codes)
        m[M_PAD, processor.pad_id] = True
        m[M_INS, s["<ins>"]] = True
        m[M_VSTART, s["<vision_start>"]] = True
        m[M_WORDS, words] = True
        for k, (_, close) in enumerate(_TEXT_SPANS):
            m[M_WORDS_CLOSE + k, words] = True
            m[M_WORDS_CLOSE + k, s[close]] = True
            m[M_CLOSE + k, s[close]] = True
        m[M_DES, s["<des>"]] = True
        m[M_CODES, codes] = True
        m[M_VEND, s["<vision_end>"]] = True
        m[M_INSPECT, s["<inspect>"]] = True
        m[M_EOS, s["<eos>"]] = True
        for bits in range(4):
            m[M_CHOICE + bits, s["<eos>"]] = True
            if bits & 1:
                m[M_CHOICE + bits, s["<refine>"]] = True
            if bits & 2:
                m[M_CHOICE + bits, s["<ins>"]] = True
        self.masks = m.to(self.device)

        # Mask id per state when no counter matters; text spans, images and choices are refined below.
        base = torch.full((len(STATE_NAMES),), M_NONE, dtype=torch.long)
        base[AFTER_INS] = M_DES
        base[AFTER_DES] = M_VSTART
        base[AFTER_REFINE] = M_VSTART
        base[AFTER_IMAGE] = M_EOS if mode == "single_pass" else M_INSPECT
        base[DONE] = M_PAD
        self._base = base.to(self.device)
        span_kind = torch.full((len(STATE_NAMES),), -1, dtype=torch.long)
        for k, (st, _) in enumerate(_TEXT_SPANS):
            span_kind[st] = k
        self._span_kind = span_kind.to(self.device)

    # ---- the batched machine ---------------------------------------------------------------------

    def mask_ids(self, state: torch.Tensor, span: torch.Tensor, steps: torch.Tensor, refines: torch.Tensor,
                 left: torch.Tensor, forced: torch.Tensor | None = None) -> torch.Tensor:
        """Which row of `masks` applies to each row; M_NONE where nothing is legal. Rows marked
        `forced` are checked against the full grammar (a judge may open a <refine> there), the others
        against what the model itself may write in this mode."""
        mid = self._base[state]
        kind = self._span_kind[state]
        in_text = kind >= 0
        text_mid = torch.where(span >= self.cap, M_CLOSE + kind,
                               torch.where(span == 0, torch.full_like(kind, M_WORDS), M_WORDS_CLOSE + kind))
        mid = torch.where(in_text, text_mid, mid)
        mid = torch.where(state == IMAGE, torch.where(span < self.cpi, M_CODES, M_VEND), mid)
        can_ins = (steps < self.max_steps) & (left > self.worst_step)
        can_refine = (refines < self.max_refines) & (left > self.worst_refine)
        if not self.model_refines:
            can_refine = can_refine & forced if forced is not None else torch.zeros_like(can_refine)
        choice = M_CHOICE + can_refine.long() + 2 * can_ins.long()
        mid = torch.where(state == AFTER_INSPECT, choice, mid)
        if self.mode == "single_pass":
            start = torch.where(left >= self.single_pass_length, M_VSTART, M_NONE)
        else:
            start = torch.where(left > self.worst_step, M_INS, M_NONE)
        return torch.where(state == PROMPT_END, start, mid)

    def advance(self, tok: torch.Tensor, state: torch.Tensor, span: torch.Tensor, steps: torch.Tensor,
                refines: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """The state after each row reads `tok` (rows that read nothing should be masked by the caller)."""
        nxt = self.next_state[tok]
        special = nxt >= 0
        is_ins = tok == self.ins_id
        state = torch.where(special, nxt, state)
        span = torch.where(special, torch.zeros_like(span), span + 1)
        steps = steps + is_ins.long()
        refines = torch.where(is_ins, torch.zeros_like(refines), refines + (tok == self.refine_id).long())
        return state, span, steps, refines

    # ---- the same machine in plain Python ----------------------------------------------------------

    def replay(self, ids: list[int]) -> RowState:
        """The state after reading `ids` from the start (a context that begins with <prompt>)."""
        r = RowState(PROMPT, 0, 0, 0)
        for t in ids:
            st = self._next.get(t)
            if st is None:
                r.span += 1
                continue
            r.state, r.span = st, 0
            if t == self.ins_id:
                r.steps, r.refines = r.steps + 1, 0
            elif t == self.refine_id:
                r.refines += 1
        return r
