"""GRPO's robust final reward: a finished picture scored by atomic questions (TIFA / DSG style),
on hand-made judge answers and against GenEval's exact rule."""

from __future__ import annotations

import random

import pytest
from test_inspect_eval import hand_labelled

from judges import JudgeConfig, OracleJudge
from selfplay.questions import atomic_questions, question_contexts, question_score
from selfplay.rewards import judge_rollouts, reward_functions
from strokes.records import PromptRecord
from strokes.shapeworld.check import is_correct
from strokes.shapeworld.render import render
from strokes.shapeworld.scene import Obj, free_slots
from strokes.shapeworld.suites import sample_record, target_scene
from strokes.verdict import StepContext

POSITION = PromptRecord.from_json({"tag": "position", "include": [
    {"class": "circle", "count": 1, "color": "red"},
    {"class": "square", "count": 1, "color": "blue", "position": ["left of", 0]}], "prompt": ""})
COUNTING = PromptRecord.from_json({"tag": "counting", "include": [{"class": "circle", "count": 3}],
                                   "exclude": [{"class": "circle", "count": 4}], "prompt": ""})
COLOR_ATTR = PromptRecord.from_json({"tag": "color_attr", "include": [
    {"class": "circle", "count": 1, "color": "red"}, {"class": "square", "count": 1, "color": "blue"}], "prompt": ""})


def test_one_question_per_part_of_the_prompt_a_relation_after_its_objects():
    qs = atomic_questions(POSITION)
    assert [(q.tag, q.text, parents) for q, parents in qs] == [
        ("colors", "a red circle", ()), ("colors", "a blue square", ()),
        ("position", "a blue square left of a red circle", (0, 1))]
    (count, _), = atomic_questions(COUNTING)
    assert (count.tag, count.text, count.exclude) == ("counting", "three circles", COUNTING.exclude)  # exactly three
    assert [q.text for q, _ in atomic_questions(COLOR_ATTR)] == ["a red circle", "a blue square"]
    assert atomic_questions(PromptRecord.free_text("a cat on a mat")) == []


@pytest.mark.parametrize("record, answers, score", [
    (COLOR_ATTR, [True, True], 1.0), (COLOR_ATTR, [True, False], 0.5), (COLOR_ATTR, [False, False], 0.0),
    (POSITION, [True, True, True], 1.0),
    (POSITION, [True, True, False], 2 / 3),  # both objects, the relation wrong
    (POSITION, [True, False, True], 1 / 3),  # a relation to an object that is not there counts no
    (COUNTING, [False], 0.0),
    (POSITION, [True, None, True], None),  # an answer missing: no reward (TRL leaves it out)
])
def test_the_score_is_the_share_of_yes_answers(record, answers, score):
    assert question_score(record, answers) == (score if score is None else pytest.approx(score))


def test_one_mistake_of_the_judge_costs_one_question_not_the_whole_reward():
    """A right picture whose relation the judge misreads keeps 2/3 (a holistic verdict: 0); a wrong
    one whose missing object the judge misses gains one question's share (a holistic verdict: 1)."""
    assert question_score(POSITION, [True, True, False]) == pytest.approx(2 / 3)
    assert question_score(COLOR_ATTR, [True, True]) == 1.0 and question_score(COLOR_ATTR, [True, False]) == 0.5


def test_with_the_exact_judge_all_yes_is_genevals_rule():
    """Asked by the exact judge, the questions of a picture are all yes exactly when GenEval's rule
    passes it: on each task's target scenes, with an object removed, recoloured or moved."""
    oracle = OracleJudge()
    rng = random.Random(4)
    outcomes = set()
    for task in ("single_object", "two_object", "counting", "colors", "position", "color_attr"):
        for _ in range(6):
            rec = sample_record(task, rng, "train")
            scene = target_scene(rec, rng)
            first = scene.objects[0]
            variants = [scene, scene.without(0), scene.replaced(0, Obj(first.shape, "green" if first.color != "green"
                                                                      else "red", first.x, first.y))]
            slots = free_slots(scene)
            if slots:
                variants.append(scene.replaced(0, first.moved(*rng.choice(slots))))
            for variant in variants:
                image = render(variant)
                contexts = [StepContext(q.text, "", q.text, image, q.to_json()) for q, _ in atomic_questions(rec)]
                answers = [v.aligned for v in oracle.judge(contexts)]
                outcomes.add(exact := is_correct(rec, image))
                assert (question_score(rec, answers) == 1.0) == exact, (task, variant)
    assert outcomes == {True, False}


def test_a_judge_that_says_how_sure_it_is_grades_each_question():
    """With the judge's P(yes) per question a relation scores its own P(yes) times its objects':
    an unsure yes earns less than a sure one, a sure yes/no answer scores as before."""
    assert question_score(POSITION, [0.9, 0.8, 0.5]) == pytest.approx((0.9 + 0.8 + 0.5 * 0.9 * 0.8) / 3)
    assert question_score(POSITION, [1.0, 1.0, 0.0]) == question_score(POSITION, [True, True, False])
    assert question_score(POSITION, [0.9, None, 0.5]) is None


def test_the_final_reward_grades_each_answer_by_the_judges_p_yes():
    """A judge that says how sure it is (the stand-in VLM here, an endpoint's logprobs in a run)
    grades the final reward; whether the picture is right stays its yes/no answers' call."""
    from judges.vlm import VLMJudge, load_profile

    trajectories = hand_labelled()
    sure = judge_rollouts(trajectories, VLMJudge(load_profile("typical"), graded=True), questions=True)
    plain = judge_rollouts(trajectories, VLMJudge(load_profile("typical"), graded=False), questions=True)
    assert [j.final for j in sure] == [j.final for j in plain]
    for t, j in zip(trajectories, sure):
        graded = VLMJudge(load_profile("typical")).judge_graded(question_contexts(t))
        expected = question_score(PromptRecord.from_json(t.record), [1.0 - p for _, p in graded])
        assert j.final_score == pytest.approx(expected) and 0.0 < j.final_score < 1.0


def test_the_final_reward_is_the_share_and_counts_its_questions():
    trajectories = hand_labelled()
    judged = judge_rollouts(trajectories, OracleJudge(), questions=True)
    rewards = reward_functions()["final"]([t.prompt for t in trajectories], [""] * len(trajectories), judged=judged)
    for t, j, r in zip(trajectories, judged, rewards):
        rec = PromptRecord.from_json(t.record)
        assert j.final == is_correct(rec, t.final_image) and r == j.final_score
        assert j.asked == sum(1 + len(s.refinements) for s in t.steps) + len(question_contexts(t))
    assert JudgeConfig(kind="gpt").asks_questions and JudgeConfig(kind="vlm").asks_questions
    assert not JudgeConfig(kind="self").asks_questions and not JudgeConfig(kind="gpt", final_reward="holistic").asks_questions
