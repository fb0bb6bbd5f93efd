"""GRPO rounds: the rollout function's log-probs, the rewards on hand-made trajectories, and a tiny
round through the loop (rewards from the judge, the policy changes, the checkpoint reloads)."""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import json
import re
import socket
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from test_inspect_eval import construction_labels, hand_labelled
from test_loop import base_checkpoint, kill9_mid_training_then_resume, stages, tiny_config  # noqa: F401  (fixture)
from test_rollout_support import tiny_checkpoint

from judges import JudgeConfig, OracleJudge
from judges.gpt import GPTJudge
from judges.server import JudgeServer
from judges.unjudged import TooManyUnjudged
from judges.vlm import VLMJudge, load_profile
from rollout import Engine, RolloutConfig
from selfplay.cli import main
from selfplay.grpo import make_sampler
from selfplay.judging import JudgeMeter
from selfplay.rewards import Judged, judge_rollouts, reward_functions, verdict_advantages
from strokes.errors import InputError
from strokes.model.policy import Policy
from strokes.records import PromptRecord
from strokes.shapeworld import make_suite
from strokes.shapeworld.check import is_correct
from trainer.config import GrpoConfig, TrainConfig


@pytest.fixture(scope="module")
def policy(tmp_path_factory):
    torch.set_num_threads(1)
    return Policy.from_pretrained(tiny_checkpoint(tmp_path_factory))


def sample(policy, **rollout):
    cfg = RolloutConfig(batch_size=8, max_steps=2, max_refines=1, max_text_tokens=12, **rollout)
    return Engine(policy, cfg).sample(make_suite("train", 1, 0), seed=3)


def test_rollout_logprobs_agree_with_a_teacher_forced_forward(policy):
    """The engine's log-probabilities are those of a plain forward of the same tokens, masked to the
    legal set it recorded for each token: the distribution the token was drawn from."""
    engine = Engine(policy, RolloutConfig(batch_size=8, max_steps=2, max_refines=1, max_text_tokens=12))
    rolled = engine.sample(make_suite("train", 1, 0), seed=3)
    assert any(s.completion_ids for s in rolled)
    for s in rolled:
        assert len(s.logprobs) == len(s.chosen) == len(s.legal) == len(s.completion_ids)
        ids = torch.tensor([s.prompt_ids + s.completion_ids])
        with torch.no_grad():
            logits = policy.model(input_ids=ids).logits[0, len(s.prompt_ids) - 1: -1].float()
        allowed = engine.legal_sets[torch.tensor(s.legal)]
        masked = torch.log_softmax(logits.masked_fill(~allowed, float("-inf")), -1)
        expected = masked.gather(1, torch.tensor(s.completion_ids)[:, None]).squeeze(1)
        assert torch.allclose(torch.tensor(s.logprobs), expected, atol=1e-4)
        forced = [lp for lp, c in zip(s.logprobs, s.chosen) if not c]
        assert all(abs(lp) < 1e-5 for lp in forced)  # the grammar's only legal token: probability 1


def test_the_trainer_computes_the_engines_log_probs(policy, tmp_path):
    """TRL's ratio compares the same distributions: the GRPO trainer's masked forward of the sampled
    tokens gives the log-probabilities the engine recorded while sampling them."""
    from trainer.grpo import _trainer_class

    engine = Engine(policy, RolloutConfig(batch_size=8, max_steps=2, max_refines=1, max_text_tokens=12))
    rolled = [s for s in engine.sample(make_suite("train", 1, 0), seed=3) if s.completion_ids]
    trainer = object.__new__(_trainer_class())  # only the log-prob method and its state, no TRL setup
    trainer._legal_sets = torch.cat([engine.legal_sets, torch.ones((1, engine.legal_sets.shape[1]), dtype=torch.bool)])
    trainer._legal_ids = trainer.legal_ids([s.legal for s in rolled])
    trainer.temperature = 1.0
    trainer.accelerator = SimpleNamespace(autocast=contextlib.nullcontext)
    width = trainer._legal_ids.shape[1]
    plen = max(len(s.prompt_ids) for s in rolled)
    ids = torch.zeros((len(rolled), plen + width), dtype=torch.long)
    mask = torch.zeros_like(ids)
    for i, s in enumerate(rolled):
        row = s.prompt_ids + s.completion_ids
        ids[i, plen - len(s.prompt_ids): plen - len(s.prompt_ids) + len(row)] = torch.tensor(row)
        mask[i, plen - len(s.prompt_ids): plen - len(s.prompt_ids) + len(row)] = 1
    for chunk_rows in (16, 2):  # one chunk; length-sorted chunks of two, each cut to its own span
        trainer.chunk_rows = chunk_rows
        with torch.no_grad():
            logps, _, _ = trainer._get_per_token_logps_and_entropies(policy.model, ids, mask, width)
        for i, s in enumerate(rolled):
            assert torch.allclose(logps[i, : len(s.logprobs)], torch.tensor(s.logprobs), atol=1e-4)


