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
import threading
import time
from collections import Counter
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from judges import JudgeConfig, OracleJudge
from judges.evaluate import labelled_contexts
from judges.gpt import GPTJudge
from judges.messages import load_prompts, parse_messages
from selfplay.cli import main

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
    unparsable, half failed, and the table's last line says so."""
    def respond(body: dict, n: int) -> tuple[int, str, dict, bytes]:
        if n % 2:
            return 400, JSON, {}, b'{"error": {"message": "no", "type": "invalid_request_error"}}'
        return (200, *BODIES["html"])

    monkeypatch.delenv("NO_KEY_NEEDED", raising=False)
    with Endpoint(respond) as endpoint:
        assert main(["judge-eval", "--judge", "gpt", "--base-url", endpoint.base_url, "--model", "m",
                     "--api-key-env", "NO_KEY_NEEDED", "--n", "10", "--concurrency", "2"]) == 0
    table = capsys.readouterr().out
    assert "10 unjudged" in table
    assert table.rstrip().splitlines()[-1] == "unjudged: unparsable 5, failed 5"

