"""The GPT judge against an endpoint that answers 200 with bodies that are not chat completions.

The real `openai` client talks to a stdlib HTTP server on 127.0.0.1 whose answer to each step is
chosen by the step's record (its "case" field). Whatever the body, the batch completes: a body that
is not a well-formed completion is a data failure of that step (counted in `stats.unparsable`, not
retried), never a crash that loses the other steps' verdicts. `judge-eval` then says why steps went
unjudged.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import socket
import threading
import time
from collections import Counter
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import SimpleNamespace

import pytest

from judges import JudgeConfig, OracleJudge
from judges.evaluate import labelled_contexts
from judges.gpt import GPTJudge
from judges.messages import load_prompts, parse_messages
from judges.server import JudgeServer
from judges.unjudged import TooManyUnjudged, require_verdicts
from selfplay.cli import main
from strokes.errors import InputError

JSON = "application/json"


def completion(content: object, usage: object = None, choices: object = None) -> bytes:
    """A chat completion body, with any part replaced by something of the wrong shape."""
    body = {"id": "chatcmpl-1", "object": "chat.completion", "created": 0, "model": "m",
            "choices": [{"index": 0, "finish_reason": "stop", "message": {"role": "assistant", "content": content}}],
            "usage": {"prompt_tokens": 10, "completion_tokens": 5, "total_tokens": 15}}
    if usage is not None:
        body["usage"] = usage
    if choices is not None:
        body["choices"] = choices
    return json.dumps(body).encode()


VERDICT = '{"aligned": true, "conflicts": [], "correction": "", "missing": []}'

# case -> (Content-Type, extra headers, body) of a 200 answer; "ok" is answered with the oracle's verdict.
BODIES: dict[str, tuple[str, dict, bytes]] = {
    "html": ("text/html", {}, b"<html><body>502 Bad Gateway</body></html>"),
    "bare_string": (JSON, {}, b'"hello"'),
    "tokens_null": (JSON, {}, completion(VERDICT, usage={"prompt_tokens": 1, "completion_tokens": 1,
                                                          "total_tokens": None})),
    "usage_string": (JSON, {}, completion(VERDICT, usage="lots")),
    "choices_string": (JSON, {}, completion(VERDICT, choices="none")),
    "null": (JSON, {}, b"null"),
    "empty_object": (JSON, {}, b"{}"),
    "choice_null": (JSON, {}, completion(VERDICT, choices=[None])),
    "message_string": (JSON, {}, completion(VERDICT, choices=[{"index": 0, "message": "hi"}])),
    "content_number": (JSON, {}, completion(42)),
    "not_utf8": (JSON, {}, b'{"choices": "\xff\xfe"}'),
}


class Endpoint:
    """An OpenAI-compatible stdlib server on 127.0.0.1 that answers each request with
    `respond(request body, request number)` -> (status, Content-Type, extra headers, body)."""

    def __init__(self, respond: Callable[[dict, int], tuple[int, str, dict, bytes]]) -> None:
        self.requests: Counter = Counter()  # by case ("" when the step has no case)
        self.lock = threading.Lock()
        outer = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):
                pass

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                with outer.lock:
                    n = sum(outer.requests.values())
                    outer.requests[case_of(body)] += 1
                status, ctype, headers, data = respond(body, n)
                self.send_response(status)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(data)))
                for k, v in headers.items():
                    self.send_header(k, v)
                self.end_headers()
                self.wfile.write(data)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()
        self.base_url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"

    def __enter__(self) -> "Endpoint":
        return self

    def __exit__(self, *exc: object) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


PROMPTS = load_prompts()


def case_of(body: dict) -> str:
    record = parse_messages(body["messages"], PROMPTS).record or {}
    return record.get("case", "")


@pytest.fixture(scope="module")
def contexts():
    return labelled_contexts(len(BODIES) + 2, seed=5)


def test_bodies_that_are_not_completions_are_counted_data_failures(contexts):
    cases = ["ok", *BODIES, "ok_again"]
    steps = [dataclasses.replace(c, record={**c.record, "case": case}) for c, case in zip(contexts, cases)]
    oracle = OracleJudge()

    def respond(body: dict, n: int) -> tuple[int, str, dict, bytes]:
        case = case_of(body)
        if case.startswith("ok"):
            return 200, JSON, {}, completion(oracle.verdict(parse_messages(body["messages"], PROMPTS)).model_dump_json())
        return (200, *BODIES[case])

    with Endpoint(respond) as endpoint:
        judge = GPTJudge(JudgeConfig(kind="gpt", base_url=endpoint.base_url, model="m", concurrency=4,
                                     max_retries=2, backoff=0.01, timeout_s=2.0))
        t0 = time.perf_counter()
        verdicts = dict(zip(cases, judge.judge(steps)))
    assert time.perf_counter() - t0 < 10
    assert verdicts["ok"] == oracle.verdict(steps[0]) and verdicts["ok_again"] == oracle.verdict(steps[-1])
    assert [case for case in BODIES if verdicts[case] is not None] == []
    assert set(endpoint.requests.values()) == {1}  # data failures are not retried
    s = judge.stats
    assert (s.steps, s.verdicts, s.unparsable, s.failed, s.retries) == (len(cases), 2, len(BODIES), 0, 0)
    assert s.tokens == 2 * 15  # only the well-formed answers' usage counts


def test_judge_eval_table_says_why_steps_went_unjudged(capsys, monkeypatch):
    """Every other request is answered with HTML, the rest with a 400: half the steps are
    unparsable, half failed, and the table's last line says so (and the status: none was judged)."""
    def respond(body: dict, n: int) -> tuple[int, str, dict, bytes]:
        if n % 2:
            return 400, JSON, {}, b'{"error": {"message": "no", "type": "invalid_request_error"}}'
        return (200, *BODIES["html"])

    monkeypatch.delenv("NO_KEY_NEEDED", raising=False)
    with Endpoint(respond) as endpoint:
        assert main(["judge-eval", "--judge", "gpt", "--base-url", endpoint.base_url, "--model", "m",
                     "--api-key-env", "NO_KEY_NEEDED", "--n", "10", "--concurrency", "2"]) == 1  # nothing judged
    table = capsys.readouterr().out
    assert "10 unjudged" in table
    assert table.rstrip().splitlines()[-1] == "unjudged: unparsable 5, failed 5; causes: HTTP 400 5"



