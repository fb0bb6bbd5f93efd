"""The rollout engine on one process: grammar, caching, modes, judge in the loop, outputs, resume, CLI.

Everything runs a real (tiny, random) policy: an untrained model is the harshest test of the
grammar, since nothing but the constraints keeps its samples well-formed.
"""

from __future__ import annotations

import contextlib
import io
import json
from dataclasses import replace

import numpy as np
import pytest
import torch
from test_rollout_support import tiny_checkpoint

from rollout import Engine, RolloutConfig, RolloutDir, rollout, write_geneval
from rollout import decoder
from rollout.decoder import Output
from rollout.grammar import Grammar
from rollout.interventions import JudgeInTheLoop, PlanReview
from selfplay.cli import main
from selfplay.visualize import BORDER, GAP, strip_image
from strokes.data.pipelines import TrajectoryMaker
from strokes.errors import InputError
from strokes.language import inspection_text, parse_description
from strokes.model.policy import Policy
from strokes.records import write_records
from strokes.shapeworld import detect, make_suite
from strokes.shapeworld.check import check_items
from strokes.shapeworld.scene import noun_phrase
from strokes.verdict import Conflict, ConflictKind, StepContext, Verdict


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    return tiny_checkpoint(tmp_path_factory)


@pytest.fixture(scope="module")
def policy(checkpoint):
    torch.set_num_threads(1)
    return Policy.from_pretrained(checkpoint)


@pytest.fixture(scope="module")
def suite():
    return make_suite("test", 4, 0)  # 24 records, four per task


class ShapeJudge:
    """A real judge built from ShapeWorld's checker: a visual state is aligned iff the image shows
    exactly what the step's description says (`check_items` on `detect`). A description that does
    not parse is judged strictly when the prompt mentions a circle (every detected object is extra:
    "remove" it) and leniently otherwise (nothing to check), so a random model meets both verdicts."""

    def __init__(self) -> None:
        self.calls: list[list[StepContext]] = []

    def judge(self, contexts: list[StepContext]) -> list[Verdict]:
        self.calls.append(list(contexts))
        out = []
        for c in contexts:
            dets = detect(c.image)
            items = parse_description(c.description)
            if items is not None:
                conflicts = check_items(items, dets)
            elif "circle" in c.prompt:
                conflicts = [Conflict(kind=ConflictKind.extra_object, source="image",
                                      subject=noun_phrase(d.shape, 1, d.color), expected="",
                                      found=noun_phrase(d.shape, 1, d.color)) for d in dets]
            else:
                conflicts = []
            conflicts = conflicts[:2]
            correction = ""
            if conflicts:
                correction = f"remove the {dets[0].color} {dets[0].shape}" if dets else "add a red circle"
            out.append(Verdict(aligned=not conflicts, conflicts=conflicts, correction=correction))
        return out


# ---- the grammar, checked independently of the engine's own state machine ---------------------------

def assert_grammatical(ids: list[int], processor, cfg: RolloutConfig) -> None:
    """Token-level checks written from processor.py's grammar, plus a strict decode."""
    s, cpi = processor.special, processor.codes_per_image
    text_ids = set(processor.text_ids)
    opens = {s["<ins>"]: s["</ins>"], s["<des>"]: s["</des>"], s["<inspect>"]: s["</inspect>"],
             s["<refine>"]: s["</refine>"], s["<prompt>"]: s["</prompt>"]}
    assert ids[-1] == processor.eos_id and ids.count(processor.eos_id) == 1
    i = 0
    while i < len(ids):
        t = ids[i]
        if t == s["<vision_start>"]:
            body = ids[i + 1: i + 1 + cpi]
            assert len(body) == cpi and all(processor.is_code(c) for c in body), "image span is not 64 codes"
            assert ids[i + 1 + cpi] == s["<vision_end>"]
            i += cpi + 2
            continue
        assert not processor.is_code(t), "a code outside an image span"
        if t in opens:
            end = ids.index(opens[t], i)
            words = ids[i + 1: end]
            assert all(w in text_ids for w in words), "a non-word inside a text span"
            if t != s["<prompt>"]:
                assert 1 <= len(words) <= cfg.max_text_tokens
            i = end + 1
            continue
        i += 1
    traj = processor.decode(ids)  # strict: raises on any grammar error
    if cfg.mode == "single_pass":
        assert traj.single_pass and ids[-2] == s["<vision_end>"]
    else:
        assert 1 <= len(traj.steps) <= cfg.max_steps
        assert all(len(st.refinements) <= cfg.max_refines for st in traj.steps)
        assert ids[-2] == s["</inspect>"]


