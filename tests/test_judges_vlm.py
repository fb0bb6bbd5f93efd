"""The stand-in VLM judge: its measured mistakes match its profile's definitions within sampling
error, they depend on the image as the profile says, the same question gets the same answer, and
it is served, and reached by the GPT judge, through the same OpenAI-compatible API as any judge."""

from __future__ import annotations

import json
import math
import os
import re

import pytest
import yaml

from judges import JudgeConfig, OracleJudge
from judges.evaluate import REWORDINGS, labelled_contexts, rephrase_consistency
from judges.gpt import GPTJudge
from judges.server import JudgeServer
from judges.vlm import PROFILES, VLMJudge, load_profile
from selfplay.cli import main
from strokes.errors import InputError
from strokes.shapeworld.render import render
from strokes.shapeworld.scene import Obj, Scene
from strokes.verdict import StepContext


@pytest.fixture(scope="module")
def contexts():
    return labelled_contexts(400, seed=11)  # 200 steps with a conflict, 200 aligned, rendered


def within_sampling_error(hits: int, chances: list[float]) -> bool:
    """Whether `hits` Bernoulli outcomes fit their chances: within 3.5 standard errors of the sum."""
    mean = sum(chances)
    sd = math.sqrt(sum(p * (1 - p) for p in chances))
    return abs(hits - mean) <= 3.5 * max(sd, 1.0)


@pytest.mark.parametrize("name, recall, false_alarm", [("strong", (0.85, 0.95), (0.01, 0.09)),
                                                      ("typical", (0.74, 0.87), (0.05, 0.15))])
def test_measured_error_rates_match_the_profile(contexts, name, recall, false_alarm):
    judge = VLMJudge(load_profile(name), seed=3)
    missed, miss_chances, alarms, alarm_chances = 0, [], 0, []
    flagged = aligned_flagged = negatives = positives = 0
    for ctx, got in zip(contexts, judge.judge(contexts)):
        exact, misses, fa = judge.chances(ctx)
        if exact.aligned:
            positives += 1
            alarm_chances.append(fa)
            alarms += not got.aligned
            aligned_flagged += not got.aligned
        else:
            negatives += 1
            flagged += not got.aligned
            # each conflict of the exact verdict is kept or missed on its own draw
            miss_chances += misses
            missed += len(exact.conflicts) - (0 if got.aligned else len(got.conflicts))
    assert within_sampling_error(missed, miss_chances), (missed, sum(miss_chances))
    assert within_sampling_error(alarms, alarm_chances), (alarms, sum(alarm_chances))
    # and the profile's headline figures, step by step
    assert recall[0] <= flagged / negatives <= recall[1]
    assert false_alarm[0] <= aligned_flagged / positives <= false_alarm[1]


def test_the_chances_are_the_task_rates_times_the_image_difficulty(contexts):
    profile = load_profile("typical")
    judge = VLMJudge(profile)
    for ctx in contexts[:60]:
        exact, misses, fa = judge.chances(ctx)
        rates = profile.rates(ctx.record["tag"])
        for c, p in zip(exact.conflicts, misses):
            if c.source == "instruction":  # read, not seen: the plan multiplier alone
                assert p == pytest.approx((1 - rates.recall) * profile.plan)
        if ctx.record["tag"] in ("single_object", "two_object"):
            assert fa == pytest.approx(rates.false_alarm)


def scene_context(record: dict, *objects: Obj) -> StepContext:
    """A finished picture put to the judge as eval images are: no instruction, the prompt as description."""
    return StepContext(record["prompt"], "", record["prompt"], render(Scene(tuple(objects))), record)


COUNTING = {"tag": "counting", "include": [{"class": "circle", "count": 4}],
            "exclude": [{"class": "circle", "count": 5}], "prompt": "four circles"}
POSITION = {"tag": "position", "include": [{"class": "circle", "count": 1},
                                           {"class": "triangle", "count": 1, "position": ["left of", 0]}],
            "prompt": "a triangle left of a circle"}


def colors(shape: str) -> dict:
    return {"tag": "colors", "include": [{"class": shape, "count": 1, "color": "red"}], "prompt": f"a red {shape}"}


def measured_miss_rate(ctx: StepContext, profile: str = "typical", seeds: int = 200) -> float:
    """How often the judge passes a wrong picture, over `seeds` judges of the same profile."""
    assert not OracleJudge().verdict(ctx).aligned
    return sum(VLMJudge(load_profile(profile), seed).verdict(ctx).aligned for seed in range(seeds)) / seeds


