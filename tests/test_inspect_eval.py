"""Inspection measured on the model's own sketches: the decoder's P(conflict), the threshold mode,
and the AUC table against sketches whose right and wrong are known by construction."""

from __future__ import annotations

import random
from itertools import product

import numpy as np
import pytest
import torch
from test_rollout_support import tiny_checkpoint

from judges import OracleJudge
from rollout import Engine, RolloutConfig
from selfplay.cli import main
from selfplay.inspect_eval import inspection_table, label_states, visual_states
from strokes.data.pipelines import PipelineConfig, TrajectoryMaker
from strokes.language import CONFLICT
from strokes.model.policy import Policy
from strokes.shapeworld import make_suite


@pytest.fixture(scope="module")
def policy(tmp_path_factory):
    torch.set_num_threads(1)
    return Policy.from_pretrained(tiny_checkpoint(tmp_path_factory))


def hand_labelled() -> list:
    """Trajectories from the base pipelines: scene-graph ones are right at every state; conflict and
    alignment ones carry a deliberately wrong plan or sketch (flagged `wrong_plan` / `wrong_image`)
    and its repair."""
    maker = TrajectoryMaker(PipelineConfig(conflict_negative=1.0, alignment_negative=1.0), 64)
    rng = random.Random(0)
    out = []
    for i, rec in enumerate(make_suite("train", 4, 3)):
        t = maker.make(("scene_graph", "conflict", "alignment")[i % 3], rec, rng)
        t.record, t.meta = rec.to_json(), {}
        out.append(t)
    return out


def construction_labels(t) -> list[str]:
    kinds = []
    for s in t.steps:
        kinds.append("plan" if s.wrong_plan else "image" if s.wrong_image else "right")
        kinds += ["image" if r.wrong_image else "right" for r in s.refinements]
    return kinds


def pair_auc(right: list[float], wrong: list[float]) -> float:
    """ROC AUC by its definition: P(a wrong state outscores a right one), ties counting half."""
    pairs = list(product(wrong, right))
    return sum(1.0 if w > r else 0.5 if w == r else 0.0 for w, r in pairs) / len(pairs)


def test_the_exact_judge_labels_every_state_as_it_was_constructed():
    trajectories = hand_labelled()
    rng = random.Random(1)
    for t in trajectories:
        t.meta["inspect_scores"] = [rng.random() for _ in range(visual_states(t))]
    states, skipped = label_states(trajectories, OracleJudge())
    assert skipped == 0
    expected = [k for t in trajectories for k in construction_labels(t)]
    assert [s.kind for s in states] == expected
    assert {"plan", "image", "right"} <= set(expected) and any(s.refined for s in states)


def test_the_table_gives_the_auc_and_recall_of_the_scores():
    trajectories = hand_labelled()
    rng = random.Random(2)
    for t in trajectories:  # informative but imperfect: wrong states score higher on average
        t.meta["inspect_scores"] = [rng.random() + (0.6 if k != "right" else 0.0) for k in construction_labels(t)]
    states, _ = label_states(trajectories, OracleJudge())
    table = inspection_table(states, boot=50)
    right = [s.score for s in states if not s.wrong]
    wrong = [s.score for s in states if s.wrong]
    assert table["all"]["auc"] == pytest.approx(pair_auc(right, wrong))
    plan = [s.score for s in states if s.kind == "plan"]
    assert table["plan"]["auc"] == pytest.approx(pair_auc(right, plan))
    assert 0.5 < table["all"]["auc"] < 1.0 and 0 < table["all"]["auc_se"] < 0.2
    tasks = {s.task for s in states}  # within task: each task's own AUC, weighted by its states
    per_task = [(pair_auc([s.score for s in states if s.task == t and not s.wrong],
                          [s.score for s in states if s.task == t and s.wrong]), sum(s.task == t for s in states))
                for t in tasks if 0 < sum(s.wrong for s in states if s.task == t) < sum(s.task == t for s in states)]
    assert table["within_task"]["auc"] == pytest.approx(sum(a * n for a, n in per_task) / sum(n for _, n in per_task))
    for rate in ("0.05", "0.10"):  # the reported threshold gives the reported recall within the rate
        t = table["all"][f"threshold@{rate}"]
        assert sum(x >= t for x in right) / len(right) <= float(rate)
        assert table["all"][f"recall@{rate}"] == pytest.approx(sum(x >= t for x in wrong) / len(wrong))
    for t in trajectories:  # a perfect inspector
        t.meta["inspect_scores"] = [float(k != "right") for k in construction_labels(t)]
    perfect = inspection_table(label_states(trajectories, OracleJudge())[0], boot=10)
    assert perfect["all"]["auc"] == 1.0 and perfect["all"]["recall@0.05"] == 1.0


def test_rollouts_record_one_score_per_visual_state(policy):
    trajectories = Engine(policy, RolloutConfig(max_steps=3, max_refines=1, max_text_tokens=12,
                                                batch_size=16)).run(make_suite("train", 3, 0), seed=0)
    for t in trajectories:
        if "failed" not in t.meta:
            scores = t.meta["inspect_scores"]
            assert len(scores) == visual_states(t) and all(0 < x < 1 for x in scores)