def decode_all(engine: Engine, prompts, seed: int, **run) -> list[Output]:
    contexts = [engine.processor.prompt_ids(p.text) for p in prompts]
    return engine.decoder.run(contexts, engine.generator(seed), **run)


@pytest.mark.parametrize("mode,kv_cache,compact,refill", [("process", "growing", 0.0, 0.25),
                                                         ("process", "dynamic", 1.0, 0.0),
                                                         ("single_pass", "growing", 0.0, 0.0)])
def test_untrained_samples_never_break_the_grammar(policy, suite, mode, kv_cache, compact, refill):
    """Hundreds of trajectories from a random model, with refills, compaction and both cache kinds."""
    cfg = RolloutConfig(mode=mode, batch_size=16, max_steps=3, max_refines=2, max_text_tokens=6,
                        kv_cache=kv_cache, compact_fraction=compact, refill_fraction=refill)
    engine = Engine(policy, cfg)
    prompts = (list(suite) * 5)[: 50 if kv_cache == "dynamic" else 100] if mode == "process" else list(suite) * 5
    outs = decode_all(engine, prompts, seed=1)
    assert not [o.error for o in outs if o.error]
    for o in outs:
        assert_grammatical(o.ids, policy.processor, cfg)
    if mode == "process":  # the caps were reached, so they were exercised
        trajs = [policy.processor.decode(o.ids) for o in outs]
        assert max(len(t.steps) for t in trajs) == cfg.max_steps
        assert max(len(st.refinements) for t in trajs for st in t.steps) == cfg.max_refines
    assert engine.decoder.stats["refills"] > 1 and (engine.decoder.stats["merges"] > 1 or not refill)
    if mode == "process" and compact == 0.0:  # (single-pass rows all end together)
        assert engine.decoder.stats["compactions"] >= 1


def test_budget_caps_every_sequence_inside_the_model_positions(policy, suite):
    """A small max_new_tokens still ends every row with <eos>: steps stop opening when they might not fit."""
    cfg = RolloutConfig(batch_size=8, max_steps=8, max_refines=2, max_text_tokens=10, max_new_tokens=300)
    engine = Engine(policy, cfg)
    outs = decode_all(engine, suite[:12], seed=2)
    for o in outs:
        assert not o.error and len(o.generated) <= 300
        assert_grammatical(o.ids, policy.processor, cfg)
    tiny = Engine(policy, RolloutConfig(max_new_tokens=40))  # not even one step fits
    trajs = tiny.run(suite[:2])
    assert all(t.meta["failed"] and not t.steps for t in trajs)


def test_batched_state_machine_agrees_with_replay(policy, suite):
    """The tensor machine used while decoding and the plain-Python replay give the same states."""
    cfg = RolloutConfig(batch_size=8, max_steps=2, max_text_tokens=5)
    engine = Engine(policy, cfg)
    g: Grammar = engine.decoder.grammar
    for o in decode_all(engine, suite[:6], seed=3):
        r = g.replay(o.ids[: o.context_length])
        st = [torch.tensor([v]) for v in (r.state, r.span, r.steps, r.refines)]
        for n, tok in enumerate(o.ids[o.context_length:], start=o.context_length):
            st = list(g.advance(torch.tensor([tok]), *st))
            ref = g.replay(o.ids[: n + 1])
            assert [int(x) for x in st] == [ref.state, ref.span, ref.steps, ref.refines]


# ---- the cache: batched, refilled, compacted, paused and rewound decoding is a plain forward --------

