"""The model's own understanding answering a prompt's atomic questions (issue 27): a copy of the
policy trained to inspect, asked what a VLM judge is asked.

GRPO uses only the order of a prompt's own pictures, and the base's own inspection cannot give it:
read at the verdict word, by a linear or an attention head, the base's hidden states rank a prompt's
pictures at AUC 0.57-0.72 (docs/loop.md): they know which prompts it gets wrong, not which of its
pictures. A VLM judge is asked simpler things instead, one atomic question at a time ("two
circles?", "the square left of the circle?", selfplay/questions.py). The judge here is the same
model asked the same way: a question is a one-step trajectory, the question as its prompt and
description and the picture as its sketch, and the answer is the model's P(conflict) at
`<inspect>`, read as its Inspect is read everywhere else. The base has never seen a question (its
AUC on them is 0.37, below chance), so `selfplay fit-judge` trains a copy on them first: the
base's own pictures of training-split prompts and other prompts' questions about them (optionally
each picture's near misses: one object dropped, copied, moved, recoloured or reshaped), every
answer labelled by the run's judge (ShapeWorld's exact one; a team's VLM endpoint). Only the judge copy changes: the policy GRPO trains never is, so it
cannot learn to please itself by moving its judge, only by finding what the copy misreads, which
the agreement table shows. Measured on ShapeWorld it does: the copy ranks the base's groups about as
the typical stand-in VLM does, yet a round drifts into what it passes and ends below its control
(docs/loop.md, "Self-judged rounds on atomic questions").

The second copy, `Transcriber`, reads instead of answering: it writes what a picture holds (each
object's colour, class and place, `strokes/shapeworld/transcript.py`) and every question is then
decided by GenEval's rule over what it wrote (`world.transcript_holds`). It learns from the world's
own rendered pictures, labelled as they are rendered (`selfplay fit-judge --transcribe`), as a
unified model's understanding branch learns from captioned images: no judge labels anything, and
nothing the policy drew is ever labelled. Asked about the base's GRPO groups it ranks a prompt's
pictures as the strong stand-in VLM does, and as the only judge of GRPO rounds it is not gamed
(docs/loop.md, "A transcriber"). Read against each step's description and the prompt instead
(`state_verdicts`, `scored`: `selfplay inspect-eval --inspector`), the same reading is the model's
own Inspect of every sketch it draws.

A judge folder (`selfplay fit-judge --out DIR`) is a `selfplay train` output folder whose
`checkpoint/` is the judge copy, plus `judge.json`: the checkpoint it was trained from, its
threshold (a transcriber's: its kind) and its held-out figures.
"""

from __future__ import annotations

import dataclasses
import json
import random
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from strokes.errors import InputError
from strokes.io import write_atomic
from strokes.language import inspection_text
from strokes.model.policy import Policy
from strokes.records import PromptRecord
from strokes.trajectory import Step, Trajectory
from strokes.verdict import Graded, StepContext, Verdict

from .inspect_eval import judged_states
from .inspect_head import verdict_positions

META = "judge.json"
BATCH = 64  # questions per forward pass


def asked(context: StepContext, inspection: str = "aligned") -> Trajectory:
    """A question (or any judge context) as the one-step trajectory the judge copy reads: its prompt,
    plan and picture, then `inspection` (its verdict is what the copy predicts)."""
    return Trajectory(context.prompt, [Step(context.instruction, context.description, context.image, inspection,
                                            context=True)], context.record, "questions")


def question_of(row: Trajectory) -> StepContext:
    """The question a row made by `asked` puts (its inverse: the labelled verdict is the row's inspection)."""
    s = row.steps[0]
    return StepContext(row.prompt, s.instruction, s.description, s.image, row.record)


def question_rows(contexts: list[StepContext], verdicts: list[Verdict | None]) -> list[Trajectory]:
    """Training rows for a judge copy: each question with its labelled verdict as the inspection to
    learn (only the inspection carries loss: the plan and the picture are context). A question the
    judge could not answer is left out."""
    return [asked(c, inspection_text(v)) for c, v in zip(contexts, verdicts) if v is not None]


