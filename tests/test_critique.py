"""The critique builder on trajectories whose mistakes we know: each kind of rollout becomes the
training example the paper prescribes."""

from __future__ import annotations

import copy
import random
from collections import Counter

import pytest

from judges import OracleJudge, corrected_scene
from selfplay.critique import CritiqueConfig, build_self_critique, build_symbolic_critique, step_contexts
from strokes.data.pipelines import PipelineConfig, TrajectoryMaker
from strokes.language import parse_inspection
from strokes.records import TASKS, PromptRecord
from strokes.shapeworld import check, sample_record
from strokes.trajectory import Refinement


def as_rollout(t):
    """What a model that did not notice its mistake would have written: no refinements, and the
    inspection of every step claims all is well."""
    t = copy.deepcopy(t)
    for s in t.steps:
        s.refinements = []
        s.wrong_image = s.wrong_plan = False
        s.inspection = "aligned. the image follows the instruction and the scene matches the prompt."
    t.source = "rollout"
    return t


@pytest.fixture(scope="module")
def made():
    rng = random.Random(7)
    maker = TrajectoryMaker(PipelineConfig(alignment_negative=1.0, conflict_negative=1.0))
    records = [sample_record(TASKS[i % 6], rng) for i in range(60)]
    return {
        "misdrawn": [maker.alignment(r, rng) for r in records],
        "misplanned": [maker.conflict(r, rng) for r in records],
        "clean": [maker.scene_graph(r, rng) for r in records],
    }


def build(trajs, **kw):
    return build_self_critique(trajs, OracleJudge(), CritiqueConfig(confirmations=1.0, **kw), exact=corrected_scene)


def test_a_misdrawn_sketch_becomes_a_masked_mistake_an_inspection_a_refine_and_an_exact_fix(made):
    rollouts = [as_rollout(t) for t in made["misdrawn"]]
    traces, stats = build(rollouts)
    assert stats.outcomes["image_error"] == len(traces) and len(traces) >= 0.9 * len(rollouts)
    for t in traces:
        k = t.meta["step"]
        wrong = t.steps[k]
        assert wrong.wrong_image and not wrong.wrong_plan  # no loss on the model's own bad sketch
        assert not parse_inspection(wrong.inspection).aligned
        assert wrong.refinements and parse_inspection(wrong.refinements[-1].inspection).aligned
        assert not check(PromptRecord.from_json(t.record), t.final_image, strict=True)
        assert all(not s.wrong_image and not s.wrong_plan for s in t.steps[:k] + t.steps[k + 1:])
        # the model's own plans and sketches are context, never imitated; the exact continuation is
        assert all(s.context for s in t.steps[: k + 1]) and not any(s.context for s in t.steps[k + 1:])


def test_a_plan_that_contradicts_the_prompt_is_masked_and_corrected(made):
    traces, stats = build([as_rollout(t) for t in made["misplanned"]])
    assert stats.outcomes["plan_error"] > 0.5 * len(made["misplanned"])
    plan_traces = [t for t in traces if t.meta["outcome"] == "plan_error"]
    for t in plan_traces:
        wrong = t.steps[t.meta["step"]]
        assert wrong.wrong_plan and "contradicts the prompt" in wrong.inspection
        assert not check(PromptRecord.from_json(t.record), t.final_image, strict=True)
    assert {c.split(":")[0] for c in stats.conflicts} >= {"instruction"}


def test_correct_rollouts_are_confirmed_and_false_alarms_unlearned(made):
    clean = [as_rollout(t) for t in made["clean"]]
    traces, stats = build(clean)
    assert stats.outcomes["correct"] == len(clean) and len(traces) == len(clean)
    alarmed = copy.deepcopy(clean[:10])
    for t in alarmed:
        s = t.steps[0]
        s.inspection = "conflict. a red circle is missing."
        s.refinements = [Refinement("add a red circle", s.image, s.inspection)]
    traces, stats = build(alarmed)
    assert stats.outcomes["false_alarm"] == 10
    assert all(not s.refinements and parse_inspection(s.inspection).aligned for t in traces for s in t.steps)