def test_positive_advantages_zero_every_negative_one_accepted_ones_train_every_accepted_rollout(monkeypatch):
    """`train.grpo.advantages`: "positive" — after the verdict words' own credit is added, no token
    keeps a negative advantage (the wrong trajectories are not pushed down); "accepted" — every
    trajectory whose final reward is 1 gets 1, whatever its group, and the rest (a partial final
    score, an unscored one) get 0, with no verdict credit: the SFT loss on the accepted rollouts."""
    from collections import defaultdict

    from trl import GRPOTrainer

    from trainer.grpo import _trainer_class

    group = torch.tensor([1.5, -0.5, 0.0, -2.0])  # TRL's group-relative advantages of four trajectories
    final = torch.tensor([1.0, 1.0, 0.5, float("nan")])  # their final rewards (a graded one, an unscored one)
    monkeypatch.setattr(GRPOTrainer, "_calculate_rewards",
                        lambda self, *a: torch.stack([final, torch.zeros(4)], dim=1))
    def score(self, inputs):
        self._calculate_rewards(inputs)
        return {"advantages": group.clone(), "completion_ids": torch.zeros((4, 3))}
    monkeypatch.setattr(GRPOTrainer, "_generate_and_score_completions", score)
    inputs = [{"token_advantages": [(1, -1.0)]}, {}, {"token_advantages": [(2, 0.7)]}, {}]  # verdict credit
    signed = torch.tensor([[1.5, 0.5, 1.5], [-0.5] * 3, [0.0, 0.0, 0.7], [-2.0] * 3])
    wanted = {"signed": signed, "positive": signed.clamp(min=0), "accepted": torch.tensor([1.0, 1.0, 0.0, 0.0])}
    for advantages, want in wanted.items():
        trainer = object.__new__(_trainer_class())  # only the scoring override, no TRL setup
        trainer.advantages, trainer._metrics = advantages, {"train": defaultdict(list)}
        trainer.reward_func_names, trainer.accelerator = ["final", "steps"], SimpleNamespace(process_index=0)
        trainer._legal_ids = torch.zeros((4, 3), dtype=torch.long)
        assert torch.equal(trainer._generate_and_score_completions(inputs)["advantages"], want), advantages


def test_a_verdict_the_threshold_decided_is_not_the_models_choice(policy):
    """With `rollout.inspect: threshold` the first inspection word is decided, not sampled: it gets
    no policy gradient (chosen 0); with sampled verdicts the model chose it (chosen 1)."""
    inspect_id = policy.processor.special["<inspect>"]
    for mode, chosen in (("threshold", 0), ("sample", 1)):
        for s in sample(policy, inspect=mode, inspect_threshold=0.5):
            verdicts = [i + 1 for i, t in enumerate(s.completion_ids[:-1]) if t == inspect_id]
            assert all(s.chosen[i] == chosen for i in verdicts)


def test_rollouts_for_rl_refuse_guidance(policy):
    with pytest.raises(InputError, match="cfg_scale"):
        sample(policy, cfg_scale=2.0)