def assert_decoding_matches_forward(engine: Engine, outs: list[Output], forced_of) -> int:
    """At every position the model chose (not `forced_of(ids)`), the logits the engine sampled from
    equal a plain full forward's over the final sequence (so positions, masks, holes and dropped
    tokens were all right), and its greedy token is the grammar-masked argmax. Returns how many
    positions were checked."""
    model, grammar = engine.model, engine.decoder.grammar
    seen = {(k, t): lg for k, t, lg in engine.decoder.trace}  # the last record wins after a rewind
    checked = 0
    for k, out in enumerate(outs):
        with torch.no_grad():
            full = model(input_ids=torch.tensor([out.ids])).logits[0].float()
        budget = min(engine.decoder.max_new_tokens, model.config.max_position_embeddings - out.context_length)
        forced = forced_of(out.ids)
        for t in range(out.context_length, len(out.ids)):
            if t in forced:  # written, not sampled: the logits at hand were not used
                continue
            assert torch.allclose(seen[(k, t)], full[t - 1], atol=1e-4, rtol=1e-4), f"row {k} position {t}"
            checked += 1
            r = grammar.replay(out.ids[:t])
            left = budget - (t - out.context_length)
            mid = grammar.mask_ids(*(torch.tensor([v]) for v in (r.state, r.span, r.steps, r.refines, left)))
            allowed = grammar.masks[mid][0]
            row = full[t - 1].masked_fill(~allowed, float("-inf"))
            assert bool(allowed[out.ids[t]]) and float(row[out.ids[t]]) >= float(row.max()) - 1e-4
    return checked


def forced_positions(ids: list[int], processor, kinds: tuple[str, ...]) -> set[int]:
    """Positions inside (and including the tags of) spans an intervention wrote."""
    s = processor.special
    out, i = set(), 0
    while i < len(ids):
        for kind in kinds:
            if ids[i] == s[f"<{kind}>"]:
                end = ids.index(s[f"</{kind}>"], i)
                out.update(range(i, end + 1))
                i = end
                break
        i += 1
    return out


def test_judge_loop_decoding_equals_a_plain_forward(policy, suite):
    """Judge mode pauses rows (holes in the cache), refills and compacts: greedy tokens must still be
    exactly what a fresh forward over the final sequence predicts."""
    cfg = RolloutConfig(mode="judge", temperature=0, batch_size=4, refill_fraction=0.25, max_steps=2,
                        max_refines=1, max_text_tokens=8)
    engine = Engine(policy, cfg, judge=ShapeJudge())
    prompts = suite[:9]
    handler = JudgeInTheLoop(engine.judge, policy.processor, engine.decoder.grammar, [None] * len(prompts))
    engine.decoder.trace = []
    outs = decode_all(engine, prompts, seed=0, pause_tokens=handler.pause_tokens, on_pause=handler)
    stats = engine.decoder.stats
    assert stats["interventions"] > 1 and stats["merges"] >= 1 and stats["compactions"] >= 1
    for o in outs:
        assert forced_positions(o.ids, policy.processor, ("inspect", "refine")), "the judge wrote nothing"
    checked = assert_decoding_matches_forward(
        engine, outs, lambda ids: forced_positions(ids, policy.processor, ("inspect", "refine")))
    assert checked > 9 * 100


def test_rewritten_plans_are_masked_out_not_reencoded(policy, suite):
    """A rewritten plan replaces the model's in the context: the sequence holds the rewrite only, and
    later tokens are what a forward over that sequence predicts (the dropped plan left no trace).
    Contexts of very different lengths (bare prompts, and whole base trajectories to continue) join
    a batch of two, so rows are rewound after their cache was left-padded and trimmed."""
    cfg = RolloutConfig(temperature=0, batch_size=2, refill_fraction=0.5, max_steps=8, max_refines=1,
                        max_text_tokens=8)
    engine = Engine(policy, cfg)
    p, s = policy.processor, policy.processor.special
    maker, rng = TrajectoryMaker(), __import__("random").Random(0)
    contexts = []
    for n, rec in enumerate(suite[:6]):
        ids = p.prompt_ids(rec.text)
        if n % 2:  # continue a complete base trajectory (without its <eos>)
            ids = p.encode(maker.scene_graph(rec, rng), with_eos=False).input_ids
        contexts.append(ids)
    seen = []

    def hook(prompt, step, ins, des):
        seen.append((prompt, step))
        return ("add a red circle", "a red circle") if step % 2 else None

    review = PlanReview(hook, p, engine.decoder.grammar)
    engine.decoder.trace = []
    outs = engine.decoder.run(contexts, engine.generator(0), pause_tokens=review.pause_tokens, on_pause=review)
    assert {q for q, _ in seen} >= {r.text for n, r in enumerate(suite[:6]) if n % 2 == 0}
    assert any(step > 2 for _, step in seen), "no continued trajectory planned again"

    def rewritten(ids: list[int]) -> set[int]:
        """The spans of plans whose step number is odd (those the hook rewrote)."""
        out, step = set(), 0
        for i, t in enumerate(ids):
            if t == s["<ins>"]:
                step += 1
                if step % 2:
                    out.update(range(i, ids.index(s["</des>"], i) + 1))
        return out

    for o, ctx in zip(outs, contexts):
        traj = p.decode(o.ids)
        first_new = p.decode(ctx, partial=True).steps
        for n, st in enumerate(traj.steps[len(first_new):], start=len(first_new) + 1):
            assert (st.instruction == "add a red circle") == bool(n % 2) or st.instruction == "add a red circle"
    assert engine.decoder.stats["merges"] >= 2
    assert assert_decoding_matches_forward(engine, outs, rewritten) > 6 * 50
    engine.decoder.trace = None
    # Through the engine's own API too: the plan hook sees every plan before its sketch.
    trajs = engine.run(suite[:1], plan_hook=hook)
    assert trajs[0].steps[0].instruction == "add a red circle"


