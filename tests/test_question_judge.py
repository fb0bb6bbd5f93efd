"""The model's own understanding answering atomic questions (selfplay/question_judge.py, `selfplay
fit-judge`): near misses, the judge copy's rows and answers, its config, and the command end to end;
the transcriber copy's transcripts, its answers and `fit-judge --transcribe`."""

from __future__ import annotations

import json
import random

import numpy as np
import pytest
import torch

from judges import JudgeConfig, OracleJudge
from selfplay.cli import main
from selfplay.inspect_eval import visual_states
from selfplay.question_judge import QuestionJudge, Transcriber, asked, load_judge_copy, question_of, question_rows
from selfplay.questions import question_contexts
from selfplay.self_reading import TrajectoryReader
from selfplay.world.open import OpenWorld
from selfplay.world.shapeworld import ShapeWorld
from strokes.errors import InputError
from strokes.language import description_text
from strokes.model.policy import Policy
from strokes.records import PromptRecord
from strokes.shapeworld import Obj, Scene, detect, make_suite, render, target_scene
from strokes.shapeworld.check import Item
from strokes.shapeworld.scene import near_miss
from strokes.shapeworld.transcript import _paint_wrapped, read_transcript, transcript, understanding_pictures
from strokes.trajectory import Step, Trajectory, single_pass_trajectory
from test_inspect_eval import construction_labels, hand_labelled
from test_rollout_support import tiny_checkpoint


@pytest.fixture(scope="module")
def policy(tmp_path_factory):
    torch.set_num_threads(1)
    return Policy.from_pretrained(tiny_checkpoint(tmp_path_factory))


def drawn(rec: PromptRecord, seed: int = 0) -> Trajectory:
    """A one-step trajectory whose picture is the record's target scene: every question answered yes."""
    image = render(target_scene(rec, random.Random(seed)))
    return Trajectory(rec.text, [Step("", rec.text, image, "aligned")], rec.to_json(), "scene_graph")


def test_a_near_miss_edits_exactly_one_object():
    """Each near miss drops, copies, moves, recolours or reshapes one object of the scene and leaves
    the others where they were."""
    scene = Scene((Obj("circle", "red", 0, 0), Obj("square", "blue", 24, 24), Obj("triangle", "green", 48, 0)))
    rng = random.Random(0)
    edits = [near_miss(scene, rng) for _ in range(60)]
    for edited in edits:
        before, after = set(scene.objects), set(edited.objects)
        assert len(before - after) <= 1 and len(after - before) <= 1
        assert len(before & after) >= len(scene.objects) - 1
    counts = {len(e.objects) for e in edits}
    assert counts == {2, 3, 4}  # a drop, the edits in place, a copy
    assert near_miss(Scene(()), rng) is None


def test_a_near_miss_of_a_right_picture_turns_some_answers_to_no():
    """Asked of a right picture's near misses, a prompt's questions are sometimes answered no by the
    exact judge: the negatives a judge copy learns a count off by one or a flipped relation from."""
    rng = random.Random(1)
    answers = []
    for rec in make_suite("train", 4, 0, ("counting", "position")):
        t = drawn(rec)
        assert all(v.aligned for v in OracleJudge().judge(question_contexts(t)))
        edited = ShapeWorld.near_miss(t.final_image, rng)
        assert edited is not None and edited.shape == t.final_image.shape and len(detect(edited)) > 0
        miss = Trajectory(t.prompt, [Step("", rec.text, edited, "aligned")], t.record)
        answers += [v.aligned for v in OracleJudge().judge(question_contexts(miss))]
    assert 0 < answers.count(False) < len(answers)


def test_question_rows_train_only_the_verdict(policy):
    """A judge copy learns the answer, never to draw: in a question row only the inspection (and the
    end of the sequence) carries loss; the question and the picture are context."""
    t = drawn(make_suite("train", 1, 0, ("position",))[0])
    contexts = question_contexts(t)
    rows = question_rows(contexts, OracleJudge().judge(contexts))
    assert len(rows) == len(contexts) == 3  # two objects and their relation
    p = policy.processor
    for row in rows:
        enc = p.encode(row)
        trained = [i for i, m in zip(enc.input_ids, enc.completion_mask) if m]
        inspect_at = enc.input_ids.index(p.special["<inspect>"])
        assert trained == enc.input_ids[inspect_at:]
        assert row.steps[0].inspection.startswith("aligned")
    for c, row in zip(contexts, rows):  # a row puts back the question it was made from
        q = question_of(row)
        assert (q.prompt, q.instruction, q.description, q.record) == (c.prompt, c.instruction, c.description, c.record)
        assert (q.image == c.image).all()
    assert question_rows(contexts, [None] * len(contexts)) == []


