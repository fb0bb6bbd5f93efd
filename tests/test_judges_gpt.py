"""The GPT judge's real `openai` client against real HTTP servers on 127.0.0.1.

- our judge server with the oracle behind it: the verdicts that come back are the oracle's, on a
  labelled set, every one;
- a scripted-fault server (stdlib http.server): 429, 5xx, a hang past the timeout, malformed JSON,
  an empty choice list, a verdict that breaks the schema, a 400. The batch completes; what can be
  retried is retried, the rest is counted and skipped;
- the cache (a rerun sends nothing), the request and token budgets, the API key.
"""

from __future__ import annotations

import dataclasses
import json
import threading
import time
import urllib.error
import urllib.request
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np
import pytest

from judges import JudgeConfig, OracleJudge
from judges.evaluate import labelled_contexts
from judges.gpt import GPTJudge
from judges.messages import build_messages, image_url, load_prompts, parse_messages, verdict_schema
from judges.server import JudgeServer
from strokes.errors import InputError
from strokes.verdict import Verdict


@pytest.fixture(scope="module")
def contexts():
    return labelled_contexts(60, seed=11)


@pytest.fixture(scope="module")
def oracle_verdicts(contexts):
    return OracleJudge().judge(contexts)


@pytest.fixture()
def server():
    with JudgeServer(OracleJudge(), port=0) as srv:
        yield srv


def gpt(base_url: str, **kw) -> GPTJudge:
    return GPTJudge(JudgeConfig(kind="gpt", base_url=base_url, model="strokes-oracle", **kw))


def post(url: str, body: bytes, headers: dict | None = None) -> tuple[int, dict]:
    req = urllib.request.Request(url, body, {"Content-Type": "application/json", **(headers or {})})
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


# ---- the real server, the oracle behind it ----------------------------------------------------------

def test_gpt_judge_through_server_returns_the_oracles_verdicts(server, contexts, oracle_verdicts):
    judge = gpt(server.base_url, concurrency=4)
    verdicts = judge.judge(contexts)
    assert verdicts == oracle_verdicts  # every field of every verdict, over real HTTP and JSON
    assert sum(not v.aligned for v in verdicts) == 30
    s = judge.stats
    assert (s.steps, s.verdicts, s.requests, s.unparsable, s.failed, s.retries) == (60, 60, 60, 0, 0, 0)
    assert s.tokens > 0 and server.served == 60


def test_messages_round_trip_a_step_exactly(contexts):
    prompts = load_prompts()
    ctx = next(c for c in contexts if len(c.history) >= 2 and c.previous_image is not None)
    back = parse_messages(json.loads(json.dumps(build_messages(ctx, prompts))), prompts)
    assert (back.prompt, back.instruction, back.description, back.record) == \
        (ctx.prompt, ctx.instruction, ctx.description, ctx.record)
    assert np.array_equal(back.image, ctx.image) and np.array_equal(back.previous_image, ctx.previous_image)
    assert len(back.history) == len(ctx.history)
    for a, b in zip(back.history, ctx.history):
        assert (a.instruction, a.description, a.inspection) == (b.instruction, b.description, b.inspection)
        assert np.array_equal(a.image, b.image)
        assert [r.instruction for r in a.refinements] == [r.instruction for r in b.refinements]
        assert all(np.array_equal(x.image, y.image) for x, y in zip(a.refinements, b.refinements))


def test_strict_schema_requires_every_field_and_accepts_verdicts(oracle_verdicts):
    schema = verdict_schema()
    assert "default" not in json.dumps(schema)
    assert set(schema["required"]) == set(Verdict.model_fields) and schema["additionalProperties"] is False
    conflict = schema["$defs"]["Conflict"]
    assert set(conflict["required"]) == set(conflict["properties"]) and conflict["additionalProperties"] is False
    flagged = next(v for v in oracle_verdicts if not v.aligned)
    assert Verdict.model_validate_json(flagged.model_dump_json()) == flagged