def test_rewind_after_the_rows_cache_was_left_padded(policy):
    """The bookkeeping case the test above may miss: a row is mid-plan when a much longer context
    joins (its cache gets left-padded), then its plan is rewritten (the dropped columns moved)."""
    from strokes.trajectory import Refinement, Step, Trajectory

    p, s = policy.processor, policy.processor.special
    blank = np.full((64, 64, 3), 255, np.uint8)

    def chain(refines: int) -> list[int]:
        """One step refined `refines` times: a long context that ends after an inspection."""
        st = Step("add a red circle", "a red circle", blank, "conflict.",
                  [Refinement("add a red circle", blank, "conflict.") for _ in range(refines)])
        return p.encode(Trajectory("a red circle", [st]), with_eos=False).input_ids

    cfg = RolloutConfig(temperature=0, batch_size=2, refill_fraction=0.5, max_steps=4, max_refines=1,
                        max_text_tokens=8)
    engine = Engine(policy, cfg)
    ending = chain(12)  # so long that only <eos> fits in its budget: it leaves after one token
    assert len(ending) > engine.decoder.max_positions - engine.decoder.grammar.worst_step - 1
    contexts = [p.prompt_ids("a blue square"), ending, chain(5)]

    def hook(prompt, step, ins, des):
        return ("add a blue square", "a blue square") if prompt == "a blue square" and step == 1 else None

    review = PlanReview(hook, p, engine.decoder.grammar)
    engine.decoder.trace = []
    outs = engine.decoder.run(contexts, engine.generator(0), pause_tokens=review.pause_tokens, on_pause=review)
    assert outs[1].generated == [p.eos_id] and engine.decoder.stats["merges"] == 1
    first = outs[0].ids.index(s["<ins>"])
    plan = set(range(first, outs[0].ids.index(s["</des>"], first) + 1))
    assert p.decode(outs[0].ids).steps[0].instruction == "add a blue square"
    assert_decoding_matches_forward(engine, outs, lambda ids: plan if ids == outs[0].ids else set())


# ---- modes ---------------------------------------------------------------------------------------

def test_judge_in_the_loop_writes_the_judges_verdicts(policy, suite):
    judge = ShapeJudge()
    cfg = RolloutConfig(mode="judge", batch_size=8, max_steps=3, max_refines=1, max_text_tokens=48)
    trajs = Engine(policy, cfg, judge=judge).run(suite[:12])
    assert max(len(c) for c in judge.calls) > 1, "the judge should see whole batches"
    aligned_seen = refined_seen = 0
    for t in trajs:
        assert "failed" not in t.meta
        verdicts = [Verdict(**v) for v in t.meta["verdicts"]]
        n = 0
        for st in t.steps:
            inspections = [st.inspection] + [r.inspection for r in st.refinements]
            for m, text in enumerate(inspections):
                v = verdicts[n]
                n += 1
                assert text == inspection_text(v)
                refined_next = m < len(st.refinements)
                if v.aligned:
                    aligned_seen += 1
                    assert not refined_next, "the model refined an aligned state by itself"
                else:
                    # A conflict is refined exactly while refinements are left.
                    assert refined_next == (m < cfg.max_refines)
                    if refined_next:
                        refined_seen += 1
                        assert st.refinements[m].instruction == v.correction
        assert n == len(verdicts) == len(t.images())
    assert aligned_seen and refined_seen
    # What the judge saw: history grows step by step; a refined state is compared with the rejected one.
    for batch in judge.calls:
        for c in batch:
            assert c.record is not None and c.prompt in {r.text for r in suite}
            assert c.image.shape == (64, 64, 3)
            for h in c.history:
                assert h.inspection  # earlier steps are complete