def test_answers_in_a_batch_are_each_questions_own(policy):
    """Right-padded batches give every question the P(conflict) it gets alone (a causal model: no
    padding after the verdict can reach it), and the verdict is that P's side of the threshold."""
    contexts = []
    for rec in make_suite("train", 2, 3):
        contexts += question_contexts(drawn(rec))
    judge = QuestionJudge(policy, threshold=0.5)
    together = judge.p_conflict(contexts)
    alone = np.array([judge.p_conflict([c])[0] for c in contexts])
    assert len({len(policy.processor.encode(asked(c)).input_ids) for c in contexts}) > 1  # they do pad
    np.testing.assert_allclose(together, alone, atol=1e-6)
    assert all((p >= 0.5) == (not v.aligned) and q == p
               for (v, q), p in zip(judge.judge_graded(contexts), together))


def test_the_config_names_what_a_question_judge_needs(tmp_path):
    """One line each: a question judge is the model's own (kind self), answers questions, a self judge
    asked questions needs one, and its folder must hold a fitted judge."""
    with pytest.raises(InputError, match="'judge.question_judge' needs kind: self"):
        JudgeConfig(kind="gpt", question_judge="x")
    with pytest.raises(InputError, match="'judge.question_judge' answers atomic questions"):
        JudgeConfig(kind="self", question_judge="x", final_reward="likelihood")
    with pytest.raises(InputError, match="'judge.final_reward' questions with kind self needs judge.question_judge"):
        JudgeConfig(kind="self", final_reward="questions")
    assert JudgeConfig(kind="self", question_judge="x").asks_questions
    from selfplay.config import load_config

    with pytest.raises(InputError, match=f"judge.question_judge: {tmp_path} has no judge.json"):
        load_config(None, ["judge.kind=self", f"judge.question_judge={tmp_path}"])
    with pytest.raises(InputError, match="not a judge folder"):
        QuestionJudge.load(tmp_path)


def test_fit_judge_trains_a_copy_on_labelled_questions_and_measures_it(tmp_path, tmp_path_factory, capsys):
    """`selfplay fit-judge` end to end on a tiny checkpoint: labelled questions (its own pictures',
    their near misses', another prompt's), a held-out fifth of the prompts, a trained copy that
    `QuestionJudge.load` reads back with its held-out figures; a rerun resumes from the questions."""
    checkpoint = tiny_checkpoint(tmp_path_factory)
    out = tmp_path / "judge"
    args = ["fit-judge", str(checkpoint), "--out", str(out), "--prompts", "30", "--generations", "1",
            "--epochs", "1", "--near-misses", "--set", "rollout.max_steps=2", "--set", "rollout.max_text_tokens=12"]
    assert main(args) == 0
    meta = json.loads((out / "judge.json").read_text())
    assert meta["checkpoint"] == str(checkpoint) and meta["labelled_by"] == "oracle"
    for figures in (meta["held_out"], meta["held_out_base"]):
        assert figures["questions"] > 0 and 0 <= figures["wrong"] <= figures["questions"]
    judge = QuestionJudge.load(out)
    assert judge.threshold == 0.5 and judge.meta["train"]["steps"] >= 1
    rows = (out / "questions" / "trajectories.jsonl").read_text().splitlines()
    assert len(rows) > 30 and all(json.loads(r)["source"] == "questions" for r in rows)
    assert main(args) == 0  # resumes: the same questions, nothing rolled out again
    assert (out / "questions" / "trajectories.jsonl").read_text().splitlines() == rows
    capsys.readouterr()
    assert main(["fit-judge", str(checkpoint), "--out", str(tmp_path / "x"), "--epochs", "0"]) == 2
    assert "--epochs must be positive" in capsys.readouterr().err and not (tmp_path / "x").exists()
    # it answers questions about finished pictures, so it is no inspector of a policy's states
    assert main(["inspect-eval", str(checkpoint), "--inspector", str(out), "--out", str(tmp_path / "ie")]) == 2
    assert "answers questions about finished pictures" in capsys.readouterr().err