def test_cache_makes_a_rerun_free(server, contexts, oracle_verdicts, tmp_path):
    first = gpt(server.base_url, cache_dir=str(tmp_path / "cache"))
    assert first.judge(contexts[:20]) == oracle_verdicts[:20]
    assert first.cache.count() == 20 and server.served == 20
    rerun = gpt(server.base_url, cache_dir=str(tmp_path / "cache"))  # a resumed round: a new process
    assert rerun.judge(contexts[:20]) == oracle_verdicts[:20]
    assert (rerun.stats.requests, rerun.stats.cache_hits, server.served) == (0, 20, 20)
    # A different model is a different request: nothing is reused.
    with JudgeServer(OracleJudge(), port=0, model="another") as another:
        other = GPTJudge(JudgeConfig(kind="gpt", base_url=another.base_url, model="another",
                                     cache_dir=str(tmp_path / "cache")))
        other.judge(contexts[:2])
    assert other.stats.requests == 2 and other.stats.cache_hits == 0


def test_a_damaged_cache_entry_is_asked_again(server, contexts, oracle_verdicts, tmp_path):
    first = gpt(server.base_url, cache_dir=str(tmp_path / "cache"))
    first.judge(contexts[:5])
    truncated, not_an_answer = sorted((tmp_path / "cache").glob("*/*.json"))[:2]
    truncated.write_text(truncated.read_text()[:20])
    not_an_answer.write_text("[1, 2]")  # valid JSON, but no answer object
    rerun = gpt(server.base_url, cache_dir=str(tmp_path / "cache"))
    assert rerun.judge(contexts[:5]) == oracle_verdicts[:5]
    assert (rerun.stats.requests, rerun.stats.cache_hits) == (2, 3)


def test_request_budget_stops_requests_and_leaves_the_rest_unjudged(server, contexts, oracle_verdicts):
    judge = gpt(server.base_url, concurrency=3, budget_requests=7)
    verdicts = judge.judge(contexts[:20])
    assert server.served == 7 and judge.stats.requests == 7
    assert sum(v is not None for v in verdicts) == 7 and judge.stats.over_budget == 13
    assert all(v == o for v, o in zip(verdicts, oracle_verdicts) if v is not None)
    judge.start_round()  # a new round has a new budget
    assert sum(v is not None for v in judge.judge(contexts[:3])) == 3


def test_token_budget_stops_requests(server, contexts):
    judge = gpt(server.base_url, concurrency=1, budget_tokens=1)
    verdicts = judge.judge(contexts[:5])
    assert server.served == 1 and verdicts[0] is not None and verdicts[1:] == [None] * 4
    assert judge.stats.tokens > 1 and judge.stats.over_budget == 4


def test_api_key_is_enforced(contexts, oracle_verdicts, monkeypatch):
    with JudgeServer(OracleJudge(), port=0, api_key="s3cret") as srv:
        monkeypatch.setenv("TEST_JUDGE_KEY", "s3cret")
        ok = gpt(srv.base_url, api_key_env="TEST_JUDGE_KEY")
        assert ok.judge(contexts[:3]) == oracle_verdicts[:3]
        monkeypatch.setenv("TEST_JUDGE_KEY", "wrong")
        with pytest.raises(InputError, match="rejected the API key from \\$TEST_JUDGE_KEY"):
            gpt(srv.base_url, api_key_env="TEST_JUDGE_KEY").judge(contexts[:3])
        monkeypatch.delenv("TEST_JUDGE_KEY")
        with pytest.raises(InputError, match="HTTP 401"):
            gpt(srv.base_url, api_key_env="TEST_JUDGE_KEY").judge(contexts[:1])
        status, body = post(srv.base_url + "/chat/completions", b"{}")
        assert status == 401 and body["error"]["code"] == "invalid_api_key"
        req = urllib.request.Request(srv.base_url + "/models", headers={"Authorization": "Bearer s3cret"})
        with urllib.request.urlopen(req, timeout=10) as r:
            assert json.loads(r.read())["data"][0]["id"] == "strokes-oracle"