def test_a_conflict_first_redraws_the_whole_step_while_retries_last(policy, suite):
    """rollout.retries: a judged conflict forgets the step (its verdict stays on record) and the model
    draws it again, at most `retries` times per step; only then is it refined in context."""
    judge = ShapeJudge()
    cfg = RolloutConfig(mode="judge", batch_size=8, max_steps=3, max_refines=1, max_text_tokens=48, retries=2)
    trajs = Engine(policy, cfg, judge=judge).run(suite[:12])
    redrawn = 0
    for t in trajs:
        assert "failed" not in t.meta
        verdicts = [Verdict(**v) for v in t.meta["verdicts"]]
        n = forgotten = 0
        for st in t.steps:
            conflicts = next((i for i, v in enumerate(verdicts[n:]) if v.aligned), len(verdicts) - n)
            gone = min(conflicts, cfg.retries)  # the step's forgotten attempts: conflicts, at most `retries`
            n += gone
            forgotten += gone
            kept = [st.inspection] + [r.inspection for r in st.refinements]
            assert kept == [inspection_text(v) for v in verdicts[n: n + len(kept)]]
            assert not st.refinements or gone == cfg.retries, "refined before its retries were spent"
            n += len(kept)
        assert n == len(verdicts) and t.meta.get("retries", 0) == forgotten
        redrawn += forgotten
    assert redrawn, "no step was ever redrawn"


def test_the_models_own_conflict_redraws_the_step_from_its_plan(policy):
    """In process mode the retry follows the model's own Inspect: a conflict rewinds to the step's
    <ins> (`retries` times per step), an aligned inspection goes on."""
    import random

    from rollout.decoder import Paused
    from rollout.interventions import RetryOnConflict

    maker, rng = TrajectoryMaker(), random.Random(3)
    t = next(t for t in (maker.alignment(r, rng) for r in make_suite("train", 3, 2) * 5)
             if any(st.refinements for st in t.steps[1:]))
    p, s = policy.processor, policy.processor.special
    ids = p.encode(t, with_eos=False).input_ids
    k = next(i for i, st in enumerate(t.steps) if i and st.refinements)  # step k's sketch is wrong
    starts = [i for i, x in enumerate(ids) if x == s["<ins>"]]
    inspect_ends = [i for i, x in enumerate(ids) if x == s["</inspect>"]]
    per_step = [1 + len(st.refinements) for st in t.steps]
    wrong = inspect_ends[sum(per_step[:k])]  # the </inspect> naming step k's conflict
    right = inspect_ends[sum(per_step[:k - 1])]  # step k-1's positive inspection
    handler = RetryOnConflict(p, retries=2)
    paused = lambda cut: Paused(key=0, ids=ids[: cut + 1], left=100, steps=k + 1, refines=0)  # noqa: E731
    assert handler([paused(right)])[0].drop == 0
    for _ in range(2):
        edit = handler([paused(wrong)])[0]
        assert edit.drop == wrong + 1 - starts[k] and edit.append == [s["<ins>"]]
    assert handler([paused(wrong)])[0].drop == 0  # retries spent: the model refines as trained
    assert handler.retries.used == {0: 2}
    accepting = RetryOnConflict(p, retries=0, accept=True)  # rollout.after_retries: accept
    edit = accepting([paused(wrong)])[0]
    opened = max(i for i in range(wrong) if ids[i] == s["<inspect>"])
    assert edit.drop == wrong + 1 - opened and edit.append == [s["<inspect>"], *p.text_ids_of("aligned")]
    assert accepting([paused(right)])[0].drop == 0


def test_a_judge_that_writes_only_its_verdict_leaves_the_inspection_to_the_model(policy, suite):
    """rollout.judge_writes: verdict — each inspection starts with the judge's verdict word and goes on
    in the model's own words; the judge's text and corrections are never written."""
    judge = ShapeJudge()
    cfg = RolloutConfig(mode="judge", batch_size=8, max_steps=3, max_refines=1, max_text_tokens=48,
                        judge_writes="verdict")
    trajs = Engine(policy, cfg, judge=judge).run(suite[:12])
    for t in trajs:
        assert "failed" not in t.meta
        verdicts = [Verdict(**v) for v in t.meta["verdicts"]]
        assert len(verdicts) == len(t.steps) and not any(st.refinements for st in t.steps)
        for st, v in zip(t.steps, verdicts):
            assert st.inspection.startswith("aligned" if v.aligned else "conflict")
    assert any(not Verdict(**v).aligned for t in trajs for v in t.meta["verdicts"])