def test_a_transcript_reads_back_as_the_objects_it_was_written_from():
    """A transcript names each detected object's colour, class and grid corner, in reading order, and
    reads back as those objects; the world's rule over a right reading is the exact judge's verdict,
    so whatever a transcriber gets wrong is in what it read."""
    pictures = understanding_pictures(60, 0)
    for image, text in pictures:
        corners = {(d.shape, d.color, d.box[0] // 4, d.box[1] // 4) for d in detect(image)}
        assert {(d.shape, d.color, d.box[0] // 4, d.box[1] // 4) for d in read_transcript(text)} == corners
    assert transcript([]) == "nothing" and read_transcript("nothing") == []
    # a shape past the right edge, wrapped as row-major image codes draw it: two pieces, the second a row lower
    wrapped = _paint_wrapped(render(Scene(())), Obj("square", "red", 60, 8))
    assert transcript(detect(wrapped)) == "red square ten six, three. red square one, five."
    assert transcript(detect(render(Scene((Obj("square", "blue", 40, 4), Obj("circle", "red", 8, 16)))))) == \
        "blue square ten one, two. red circle three, five."
    for broken in ("red circle three five.", "red blob one, two.", "red circle eleven, two.", ""):
        assert read_transcript(broken) is None
    rng = random.Random(2)
    for rec in make_suite("train", 6, 1, ("counting", "position", "color_attr")):
        image = render(target_scene(rec, rng))
        edited = ShapeWorld.near_miss(image, rng)
        for picture in (image, edited if edited is not None else image):
            assert ShapeWorld.transcript_holds(rec, transcript(detect(picture))) == ShapeWorld.is_correct(rec, picture)
    assert ShapeWorld.transcript_holds(rec, "a red circle") is None


def test_a_transcriber_reads_each_picture_once_and_answers_by_the_worlds_rule(policy, monkeypatch):
    """Even untrained, a transcriber writes only transcripts (the world's grammar holds it); questions
    about one picture share one reading, each answered by the rule over it (hard: P(conflict) 0 or 1),
    and a left-padded batch reads every picture as it is read alone."""
    contexts = []
    for rec in make_suite("train", 2, 3, ("position", "counting")):
        contexts += question_contexts(drawn(rec))
    judge = Transcriber(policy, ShapeWorld(None))
    images = [c.image for c in contexts]
    together = judge.read(images)
    assert together == [judge.read([image])[0] for image in images]
    assert all(read_transcript(text) is not None for text in together)
    reads = []
    real = Transcriber.read
    monkeypatch.setattr(Transcriber, "read", lambda self, images: reads.append(len(images)) or real(self, images))
    graded = judge.judge_graded(contexts)
    assert reads == [len({c.image.tobytes() for c in contexts})] and reads[0] < len(contexts)
    assert judge.judge_graded(contexts) == graded and len(reads) == 1  # asked again: nothing read again
    for c, (verdict, p), text in zip(contexts, graded, together):
        holds = ShapeWorld.transcript_holds(PromptRecord.from_json(c.record), text)
        assert (verdict.aligned, p) == (holds, float(not holds))


class ExactReader(Transcriber):
    """A transcriber whose reading is the detector's: what a perfectly trained one would write."""

    def read(self, images: list[np.ndarray]) -> list[str]:
        return [transcript(detect(image)) for image in images]


def test_a_transcriber_inspects_every_visual_state_against_its_step_and_its_prompt(policy):
    """As an inspector (`scored`, what `selfplay inspect-eval --inspector` reads), a transcriber
    reads each sketch and holds it against the step's description and the prompt: one that reads
    as the detector does sees every hand-made plan and image error, refinements included, and no
    right state, and labels them so for a GRPO round's reader; an untrained one still scores every
    state 0 or 1 and leaves a single-pass trajectory as it was."""
    trajectories = hand_labelled()
    for t in trajectories:
        t.meta["inspect_scores"] = [0.5] * visual_states(t)
    exact = ExactReader(policy, ShapeWorld(None)).scored(trajectories)
    assert [t.meta["inspect_scores"] for t in exact] == \
        [[float(k != "right") for k in construction_labels(t)] for t in trajectories]
    # as a GRPO round's question judge it labels the states too, in place of the parent's verdict word
    reader = TrajectoryReader(policy, 0.5, questions=ExactReader(policy, ShapeWorld(None)))
    assert [r.wrong for r in reader.read(trajectories)] == \
        [[k != "right" for k in construction_labels(t)] for t in trajectories]
    single = single_pass_trajectory(trajectories[0].prompt, trajectories[0].final_image, trajectories[0].record)
    untrained = Transcriber(policy, ShapeWorld(None)).scored(trajectories[:3] + [single])
    for t, before in zip(untrained, trajectories[:3]):
        assert len(t.meta["inspect_scores"]) == visual_states(before) and set(t.meta["inspect_scores"]) <= {0.0, 1.0}
    assert untrained[-1] is single


def test_a_picture_still_being_drawn_may_lack_objects_but_never_hold_a_wrong_one():
    """The rule a transcriber's reading of a state is held to (`world.transcript_state_verdict`): the
    objects the step's description names, exactly (else an image error), and nothing the prompt rules
    out (else, drawn as described, a plan error)."""
    def holds(rec: PromptRecord, described: tuple[Obj, ...], drawn: tuple[Obj, ...], plan_error: bool = False) -> bool:
        text = description_text([Item(o.shape, o.color) for o in described])
        verdict = ShapeWorld.transcript_state_verdict(rec, text, transcript(detect(render(Scene(drawn)))))
        assert any(c.source == "instruction" for c in verdict.conflicts) == plan_error
        return verdict.aligned

    for task in ("position", "color_attr"):
        rec = make_suite("train", 1, 0, (task,))[0]
        first, second = target_scene(rec, random.Random(0)).objects
        assert holds(rec, (first,), (first,)) and holds(rec, (first, second), (first, second))  # half drawn, whole
        assert not holds(rec, (first,), (first, second))  # not what its description says
    swapped = (Obj(first.shape, second.color, first.x, first.y), Obj(second.shape, first.color, second.x, second.y))
    assert not holds(rec, swapped, swapped, plan_error=True)  # colours bound the other way: planned so, not prompted
    rec = make_suite("train", 1, 0, ("position",))[0]
    first, second = target_scene(rec, random.Random(0)).objects
    moved = (Obj(first.shape, first.color, second.x, second.y), Obj(second.shape, second.color, first.x, first.y))
    assert not holds(rec, moved, moved, plan_error=True)  # the prompt's relation reversed
    assert not ShapeWorld.transcript_state_verdict(rec, "not a description", transcript([])).aligned
    assert ShapeWorld.transcript_state_verdict(rec, "a red circle", "a red circle") is None


def test_fit_judge_transcribe_trains_a_reader_on_rendered_pictures(tmp_path, tmp_path_factory, capsys):
    """`selfplay fit-judge --transcribe` end to end on a tiny checkpoint: rendered pictures with their
    transcripts (no judge asked, nothing the checkpoint drew), a held-out tenth, a trained copy that
    `load_judge_copy` reads back as a transcriber; a world without transcripts is refused."""
    checkpoint = tiny_checkpoint(tmp_path_factory)
    out = tmp_path / "reader"
    assert main(["fit-judge", str(checkpoint), "--out", str(out), "--transcribe", "--rows", "60"]) == 0
    meta = json.loads((out / "judge.json").read_text())
    assert meta["kind"] == "transcriber" and meta["checkpoint"] == str(checkpoint)
    assert meta["held_out"]["pictures"] == 6 and 0 <= meta["held_out"]["exact"] <= 1
    rows = (out / "questions" / "trajectories.jsonl").read_text().splitlines()
    assert len(rows) == 54 and all(json.loads(r)["source"] == "transcribe" for r in rows)
    judge = load_judge_copy(out, ShapeWorld(None))
    assert isinstance(judge, Transcriber) and judge.meta["train"]["steps"] >= 1
    with pytest.raises(InputError, match="a transcriber needs a world with a grammar and a rule for transcripts"):
        Transcriber(judge.policy, OpenWorld)  # an open world has neither
    capsys.readouterr()
    assert main(["fit-judge", str(checkpoint), "--out", str(tmp_path / "x"), "--transcribe", "--rows", "5"]) == 2
    assert "--rows must be at least 20" in capsys.readouterr().err and not (tmp_path / "x").exists()
