"""What can step into a trajectory while it is decoded: an external judge, a person's plan, or a
retry of a step whose inspection found a conflict.

Each is a `Decoder` pause handler: it reads the paused rows' sequences, decides, and answers with
`Edit`s. Nothing is re-encoded: appended text goes through the same cached decoding steps, and a
rewritten plan or a forgotten step is masked out of the cache rather than recomputed.
"""

from __future__ import annotations

from typing import Callable, Sequence

from strokes.language import inspection_text, says_conflict
from strokes.model.processor import Processor
from strokes.trajectory import Trajectory
from strokes.verdict import Judge, StepContext

from .decoder import Edit, Paused
from .grammar import Grammar


def last_index(ids: list[int], token: int) -> int:
    """Where `token` last occurs in `ids`."""
    return len(ids) - 1 - ids[::-1].index(token)


def words_of(processor: Processor, text: str, cap: int) -> tuple[list[int], int]:
    """Token ids of `text` restricted to the text vocabulary and clipped to `cap` words, and how
    many words were lost (unknown to the vocabulary, or past the cap)."""
    allowed = set(processor.text_ids)
    raw = processor.text_ids_of(text)
    ids = [t for t in raw if t in allowed]
    return ids[:cap], len(raw) - min(len(ids), cap)


def open_step(processor: Processor, ids: list[int]) -> tuple[Trajectory, int]:
    """The trajectory of a sequence that stops right after a visual state (before its <inspect>).
    Its last step is the open one; returns it and the index of the last <ins> token."""
    s = processor.special
    closed = list(ids) + [s["<inspect>"], s["</inspect>"]]
    traj = processor.decode(closed)
    return traj, last_index(ids, s["<ins>"])


def step_context(processor: Processor, ids: list[int], record: dict | None) -> StepContext:
    """What a judge sees of a row paused after a sketch or a refined state: the prompt, the steps
    before, this step's plan, the visual state to judge, and the state it was drawn from (the
    previous visual state: the last step's result for a sketch, the rejected state for a refinement)."""
    traj, _ = open_step(processor, ids)
    step, history = traj.steps[-1], traj.steps[:-1]
    states = [step.image] + [r.image for r in step.refinements]
    if len(states) > 1:
        previous = states[-2]
    else:
        previous = history[-1].final_image if history else None
    return StepContext(traj.prompt, step.instruction, step.description, states[-1], record, history, previous)


class StepRetries:
    """Counts, per trajectory and step, how often a step was forgotten and drawn again, and makes the
    edit that does it: drop everything from the step's `<ins>` on (plan, sketch, inspection, any
    refinements; masked out of the cache) and start the step afresh with `<ins>`."""

    def __init__(self, processor: Processor, limit: int) -> None:
        self.processor = processor
        self.limit = limit
        self.used: dict[int, int] = {}  # per context: retries over all its steps
        self.per_step: dict[tuple[int, int], int] = {}  # per (context, step number)

    def retry(self, row: Paused) -> Edit | None:
        """The retry edit for `row`, or None once its current step has had `limit` retries."""
        key = (row.key, row.ids.count(self.processor.special["<ins>"]))
        done = self.per_step.get(key, 0)
        if done >= self.limit:
            return None
        self.per_step[key] = done + 1
        self.used[row.key] = self.used.get(row.key, 0) + 1
        start = last_index(row.ids, self.processor.special["<ins>"])
        return Edit(drop=len(row.ids) - start, append=[self.processor.special["<ins>"]])


class RetryOnConflict:
    """Pauses every row after each inspection the model writes; when it names a conflict and the step
    has retries left, the step is drawn again from its plan (`rollout.retries`). Once they are spent,
    the model refines in context, or with `accept` the last attempt stands: its inspection is rewritten
    to start "aligned" (`rollout.after_retries: accept`)."""

    def __init__(self, processor: Processor, retries: int, accept: bool = False) -> None:
        self.processor = processor
        self.retries = StepRetries(processor, retries)
        self.accept = accept

    @property
    def pause_tokens(self) -> list[int]:
        return [self.processor.special["</inspect>"]]

    def __call__(self, rows: list[Paused]) -> list[Edit]:
        s = self.processor.special
        edits = []
        for r in rows:
            start = last_index(r.ids, s["<inspect>"])
            conflict = says_conflict(self.processor.words(r.ids[start + 1: -1]))
            edit = self.retries.retry(r) if conflict else None
            if conflict and edit is None and self.accept:  # forced tokens pass the verdict rule as they are
                edit = Edit(drop=len(r.ids) - start, append=[s["<inspect>"], *self.processor.text_ids_of("aligned")])
            edits.append(edit or Edit())
        return edits