def test_judge_sees_history_plan_state_and_previous_state(policy):
    """What the judge is shown, on a real base trajectory cut after a sketch and after a refinement."""
    import random

    from rollout.interventions import step_context

    maker, rng = TrajectoryMaker(), random.Random(3)
    t = next(t for t in (maker.alignment(r, rng) for r in make_suite("train", 3, 2) * 5)
             if any(st.refinements for st in t.steps[1:]))
    p, s = policy.processor, policy.processor.special
    k = next(i for i, st in enumerate(t.steps) if i and st.refinements)
    ids = p.encode(t, with_eos=False).input_ids
    ends = [i for i, x in enumerate(ids) if x == s["<vision_end>"]]
    per_step = [1 + len(st.refinements) for st in t.steps]
    sketch_end = ends[sum(per_step[:k])]  # the <vision_end> of step k's sketch
    refined_end = ends[sum(per_step[:k]) + 1]  # ... and of its first refinement
    for cut, image, previous in ((sketch_end, t.steps[k].image, t.steps[k - 1].final_image),
                                 (refined_end, t.steps[k].refinements[0].image, t.steps[k].image)):
        c = step_context(p, ids[: cut + 1], {"tag": "x"})
        assert c.prompt == t.prompt and c.record == {"tag": "x"}
        assert (c.instruction, c.description) == (t.steps[k].instruction, t.steps[k].description)
        assert np.array_equal(c.image, image) and np.array_equal(c.previous_image, previous)
        assert [h.instruction for h in c.history] == [st.instruction for st in t.steps[:k]]
    first = step_context(p, ids[: ends[0] + 1], None)
    assert first.history == [] and first.previous_image is None


def test_single_pass_and_same_seed(policy, suite):
    cfg = RolloutConfig(mode="single_pass", batch_size=8)
    a = Engine(policy, cfg).run(suite[:10], seed=5)
    b = Engine(policy, cfg).run(suite[:10], seed=5)
    c = Engine(policy, cfg).run(suite[:10], seed=6)
    assert all(t.single_pass and len(t.images()) == 1 and t.record for t in a)
    same = [np.array_equal(x.final_image, y.final_image) for x, y in zip(a, b)]
    assert all(same)
    assert not all(np.array_equal(x.final_image, y.final_image) for x, y in zip(a, c))


def test_decoding_on_cuda_runs_without_cudnn_attention(policy, suite, monkeypatch):
    """On an H200 cuDNN's attention kernel cost ~2.8 ms of host time per layer call in decoding
    (79 ms a decode step against 19 without it); the decoder runs every step under
    `decode_attention` of its device, which turns cuDNN off on CUDA and nothing elsewhere."""
    before = torch.backends.cuda.cudnn_sdp_enabled()
    with decoder.decode_attention("cuda"):
        assert not torch.backends.cuda.cudnn_sdp_enabled()
        assert torch.backends.cuda.flash_sdp_enabled() and torch.backends.cuda.mem_efficient_sdp_enabled()
    assert torch.backends.cuda.cudnn_sdp_enabled() == before
    with decoder.decode_attention(torch.device("cpu")):
        assert torch.backends.cuda.cudnn_sdp_enabled() == before
    entered = []

    def recording(device):
        entered.append(torch.device(device).type)
        return contextlib.nullcontext()

    monkeypatch.setattr(decoder, "decode_attention", recording)
    Engine(policy, RolloutConfig(batch_size=4, max_steps=1, max_text_tokens=6)).run(suite[:2], seed=0)
    assert entered and set(entered) == {"cpu"}


def test_top_k_one_and_a_tiny_top_p_sample_the_argmax(policy, suite):
    """The filters really filter: top_k=1 and top_p→0 leave only the best allowed token."""
    base = RolloutConfig(batch_size=8, max_steps=2, max_text_tokens=6)
    greedy = decode_all(Engine(policy, replace(base, temperature=0)), suite[:8], seed=0)
    for cfg in (replace(base, top_k=1), replace(base, top_p=1e-6), replace(base, temperature=0.7, top_k=1)):
        assert [o.ids for o in decode_all(Engine(policy, cfg), suite[:8], seed=7)] == [o.ids for o in greedy]
    sampled = decode_all(Engine(policy, replace(base, top_k=3, top_p=0.9)), suite[:8], seed=7)
    assert [o.ids for o in sampled] != [o.ids for o in greedy]
    for o in sampled:
        assert_grammatical(o.ids, policy.processor, base)


