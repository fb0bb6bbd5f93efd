"""The processor and image tokenizer: lossless both ways, and the loss falls where it should.

Encode -> decode gives back every text and every pixel; the patch codebook reproduces every ground
truth render of a test suite exactly (and the scorer agrees); nothing maps to <unk>. The loss mask is
checked by reading the ids with the grammar (docs/design.md §4): no loss on the prompt, on a deliberately
wrong plan (its <ins>, <des> and sketch) or on a deliberately wrong sketch; loss on everything else.
"""

from __future__ import annotations

import random

import numpy as np
import pytest
from test_pipelines import make

from strokes.data.build import summarize
from strokes.data.pipelines import SOURCES, PipelineConfig, TrajectoryMaker
from strokes.model.processor import BOUNDARY, IMAGE, PROMPT, TEXT, Processor
from strokes.model.policy import Policy
from strokes.model.tiny import ModelConfig
from strokes.records import TASKS
from strokes.shapeworld import check, make_suite, render, target_scene
from strokes.trajectory import Trajectory

PER_TASK = 10  # 60 trajectories per source


@pytest.fixture(scope="module")
def processor() -> Processor:
    """The tiny policy's processor (the codebook fit takes ~10-15 s, so once per module)."""
    import torch

    torch.set_num_threads(1)
    return Policy.build(ModelConfig(hidden_size=32, num_layers=1, num_heads=2, intermediate_size=64)).processor


@pytest.fixture(scope="module")
def trajectories() -> dict[str, list[tuple[str, Trajectory]]]:
    maker = TrajectoryMaker()
    return {src: [make(src, task, i, maker) for task in TASKS for i in range(PER_TASK)] for src in SOURCES}


def texts_and_images(t: Trajectory) -> list:
    """What a token sequence carries: the prompt, and per step its texts and visual states."""
    out: list = [t.prompt]
    for s in t.steps:
        out += [s.instruction, s.description, s.image, s.inspection]
        for r in s.refinements:
            out += [r.instruction, r.image, r.inspection]
    return out


@pytest.mark.parametrize("source", SOURCES)
def test_encode_then_decode_is_the_identity(processor, trajectories, source):
    for seed, t in trajectories[source]:
        back = processor.decode(processor.encode(t).input_ids)
        assert back.single_pass == t.single_pass, seed
        want, got = texts_and_images(t), texts_and_images(back)
        assert len(want) == len(got), seed
        for a, b in zip(want, got):
            if isinstance(a, np.ndarray):
                assert b.dtype == np.uint8 and np.array_equal(a, b), f"seed {seed}: pixels differ"
            else:
                assert a == b, seed


def test_no_token_is_unknown(processor, trajectories):
    unk = processor.special["<unk>"]
    for source, items in trajectories.items():
        for seed, t in items:
            ids = processor.encode(t).input_ids
            assert unk not in ids, seed
            assert all(0 <= i < processor.vocab_size for i in ids), seed


def test_image_tokenizer_is_lossless_on_a_test_suite(processor):
    """300 test-split records, ground truth rendered, encoded to 64 codes and decoded: every image is
    pixel-identical, so the scorer says 100% (the tokenizer cannot confound what the model learns)."""
    tok = processor.image_tokenizer
    suite = make_suite("test", 50, seed=0)
    assert len(suite) == 300
    correct = 0
    for i, rec in enumerate(suite):
        image = render(target_scene(rec, random.Random(i)))
        codes = tok.encode(image)
        assert len(codes) == tok.codes_per_image == 64
        decoded = tok.decode(codes)
        assert np.array_equal(decoded, image), rec.text
        correct += not check(rec, decoded)
    assert correct == 300


def expected_loss(processor: Processor, t: Trajectory, ids: list[int]) -> tuple[list[int], list[int]]:
    """The mask and segment kinds the grammar calls for, read off the ids independently of encode()."""
    name = {v: k for k, v in processor.special.items()}
    end_prompt = ids.index(processor.special["</prompt>"])
    mask, segs = [0] * (end_prompt + 1), [PROMPT] * (end_prompt + 1)
    step, ref, part = -1, -1, ""
    for i in ids[end_prompt + 1:]:
        tok = name.get(i)
        if tok == "<ins>":
            step, ref, part = step + 1, -1, "plan"
        elif tok == "<refine>":
            ref, part = ref + 1, "refine"
        elif tok == "<inspect>":
            part = "inspect"
        elif tok == "<eos>":
            part = "eos"
        elif tok == "<vision_start>":
            part = {"plan": "sketch", "refine": "refined"}.get(part, "single pass image")
        s = t.steps[step] if step >= 0 else None
        trained = {
            "plan": lambda: not s.wrong_plan,
            "sketch": lambda: not (s.wrong_plan or s.wrong_image),
            "refined": lambda: not s.refinements[ref].wrong_image,
        }.get(part, lambda: True)()
        mask.append(int(trained))
        segs.append(IMAGE if processor.is_code(i) else BOUNDARY if tok in ("<vision_start>", "<vision_end>") else TEXT)
    assert step == (-1 if t.single_pass else len(t.steps) - 1)
    return mask, segs