def test_rewards_on_hand_made_trajectories():
    """Pipeline trajectories whose wrong states are known by construction, each inspected as it was
    built (a conflict on every wrong state, repaired by its refinement): every mistake is caught,
    none is a false alarm, no step is left wrong; a false alarm added by hand costs, and so does a
    repair taken away."""
    trajectories = hand_labelled()
    judged = judge_rollouts(trajectories, OracleJudge(), exact=is_correct)
    for t, j in zip(trajectories, judged):
        kinds = construction_labels(t)
        assert j.states == len(kinds) and j.unjudged == 0
        assert [wrong for _, wrong, _ in j.verdicts] == [k != "right" for k in kinds]
        assert j.right_verdicts == j.states and j.left_wrong == 0  # every mistake flagged, no false alarm
        assert j.final == is_correct(PromptRecord.from_json(t.record), t.final_image)
    k = next(i for i, t in enumerate(trajectories) if all(c == "right" for c in construction_labels(t)))
    alarmed = copy.deepcopy(trajectories[k])
    alarmed.steps[0].inspection = "conflict. the red circle is blue instead of red."
    j = judge_rollouts([alarmed], OracleJudge(), exact=is_correct)[0]
    assert j.right_verdicts == j.states - 1
    k = next(i for i, t in enumerate(trajectories) if any(s.refinements for s in t.steps))
    unrepaired = copy.deepcopy(trajectories[k])
    step = next(s for s in unrepaired.steps if s.refinements)
    step.refinements = []
    assert judge_rollouts([unrepaired], OracleJudge(), exact=is_correct)[0].left_wrong == 1

    logged = {}
    rewards = reward_functions()
    prompts = [t.prompt for t in trajectories]
    kw = {"judged": judged, "log_metric": lambda name, value: logged.__setitem__(name, value)}
    final = rewards["final"](prompts, [""] * len(prompts), **kw)
    assert final == [float(j.final) for j in judged]
    inspection = rewards["inspection"](prompts, [""] * len(prompts), **kw)
    assert inspection == [1.0] * len(judged)  # every verdict right
    assert rewards["refine"](prompts, [""] * len(prompts), **kw) == [0.0] * len(judged)  # every mistake repaired
    assert logged["judge/unjudged"] == 0.0 and 0 <= logged["groups/all_right"] <= logged["groups/any_right"] <= 1
    for task in {j.task for j in judged}:
        right = [j.final for j in judged if j.task == task]
        assert logged[f"final/{task}"] == sum(right) / len(right)


def test_each_verdict_word_gets_its_own_advantage_against_its_labels_baseline():
    """Right verdicts earn, wrong ones cost, each against the mean of the states with the same label:
    a caught mistake among many misses earns more than a routine "aligned" among right states."""
    judged = [Judged(final=True, verdicts=[(0, False, False), (1, True, True)]),  # aligned on a right state; caught
              Judged(final=False, verdicts=[(0, False, False), (1, True, False), (2, True, False)])]  # two misses
    (a, b) = verdict_advantages(judged, weight=0.5)
    # right states: both verdicts right (mean +1) -> 0; wrong states: +1, -1, -1 (mean -1/3)
    assert a == [(0, 0.0), (1, 0.5 * (1 + 1 / 3))]
    assert b == [(0, 0.0), (1, 0.5 * (-1 + 1 / 3)), (2, 0.5 * (-1 + 1 / 3))]
    assert abs(a[1][1] + b[1][1] + b[2][1]) < 1e-12  # each label's advantages sum to zero


def test_a_graded_label_gives_a_verdict_its_expected_credit():
    """With the judge's P(wrong) as each state's label, a verdict earns its expectation (2p - 1 for
    saying conflict): a sure label gives the verdict's full credit, as a yes/no label does, an
    unsure one (p = 0.5) none, before the per-label baseline."""
    hard = [Judged(final=True, verdicts=[(0, False, False), (1, True, True)]),
            Judged(final=False, verdicts=[(0, False, True), (1, True, False)])]
    sure = [Judged(final=j.final, verdicts=j.verdicts, p_wrong=[float(w) for _, w, _ in j.verdicts]) for j in hard]
    assert verdict_advantages(sure, 0.5) == verdict_advantages(hard, 0.5)
    unsure = [Judged(final=True, verdicts=[(0, False, False), (1, True, True)], p_wrong=[0.4, 0.5]),
              Judged(final=False, verdicts=[(0, False, True), (1, True, False)], p_wrong=[0.0, 0.9])]
    (a, b) = verdict_advantages(unsure, 1.0)
    # right states: 1 - 2 * 0.4 = 0.2 (said aligned), 2 * 0 - 1 = -1 (said conflict): mean -0.4
    # wrong states: 2 * 0.5 - 1 = 0 (said conflict), 1 - 2 * 0.9 = -0.8 (said aligned): mean -0.4
    assert a == [(0, pytest.approx(0.6)), (1, pytest.approx(0.4))]
    assert b == [(0, pytest.approx(-0.6)), (1, pytest.approx(-0.4))]