def test_server_rejects_malformed_requests_and_keeps_serving(server, contexts):
    url = server.base_url + "/chat/completions"
    good = {"model": "strokes-oracle", "messages": build_messages(contexts[0], load_prompts())}
    no_image = {"model": "strokes-oracle", "messages": [{"role": "user", "content": good["messages"][1]["content"][0]["text"]}]}
    remote = json.loads(json.dumps(good))
    remote["messages"][1]["content"][2]["image_url"]["url"] = "https://example.com/x.png"
    cases = [b"not json", json.dumps(no_image).encode(), json.dumps({**good, "stream": True}).encode(),
             json.dumps({**good, "response_format": {"type": "xml"}}).encode(), json.dumps(remote).encode(),
             json.dumps({"model": "strokes-oracle", "messages": []}).encode(), json.dumps({**good, "model": None}).encode(),
             json.dumps({**good, "logprobs": "yes"}).encode(), json.dumps({**good, "logprobs": True, "top_logprobs": 21}).encode(),
             json.dumps({**good, "top_logprobs": 2}).encode()]
    for body in cases:
        status, answer = post(url, body)
        assert status == 400 and answer["error"]["message"], body[:60]
    assert post(server.base_url + "/nowhere", b"{}")[0] == 404
    status, answer = post(url, json.dumps(good).encode())
    assert status == 200
    assert Verdict.model_validate_json(answer["choices"][0]["message"]["content"]) == OracleJudge().verdict(contexts[0])
    assert answer["choices"][0]["logprobs"] is None  # the exact judge has no P(conflict) to give


def test_image_urls_are_png_data_urls(contexts):
    url = image_url(contexts[0].image)
    assert url.startswith("data:image/png;base64,")


# ---- a server that misbehaves on purpose ----------------------------------------------------------------

class FaultServer:
    """An OpenAI-compatible stdlib server whose answers follow a script: per case (the record's
    "case" field), one behaviour per attempt, the last one repeating."""

    def __init__(self, script: dict[str, list[str]], hang_s: float = 3.0) -> None:
        self.script, self.hang_s = script, hang_s
        self.attempts: Counter = Counter()
        self.release = threading.Event()
        self.lock = threading.Lock()
        self.prompts = load_prompts()
        self.oracle = OracleJudge()
        outer = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):
                pass

            def send(self, status: int, data: bytes, headers: dict | None = None) -> None:
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                for k, v in (headers or {}).items():
                    self.send_header(k, v)
                self.end_headers()
                self.wfile.write(data)

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                ctx = parse_messages(body["messages"], outer.prompts)
                case = ctx.record["case"]
                with outer.lock:
                    n = outer.attempts[case]
                    outer.attempts[case] += 1
                steps = outer.script[case]
                what = steps[min(n, len(steps) - 1)]
                if what == "hang":
                    outer.release.wait(outer.hang_s)
                    what = "ok"
                if what == "nologprobs":  # as OpenAI answers a reasoning model asked for logprobs
                    err = {"error": {"message": "logprobs is not supported with this model", "param": "logprobs"}}
                    return self.send(400, json.dumps(err).encode())
                if what.isdigit():
                    err = json.dumps({"error": {"message": f"scripted {what}", "type": "scripted"}}).encode()
                    return self.send(int(what), err, {"Retry-After": "0"} if what == "429" else None)
                if what == "malformed":
                    return self.send(200, b'{"id": "x", "choices": [{"message": ')
                content = {"ok": lambda: outer.oracle.verdict(ctx).model_dump_json(),
                           "badschema": lambda: '{"aligned": "perhaps", "conflicts": 3}',
                           "prose": lambda: "The step looks fine to me."}.get(what)
                choices = [] if what == "empty" else [{"index": 0, "finish_reason": "stop", "message": {
                    "role": "assistant", "content": content()}}]
                answer = {"id": "chatcmpl-1", "object": "chat.completion", "created": 0, "model": body["model"],
                          "choices": choices, "usage": {"prompt_tokens": 10, "completion_tokens": 5, "total_tokens": 15}}
                try:
                    self.send(200, json.dumps(answer).encode())
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the client gave up on a hung request

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()
        self.base_url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"

    def close(self) -> None:
        self.release.set()
        self.httpd.shutdown()
        self.httpd.server_close()


SCRIPT = {
    "ok": ["ok"],
    "rate_limited": ["429", "ok"],
    "flaky": ["500", "502", "ok"],
    "conflict_409": ["409", "ok"],
    "hang": ["hang", "ok"],
    "malformed": ["malformed"],
    "empty": ["empty"],
    "badschema": ["badschema"],
    "prose": ["prose"],
    "down": ["503"],
    "rejected": ["400"],
}