def test_learn_own_steps_trains_on_the_models_correct_plans_and_sketches_but_never_its_mistakes(made):
    confirmed, _ = build([as_rollout(t) for t in made["clean"]], learn_own_steps=True)
    assert confirmed and not any(s.context for t in confirmed for s in t.steps)
    traces, _ = build([as_rollout(t) for t in made["misdrawn"]], learn_own_steps=True)
    for t in traces:
        k = t.meta["step"]
        assert t.steps[k].context and t.steps[k].wrong_image  # the mistake itself stays masked
        assert not any(s.context for s in t.steps[:k] + t.steps[k + 1:])


def test_without_error_traces_only_the_rollouts_the_judge_accepted_whole_are_kept(made):
    """critique.error_traces: false with learn_own_steps — rejection-sampling fine-tuning: a wrong
    rollout is counted (and its conflicts) but trains nothing; a right one trains its own steps."""
    wrong = [as_rollout(t) for t in made["misdrawn"][:20]]
    right = [as_rollout(t) for t in made["clean"][:20]]
    traced, traced_stats = build(wrong + right, learn_own_steps=True)
    kept, stats = build(wrong + right, learn_own_steps=True, error_traces=False)
    errors = traced_stats.outcomes["image_error"] + traced_stats.outcomes["plan_error"]
    assert errors > 0 and stats.outcomes["error_untraced"] == errors + traced_stats.corrections_rejected
    assert stats.conflicts == traced_stats.conflicts  # the judge's findings are still counted
    assert [t.meta["outcome"] for t in kept] == ["confirmation"] * 20
    assert {t.prompt for t in kept} == {t.prompt for t in right}
    assert not any(s.context or s.wrong_image or s.wrong_plan or s.refinements for t in kept for s in t.steps)


def test_advantage_weighting_repeats_rarely_right_prompts_and_drops_always_right_ones(made):
    """critique.weighting: advantage — each accepted rollout is trained as often as GRPO's advantage
    of a right sample weights it, sqrt((1 - p) / p), scaled to keep the number of rows."""
    judge = OracleJudge()
    wrong = {t.prompt: as_rollout(t) for t in made["misdrawn"]
             if not all(v.aligned for v in judge.judge(step_contexts(as_rollout(t))))}
    right = {t.prompt: as_rollout(t) for t in made["clean"] if t.prompt in wrong}
    always, rarely, often = list(right)[:3]
    rollouts = ([right[always]] * 3 + [right[rarely]] + [wrong[rarely]] * 2  # p = 1, 1/3,
                + [right[often]] * 2 + [wrong[often]])  # 2/3
    uniform, _ = build(rollouts, learn_own_steps=True, error_traces=False)
    weighted, _ = build(rollouts, learn_own_steps=True, error_traces=False, weighting="advantage")
    assert Counter(t.prompt for t in uniform) == {always: 3, rarely: 1, often: 2}
    counts = Counter(t.prompt for t in weighted)
    # weights 0, sqrt(2), sqrt(1/2) x 2 rows, scaled by 6 / (2 sqrt(2)): 0, 3, 1.5 each
    assert always not in counts and counts[rarely] == 3 and 2 <= counts[often] <= 4


def test_without_repairs_a_trace_trains_inspections_only(made):
    """critique.train_repairs: false — the <refine> chain and the exact continuation become context:
    the only tokens with loss are inspections, among them the one naming the model's own mistake."""
    from pathlib import Path

    from strokes.model.processor import Processor
    from strokes.trajectory import from_row, to_row

    rollouts = [as_rollout(t) for t in made["misdrawn"][:20]]
    with_repairs, _ = build(rollouts)
    inspect_only, stats = build(rollouts, train_repairs=False)
    assert len(inspect_only) == len(with_repairs) and stats.outcomes["image_error"] == len(inspect_only)
    processor = Processor.from_pretrained(Path(__file__).resolve().parents[1] / "checkpoints" / "base")
    s = processor.special
    for t in inspect_only:
        t = from_row(to_row(t))  # the flag survives storage
        k = t.meta["step"]
        assert all(r.context for r in t.steps[k].refinements) and all(st.context for st in t.steps)
        enc = processor.encode(t)
        trained = [i for i, m in zip(enc.input_ids, enc.completion_mask) if m]
        assert s["<refine>"] not in trained and s["<ins>"] not in trained and s["<vision_start>"] not in trained
        assert trained.count(s["<inspect>"]) == len(t.steps)  # one per step: the refined states' are context
    assert sum(processor.encode(t).completion_mask.count(1) for t in inspect_only) < \
        sum(processor.encode(t).completion_mask.count(1) for t in with_repairs)