def test_graded_step_labels_are_the_judges_p_conflict():
    """`judge.graded_steps` (the default): each state's label is the stand-in VLM's P(conflict), on
    the same side of 0.5 as its verdict, and refine counts the steps left wrong in expectation."""
    trajectories = hand_labelled()
    graded = judge_rollouts(trajectories, VLMJudge(load_profile("typical")), graded_steps=True)
    plain = judge_rollouts(trajectories, VLMJudge(load_profile("typical")))
    assert any(0.0 < p < 1.0 for j in graded for p in j.p_wrong)
    for t, g, j in zip(trajectories, graded, plain):
        assert g.verdicts == j.verdicts and not j.p_wrong and len(g.p_wrong) == g.states
        assert all((p > 0.5) == wrong for (_, wrong, _), p in zip(g.verdicts, g.p_wrong))
        last = set(np.cumsum([1 + len(s.refinements) for s in t.steps]) - 1)  # each step's last state
        assert g.left_wrong == pytest.approx(sum(p for (n, _, _), p in zip(g.verdicts, g.p_wrong) if n in last))
        assert j.left_wrong == sum(wrong for n, wrong, _ in j.verdicts if n in last)
    # a judge that cannot say how sure it is (the exact one) keeps its verdicts: the credit is unchanged
    exact = judge_rollouts(trajectories, OracleJudge(), exact=is_correct, graded_steps=True)
    for g, j in zip(exact, judge_rollouts(trajectories, OracleJudge(), exact=is_correct)):
        assert g.labels == j.labels and g.left_wrong == j.left_wrong
    assert verdict_advantages(exact, 0.5) == verdict_advantages(
        judge_rollouts(trajectories, OracleJudge(), exact=is_correct), 0.5)


def test_the_sampler_puts_verdict_credit_on_the_word_after_each_inspect(policy):
    engine = Engine(policy, RolloutConfig(batch_size=8, max_steps=2, max_refines=1, max_text_tokens=12))
    prompts = [json.dumps(r.to_json()) for r in make_suite("train", 1, 0)]
    out = make_sampler(engine, OracleJudge(), exact=is_correct, verdict_weight=1.0)(prompts, 0)
    inspect = policy.processor.special["<inspect>"]
    assert len(out["token_advantages"]) == len(prompts) and any(out["token_advantages"])
    for ids, credit, j in zip(out["completion_ids"], out["token_advantages"], out["judged"]):
        assert len(credit) == len(j.verdicts)
        assert all(ids[p - 1] == inspect for p, _ in credit)


def test_no_reward_pays_for_making_a_mistake():
    """A mistake caught and repaired scores what a right step scores, never more (else the policy
    learns to draw wrong first sketches to repair them); a mistake missed or left standing costs."""
    trajectories = hand_labelled()
    kinds = [construction_labels(t) for t in trajectories]
    clean = next(t for t, k in zip(trajectories, kinds) if set(k) == {"right"})
    repaired = next(t for t, k in zip(trajectories, kinds) if "right" in k and set(k) != {"right"})
    missed = copy.deepcopy(repaired)
    step = next(s for s in missed.steps if s.refinements)
    step.inspection, step.refinements = "aligned.", []
    judged = judge_rollouts([clean, repaired, missed], OracleJudge(), exact=is_correct)
    rewards = reward_functions()
    for name in ("inspection", "refine"):
        right, caught, left = rewards[name]([t.prompt for t in (clean, repaired, missed)], [""] * 3, judged=judged)
        assert right == caught > left, name


def test_a_broken_trajectory_scores_the_worst_and_a_missing_verdict_is_none():
    broken = copy.deepcopy(hand_labelled()[0])
    broken.meta["failed"] = "no legal token"
    j = judge_rollouts([broken], OracleJudge(), exact=is_correct)[0]
    assert j.final is False and j.broken and j.states == 0
    rewards = reward_functions()
    objects = sum(r.count for r in PromptRecord.from_json(broken.record).include)
    assert rewards["inspection"](["p"], [""], judged=[j]) == [-1.0]
    assert rewards["refine"](["p"], [""], judged=[j]) == [-float(objects)]
    assert rewards["final"](["p"], [""], judged=[Judged(final=None)]) == [None]  # TRL leaves it out