def test_scripted_faults_are_retried_or_counted_and_the_batch_completes(contexts, oracle_verdicts):
    cases = list(SCRIPT)
    ctxs = [dataclasses.replace(c, record={**c.record, "case": case}) for c, case in zip(contexts, cases)]
    fault = FaultServer(SCRIPT)
    try:
        judge = gpt(fault.base_url, concurrency=4, max_retries=3, backoff=0.01, timeout_s=0.5)
        t0 = time.perf_counter()
        verdicts = dict(zip(cases, judge.judge(ctxs)))
        elapsed = time.perf_counter() - t0
    finally:
        fault.close()
    good = {"ok", "rate_limited", "flaky", "conflict_409", "hang"}
    for i, case in enumerate(cases):
        if case in good:
            assert verdicts[case] == oracle_verdicts[i], case
        else:
            assert verdicts[case] is None, case
    a = fault.attempts
    assert (a["ok"], a["rate_limited"], a["flaky"], a["conflict_409"], a["hang"]) == (1, 2, 3, 2, 2)
    assert (a["malformed"], a["empty"], a["badschema"], a["prose"], a["rejected"]) == (1, 1, 1, 1, 1)  # data: no retry
    assert a["down"] == 4  # 1 + max_retries, then given up
    s = judge.stats
    assert s.verdicts == 5 and s.unparsable == 4 and s.failed == 2 and s.timeouts == 1
    assert s.retries == 1 + 2 + 1 + 1 + 3 and s.requests == sum(a.values())
    assert elapsed < 3.0  # the hang cost one timeout (0.5 s), not the server's 3 s


def test_an_endpoint_that_refuses_logprobs_stops_in_one_line_naming_the_field(contexts):
    fault = FaultServer({"refuses": ["nologprobs"]})
    try:
        ctx = dataclasses.replace(contexts[0], record={**contexts[0].record, "case": "refuses"})
        with pytest.raises(InputError, match=r"^judge.logprobs: .* refused log-probabilities .*set judge.logprobs: false"):
            gpt(fault.base_url).judge([ctx])
        assert gpt(fault.base_url, logprobs=False).request_body(ctx).keys() == {"model", "messages", "response_format"}
    finally:
        fault.close()


def test_the_verdict_words_log_probabilities_give_its_p_aligned():
    """However the endpoint splits the JSON into tokens, the token after `"aligned":` is the verdict
    word; its probability and its alternative's, renormalised over true and false, are P(aligned)."""
    from openai.types.chat.chat_completion import ChoiceLogprobs
    from openai.types.chat.chat_completion_token_logprob import ChatCompletionTokenLogprob, TopLogprob

    from judges.gpt import p_aligned

    def tokens(*parts: tuple[str, float, dict]) -> ChoiceLogprobs:
        return ChoiceLogprobs(content=[ChatCompletionTokenLogprob(
            token=t, logprob=lp, top_logprobs=[TopLogprob(token=k, logprob=v) for k, v in alt.items()]) for t, lp, alt in parts])

    vllm_like = tokens(('{"', 0.0, {}), ("aligned", 0.0, {}), ('":', 0.0, {}),
                       (" true", np.log(0.6), {" true": np.log(0.6), " false": np.log(0.2), " tr": np.log(0.2)}),
                       (', "conflicts": []}', 0.0, {}))
    assert p_aligned(vllm_like) == pytest.approx(0.75)  # 0.6 / (0.6 + 0.2)
    alone = tokens(('{"aligned":', 0.0, {}), ("false", np.log(0.9), {}), (',"conflicts":[]}', 0.0, {}))
    assert p_aligned(alone) == pytest.approx(0.1)  # the rest of the mass is the word not listed
    assert p_aligned(None) is None and p_aligned(tokens(('{"conflicts":[]}', 0.0, {}))) is None


def test_missing_key_for_the_default_endpoint_is_a_one_line_error(monkeypatch):
    monkeypatch.delenv("NO_SUCH_JUDGE_KEY", raising=False)
    with pytest.raises(InputError, match="NO_SUCH_JUDGE_KEY is not set"):
        GPTJudge(JudgeConfig(kind="gpt", api_key_env="NO_SUCH_JUDGE_KEY"))
    with pytest.raises(InputError, match="judge.concurrency"):
        JudgeConfig(kind="gpt", concurrency=0).validate()