class JudgeInTheLoop:
    """Pauses every row after each visual state, asks the judge about the whole batch at once, and
    writes `<inspect> verdict </inspect>` plus, for a conflict with refinements left and room in the
    budget, `<refine> correction </refine>`; the model then draws the corrected state. With
    `retries`, a conflict first makes the model draw the whole step again (its verdict is kept)."""

    def __init__(self, judge: Judge, processor: Processor, grammar: Grammar, records: Sequence[dict | None],
                 retries: int = 0, verdict_only: bool = False) -> None:
        self.judge = judge
        self.verdict_only = verdict_only  # write only the verdict word; the model writes the rest
        self.processor = processor
        self.grammar = grammar
        self.records = records
        self.retries = StepRetries(processor, retries)  # a conflict first redraws the step (rollout.retries)
        self.verdicts: dict[int, list[dict]] = {}  # per context: every verdict, in order
        self.lost_words = 0  # judge words outside the vocabulary or past the span cap

    @property
    def pause_tokens(self) -> list[int]:
        return [self.processor.special["<vision_end>"]]

    def __call__(self, rows: list[Paused]) -> list[Edit]:
        p, g, s = self.processor, self.grammar, self.processor.special
        contexts = [step_context(p, r.ids, self.records[r.key]) for r in rows]
        verdicts = self.judge.judge(contexts)
        if len(verdicts) != len(rows):
            raise ValueError(f"the judge returned {len(verdicts)} verdicts for {len(rows)} steps")
        edits = []
        for r, v in zip(rows, verdicts):
            self.verdicts.setdefault(r.key, []).append(v.model_dump(mode="json"))
            retry = None if v.aligned else self.retries.retry(r)
            if retry is not None:
                edits.append(retry)
                continue
            if self.verdict_only:  # the judge's verdict alone: the model inspects and refines in its own words
                edits.append(Edit(append=[s["<inspect>"], *p.text_ids_of("aligned" if v.aligned else "conflict")]))
                continue
            text, lost = words_of(p, inspection_text(v), g.cap)
            if not text:  # a span holds at least one word
                text = p.text_ids_of("aligned." if v.aligned else "conflict.")
            forced = [s["<inspect>"], *text, s["</inspect>"]]
            correction, lost_c = words_of(p, v.correction, g.cap)
            self.lost_words += lost
            room = r.left - len(forced) > g.worst_refine
            if not v.aligned and correction and r.refines < g.max_refines and room:
                forced += [s["<refine>"], *correction, s["</refine>"]]
                self.lost_words += lost_c
            edits.append(Edit(append=forced))
        return edits


PlanHook = Callable[[str, int, str, str], "tuple[str, str] | None"]


class PlanReview:
    """Pauses each row after its plan (`</des>`) and lets `hook(prompt, step, instruction,
    description)` accept it (None) or rewrite it ((instruction, description)) before the sketch."""

    def __init__(self, hook: PlanHook, processor: Processor, grammar: Grammar) -> None:
        self.hook = hook
        self.processor = processor
        self.grammar = grammar

    @property
    def pause_tokens(self) -> list[int]:
        return [self.processor.special["</des>"]]

    def __call__(self, rows: list[Paused]) -> list[Edit]:
        p, s = self.processor, self.processor.special
        edits = []
        for r in rows:
            start = last_index(r.ids, s["<ins>"])
            mid = r.ids.index(s["<des>"], start)
            ins, des = p.words(r.ids[start + 1: mid - 1]), p.words(r.ids[mid + 1: -1])
            prompt = p.words(r.ids[1: r.ids.index(s["</prompt>"])])
            answer = self.hook(prompt, r.steps, ins, des)
            if answer is None or tuple(answer) == (ins, des):
                edits.append(Edit())
                continue
            new_ins, _ = words_of(p, answer[0], self.grammar.cap)
            new_des, _ = words_of(p, answer[1], self.grammar.cap)
            if not new_ins or not new_des:
                raise ValueError("a rewritten plan needs at least one known word in each part")
            edits.append(Edit(drop=len(r.ids) - start, append=[s["<ins>"], *new_ins, s["</ins>"],
                                                                s["<des>"], *new_des, s["</des>"]]))
        return edits