def test_grpo_config_refuses_unknown_rewards_and_workers_that_do_not_split_a_step():
    with pytest.raises(InputError, match="train.workers"):
        TrainConfig(method="grpo", distributed="ray", workers=3)  # 8 x 8 trajectories do not split in 3
    with pytest.raises(InputError, match="train.grpo.reward_weights.beauty"):
        GrpoConfig(reward_weights={"beauty": 1.0})


def test_a_tiny_grpo_round_end_to_end(tmp_path, base_checkpoint, recwarn):  # noqa: F811
    """Round 1 trains by GRPO on the policy's own rollouts: the rewards come from the judge and are
    logged, the weights move, the checkpoint reloads, the control arm trains the same steps by SFT;
    and TRL's use of a deprecated transformers alias prints no FutureWarning into the console."""
    cfg = tiny_config(tmp_path, base_checkpoint, loop={"rounds": 1},
                      train={"method": "grpo", "lr": 1e-3,
                             "grpo": {"steps": 2, "prompts_per_step": 2, "generations": 2, "prompts": 6}})
    assert main(["run", str(cfg), "--runs", str(tmp_path / "runs"), "--name", "g"]) == 0
    run = tmp_path / "runs" / "g"
    done = stages(run)
    assert "1:rollouts" not in done  # GRPO rolls out inside training
    for s in ("data", "checkpoint", "eval", "validate", "control", "control_eval", "promote"):
        assert f"1:{s}" in done
    events = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    steps = [e for e in events if e["event"] == "train" and e.get("arm") == "policy" and "reward" in e]
    assert [e["step"] for e in steps] == [1, 2]
    for key in ("rewards/final/mean", "rewards/inspection/mean", "rewards/refine/mean", "rewards/steps/mean", "kl",
                "groups/any_right", "judge/verdicts", "judge/seconds", "rollout/seconds"):  # judge cost per step
        assert all(key in e for e in steps), key
    judge = json.loads((run / "round_001" / "checkpoint" / "train_summary.json").read_text())["judge"]
    assert judge["steps"] == 2 and judge["judge_verdicts"] == sum(e["judge/verdicts"] for e in steps)
    round_line = [e for e in events if e["event"] == "judge" and e["round"] == 1]  # the round's cost, in metrics.jsonl
    assert len(round_line) == 1 and round_line[0]["judge_verdicts"] == judge["judge_verdicts"]
    control = [e for e in events if e["event"] == "train" and e.get("arm") == "control" and "loss" in e]
    assert control and control[-1]["step"] == 2  # the same optimizer steps, on base data
    trained = Policy.from_pretrained(run / "round_001" / "checkpoint" / "checkpoint")
    base = Policy.from_pretrained(base_checkpoint)
    moved = [not torch.equal(a, b) for a, b in zip(trained.model.parameters(), base.model.parameters())]
    assert any(moved)
    report = (run / "report.html").read_text()
    assert "GRPO rounds" in report and "The training judge's cost per GRPO round" in report
    assert not [w for w in recwarn if issubclass(w.category, FutureWarning)], [str(w.message) for w in recwarn]


@pytest.mark.slow
def test_kill9_in_a_grpo_round_then_resume_matches_an_uninterrupted_run(tmp_path, base_checkpoint):  # noqa: F811
    """kill -9 in the middle of round 1's GRPO, then --resume: the same rewards step by step, the
    same weights, the same scores (rollout seeds follow the step, so the redone steps resample the
    same trajectories)."""
    cfg = tiny_config(tmp_path, base_checkpoint, loop={"rounds": 1, "control": False},
                      train={"method": "grpo", "lr": 1e-3,
                             "grpo": {"steps": 6, "prompts_per_step": 2, "generations": 2, "prompts": 6}})
    a, b = kill9_mid_training_then_resume(tmp_path, cfg)
    assert stages(a) == stages(b)
    rewards = [[(e["step"], e["reward"], e["kl"]) for e in map(json.loads, (r / "metrics.jsonl").read_text().splitlines())
                if e.get("event") == "train" and "reward" in e] for r in (a, b)]
    assert rewards[0] == rewards[1] and len(rewards[0]) == 6
    wa, wb = (Policy.from_pretrained(r / "round_001" / "checkpoint" / "checkpoint").model.state_dict() for r in (a, b))
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
    scores = [json.loads((r / "round_001" / "eval" / "scores.json").read_text()) for r in (a, b)]
    assert scores[0] == scores[1]