# ---- a judge that is not there: the cause, named --------------------------------------------------------

def closed_port() -> int:
    """A loopback port nothing listens on (bound, read and released)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def dead_judge(base_url: str, **kw) -> GPTJudge:
    return GPTJudge(JudgeConfig(kind="gpt", base_url=base_url, model="strokes-oracle", api_key_env="NO_KEY_NEEDED",
                                max_retries=0, timeout_s=5.0, **kw))


@pytest.mark.parametrize("where, cause", [
    ("http://127.0.0.1:{port}/v1", "connection refused"),
    ("http://no-such-judge.invalid/v1", "DNS lookup failed"),
    ("https://127.0.0.1:{server}/v1", "TLS handshake failed"),  # TLS spoken to a plain-HTTP server
])
def test_a_dead_judge_names_its_cause_at_warning(contexts, caplog, where, cause):
    with JudgeServer(OracleJudge(), port=0) as plain:
        judge = dead_judge(where.format(port=closed_port(), server=plain.port))
        with caplog.at_level(logging.INFO, logger="judges.gpt"):
            assert judge.judge(contexts[:3]) == [None] * 3
    assert judge.stats.causes == {cause: 3} and judge.stats.failed == 3 and judge.stats.timeouts == 0
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and cause in warnings[0], warnings  # once per cause, then INFO


def test_a_wrong_key_or_model_stops_the_batch_naming_it(contexts, monkeypatch):
    monkeypatch.setenv("JUDGE_KEY", "wrong")
    with JudgeServer(OracleJudge(), port=0, api_key="right") as srv:
        with pytest.raises(InputError, match=r"rejected the API key from \$JUDGE_KEY \(HTTP 401\)"):
            GPTJudge(JudgeConfig(kind="gpt", base_url=srv.base_url, model=srv.model, api_key_env="JUDGE_KEY",
                                 max_retries=0)).judge(contexts[:1])
    with JudgeServer(OracleJudge(), port=0) as srv:
        with pytest.raises(InputError, match="404 for model 'strokes-oracel'"):
            GPTJudge(JudgeConfig(kind="gpt", base_url=srv.base_url, model="strokes-oracel", max_retries=0,
                                 api_key_env="NO_KEY_NEEDED")).judge(contexts[:1])


def test_judge_eval_fails_when_nothing_was_judged(capsys, monkeypatch):
    monkeypatch.delenv("NO_KEY_NEEDED", raising=False)
    assert main(["judge-eval", "--judge", "gpt", "--base-url", f"http://127.0.0.1:{closed_port()}/v1",
                 "--api-key-env", "NO_KEY_NEEDED", "--n", "4", "--max-retries", "0"]) == 1
    out, err = capsys.readouterr()
    assert "4 unjudged" in out
    assert err.strip() == "selfplay judge-eval: no step was judged (unjudged: failed 4; causes: connection refused 4)"


def test_too_many_missing_verdicts_stop_with_one_line_naming_the_causes():
    cfg = JudgeConfig(kind="gpt", base_url="http://127.0.0.1:9/v1", max_unjudged=0.05)
    require_verdicts(cfg, 1, 20, "GRPO step 1")  # 5 %: allowed
    stats = SimpleNamespace(stats={"failed": 2, "causes": {"connection refused": 2}})
    with pytest.raises(TooManyUnjudged) as e:
        require_verdicts(cfg, 2, 20, "GRPO step 3", stats)
    assert str(e.value) == ("judge: 2 of 20 verdicts missing in GRPO step 3, more than judge.max_unjudged 0.05 "
                            "(unjudged: failed 2; causes: connection refused 2); check the judge "
                            "(gpt at http://127.0.0.1:9/v1)")
    with pytest.raises(InputError, match="judge.max_unjudged"):
        JudgeConfig(max_unjudged=1.5)