@pytest.mark.parametrize("threshold", [0.05, 0.5, 0.95])
def test_threshold_mode_says_conflict_exactly_when_the_score_reaches_the_threshold(policy, threshold):
    cfg = RolloutConfig(max_steps=3, max_refines=1, max_text_tokens=12, batch_size=16, inspect="threshold",
                        inspect_threshold=threshold)
    checked = 0
    for t in Engine(policy, cfg).run(make_suite("train", 3, 0), seed=0):
        if "failed" in t.meta:
            continue
        inspections = [x for s in t.steps for x in [s.inspection] + [r.inspection for r in s.refinements]]
        for text, score in zip(inspections, t.meta["inspect_scores"]):
            assert text.startswith(CONFLICT.rstrip(".")) == (score >= threshold)
            checked += 1
    assert checked


def test_inspect_eval_command_writes_the_table(tmp_path, tmp_path_factory, capsys):
    from test_loop import tiny_config  # the loop's tiny run config

    base = tiny_checkpoint(tmp_path_factory)
    cfg = tiny_config(tmp_path, base, loop={"validation_per_task": 2})
    out = tmp_path / "ie"
    assert main(["inspect-eval", str(base), "--config", str(cfg), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "ROC AUC" in printed and (out / "inspection.json").is_file() and (out / "scores.json").is_file()
    assert main(["inspect-eval", str(tmp_path / "nowhere")]) == 2
    assert "not a checkpoint folder" in capsys.readouterr().err


def test_an_inspect_head_fits_saves_reloads_and_decides_the_verdicts(policy, tmp_path, tmp_path_factory):
    from selfplay.inspect_head import InspectHeadConfig, fit_inspect_head, verdict_logits
    from strokes.model.inspect_head import InspectHead

    trajectories = hand_labelled()
    for t in trajectories:
        t.meta["inspect_scores"] = [0.5] * visual_states(t)
    head = fit_inspect_head(policy, trajectories, OracleJudge(), InspectHeadConfig(prompts=6))
    assert len(head.weight) == policy.model.get_output_embeddings().weight.shape[0]
    assert 0 < head.threshold <= 1 and head.held_out["states"] > 0
    folder = tmp_path / "with_head"
    import shutil

    shutil.copytree(tiny_checkpoint(tmp_path_factory), folder)
    head.save(folder)
    reloaded = Policy.from_pretrained(folder)
    assert reloaded.inspect_head == head
    cfg = RolloutConfig(max_steps=3, max_refines=1, max_text_tokens=12, batch_size=16, inspect="head")
    checked = 0
    rolled = [t for t in Engine(reloaded, cfg).run(make_suite("train", 3, 0), seed=0) if "failed" not in t.meta]
    for t, logits in zip(rolled, verdict_logits(reloaded, rolled)):
        inspections = [x for s in t.steps for x in [s.inspection] + [r.inspection for r in s.refinements]]
        # the score the decoder recorded is the head on the teacher-forced logits of the same tokens
        expected = 1 / (1 + np.exp(-(logits @ np.array(head.weight) + head.bias)))
        assert np.allclose(t.meta["inspect_scores"], expected, atol=1e-3)
        for text, score in zip(inspections, t.meta["inspect_scores"]):
            assert text.startswith(CONFLICT.rstrip(".")) == (score >= head.threshold)
            checked += 1
    assert checked
    with pytest.raises(Exception, match="Inspect head"):  # a checkpoint without a head is refused
        Engine(Policy.from_pretrained(tiny_checkpoint(tmp_path_factory)), cfg)
    (folder / "inspect_head.json").write_text("{broken")
    with pytest.raises(Exception, match="not an Inspect head"):
        InspectHead.load(folder)


class _VerdictWordsLikely(torch.nn.Module):
    """The tiny policy with "aligned" and "conflict" made likely at every position, so a check-list
    inspection writes its verdict word after a few other words as often as first."""

    def __init__(self, model, ids: list[int]) -> None:
        super().__init__()
        self.model, self.config, self.ids = model, model.config, ids

    def forward(self, input_ids, attention_mask=None, position_ids=None, use_cache=None, logits_to_keep=0,
                cache=None):
        out = self.model(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                         use_cache=use_cache, logits_to_keep=logits_to_keep, cache=cache)
        out.logits[..., self.ids] += 3.0
        return out


def test_with_a_check_list_the_verdict_is_the_first_verdict_word_and_the_threshold_decides_it(policy, monkeypatch):
    """`rollout.checklist`: the score of each inspection is taken where the model writes its first
    "aligned"/"conflict" (not at its first word), that word is the threshold's choice, and an
    inspection with no verdict word gets no score."""
    from strokes.language import split_checklist

    ids = [policy.processor.text_ids_of(w)[0] for w in ("aligned", "conflict")]
    monkeypatch.setattr(policy, "model", _VerdictWordsLikely(policy.model, ids))
    cfg = RolloutConfig(max_steps=3, max_refines=1, max_text_tokens=12, batch_size=16, inspect="threshold",
                        inspect_threshold=0.5, checklist=True)
    later = 0
    for t in Engine(policy, cfg).run(make_suite("train", 3, 0), seed=0):
        if "failed" in t.meta:
            continue
        inspections = [x for s in t.steps for x in [s.inspection] + [r.inspection for r in s.refinements]]
        verdicts = [next((w.rstrip(".:,") for w in x.split(" ") if w.rstrip(".:,") in ("aligned", "conflict")), None)
                    for x in inspections]
        said = [v for v in verdicts if v is not None]
        assert len(t.meta.get("inspect_scores", [])) == len(said)
        for v, score in zip(said, t.meta.get("inspect_scores", [])):
            assert (v == "conflict") == (score >= 0.5)
        later += sum(v is not None and not x.startswith(v) for x, v in zip(inspections, verdicts))
    assert later  # some verdicts came after other words: the check-list path was exercised


def test_the_inspect_head_reads_the_position_before_the_verdict_word(policy):
    """The verdict follows the `<inspect>`, or the check list the inspection opens with."""
    from selfplay.inspect_head import verdict_positions

    p = policy.processor
    ins, close = p.special["<inspect>"], p.special["</inspect>"]
    listed = p.text_ids_of("red circle planned drawn. blue square not planned drawn.")
    ids = [ins, *p.text_ids_of("aligned."), close,
           ins, *listed, *p.text_ids_of("conflict."), close,
           ins, *p.text_ids_of("red circle conflict."), close]
    second = 2 + len(p.text_ids_of("aligned."))  # the second <inspect>
    third = second + 1 + len(listed) + len(p.text_ids_of("conflict.")) + 1
    assert verdict_positions(p, ids) == [0, second + len(listed), third]
    assert ids[second + len(listed) + 1] == p.text_ids_of("conflict")[0]


def test_an_attention_inspector_fits_reloads_and_is_what_a_self_judge_reads(policy, tmp_path, tmp_path_factory):
    from judges import JudgeConfig
    from selfplay.cli import main
    from selfplay.config import load_config
    from selfplay.inspector import Inspector, fit_inspector
    from selfplay.judging import grpo_judge
    from strokes.errors import InputError

    trajectories = hand_labelled()
    for t in trajectories:
        t.meta["inspect_scores"] = [0.5] * visual_states(t)
    states, _ = label_states(trajectories, OracleJudge())
    checkpoint = str(tiny_checkpoint(tmp_path_factory))  # the policy's own folder
    inspector = fit_inspector(policy, checkpoint, trajectories, states, max_epochs=3, log=lambda _: None)
    assert 0 <= inspector.threshold <= 1 and inspector.held_out["states"] > 0
    assert inspector.held_out["fitted_states"] == len(states)
    inspector.save(tmp_path / "inspector")
    reloaded = Inspector.load(tmp_path / "inspector")
    assert reloaded.checkpoint == checkpoint and reloaded.threshold == inspector.threshold
    scores = inspector.p_conflict(policy, trajectories)
    for t, a, b in zip(trajectories, scores, reloaded.p_conflict(policy, trajectories)):
        assert len(a) == visual_states(t) and np.allclose(a, b, atol=1e-6)  # one P(conflict) per visual state
    # inspect-eval --inspector: the table scores the head's P(conflict) of the same states
    rescored, _ = label_states(reloaded.scored(trajectories), OracleJudge())
    assert [(s.source, s.index, s.kind) for s in rescored] == [(s.source, s.index, s.kind) for s in states]
    assert np.allclose([s.score for s in rescored], [scores[s.source][s.index] for s in states], atol=1e-6)
    # a GRPO round's self judge with judge.inspector: the head's checkpoint read by the head, at its threshold
    cfg = load_config(None, ["judge.kind=self", f"judge.inspector={tmp_path / 'inspector'}"])
    reader = grpo_judge(cfg, "a parent it does not read", None)  # no judge copy: no world needed
    assert reader.inspector is not None and reader.threshold == reloaded.threshold
    plain = [k for k, t in enumerate(trajectories) if not any(s.refinements for s in t.steps)]
    readings = reader.read([trajectories[k] for k in plain])
    assert plain and all(np.allclose(r.p_conflict, scores[k], atol=1e-6) for k, r in zip(plain, readings))
    assert all(r.wrong == [p >= reloaded.threshold for p in scores[k]] for k, r in zip(plain, readings))
    with pytest.raises(InputError, match="judge.inspector"):
        JudgeConfig(kind="oracle", inspector=str(tmp_path / "inspector"))
    with pytest.raises(InputError, match="not a fitted inspector"):
        Inspector.load(tmp_path)
    # inspect-eval names a folder without a head in one line, writing nothing
    assert main(["inspect-eval", checkpoint, "--inspector", str(tmp_path), "--out", str(tmp_path / "ie")]) == 2
    assert not (tmp_path / "ie").exists()
