"""What the judge endpoint answers, whichever server carries it: the one place that defines it.

Two backends serve a judge as an OpenAI-compatible endpoint: `judges/server.py` (the standard
library's http.server, the default) and `judges/ray_serve.py` (Ray Serve replicas). Both do only
their I/O and their batching; every decision about a request is made here, in three steps:

1. `Endpoint.head(method, path, authorization, content_lengths)`: from the request line and headers
   alone, before a byte of the body is read: health, the key, the declared length, the route, and
   the whole answer of a GET. None means "read the declared body and go on".
2. `Endpoint.step(raw)`: the body's JSON, the model name, streaming, `response_format` and the step's
   messages (images checked from their header, `parse_messages`) -> a `Step` to judge, or a refusal.
3. `Endpoint.answer(step, outcome)`: the chat completion of a verdict (or of a refusal, or a 500
   naming the judge's exception); with `logprobs` asked and a judge that says how sure it is, the
   verdict word's log-probabilities as OpenAI returns them (`verdict_logprobs`).

`judge_alone_on_failure` is the batching rule both backends share: a batch mixes steps of several
clients, so a failed batch is judged again one step at a time and only the step that breaks the
judge gets the error.
"""

from __future__ import annotations

import hmac
import json
import logging
import math
import re
import threading
import time
import uuid
from dataclasses import dataclass

from strokes.verdict import Graded, Judge, StepContext, graded_verdicts

from .messages import Prompts, load_prompts, parse_messages

log = logging.getLogger(__name__)
MAX_BODY = 64 * 1024 * 1024
DRAIN_MAX = 1024 * 1024  # a refused body up to this size is read and dropped, keeping the connection
IDLE_TIMEOUT_S = 30.0  # per socket read or write: a connection silent this long is closed
CHAT_PATH = "/v1/chat/completions"
HEALTH_PATHS = ("/health", "/v1/health")


@dataclass(frozen=True)
class Reply:
    """An answer: HTTP status, JSON payload, and whether the connection must close after it (a
    refused body that is not read and dropped, or a length that cannot be trusted)."""

    status: int
    payload: dict
    close: bool = False

    def body(self) -> bytes:
        return json.dumps(self.payload).encode()


@dataclass(frozen=True)
class Step:
    """A request that passed every check: the step to judge and the prompt's token estimate."""

    context: StepContext
    prompt_tokens: int
    top_logprobs: int | None = None
    """With `logprobs: true`: how many alternatives each answer token lists (`top_logprobs`, 0-20)."""


Outcome = Graded | BaseException
"""What judging one step gave: the verdict (None: the judge could not judge it) with the judge's
P(conflict) where it can say, or the exception that broke the judge on that step alone."""
MIN_LOGPROB = -9999.0  # what OpenAI reports for a token of no probability (JSON has no -inf)