def test_the_image_decides_how_hard_a_mistake_is():
    off_by_one = scene_context(COUNTING, *(Obj("circle", "red", x, 8) for x in (4, 20, 36)))
    off_by_three = scene_context(COUNTING, Obj("circle", "red", 20, 20))
    near = scene_context(POSITION, Obj("circle", "red", 20, 20), Obj("triangle", "blue", 36, 36))
    far = scene_context(POSITION, Obj("circle", "red", 4, 20), Obj("triangle", "blue", 48, 20))
    small = scene_context(colors("triangle"), Obj("triangle", "blue", 20, 20))
    large = scene_context(colors("square"), Obj("square", "blue", 20, 20))
    p = load_profile("typical")
    counting, position, color = (1 - p.rates(t).recall for t in ("counting", "position", "colors"))
    rate = {}
    for name, ctx, chance in [("off by one", off_by_one, counting * p.count_off_by[0]),
                              ("off by three", off_by_three, counting * p.count_off_by[2]),
                              ("near", near, position * p.relation_near), ("far", far, position * p.relation_far),
                              ("small", small, color * p.color_small), ("large", large, color * p.color_large)]:
        assert VLMJudge(p).chances(ctx)[1] == [pytest.approx(chance)]
        rate[name] = measured_miss_rate(ctx)
        assert abs(rate[name] - chance) <= 3.5 * math.sqrt(chance * (1 - chance) / 200), (name, rate[name], chance)
    assert rate["off by one"] > rate["off by three"] and rate["near"] > rate["far"] and rate["small"] > rate["large"]


def test_the_same_question_gets_the_same_answer(contexts):
    contexts = contexts[:120]
    a, b = VLMJudge(load_profile("typical"), seed=5), VLMJudge(load_profile("typical"), seed=5)
    first = a.judge(contexts)
    assert a.judge(contexts) == first  # asked again
    assert b.judge(list(reversed(contexts))) == list(reversed(first))  # another process, another order
    other = VLMJudge(load_profile("typical"), seed=6).judge(contexts)
    assert other != first  # the seed decides which steps it gets wrong


def test_how_often_a_mistake_repeats_when_the_prompt_is_reworded(contexts, capsys):
    """Asked in the same words the stand-in repeats every mistake (rho 1); reworded, its draws are
    fresh, so a mistake repeats about as often as any ask errs (rho near 0). `judge-eval
    --rephrase` measures this of a real endpoint, which decides whether votes are worth it."""
    judge = VLMJudge(load_profile("typical"), seed=0)
    same, *reworded = rephrase_consistency(judge, contexts[:200], ("{}", *REWORDINGS))
    assert same.steps == 200 and same.wrong >= 15
    assert same.repeated == same.wrong and same.rho == 1.0
    for r in reworded:
        assert r.wrong == same.wrong  # the same asks as written
        assert r.repeated < r.wrong and r.rho < 0.4
    assert rephrase_consistency(OracleJudge(), contexts[:20], REWORDINGS[:1])[0].rho is None  # it makes none
    assert main(["judge-eval", "--judge", "vlm", "--profile", "typical", "--n", "40", "--rephrase"]) == 0
    table = capsys.readouterr().out.splitlines()
    header = next(k for k, line in enumerate(table) if line.startswith("asked again as"))
    assert [line.split("'")[1] for line in table[header + 1:]] == list(REWORDINGS)


def test_a_user_profile_in_yaml_and_bad_ones(tmp_path):
    shipped = yaml.safe_load((PROFILES / "typical.yaml").read_text())
    exact = {"recall": 1.0, "false_alarm": 0.0}
    mine = tmp_path / "perfect.yaml"
    mine.write_text(yaml.safe_dump({**shipped, "name": "perfect", "tasks": {t: exact for t in shipped["tasks"]},
                                    "default": exact}))
    perfect = VLMJudge(load_profile(mine))
    ctxs = labelled_contexts(40, seed=2)
    assert perfect.judge(ctxs) == OracleJudge().judge(ctxs)
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump({**shipped, "tasks": {**shipped["tasks"], "counting": {**exact, "recall": 1.7}}}))
    with pytest.raises(InputError, match=r"bad.yaml: tasks.counting.recall must be a fraction"):
        load_profile(bad)
    bad.write_text(yaml.safe_dump({**shipped, "tasks": {**shipped["tasks"], "counting": {"recall": 0.1, "false_alarm": 0.2}}}))
    with pytest.raises(InputError, match=r"bad.yaml: tasks.counting.recall must exceed tasks.counting.false_alarm"):
        load_profile(bad)
    with pytest.raises(InputError, match="judge.profile: .*no such VLM judge profile"):
        JudgeConfig(kind="vlm", profile=str(tmp_path / "missing.yaml"))