def test_loss_mask_and_segments_follow_the_grammar(processor, trajectories):
    for source, items in trajectories.items():
        for seed, t in items:
            enc = processor.encode(t)
            assert len(enc.input_ids) == len(enc.completion_mask) == len(enc.segments), seed
            mask, segs = expected_loss(processor, t, enc.input_ids)
            assert enc.completion_mask == mask, seed
            assert enc.segments == segs, seed


def test_the_masked_tokens_are_exactly_the_deliberate_mistakes(processor):
    """A conflict-set trajectory with a wrong plan: after the prompt, the tokens without loss read
    exactly '<ins> …wrong instruction… </ins> <des> … </des> <vision_start> 64 codes <vision_end>'."""
    maker = TrajectoryMaker(PipelineConfig(conflict_negative=1.0, alignment_negative=1.0))
    _, t = make("conflict", "color_attr", 1, maker)
    (wrong,) = [s for s in t.steps if s.wrong_plan]
    enc = processor.encode(t)
    start = enc.input_ids.index(processor.special["</prompt>"]) + 1
    masked = [i for i, m in zip(enc.input_ids[start:], enc.completion_mask[start:]) if not m]
    sp = processor.special
    assert masked == [sp["<ins>"], *processor.text_ids_of(wrong.instruction), sp["</ins>"],
                      sp["<des>"], *processor.text_ids_of(wrong.description), sp["</des>"],
                      sp["<vision_start>"], *processor.image_ids(wrong.image), sp["<vision_end>"]]

    _, t = make("alignment", "position", 1, maker)
    (wrong,) = [s for s in t.steps if s.wrong_image]
    enc = processor.encode(t)
    start = enc.input_ids.index(processor.special["</prompt>"]) + 1
    masked = [i for i, m in zip(enc.input_ids[start:], enc.completion_mask[start:]) if not m]
    assert masked == [sp["<vision_start>"], *processor.image_ids(wrong.image), sp["<vision_end>"]]
    assert processor.words(processor.text_ids_of(wrong.inspection)) == wrong.inspection


def test_summary_token_lengths_are_the_processor_lengths(processor, trajectories):
    """`data build`'s token statistics count exactly what the processor emits."""
    trajs = [t for items in trajectories.values() for _, t in items]
    lengths = [len(processor.encode(t).input_ids) for t in trajs]
    tokens = summarize(trajs, processor.codes_per_image)["tokens"]
    assert tokens["total"] == sum(lengths) and tokens["max"] == max(lengths)


def test_decode_rejects_a_broken_sequence_or_drops_the_unfinished_step(processor, trajectories):
    seed, t = next((s, t) for s, t in trajectories["scene_graph"] if len(t.steps) >= 2)
    ids = processor.encode(t, with_eos=False).input_ids
    cut = len(ids) - 10  # inside the last inspection
    with pytest.raises(ValueError, match="never closed"):
        processor.decode(ids[:cut])
    partial = processor.decode(ids[:cut], partial=True)
    assert [s.instruction for s in partial.steps] == [s.instruction for s in t.steps[:-1]], seed
    with pytest.raises(ValueError, match="expected <ins>"):
        processor.decode(ids + [processor.special["<des>"]])


def test_processor_saves_and_loads_offline(processor, trajectories, tmp_path):
    processor.save_pretrained(tmp_path)
    again = Processor.from_pretrained(tmp_path)
    assert again.vocab_size == processor.vocab_size and again.special == processor.special
    for seed, t in trajectories["alignment"][:20]:
        ids = processor.encode(t).input_ids
        assert again.encode(t).input_ids == ids, seed
        assert np.array_equal(again.decode(ids).final_image, t.final_image), seed


def test_generated_runs_of_punctuation_read_back_without_unknown_tokens():
    """A sampled span may hold '. .' or ': .'; its text must tokenize back to the same ids."""
    from strokes.model.processor import build_text_tokenizer, join_words

    tok = build_text_tokenizer(4)
    words = ["aligned", ".", ".", "the", ":", ".", "image", "."]
    text = join_words(words)
    ids = tok(text, add_special_tokens=False)["input_ids"]
    assert tok.convert_ids_to_tokens(ids) == words