def test_a_step_the_judge_left_unjudged_stops_the_round_naming_the_cause(policy):
    """A dead judge no longer trains on zero advantages: past `judge.max_unjudged` the step stops
    with one line that says why; at 1.0 the step goes on with the verdicts it has (none)."""
    engine = Engine(policy, RolloutConfig(batch_size=8, max_steps=2, max_refines=1, max_text_tokens=12))
    prompts = [json.dumps(r.to_json()) for r in make_suite("train", 1, 0)[:4]]
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cfg = JudgeConfig(kind="gpt", base_url=f"http://127.0.0.1:{port}/v1", api_key_env="NO_KEY", max_retries=0)
    judge = GPTJudge(cfg)
    with pytest.raises(TooManyUnjudged, match=r"verdicts missing in GRPO step 1's rollouts.*connection refused"):
        make_sampler(engine, judge, meter=JudgeMeter(judge, cfg))(prompts, 0)
    tolerant = dataclasses.replace(cfg, max_unjudged=1.0)
    judge = GPTJudge(tolerant)
    out = make_sampler(engine, judge, meter=JudgeMeter(judge, tolerant))(prompts, 0)
    assert all(j.final is None or j.broken for j in out["judged"]) and sum(j.asked for j in out["judged"]) > 0


def test_each_step_logs_its_judge_cost_and_agreement_and_a_budget_ends_the_round(policy):
    """The stand-in VLM judge served on loopback, reached through the openai client: each step's
    requests, tokens and seconds reach the step's log, the exact judge labels the same rollouts
    again for the agreement, and a request budget that cannot pay for another step says so."""
    engine = Engine(policy, RolloutConfig(batch_size=8, max_steps=2, max_refines=1, max_text_tokens=12))
    prompts = [json.dumps(r.to_json()) for r in make_suite("train", 1, 0)[:6]]
    with JudgeServer(VLMJudge(load_profile("typical")), port=0) as srv:
        cfg = JudgeConfig(kind="gpt", base_url=srv.base_url, model=srv.model, api_key_env="NO_KEY", budget_requests=60)
        judge = GPTJudge(cfg)
        meter = JudgeMeter(judge, cfg, OracleJudge(), is_correct)
        out = make_sampler(engine, judge, meter=meter)(prompts, 0)
    cost = out["metrics"]  # what the trainer logs for the step
    asked = sum(j.asked for j in out["judged"])
    assert cost["judge/requests"] == cost["judge/verdicts"] == asked == srv.served and cost["judge/tokens"] > 0
    assert cost["rollout/seconds"] > 0 and cost["judge/seconds"] > 0 and 0 <= cost["agreement/states"] <= 1
    totals = meter.totals()
    assert totals["steps"] == 1 and totals["judge_requests"] == asked
    compared = sum(c.get("states", 0) for c in totals["agreement"].values())
    assert compared == sum(j.states for j in out["judged"])  # every state both labelled
    reason = meter.over_budget()
    assert (reason is not None) == (2 * asked > 60)
    if reason:
        assert reason.startswith(f"judge.budget_requests: {asked} of 60 requests spent after 1 steps")


@pytest.mark.slow
def test_a_grpo_round_rewarded_by_the_served_stand_in_vlm_judge(tmp_path, base_checkpoint, capsys):  # noqa: F811
    """judge.serve: vlm: the run serves the typical profile on loopback and rewards through the
    openai client with atomic questions; the console, the summary and the report say what the judge
    cost and how often it agreed with the exact judge, per task."""
    cfg = tiny_config(tmp_path, base_checkpoint, loop={"rounds": 1, "control": False},
                      judge={"kind": "gpt", "serve": "vlm", "profile": "typical", "api_key_env": "NO_KEY"},
                      train={"method": "grpo", "lr": 1e-3,
                             "grpo": {"steps": 2, "prompts_per_step": 2, "generations": 2, "prompts": 6}})
    assert main(["run", str(cfg), "--runs", str(tmp_path / "runs"), "--name", "v"]) == 0
    out = capsys.readouterr().out
    assert "the vlm judge (profile typical, seed 0) behind the judge server" in out
    assert re.search(r"round 1: judge \d+ requests, [\d.]+k tokens, \d+ verdicts over 2 steps; per step judge "
                     r"[\d.]+s against rollout [\d.]+s; agrees with the exact judge on [\d.]+% of \d+ states", out), out
    run = tmp_path / "runs" / "v"
    judge = json.loads((run / "round_001" / "checkpoint" / "train_summary.json").read_text())["judge"]
    assert judge["judge_requests"] == judge["judge_verdicts"] > 0 and judge["counters"]["failed"] == 0
    assert judge["agreement"] and all(task in ("counting", "position", "color_attr", "two_object", "colors",
                                               "single_object") for task in judge["agreement"])
    report = (run / "report.html").read_text()
    assert "The training judge against the exact judge on the round's own rollouts" in report