def test_process_mode_same_seed_same_trajectories(policy, suite):
    cfg = RolloutConfig(batch_size=6, max_steps=2, max_text_tokens=6)
    a = Engine(policy, cfg).run(suite[:8])
    b = Engine(policy, cfg).run(suite[:8])
    for x, y in zip(a, b):
        assert [(s.instruction, s.description, s.inspection) for s in x.steps] == \
               [(s.instruction, s.description, s.inspection) for s in y.steps]
        assert all(np.array_equal(i, j) for i, j in zip(x.images(), y.images()))
        assert x.record == y.record and x.meta["mode"] == "process"


def test_inspect_is_the_policys_own_judgment(policy):
    """The self judge's callable: the policy writes <inspect> (and maybe <refine>) for real steps."""
    maker, rng = TrajectoryMaker(), __import__("random").Random(0)
    contexts = []
    for rec in make_suite("train", 2, 1):
        t = maker.scene_graph(rec, rng)
        for n, st in enumerate(t.steps):
            contexts.append(StepContext(t.prompt, st.instruction, st.description, st.image, rec.to_json(),
                                        t.steps[:n], t.steps[n - 1].final_image if n else None))
    engine = Engine(policy, RolloutConfig(batch_size=8, max_text_tokens=12, max_refines=1))
    out = engine.inspect(contexts)
    assert len(out) == len(contexts)
    vocab = set(policy.processor.tokenizer.convert_ids_to_tokens(policy.processor.text_ids))
    for inspection, refine in out:
        assert 1 <= len(policy.processor.text_ids_of(inspection)) <= 12
        assert all(w in vocab for w in inspection.replace(".", " . ").replace(":", " : ").replace(",", " , ").split())
        assert refine == "" or len(policy.processor.text_ids_of(refine)) <= 12
    assert any(r for _, r in out) and any(not r for _, r in out)  # it chose both ways
    assert engine.inspect(contexts) == out  # same seed, same judgment


# ---- outputs, shards, resume -----------------------------------------------------------------------

@pytest.mark.parametrize("mode", ["process", "single_pass"])
def test_outputs_are_scoreable_in_geneval_layout(policy, suite, tmp_path, capsys, mode):
    records = suite[::4]  # six records
    cfg = RolloutConfig(mode=mode, batch_size=8, max_steps=2, max_text_tokens=6, shard_size=4)
    summary = rollout(records, tmp_path / "roll", cfg, policy=policy, samples=2, progress=False)
    assert summary.trajectories == 12 and summary.shards == 3 and summary.failed == 0
    trajs = RolloutDir(tmp_path / "roll").trajectories()
    assert sorted((t.meta["index"], t.meta["sample"]) for t in trajs) == [(i, k) for i in range(6) for k in range(2)]
    assert write_geneval(trajs, records, tmp_path / "geneval") == 6
    assert main(["score", str(tmp_path / "geneval"), "--json"]) == 0
    scored = json.loads(capsys.readouterr().out)
    assert sum(scored["counts"].values()) == 12
    assert json.loads((tmp_path / "roll" / "summary.json").read_text())["trajectories"] == 12


