"""The processor: trajectories to token ids and a loss mask, and generated ids back to trajectories.

Text goes through a word-level `tokenizers` model wrapped as a `PreTrainedTokenizerFast`, built
locally from the ShapeWorld vocabulary (nothing is downloaded); images go through the patch
codebook, each code an ordinary vocabulary token `<img_k>`. The token grammar (docs/design.md §4, with one
change: every visual state, refined ones included, is followed by its own inspection, so a model can
refine more than once and knows when a refinement worked):

    <prompt> … </prompt>
    ( <ins> … </ins> <des> … </des> <vision_start> codes <vision_end> <inspect> … </inspect>
      ( <refine> … </refine> <vision_start> codes <vision_end> <inspect> … </inspect> )* )+
    <eos>

A single-pass sequence is `<prompt> … </prompt> <vision_start> codes <vision_end> <eos>`.
Loss falls on everything after the prompt, except a deliberately wrong plan (its <ins>, <des> and
sketch) and a deliberately wrong sketch (its codes and vision markers): those exist only to be inspected.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..shapeworld.scene import COLORS, NUMBER_WORDS, PLURALS, RELATIONS, SHAPES
from ..trajectory import Refinement, Step, Trajectory, single_pass_trajectory
from .image_tokenizer import ImageTokenizer

SPECIALS = ["<pad>", "<unk>", "<prompt>", "</prompt>", "<ins>", "</ins>", "<des>", "</des>",
            "<inspect>", "</inspect>", "<refine>", "</refine>", "<vision_start>", "<vision_end>", "<eos>"]
_FUNCTION_WORDS = """a an the and of with nothing add make move remove swap replace aligned conflict image
follows instruction still missing scene matches prompt contradicts is instead should be but planned
drawn as not there extra that are fewer than level""".split()
PUNCT = [".", ":", ","]
# Segment kinds, for per-kind loss weights and logging.
PROMPT, TEXT, IMAGE, BOUNDARY = 0, 1, 2, 3
SEGMENT_NAMES = {TEXT: "text", IMAGE: "image", BOUNDARY: "boundary"}


def vocabulary() -> list[str]:
    """Every word a ShapeWorld trajectory uses, in a fixed order."""
    words = list(SHAPES) + list(PLURALS.values()) + list(COLORS) + list(NUMBER_WORDS.values())
    words += [w for rel in RELATIONS for w in rel.split()]
    words += _FUNCTION_WORDS + PUNCT
    return list(dict.fromkeys(words))


def build_text_tokenizer(num_codes: int):
    """A word-level `PreTrainedTokenizerFast` over specials + words + `<img_k>` code tokens."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {}
    for tok in SPECIALS + vocabulary() + [f"<img_{k}>" for k in range(num_codes)]:
        vocab.setdefault(tok, len(vocab))
    tk = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tk.pre_tokenizer = pre_tokenizers.Whitespace()
    tok = PreTrainedTokenizerFast(tokenizer_object=tk, unk_token="<unk>", pad_token="<pad>",
                                  eos_token="<eos>", bos_token="<prompt>")
    tok.add_special_tokens({"additional_special_tokens": [t for t in SPECIALS if t not in
                                                          ("<pad>", "<unk>", "<eos>", "<prompt>")]})
    return tok


def join_words(words: list[str]) -> str:
    """Words back to text: punctuation attaches to the word before it (never to other punctuation,
    which the word-level pre-tokenizer would read back as one unknown token such as '..')."""
    out = ""
    prev = ""
    for w in words:
        attach = w in PUNCT and prev not in PUNCT and out
        out += w if (attach or not out) else " " + w
        prev = w
    return out


@dataclass
class Encoded:
    input_ids: list[int]
    completion_mask: list[int]
    segments: list[int]