class QuestionJudge:
    """A frozen judge copy answering questions by its P(conflict) at `<inspect>`: a verdict (conflict
    at or above `threshold`) and, graded, that probability (`judge_graded`, as an endpoint's
    log-probabilities are read). Right-padded batches give every question exactly the logits it
    gets alone: the model is causal, so padding after the verdict position cannot reach it."""

    name = "self"

    def __init__(self, policy: Policy, threshold: float = 0.5, meta: dict | None = None) -> None:
        self.policy, self.threshold, self.meta = policy, threshold, meta or {}
        policy.model.eval()
        conflict, aligned = (policy.processor.text_ids_of(w)[0] for w in ("conflict", "aligned"))
        self.ids = (conflict, aligned)

    @classmethod
    def load(cls, folder: str | Path) -> QuestionJudge:
        """The judge `selfplay fit-judge` wrote to `folder`; a folder without one is refused in one line."""
        folder = Path(folder)
        if not (folder / META).is_file():
            raise InputError(f"{folder}: not a judge folder (no {META}; make one with `selfplay fit-judge`)")
        meta = json.loads((folder / META).read_text())
        return cls(Policy.from_pretrained(folder / "checkpoint"), float(meta["threshold"]), meta)

    def save_meta(self, folder: str | Path) -> Path:
        return write_atomic(Path(folder) / META, json.dumps({**self.meta, "threshold": self.threshold}, indent=2))

    def p_conflict(self, contexts: list[StepContext]) -> np.ndarray:
        """Its P(conflict) for each context."""
        p = self.policy.processor
        encoded = [p.encode(asked(c), with_eos=False).input_ids for c in contexts]
        where = [verdict_positions(p, ids)[0] for ids in encoded]
        out = np.empty(len(contexts))
        device = self.policy.model.device
        with torch.no_grad():
            for start in range(0, len(contexts), BATCH):
                rows = encoded[start: start + BATCH]
                width = max(map(len, rows))
                ids = torch.tensor([r + [r[-1]] * (width - len(r)) for r in rows], device=device)
                logits = self.policy.model(input_ids=ids).logits.float()
                at = logits[torch.arange(len(rows)), torch.tensor(where[start: start + BATCH])]
                out[start: start + len(rows)] = torch.sigmoid(at[:, self.ids[0]] - at[:, self.ids[1]]).cpu().numpy()
        return out

    def judge_graded(self, contexts: list[StepContext]) -> list[Graded]:
        return [(Verdict(aligned=bool(p < self.threshold), conflicts=[], correction=""), float(p))
                for p in self.p_conflict(contexts)]

    def judge(self, contexts: list[StepContext]) -> list[Verdict | None]:
        return [v for v, _ in self.judge_graded(contexts)]


# ---- the transcriber: a copy that writes what a picture holds ---------------------------------------

TRANSCRIBER = "transcriber"  # judge.json's kind for a transcriber folder
MAX_WORDS = 120  # a transcript's longest: 16 objects of up to seven words


def transcription_row(image: np.ndarray, text: str = "") -> Trajectory:
    """A picture and its transcript as the one-step trajectory a transcriber reads and writes: an
    empty prompt and plan, the picture as its sketch, the transcript where an inspection goes (the
    only text with loss, as a judge copy's verdict is)."""
    return Trajectory("nothing", [Step("", "nothing", image, text, context=True)], None, "transcribe")


def code_noise(policy: Policy) -> Callable[[np.ndarray, random.Random], np.ndarray] | None:
    """A picture with one or two of its image codes replaced at random, re-decoded: the stray
    fragments a policy's codes leave, for a transcriber to learn to read too. None for a processor
    without a decodable codebook."""
    codebook = getattr(policy.processor, "image_tokenizer", None)
    if codebook is None:
        return None

    def perturb(image: np.ndarray, rng: random.Random) -> np.ndarray:
        codes = codebook.encode(image)
        for _ in range(rng.choice((1, 1, 2))):
            codes[rng.randrange(len(codes))] = rng.randrange(codebook.num_codes)
        return codebook.decode(codes)
    return perturb