def test_resumed_rollout_redoes_no_finished_shard(policy, suite, tmp_path):
    cfg = RolloutConfig(batch_size=8, max_steps=2, max_text_tokens=6, shard_size=3)
    records = suite[:12]  # four shards
    written = []

    def crash_after_two(index: int) -> None:
        written.append(index)
        if len(written) == 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        rollout(records, tmp_path / "a", cfg, policy=policy, on_shard=crash_after_two, progress=False)
    folder = RolloutDir(tmp_path / "a")
    assert folder.finished() == [0, 1]
    stamps = {i: (folder.shard_dir(i) / "trajectories.jsonl").stat().st_mtime_ns for i in (0, 1)}
    computed = []
    summary = rollout(records, tmp_path / "a", cfg, policy=policy, on_shard=computed.append, progress=False)
    assert computed == [2, 3] and summary.shards_computed == 2 and summary.shards_skipped == 2
    assert {i: (folder.shard_dir(i) / "trajectories.jsonl").stat().st_mtime_ns for i in (0, 1)} == stamps
    assert summary.trajectories == 12
    # A finished rollout computes nothing more, and matches an uninterrupted one exactly.
    assert rollout(records, tmp_path / "a", cfg, policy=policy, progress=False).shards_computed == 0
    rollout(records, tmp_path / "b", cfg, policy=policy, progress=False)
    a, b = folder.trajectories(), RolloutDir(tmp_path / "b").trajectories()
    assert [t.meta for t in a] == [t.meta for t in b]
    assert all(np.array_equal(x.final_image, y.final_image) for x, y in zip(a, b))
    # The same folder never mixes two different rollouts.
    with pytest.raises(InputError, match="seed"):
        rollout(records, tmp_path / "a", RolloutConfig(seed=1, shard_size=3), policy=policy, progress=False)


def test_config_errors_name_the_field(policy):
    for bad, field in [(dict(top_p=0.0), "top_p"), (dict(mode="dream"), "mode"), (dict(batch_size=0), "batch_size"),
                       (dict(kv_cache="paged"), "kv_cache"), (dict(retries=-1), "retries")]:
        with pytest.raises(InputError, match=f"rollout.{field}"):
            RolloutConfig(**bad).validate()
    with pytest.raises(InputError, match="judge"):
        Engine(policy, RolloutConfig(mode="judge"))


# ---- the CLI ----------------------------------------------------------------------------------------

def test_sample_prints_steps_and_writes_the_strip(checkpoint, tmp_path, capsys, monkeypatch):
    out = tmp_path / "strip.png"
    code = main(["sample", str(checkpoint), "a red circle left of a blue square", "--out", str(out),
                 "--max-steps", "2", "--max-refines", "1"])
    text = capsys.readouterr().out
    assert code == 0 and "step 1" in text and "<ins>" in text and "inspect" in text
    from PIL import Image

    with Image.open(out) as im:
        w, h = im.size
    states = int(text.split(" visual states")[0].rsplit("\n", 1)[-1])
    cell = 64 * 4 + 2 * BORDER  # --scale 4, framed panels
    assert h == cell and w == states * cell + (states - 1) * GAP
    # Interactive: rewrite the first plan, keep the rest (end of input keeps everything).
    monkeypatch.setattr("sys.stdin", io.StringIO("add a blue square\na blue square\n"))
    code = main(["sample", str(checkpoint), "a blue square", "--out", str(tmp_path / "s2.png"),
                 "--interactive", "--max-steps", "2"])
    text = capsys.readouterr().out
    assert code == 0 and "<ins>     add a blue square" in text.split("prompt:  a blue square")[-1]
    assert main(["sample", str(checkpoint), "a pink elephant"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "pink, elephant" in err[0]


def test_eval_generates_scores_and_resumes(checkpoint, tmp_path, capsys):
    suite_path = tmp_path / "suite.jsonl"
    write_records(make_suite("test", 1, 3), suite_path)
    args = ["eval", str(checkpoint), "--suite", str(suite_path), "--mode", "single-pass", "--out",
            str(tmp_path / "ev"), "--samples", "2"]
    assert main(args) == 0
    text = capsys.readouterr().out
    assert "overall" in text and "| single_object |" in text.splitlines()[0] + " |"
    result = json.loads((tmp_path / "ev" / "score.json").read_text())
    assert sum(result["score"]["counts"].values()) == 12 and result["rollout"]["shards_computed"] == 1
    assert main(args) == 0  # everything already rolled out: nothing recomputed
    assert json.loads((tmp_path / "ev" / "score.json").read_text())["rollout"]["shards_computed"] == 0
    assert main(["score", str(tmp_path / "ev" / "geneval")]) == 0


def test_strip_shows_every_visual_state(policy, suite):
    t = Engine(policy, RolloutConfig(max_steps=2, max_refines=1, max_text_tokens=6)).run(suite[:1])[0]
    img = strip_image(t, scale=2)
    n = len(t.images())
    cell = 128 + 2 * BORDER
    assert img.shape == (cell, n * cell + (n - 1) * GAP, 3)
    assert np.array_equal(img[BORDER:BORDER + 128:2, BORDER:BORDER + 128:2], t.images()[0])