@pytest.mark.parametrize("reader", ["verdict word", "attention inspector", "question judge", "transcriber"])
def test_a_self_judged_grpo_round_calls_the_exact_judge_only_to_measure_its_agreement(tmp_path, base_checkpoint,
                                                                                     monkeypatch, reader):  # noqa: F811
    """judge.kind: self (configs/shapeworld-self-verdict.yaml): the round's rewards, verdict credit and labels
    come from the parent's own Inspect, or from an attention inspector fitted before the run on the
    base's labelled states (configs/shapeworld-self-inspector.yaml), and the final reward may come
    from a judge copy answering atomic questions (`judge.question_judge`) or from a transcriber copy
    whose reading of the picture the world's rule answers them over. Every call
    of the exact judge inside the GRPO stage comes from the meter that measures the training judge's
    agreement after the step's verdicts are in, none from the rewards; the agreement reaches the
    round's summary."""
    import inspect as stack_inspect

    from selfplay.inspect_eval import label_states, visual_states
    from selfplay.inspector import fit_inspector
    from selfplay.question_judge import QuestionJudge, Transcriber
    from selfplay.world.shapeworld import ShapeWorld

    judge = {"kind": "self"}
    answered = []
    if reader == "question judge":  # a judge copy (here the untrained base itself) answers the questions
        copy = Policy.from_pretrained(base_checkpoint)
        copy.save_pretrained(tmp_path / "question_judge" / "checkpoint")
        QuestionJudge(copy, meta={"checkpoint": str(base_checkpoint)}).save_meta(tmp_path / "question_judge")
        judge["question_judge"] = str(tmp_path / "question_judge")
        answer = QuestionJudge.p_conflict
        monkeypatch.setattr(QuestionJudge, "p_conflict", lambda self, c: answered.append(len(c)) or answer(self, c))
    if reader == "transcriber":  # a transcriber copy (here the untrained base) reads the pictures
        copy = Policy.from_pretrained(base_checkpoint)
        copy.save_pretrained(tmp_path / "transcriber" / "checkpoint")
        Transcriber(copy, ShapeWorld(None), {"checkpoint": str(base_checkpoint)}).save_meta(
            tmp_path / "transcriber")
        judge["question_judge"] = str(tmp_path / "transcriber")
        read = Transcriber.read
        monkeypatch.setattr(Transcriber, "read", lambda self, images: answered.append(len(images)) or read(self, images))
    if reader == "attention inspector":  # fitted before the run, on base-data trajectories the exact judge labels
        trajectories = hand_labelled()
        for t in trajectories:
            t.meta["inspect_scores"] = [0.5] * visual_states(t)
        states, _ = label_states(trajectories, OracleJudge())
        fit_inspector(Policy.from_pretrained(base_checkpoint), str(base_checkpoint), trajectories, states,
                      max_epochs=2, log=lambda _: None).save(tmp_path / "inspector")
        judge["inspector"] = str(tmp_path / "inspector")

    callers: list[set[str]] = []

    def spied(fn):
        def call(*args, **kwargs):
            callers.append({f"{Path(frame.filename).parent.name}/{frame.frame.f_code.co_qualname}"
                            for frame in stack_inspect.stack()[1:]})
            return fn(*args, **kwargs)
        return call

    monkeypatch.setattr(OracleJudge, "judge", spied(OracleJudge.judge))
    monkeypatch.setattr(ShapeWorld, "is_correct", staticmethod(spied(is_correct)))
    cfg = tiny_config(tmp_path, base_checkpoint, loop={"rounds": 1, "control": False},
                      judge=judge, rollout={"inspect_threshold": 0.04},
                      train={"method": "grpo", "lr": 1e-3,
                             "grpo": {"steps": 2, "prompts_per_step": 2, "generations": 2, "prompts": 6}})
    assert main(["run", str(cfg), "--runs", str(tmp_path / "runs"), "--name", "s"]) == 0
    in_training = [c for c in callers if "selfplay/_train" in c]
    assert in_training  # the exact judge did label the round's rollouts again, but only to measure:
    assert all("selfplay/JudgeMeter.step" in c for c in in_training)
    run = tmp_path / "runs" / "s"
    summary = json.loads((run / "round_001" / "checkpoint" / "train_summary.json").read_text())
    agreement = summary["judge"]["agreement"]
    assert agreement and summary["judge"]["judge_verdicts"] > 0
    finals = sum(c.get("finals", 0) for c in agreement.values())
    assert 0 <= sum(c.get("finals_judge_right", 0) for c in agreement.values()) <= finals  # what hacking would raise
    steps = [e for e in map(json.loads, (run / "metrics.jsonl").read_text().splitlines())
             if e["event"] == "train" and "reward" in e]
    assert all("agreement/final_judge_right" in e and "agreement/final_exact_right" in e for e in steps)
    assert "final right: training judge (%)" in (run / "report.html").read_text()
    assert (sum(answered) > 0) == (reader in ("question judge", "transcriber"))  # the copy answered the questions