class Processor:
    """Turns trajectories into ids and back, for one tokenizer pair."""

    def __init__(self, tokenizer, image_tokenizer: ImageTokenizer) -> None:
        self.tokenizer = tokenizer
        self.image_tokenizer = image_tokenizer
        self.fixed_side = image_tokenizer.size  # the codebook tokenizes this canvas only (adapters resize)
        ids = tokenizer.convert_tokens_to_ids
        self.special = {t: ids(t) for t in SPECIALS}
        self.code_offset = ids("<img_0>")
        self.num_codes = image_tokenizer.num_codes
        self.codes_per_image = image_tokenizer.codes_per_image
        self.text_ids = list(range(self.special["<eos>"] + 1, self.code_offset))
        self.pad_id = self.special["<pad>"]
        self.eos_id = self.special["<eos>"]
        self._cache: dict[str, list[int]] = {}

    @property
    def vocab_size(self) -> int:
        return len(self.tokenizer)

    def is_code(self, token_id: int) -> bool:
        return self.code_offset <= token_id < self.code_offset + self.num_codes

    # ---- encoding -------------------------------------------------------------------------------

    def text_ids_of(self, text: str) -> list[int]:
        ids = self._cache.get(text)
        if ids is None:
            ids = self.tokenizer(text, add_special_tokens=False)["input_ids"]
            self._cache[text] = ids
        return ids

    def image_ids(self, image: np.ndarray) -> list[int]:
        return [self.code_offset + c for c in self.image_tokenizer.encode(image)]

    def prompt_ids(self, prompt: str) -> list[int]:
        s = self.special
        return [s["<prompt>"], *self.text_ids_of(prompt), s["</prompt>"]]

    def encode(self, t: Trajectory, with_eos: bool = True) -> Encoded:
        s = self.special
        ids: list[int] = []
        mask: list[int] = []
        seg: list[int] = []

        def put(tokens: list[int], kind: int, trained: bool) -> None:
            ids.extend(tokens)
            mask.extend([int(trained)] * len(tokens))
            seg.extend([kind] * len(tokens))

        def text(open_: str, body: str, close: str, trained: bool) -> None:
            put([s[open_], *self.text_ids_of(body), s[close]], TEXT, trained)

        def image(img: np.ndarray, trained: bool) -> None:
            put([s["<vision_start>"]], BOUNDARY, trained)
            put(self.image_ids(img), IMAGE, trained)
            put([s["<vision_end>"]], BOUNDARY, trained)

        put(self.prompt_ids(t.prompt), PROMPT, False)
        if t.single_pass:
            image(t.steps[0].image, True)
        for st in [] if t.single_pass else t.steps:
            plan_trained = not (st.wrong_plan or st.context)
            text("<ins>", st.instruction, "</ins>", plan_trained)
            text("<des>", st.description, "</des>", plan_trained)
            image(st.image, not (st.wrong_plan or st.wrong_image or st.context))
            text("<inspect>", st.inspection, "</inspect>", True)
            for r in st.refinements:
                text("<refine>", r.instruction, "</refine>", not r.context)
                image(r.image, not (r.wrong_image or r.context))
                text("<inspect>", r.inspection, "</inspect>", not r.context)
        if with_eos:
            put([s["<eos>"]], TEXT, True)
        return Encoded(ids, mask, seg)

    # ---- decoding -------------------------------------------------------------------------------

    def words(self, ids: list[int]) -> str:
        return join_words(self.tokenizer.convert_ids_to_tokens(list(ids)))

    def decode(self, ids: list[int], partial: bool = False) -> Trajectory:
        """Parse ids (a full sequence from <prompt>) back into a trajectory. Raises ValueError on a
        sequence that breaks the grammar; with `partial`, an unfinished last step is dropped instead."""
        inv = {v: k for k, v in self.special.items()}
        ids = list(ids)
        pos = 0

        def expect(tok: str) -> None:
            nonlocal pos
            if pos >= len(ids) or ids[pos] != self.special[tok]:
                got = inv.get(ids[pos], ids[pos]) if pos < len(ids) else "the end"
                raise ValueError(f"expected {tok} at position {pos}, got {got}")
            pos += 1

        def span(open_: str, close: str) -> str:
            nonlocal pos
            expect(open_)
            try:
                end = ids.index(self.special[close], pos)
            except ValueError:
                raise ValueError(f"{open_} at {pos - 1} is never closed") from None
            words = ids[pos:end]
            if any(w in inv or self.is_code(w) for w in words):
                raise ValueError(f"{open_} at {pos - 1} holds a non-word token")
            pos = end + 1
            return self.words(words)

        def image() -> np.ndarray:
            nonlocal pos
            expect("<vision_start>")
            codes = ids[pos: pos + self.codes_per_image]
            if len(codes) < self.codes_per_image or not all(self.is_code(c) for c in codes):
                raise ValueError(f"image span at {pos} is not {self.codes_per_image} codes")
            pos += self.codes_per_image
            expect("<vision_end>")
            return self.image_tokenizer.decode([c - self.code_offset for c in codes])

        prompt = span("<prompt>", "</prompt>")
        if pos < len(ids) and ids[pos] == self.special["<vision_start>"]:
            return single_pass_trajectory(prompt, image())
        steps: list[Step] = []
        try:
            while pos < len(ids) and ids[pos] != self.eos_id:
                step = Step(span("<ins>", "</ins>"), span("<des>", "</des>"), image(),
                            span("<inspect>", "</inspect>"))
                while pos < len(ids) and ids[pos] == self.special["<refine>"]:
                    ref = span("<refine>", "</refine>")
                    step.refinements.append(Refinement(ref, image(), span("<inspect>", "</inspect>")))
                steps.append(step)
        except ValueError:
            if not partial:
                raise
        return Trajectory(prompt, steps, source="rollout")

    # ---- persistence ----------------------------------------------------------------------------

    def save_pretrained(self, folder: str | Path) -> None:
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        self.tokenizer.save_pretrained(folder)
        self.image_tokenizer.save(folder)
        (folder / "processor.json").write_text(json.dumps({"processor": "strokes.tiny", "version": 1}))

    @classmethod
    def from_pretrained(cls, folder: str | Path) -> "Processor":
        from transformers import PreTrainedTokenizerFast

        folder = Path(folder)
        return cls(PreTrainedTokenizerFast.from_pretrained(folder), ImageTokenizer.load(folder))