class Transcriber:
    """A frozen copy that writes each picture's transcript, greedily and held to the world's grammar
    (`world.transcript_words`: it writes nothing else), and answers a question by the world's rule
    over it (`world.transcript_holds`): a hard answer, P(conflict) 0 or 1. Questions about one
    picture share one reading."""

    name = "self"
    threshold = 0.5
    """Its P(conflict) is 0 or 1, so any threshold between flags exactly the states it calls wrong."""

    def __init__(self, policy: Policy, world, meta: dict | None = None) -> None:
        if world.transcript_holds is None or world.transcript_words is None:
            raise InputError(f"a transcriber needs a world with a grammar and a rule for transcripts "
                             f"(ShapeWorld), not the {world.name} world")
        self.policy, self.world, self.meta = policy, world, {**(meta or {}), "kind": TRANSCRIBER}
        policy.model.eval()
        self.start, self.end = policy.processor.special["<inspect>"], policy.processor.special["</inspect>"]
        self._last: dict[bytes, str] = {}  # the pictures the last call read (`_readings`)

    @classmethod
    def load(cls, folder: str | Path, world) -> Transcriber:
        meta = json.loads((Path(folder) / META).read_text())
        return cls(Policy.from_pretrained(Path(folder) / "checkpoint"), world, meta)

    def save_meta(self, folder: str | Path) -> Path:
        return write_atomic(Path(folder) / META, json.dumps(self.meta, indent=2))

    def _grammar(self, width: int) -> Callable[[int, torch.Tensor], list[int]]:
        """`generate`'s `prefix_allowed_tokens_fn` for rows whose reading starts after `width` tokens."""
        tokens = self.policy.processor.tokenizer

        def allowed(_: int, ids: torch.Tensor) -> list[int]:
            written = ids[width:].tolist()
            if self.end in written:
                return [self.end]
            words, may_end = self.world.transcript_words(tokens.convert_ids_to_tokens(written))
            return [*tokens.convert_tokens_to_ids(words), *([self.end] if may_end or not words else [])]
        return allowed

    def read(self, images: list[np.ndarray]) -> list[str]:
        """Each picture's transcript, in left-padded batches (the attention mask gives every row the
        positions it has alone); one cut off by the length limit keeps its whole objects."""
        p, model = self.policy.processor, self.policy.model
        out = []
        for start in range(0, len(images), BATCH):
            prefixes = []
            for image in images[start: start + BATCH]:
                ids = p.encode(transcription_row(image), with_eos=False).input_ids
                prefixes.append(ids[: ids.index(self.start) + 1])
            width = max(map(len, prefixes))
            ids = torch.tensor([[0] * (width - len(r)) + r for r in prefixes], device=model.device)
            mask = torch.tensor([[0] * (width - len(r)) + [1] * len(r) for r in prefixes], device=model.device)
            with torch.no_grad():
                written = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=MAX_WORDS,
                                         do_sample=False, eos_token_id=self.end, pad_token_id=0,
                                         prefix_allowed_tokens_fn=self._grammar(width))
            for row in written[:, width:].tolist():
                out.append(p.words(row[: row.index(self.end)] if self.end in row else self._whole_objects(row)))
        return out

    def _whole_objects(self, row: list[int]) -> list[int]:
        """A reading cut off by `MAX_WORDS`, up to its last whole object (its last ".")."""
        stop = self.policy.processor.text_ids_of(".")[0]
        return row[: len(row) - row[::-1].index(stop)] if stop in row else []

    def _readings(self, contexts: list[StepContext]) -> list[str]:
        """Each context's picture read, every distinct picture once, and none read by the call before
        again (a GRPO step labels every state, then asks about the finished pictures among them)."""
        pictures = {c.image.tobytes(): c.image for c in contexts}
        new = [k for k in pictures if k not in self._last]
        read = {k: self._last[k] for k in pictures if k in self._last}
        if new:
            read.update(zip(new, self.read([pictures[k] for k in new])))
        self._last = read
        return [read[c.image.tobytes()] for c in contexts]

    def judge_graded(self, contexts: list[StepContext]) -> list[Graded]:
        """Each question (a context whose record is the question's) decided by the world's rule over
        its picture's reading."""
        return [_hard(self.world.transcript_holds(PromptRecord.from_json(c.record), text))
                for c, text in zip(contexts, self._readings(contexts))]

    def judge(self, contexts: list[StepContext]) -> list[Verdict | None]:
        return [v for v, _ in self.judge_graded(contexts)]

    def state_verdicts(self, contexts: list[StepContext]) -> list[Graded]:
        """Each visual state (a step's context: the prompt's record, the step's description, its
        sketch) read and held against its description and its prompt (`world.transcript_state_verdict`:
        a refinement of a state it found drawn as planned but wrong is held to the plan its edit makes):
        the model's own Inspect of a sketch, its understanding reading and the world's rule comparing."""
        verdicts = [self.world.transcript_state_verdict(PromptRecord.from_json(c.record), c.description, text)
                    for c, text in zip(contexts, self._readings(contexts))]
        return [(None, None) if v is None else (v, float(not v.aligned)) for v in verdicts]

    def scored(self, trajectories: list[Trajectory]) -> list[Trajectory]:
        """`trajectories` with each visual state's P(conflict) by `state_verdicts` as its score
        (`meta["inspect_scores"]`, what the inspection table reads; 0.5 where it cannot say): how
        `selfplay inspect-eval --inspector` scores a transcriber. Single-pass trajectories and those
        without a record are left as they are."""
        keep = [k for k, t in enumerate(trajectories) if t.steps and t.record is not None and not t.single_pass]
        judged = judged_states([trajectories[k] for k in keep], self.state_verdicts)
        out = list(trajectories)
        for k, states in zip(keep, judged):
            scores = [0.5 if p is None else p for _, p in states]
            out[k] = dataclasses.replace(out[k], meta={**out[k].meta, "inspect_scores": scores})
        return out


def _hard(holds: bool | None) -> Graded:
    """A rule's yes/no as a graded verdict: P(conflict) 0 or 1; (None, None) where it cannot say."""
    if holds is None:
        return None, None
    return Verdict(aligned=holds, conflicts=[], correction=""), 0.0 if holds else 1.0


def load_judge_copy(folder: str | Path, world) -> QuestionJudge | Transcriber:
    """The judge copy `selfplay fit-judge` wrote to `folder`: a transcriber (reading by `world`'s
    grammar, answering by its rule) or a question-answering copy."""
    folder = Path(folder)
    if not (folder / META).is_file():
        raise InputError(f"{folder}: not a judge folder (no {META}; make one with `selfplay fit-judge`)")
    if json.loads((folder / META).read_text()).get("kind") != TRANSCRIBER:
        return QuestionJudge.load(folder)
    return Transcriber.load(folder, world)