class Endpoint:
    """The request rules of one served judge (module docstring). Thread-safe."""

    def __init__(self, model: str, api_key: str | None = None, prompts: Prompts | None = None,
                 image_side: int | None = None) -> None:
        self.model = model
        self.api_key = api_key or None
        self.prompts = prompts or load_prompts()
        # the one image size the judge reads (the exact judge's 64-px canvas, a policy's images); a
        # judge that does not say reads any up to MAX_SIDE
        self.image_side = image_side
        self._lock = threading.Lock()
        self.served = 0  # authorised chat-completion requests with a JSON body, for monitoring

    @classmethod
    def for_judge(cls, judge: Judge, api_key: str | None = None, model: str | None = None,
                  prompts: Prompts | None = None) -> "Endpoint":
        """The endpoint of `judge`: its model name defaults to `strokes-<judge.name>`, its image size
        is the judge's `image_side` when it has one."""
        return cls(model or default_model(getattr(judge, "name", "judge")), api_key, prompts,
                   getattr(judge, "image_side", None))

    # ---- 1. before the body -------------------------------------------------------------------------

    def authorized(self, header: str | None) -> bool:
        if self.api_key is None:
            return True
        return hmac.compare_digest((header or "").encode(), f"Bearer {self.api_key}".encode())

    def head(self, method: str, path: str, authorization: str | None, content_lengths: list[str]) -> Reply | None:
        """The answer owed from the request line and headers alone, or None when the declared body
        (`declared_length(content_lengths)` bytes) is to be read and passed to `step`."""
        path = path.split("?", 1)[0].rstrip("/")
        if method == "GET":
            return self._get(path, authorization)
        if method != "POST":
            return Reply(405, error(f"method {method} is not allowed"), close=True)
        length = declared_length(content_lengths)
        if not self.authorized(authorization):
            return refusal(401, unauthorized(), length)
        if length is None:
            if not content_lengths:
                return Reply(411, error("a Content-Length header is required"), close=True)
            return Reply(400, error("Content-Length must be one non-negative integer"), close=True)
        if length > MAX_BODY:
            return refusal(413, error(f"request body too large (at most {MAX_BODY} bytes)"), length)
        if path != CHAT_PATH:
            return refusal(404, error(f"no route {path}", None, "not_found_error"), length)
        return None

    def _get(self, path: str, authorization: str | None) -> Reply:
        if path in HEALTH_PATHS:
            return Reply(200, {"status": "ok"})
        if not self.authorized(authorization):
            return Reply(401, unauthorized())
        if path == "/v1/models":
            return Reply(200, self.models())
        return Reply(404, error(f"no route {path}", None, "not_found_error"))

    def models(self) -> dict:
        return {"object": "list", "data": [{"id": self.model, "object": "model", "created": 0, "owned_by": "strokes"}]}

    # ---- 2. the body ------------------------------------------------------------------------------------

    def step(self, raw: bytes) -> Step | Reply:
        """The step a chat-completions body asks to judge, or the 4xx refusing it."""
        try:
            body = json.loads(raw)
        except (json.JSONDecodeError, UnicodeDecodeError):
            return Reply(400, error("the request body is not JSON"))
        with self._lock:
            self.served += 1
        if not isinstance(body, dict):
            return Reply(400, error("the request body must be a JSON object"))
        model = body.get("model")
        if not isinstance(model, str) or not model:
            return Reply(400, error("you must provide a model parameter", "model"))
        if model != self.model:  # as vLLM and OpenAI answer: a typo in judge.model fails here as it would there
            return Reply(404, error(f"The model `{model}` does not exist (this server serves `{self.model}`).",
                                    "model", "invalid_request_error", "model_not_found"))
        if body.get("stream"):
            return Reply(400, error("streaming is not supported", "stream"))
        rf = body.get("response_format")
        if rf is not None and (not isinstance(rf, dict) or rf.get("type") not in ("json_schema", "json_object", "text")):
            return Reply(400, error("response_format must be of type json_schema, json_object or text", "response_format"))
        logprobs, top = body.get("logprobs"), body.get("top_logprobs")
        if logprobs is not None and not isinstance(logprobs, bool):
            return Reply(400, error("logprobs must be a boolean", "logprobs"))
        if top is not None and (not logprobs or type(top) is not int or not 0 <= top <= 20):
            return Reply(400, error("top_logprobs must be an integer from 0 to 20, with logprobs: true", "top_logprobs"))
        try:
            context = parse_messages(body.get("messages"), self.prompts, self.image_side)
        except ValueError as e:
            return Reply(400, error(str(e), "messages"))
        return Step(context, estimate_tokens(body.get("messages")), (top or 0) if logprobs else None)

    # ---- 3. the answer ----------------------------------------------------------------------------------

    def answer(self, step: Step, outcome: Outcome) -> Reply:
        """The chat completion carrying `outcome`: the verdict's JSON as content, a refusal with no
        content for a step the judge could not judge, a 500 for one that broke the judge."""
        if isinstance(outcome, BaseException):
            return Reply(500, error(f"the judge failed: {type(outcome).__name__}: {outcome}", None, "server_error"))
        verdict, p_conflict = outcome
        logprobs = None
        if verdict is None:
            message = {"role": "assistant", "content": None, "refusal": "the judge could not judge this step"}
            content = ""
        else:
            content = verdict.model_dump_json()
            message = {"role": "assistant", "content": content, "refusal": None}
            if step.top_logprobs is not None and p_conflict is not None:
                logprobs = verdict_logprobs(content, p_conflict, step.top_logprobs)
        completion_tokens = max(1, len(content) // 4)
        return Reply(200, {
            "id": f"chatcmpl-{uuid.uuid4().hex[:24]}", "object": "chat.completion", "created": int(time.time()),
            "model": self.model,
            "choices": [{"index": 0, "message": message, "finish_reason": "stop", "logprobs": logprobs}],
            "usage": {"prompt_tokens": step.prompt_tokens, "completion_tokens": completion_tokens,
                      "total_tokens": step.prompt_tokens + completion_tokens},
        })


def verdict_logprobs(content: str, p_conflict: float, top: int) -> dict:
    """A choice's `logprobs` for a verdict's JSON, as an OpenAI endpoint gives them: the content as
    tokens (the text before the verdict word, the word `true` or `false`, the rest), each with its
    log-probability and up to `top` alternatives. Only the verdict word is uncertain: P(aligned) =
    1 - `p_conflict` for `true`, `p_conflict` for `false`; the text around it is certain (0)."""
    head, sep, tail = content.partition('"aligned":')
    word = "true" if tail.startswith("true") else "false"
    prob = {"true": 1.0 - p_conflict, "false": p_conflict}
    lp = {w: max(math.log(p), MIN_LOGPROB) if p > 0 else MIN_LOGPROB for w, p in prob.items()}

    def token(text: str, logprob: float, alternatives: list[tuple[str, float]]) -> dict:
        return {"token": text, "logprob": logprob, "bytes": list(text.encode()),
                "top_logprobs": [{"token": t, "logprob": v, "bytes": list(t.encode())} for t, v in alternatives[:top]]}

    words = sorted(lp.items(), key=lambda kv: -kv[1])
    tokens = [token(head + sep, 0.0, [(head + sep, 0.0)]), token(word, lp[word], words)]
    if tail[len(word):]:
        tokens.append(token(tail[len(word):], 0.0, [(tail[len(word):], 0.0)]))
    return {"content": tokens, "refusal": None}


def judge_alone_on_failure(judge: Judge, contexts: list[StepContext]) -> list[Outcome]:
    """Judge `contexts` in one call; if that call fails, judge each step alone, so only a step that
    breaks the judge by itself gets its exception and every other step its verdict."""
    try:
        verdicts = graded_verdicts(judge, contexts)
        if len(verdicts) != len(contexts):
            raise RuntimeError(f"judge returned {len(verdicts)} verdicts for {len(contexts)} steps")
        return list(verdicts)
    except Exception as e:  # the server stays up
        if len(contexts) == 1:
            log.exception("judge failed on a step")
            return [e]
        log.warning("judge failed on a batch of %d (%s: %s); judging each step alone", len(contexts), type(e).__name__, e)
        return [judge_alone_on_failure(judge, [c])[0] for c in contexts]


def default_model(judge_name: str) -> str:
    """The model id a served judge answers to unless told otherwise."""
    return f"strokes-{judge_name}"


def refusal(status: int, payload: dict, length: int | None) -> Reply:
    """A refusal answered before the body is read: a body of up to DRAIN_MAX bytes is read and
    dropped so the connection stays usable; after a larger or undeclared one it closes."""
    return Reply(status, payload, close=length is None or length > DRAIN_MAX)


def unauthorized() -> dict:
    return error("invalid or missing API key", None, "invalid_request_error", "invalid_api_key")


def error(message: str, param: str | None = None, kind: str = "invalid_request_error", code: str | None = None) -> dict:
    return {"error": {"message": message, "type": kind, "param": param, "code": code}}


def estimate_tokens(messages: object) -> int:
    """A rough token count (4 characters of text a token, 85 per image, as OpenAI bills a low-detail
    image), so clients' token budgets work against this server too."""
    n = 0
    for m in messages if isinstance(messages, list) else []:
        content = m.get("content") if isinstance(m, dict) else None
        parts = [{"type": "text", "text": content}] if isinstance(content, str) else content or []
        for p in parts if isinstance(parts, list) else []:
            if isinstance(p, dict):
                n += 85 if p.get("type") == "image_url" else len(str(p.get("text", ""))) // 4
    return max(1, n)


def declared_length(values: list[str] | None) -> int | None:
    """The one Content-Length of a request; None when it is missing, repeated or not a plain
    non-negative integer (int() alone accepts "-1", "+5" and "1_0")."""
    if not values or len(values) != 1 or not re.fullmatch(r"[0-9]{1,15}", values[0].strip()):
        return None
    return int(values[0])