def test_label_every_state_adds_the_rollout_as_drawn_with_the_judges_inspections(made):
    """critique.label_every_state: a wrong rollout also comes back whole, each sketch's inspection the
    judge's verdict (conflicts after the first one included) and every other token context."""
    from pathlib import Path

    from strokes.model.processor import Processor

    rollouts = [as_rollout(t) for t in made["misdrawn"][:20] + made["misplanned"][:20]]
    plain, _ = build(rollouts)
    labelled, stats = build(rollouts, label_every_state=True)
    every = [t for t in labelled if t.meta["outcome"] == "every_state"]
    assert len(every) == stats.outcomes["every_state"] == len(labelled) - len(plain) > 0
    processor = Processor.from_pretrained(Path(__file__).resolve().parents[1] / "checkpoints" / "base")
    judge, s = OracleJudge(), processor.special

    def sketches(t):
        return [x.image.tobytes() for x in t.steps]

    for t in every:
        assert any(r.prompt == t.prompt and sketches(r) == sketches(t) for r in rollouts)  # as drawn
        verdicts = [parse_inspection(x.inspection).aligned for x in t.steps]
        assert not all(verdicts) and all(x.context for x in t.steps)
        assert verdicts == [v.aligned for v in judge.judge(step_contexts(t))]
        enc = processor.encode(t)
        trained = [i for i, m in zip(enc.input_ids, enc.completion_mask) if m]
        assert trained.count(s["<inspect>"]) == len(t.steps) and s["<ins>"] not in trained


def test_a_per_prompt_cap_keeps_one_confirmation_of_each_prompt(made):
    clean = [as_rollout(t) for t in made["clean"][:10]] * 3  # three correct samples of each of 10 prompts
    traces, stats = build(clean, confirmations_per_prompt=1)
    assert stats.outcomes["correct"] == 30
    prompts = [t.prompt for t in traces]
    assert len(prompts) == len(set(prompts)) and set(prompts) == {t.prompt for t in clean}


def test_inspect_stats_count_caught_mistakes_false_alarms_and_fixes(made):
    from selfplay.inspect_stats import inspect_stats

    clean = [as_rollout(t) for t in made["clean"][:20]]
    silent = [as_rollout(t) for t in made["misdrawn"][:20]]  # a mistake per rollout, never flagged
    st = inspect_stats(clean + silent, OracleJudge())
    assert st.wrong >= 18 and st.wrong_flagged == 0 and st.right_flagged == 0
    assert st.plan_errors == 0  # misdrawn: the plans are right, the sketches are not
    misplanned = inspect_stats([as_rollout(t) for t in made["misplanned"][:20]], OracleJudge())
    assert misplanned.plan_errors >= 18 and misplanned.to_json()["plan_recall"] == 0
    caught = [copy.deepcopy(t) for t in made["misdrawn"][:20]]  # flagged, and refined to the right image
    alarmed = copy.deepcopy(clean[:5])
    for t in alarmed:
        t.steps[0].refinements = [Refinement("add a red circle", t.steps[0].image, "conflict.")]
    st = inspect_stats(caught + alarmed, OracleJudge()).to_json()
    assert st["recall"] > 0.9 and st["fix_rate"] > 0.9 and st["right_flagged"] == 5


def test_symbolic_mode_perturbs_scene_graphs_of_the_same_prompts(made):
    records = [PromptRecord.from_json(t.record) for t in made["clean"]]
    traces = build_symbolic_critique(records, 30, CritiqueConfig(mode="symbolic"))
    assert len(traces) == 30 and all(t.source == "symbolic" for t in traces)
    assert all(any(s.refinements for s in t.steps) for t in traces)
    assert {t.prompt for t in traces} <= {r.text for r in records}