def test_the_self_judge_reads_each_trajectory_as_its_own_inspection_scored_it(policy):
    """The frozen parent's one teacher-forced pass over a trajectory gives, at every sketch, the
    P(conflict) the decoder recorded when the same weights inspected that state in the rollout;
    the threshold turns it into labels, the last state's label is the final verdict and, graded,
    1 - its P(conflict) the final reward."""
    from selfplay.self_reading import TrajectoryReader

    rolled = [s.trajectory for s in sample(policy)]
    readable = [t for t in rolled if t.steps and not any(s.refinements for s in t.steps)  # (refined: next test)
                and len(t.meta.get("inspect_scores", [])) == len(t.steps)]
    assert readable
    readings = TrajectoryReader(policy, 0.5).read(readable)
    for t, r in zip(readable, readings):
        assert r.p_conflict == pytest.approx(t.meta["inspect_scores"], abs=1e-3)
    p = readings[0].p_conflict[-1]
    for threshold in (p, min(p + 1e-3, 0.999)):
        reader = TrajectoryReader(policy, threshold, graded=True)
        judged = judge_rollouts(readable[:1], reader)[0]
        assert judged.final == (p < threshold) and judged.final_score == pytest.approx(1 - p)
        assert judged.states == len(readings[0].p_conflict) and judged.unjudged == 0
    broken = dataclasses.replace(readable[0], meta={**readable[0].meta, "failed": "out of budget"})
    assert TrajectoryReader(policy, 0.5).read([broken]) == [None]


def test_the_self_judge_reads_a_refined_state_as_if_the_step_had_drawn_it_at_once(policy):
    """A state reached by "conflict" and a corrective instruction is labelled as the same picture
    drawn directly by its step, so a policy cannot buy a right label by staging a repair; the sketch
    it replaced keeps the reading it had in place."""
    from selfplay.inspect_head import verdict_logits
    from selfplay.self_reading import TrajectoryReader
    from strokes.trajectory import Refinement

    t = next(s.trajectory for s in sample(policy) if len(s.trajectory.steps) >= 2)
    t = dataclasses.replace(t, steps=[dataclasses.replace(step, refinements=[]) for step in t.steps])
    last, other = t.steps[-1], t.steps[0]
    staged = dataclasses.replace(t, steps=[*t.steps[:-1], dataclasses.replace(
        last, inspection="conflict. the image does not follow the instruction.",
        refinements=[Refinement("make it right", other.image, "aligned. the image follows the instruction.")])])
    direct = dataclasses.replace(t, steps=[*t.steps[:-1], dataclasses.replace(
        last, image=other.image, inspection="aligned. the image follows the instruction.")])
    reader = TrajectoryReader(policy, 0.5)
    (got,), (want,) = reader.read([staged]), reader.read([direct])
    assert got.p_conflict[-1] == pytest.approx(want.p_conflict[-1], abs=1e-5)
    rows = verdict_logits(policy, [staged])[0][-2]
    in_place = 1 / (1 + np.exp(-(rows[reader.rule.conflict_id] - rows[reader.rule.aligned_id])))
    assert got.p_conflict[-2] == pytest.approx(in_place, abs=1e-5) and reader.stats["folded"] == 1