def test_served_and_judged_through_the_openai_client(contexts):
    """The verdicts and, from the verdict word's log-probabilities, the judge's P(conflict) cross
    the API as they left it; without `logprobs` the verdicts come alone."""
    judge = VLMJudge(load_profile("typical"), seed=1)
    with JudgeServer(VLMJudge(load_profile("typical"), seed=1), port=0) as srv:
        client = GPTJudge(JudgeConfig(kind="gpt", base_url=srv.base_url, model=srv.model, concurrency=4,
                                      api_key_env="NO_KEY"))
        assert srv.model == "strokes-vlm"
        served, local = client.judge_graded(contexts[:40]), judge.judge_graded(contexts[:40])
        assert [v for v, _ in served] == [v for v, _ in local]
        assert [p for _, p in served] == pytest.approx([p for _, p in local], abs=1e-9)
        plain = GPTJudge(JudgeConfig(kind="gpt", base_url=srv.base_url, model=srv.model, logprobs=False,
                                     api_key_env="NO_KEY"))
        assert plain.judge_graded(contexts[:5]) == [(v, None) for v, _ in local[:5]]


def test_it_is_unsure_where_it_errs(contexts):
    """The verdict is its P(conflict)'s side of one half (the draws alone decide it, as before), and
    its mistakes are unsure ones: P(conflict) ranks the truly wrong steps above the right ones
    better than the yes/no verdict does, so a graded reward knows more than the answer."""
    from sklearn.metrics import roc_auc_score

    graded = VLMJudge(load_profile("typical"), seed=2).judge_graded(contexts)
    assert [v for v, _ in graded] == VLMJudge(load_profile("typical"), seed=2).judge(contexts)
    assert all((p > 0.5) == (not v.aligned) for v, p in graded)
    wrong = [not OracleJudge().verdict(c).aligned for c in contexts]
    said = roc_auc_score(wrong, [not v.aligned for v, _ in graded])
    sure = roc_auc_score(wrong, [p for _, p in graded])
    missed = [p for (v, p), w in zip(graded, wrong) if w and v.aligned]
    right = [p for (v, p), w in zip(graded, wrong) if not w and v.aligned]
    assert sure > said + 0.03, (sure, said)
    assert sum(missed) / len(missed) > 2 * sum(right) / len(right)  # a miss is an unsure "aligned"


def test_a_run_serves_its_judge_from_a_process_of_its_own(contexts, tmp_path):
    """`judge.serve` starts the judge server in a child process, as `selfplay judge-serve` runs beside
    a trainer: it answers as the judge itself would, says how many requests it answered and is gone
    after the block; a judge that cannot start fails in one line naming the field."""
    from selfplay.config import load_config
    from selfplay.judging import served_judge

    lines: list[str] = []
    cfg = load_config(None, ["judge.kind=gpt", "judge.serve=vlm", "judge.profile_seed=1", "judge.concurrency=4"])
    with served_judge(cfg, log=lines.append) as served:
        assert GPTJudge(served.judge).judge(contexts[:40]) == VLMJudge(load_profile("typical"), seed=1).judge(contexts[:40])
    pid = int(re.search(r"\(process (\d+)\)", lines[0]).group(1))
    assert pid != os.getpid() and lines[-1].endswith("answered 40 requests")
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)
    broken = load_config(None, ["judge.kind=gpt", "judge.serve=self", f"loop.base_checkpoint={tmp_path / 'none'}"])
    with pytest.raises(InputError, match=r"^judge.serve: the self judge server did not start \(.*none"):
        with served_judge(broken, log=lines.append):
            pass


def test_judge_eval_and_judge_serve_name_the_vlm_judge(capsys):
    assert main(["judge-eval", "--judge", "vlm", "--profile", "typical", "--n", "60", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["judge"] == "vlm (typical, seed 0)" and report["unjudged"] == 0
    recall = report["rows"][0]["recall"]
    assert 0.5 < recall < 1.0  # it misses some, as a VLM does
    assert main(["judge-serve", "--judge", "vlm", "--profile", "no-such-profile", "--port", "0"]) == 2
    assert "no such VLM judge profile (shipped: strong, typical)" in capsys.readouterr().err
