"""The self judge over a real (tiny, untrained) policy's Inspect, directly and behind the server.

An untrained policy writes inspections that rarely follow a template; the point here is the
plumbing: the rollout engine's Inspect runs on judge contexts (with their earlier steps), what it
writes is parsed or counted as unparsable, nothing is fatal, and the same holds over HTTP, where an
unjudgeable step comes back as a refusal the GPT judge counts and skips. How well a *trained*
policy judges is what `selfplay judge-eval --judge self --checkpoint DIR` measures.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from judges import JudgeConfig, SelfJudge
from judges.evaluate import evaluate, labelled_contexts
from judges.gpt import GPTJudge
from judges.server import JudgeServer
from rollout.config import RolloutConfig
from rollout.engine import Engine
from strokes.model.image_tokenizer import ImageTokenizer, fitting_images
from strokes.model.processor import Processor, build_text_tokenizer
from strokes.model.policy import Policy
from strokes.model.tiny import ModelConfig
from strokes.verdict import Verdict

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def policy():
    import torch

    torch.set_num_threads(1)
    it = ImageTokenizer.fit(fitting_images(150, seed=1), 256)
    processor = Processor(build_text_tokenizer(it.num_codes), it)
    return Policy.build(ModelConfig(hidden_size=32, num_layers=1, num_heads=2, intermediate_size=64,
                                    max_positions=1024), processor)


@pytest.fixture(scope="module")
def engine(policy):
    return Engine(policy, RolloutConfig(device="cpu", temperature=1.0, max_text_tokens=24, seed=3))


@pytest.fixture(scope="module")
def contexts():
    return labelled_contexts(12, seed=5)


def test_self_judge_runs_the_policys_inspect_and_counts_what_it_cannot_read(engine, contexts):
    judge = SelfJudge(engine.inspect)
    verdicts = judge.judge(contexts)
    assert len(verdicts) == len(contexts)
    assert all(v is None or isinstance(v, Verdict) for v in verdicts)
    assert judge.stats["steps"] == 12
    assert judge.stats["unparsable"] == sum(v is None for v in verdicts)
    for v in verdicts:
        if v is not None and v.aligned:
            assert v.correction == ""
    report = evaluate(judge, contexts, "self(untrained)")
    assert report.steps == 12 and report.unjudged == sum(v is None for v in judge.judge(contexts))


def test_self_judge_behind_the_server(engine, contexts):
    direct = SelfJudge(engine.inspect)
    with JudgeServer(SelfJudge(engine.inspect), port=0) as srv:
        client = GPTJudge(JudgeConfig(kind="gpt", base_url=srv.base_url, model=srv.model, concurrency=4))
        verdicts = client.judge(contexts)
    assert srv.served == 12 and len(verdicts) == 12
    s = client.stats
    assert s.failed == 0 and s.verdicts + s.unparsable == 12  # refusals are counted, never fatal
    assert all(v is None or isinstance(v, Verdict) for v in verdicts)
    assert direct.judge(contexts[:1])  # the judge itself still answers after serving


def test_judge_eval_self_on_a_checkpoint(policy, tmp_path, capsys):
    import json

    from selfplay.cli import main

    args = ["judge-eval", "--judge", "self", "--device", "cpu", "--n", "8", "--temperature", "0", "--json"]
    assert main([*args, "--checkpoint", str(ROOT / "checkpoints/base")]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["steps"] == 8 and report["negatives"] == 4
    assert report["stats"]["steps"] == 8 and report["unjudged"] == report["stats"].get("unparsable", 0) < 8

    # an untrained model answers nothing a judge can read: the command fails, naming why
    policy.save_pretrained(tmp_path / "ckpt")
    assert main([*args, "--checkpoint", str(tmp_path / "ckpt")]) == 1
    out = capsys.readouterr()
    assert json.loads(out.out)["unjudged"] == 8
    assert out.err.strip().splitlines()[-1] == "selfplay judge-eval: no step was judged (unjudged: unparsable 8)"
