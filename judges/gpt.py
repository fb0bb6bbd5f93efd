"""The GPT judge: any OpenAI-compatible chat endpoint (OpenAI, vLLM, our own `selfplay judge-serve`).

Each step becomes one chat request (judges/messages.py: the prompt text, the images as base64 PNG
data URLs) asking for the verdict as strict structured output. Around the `openai` client, whose
own retries are switched off so the policy here is the only one:

- bounded concurrency (`concurrency` threads, one request each);
- retries with exponential backoff on timeouts, dropped connections and HTTP 408/409/429/5xx
  (a Retry-After header wins when it asks for longer); these are infrastructure failures;
- answers that cannot be read (a body that is not a well-formed chat completion, whatever its
  shape: HTML, a bare JSON value, `choices` or `usage` of the wrong type; no choices, a refusal, a
  verdict that breaks the schema) are data failures: counted in `stats.unparsable` and skipped
  (verdict None), never retried and never fatal;
- a per-round budget of requests and tokens: when it is spent no request is sent and the remaining
  steps stay unjudged (None, counted in `stats.over_budget`);
- with `logprobs` (the default) the request asks for the answer's token log-probabilities, and the
  verdict word's (`"aligned": true` or `false`) give the judge's P(conflict) beside its verdict
  (`judge_graded`); an endpoint that returns none leaves it None, one that refuses the parameter
  stops the batch with a one-line InputError naming `judge.logprobs`;
- an on-disk cache keyed by the full request, so a resumed round pays nothing twice for a verdict
  (unreadable answers are not kept: the next run asks again);
- a rejected API key (401/403) or an unknown model or path (404) stops the batch with a one-line
  InputError, because every further request would fail the same way;
- every failed attempt is counted by its cause (`stats.causes`: connection refused, DNS lookup
  failed, TLS handshake failed, timeout, connection lost, HTTP <status>), and the first of each
  cause in a round is logged at WARNING: a judge that is down says why, once.
"""

from __future__ import annotations

import json
import logging
import math
import os
import random
import re
import socket
import ssl
import threading
import time
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import asdict, dataclass, field

from pydantic import ValidationError

from strokes.errors import InputError
from strokes.verdict import Graded, StepContext, Verdict

from .cache import AnswerCache, request_key
from .config import JudgeConfig
from .messages import build_messages, load_prompts, response_format

log = logging.getLogger(__name__)
RETRY_STATUSES = frozenset({408, 409, 429})
MAX_RETRY_AFTER_S = 60.0
TOP_LOGPROBS = 5  # alternatives per answer token: the verdict word's other value is among them
_BEFORE_VERDICT = re.compile(r'"aligned"\s*:\s*$')


@dataclass
class JudgeStats:
    """What one round of judging cost and how it went (reset by `start_round`)."""

    steps: int = 0  # steps asked to judge
    verdicts: int = 0  # steps that got a verdict
    requests: int = 0  # HTTP requests sent, retries included
    retries: int = 0
    timeouts: int = 0  # requests that timed out
    connection_errors: int = 0  # requests that found no server, or lost their connection
    http_errors: int = 0  # retryable HTTP statuses received
    cache_hits: int = 0
    unparsable: int = 0  # answers that could not be read as a verdict (skipped)
    failed: int = 0  # steps given up on: retries exhausted, or a non-retryable status
    over_budget: int = 0  # steps left unjudged because the budget was spent
    tokens: int = 0  # total tokens the endpoint reported
    causes: dict[str, int] = field(default_factory=dict)  # failed attempts by cause ("connection refused": 4)

    def to_json(self) -> dict:
        return asdict(self)

    @property
    def unjudged(self) -> int:
        """Steps asked that got no verdict."""
        return self.steps - self.verdicts


class GPTJudge:
    """Judges steps through an OpenAI-compatible endpoint. Returns None for a step it could not judge."""

    name = "gpt"

    def __init__(self, cfg: JudgeConfig) -> None:
        from openai import OpenAI

        self.cfg = cfg.validate()
        self.prompts = load_prompts(cfg.prompts_file)
        key = os.environ.get(cfg.api_key_env, "")
        if not key and cfg.base_url is None:
            raise InputError(f"judge.api_key_env: environment variable {cfg.api_key_env} is not set "
                             "(the default endpoint, api.openai.com, needs a key)")
        # A keyless endpoint (a local judge server) ignores the header, but the client wants one.
        self.client = OpenAI(api_key=key or "no-key", base_url=cfg.base_url, max_retries=0, timeout=cfg.timeout_s)
        self.cache = AnswerCache(cfg.cache_dir) if cfg.cache_dir else None
        self.stats = JudgeStats()
        self._lock = threading.Lock()
        self._response_format = response_format()

    def start_round(self) -> None:
        """Reset the budget and the counters: the budget is per round."""
        with self._lock:
            self.stats = JudgeStats()

    def request_body(self, ctx: StepContext) -> dict:
        """The full request for one step; its hash is the cache key."""
        body = {"model": self.cfg.model, "messages": build_messages(ctx, self.prompts),
                "response_format": self._response_format}
        if self.cfg.logprobs:
            body |= {"logprobs": True, "top_logprobs": TOP_LOGPROBS}
        return body

    def judge(self, contexts: list[StepContext]) -> list[Verdict | None]:
        return [v for v, _ in self.judge_graded(contexts)]

    def judge_graded(self, contexts: list[StepContext]) -> list[Graded]:
        """Each verdict (None: unjudged) with the endpoint's P(conflict) from the verdict word's
        log-probabilities (None where it returned none)."""
        out: list[Graded] = [(None, None)] * len(contexts)
        with self._lock:
            self.stats.steps += len(contexts)
        ex = ThreadPoolExecutor(max_workers=self.cfg.concurrency, thread_name_prefix="gpt-judge")
        try:
            futures = {ex.submit(self._judge_one, c): i for i, c in enumerate(contexts)}
            for f in as_completed(futures):
                out[futures[f]] = f.result()
        except BaseException:
            ex.shutdown(wait=True, cancel_futures=True)
            raise
        ex.shutdown(wait=True)
        return out

    # ---- one step ---------------------------------------------------------------------------------

    def _judge_one(self, ctx: StepContext) -> Graded:
        body = self.request_body(ctx)
        key = request_key(body)
        answer = self.cache.get(key) if self.cache is not None else None
        if answer is not None:
            self._count(cache_hits=1)
            verdict = self._read(answer.get("content"))
        else:
            answer = self._ask(body)
            if answer is None:
                return None, None
            verdict = self._read(answer["content"])
            # Only answers that gave a verdict are kept: an unreadable one is asked again next time.
            if self.cache is not None and verdict is not None:
                self.cache.put(key, answer)
        if verdict is None:
            return None, None
        self._count(verdicts=1)
        p_aligned = answer.get("p_aligned")
        return verdict, None if p_aligned is None else 1.0 - p_aligned

    def _read(self, content: str | None) -> Verdict | None:
        if not content:
            self._count(unparsable=1)
            return None
        try:
            return Verdict.model_validate_json(content)
        except ValidationError:
            self._count(unparsable=1)
            return None

    def _ask(self, body: dict) -> dict | None:
        """One answer {"content", "tokens", "p_aligned"} for a request, retried as the rules say; None when the
        step stays unjudged (budget spent, retries exhausted, or a status that retrying cannot fix)."""
        import openai

        for attempt in range(self.cfg.max_retries + 1):
            if attempt:
                self._count(retries=1)
            if not self._reserve():
                self._count(over_budget=1)
                return None
            retry_after = None
            try:
                resp = self.client.chat.completions.create(**body)
            except (openai.APITimeoutError, openai.APIConnectionError) as e:
                cause = connection_failure(e)
                self._count(**{"timeouts" if cause == "timeout" else "connection_errors": 1})
                self._failed_attempt(cause, attempt)
            except openai.APIStatusError as e:
                status = e.status_code
                if status in (401, 403):
                    raise InputError(f"judge: {self.client.base_url} rejected the API key from "
                                     f"${self.cfg.api_key_env} (HTTP {status})") from None
                if status == 404:
                    raise InputError(f"judge: {self.client.base_url} answered 404 for model {self.cfg.model!r}; "
                                     "check judge.base_url and judge.model") from None
                if status == 400 and "logprobs" in body and "logprobs" in str(e):
                    raise InputError(f"judge.logprobs: {self.client.base_url} refused log-probabilities "
                                     f"(HTTP 400: {str(e)[:120]}); set judge.logprobs: false") from None
                if status not in RETRY_STATUSES and status < 500:
                    self._count(failed=1)
                    self._failed_attempt(f"HTTP {status}", attempt, str(e)[:200])
                    return None
                self._count(http_errors=1)
                self._failed_attempt(f"HTTP {status}", attempt)
                retry_after = _retry_after(e.response.headers.get("retry-after"))
            except (json.JSONDecodeError, openai.APIResponseValidationError, ValueError) as e:
                # A 200 whose body is not the JSON it claims to be: an unreadable answer, not an outage.
                log.info("judge answer unreadable: %s", str(e)[:200])
                return {"content": None, "tokens": 0}
            else:
                answer = _answer_of(resp)
                if answer is None:
                    log.info("judge answer is not a chat completion: %s", repr(resp)[:200])
                    return {"content": None, "tokens": 0}
                self._count(tokens=answer["tokens"])
                return answer
            if attempt < self.cfg.max_retries:
                delay = self.cfg.backoff * 2**attempt * random.uniform(1.0, 1.25)
                time.sleep(max(delay, retry_after or 0.0))
        self._count(failed=1)
        return None

    def _reserve(self) -> bool:
        """Claim one request from the round's budget; False when it is spent."""
        with self._lock:
            s, c = self.stats, self.cfg
            if (c.budget_requests and s.requests >= c.budget_requests) or (c.budget_tokens and s.tokens >= c.budget_tokens):
                return False
            s.requests += 1
            return True

    def _count(self, **deltas: int) -> None:
        with self._lock:
            for k, v in deltas.items():
                setattr(self.stats, k, getattr(self.stats, k) + v)

    def _failed_attempt(self, cause: str, attempt: int, detail: str = "") -> None:
        """Count a failed attempt by its cause; the first of a cause in a round is a WARNING naming
        the endpoint (a dead judge says why, once), the rest INFO."""
        with self._lock:
            first = cause not in self.stats.causes
            self.stats.causes[cause] = self.stats.causes.get(cause, 0) + 1
        log.log(logging.WARNING if first else logging.INFO, "judge %s: %s (attempt %d)%s",
                self.client.base_url, cause, attempt + 1, f": {detail}" if detail else "")


def connection_failure(exc: BaseException) -> str:
    """Why a request reached no answer, in a user's words, from the exception's chain (the client
    wraps the socket's error twice): "connection refused", "DNS lookup failed", "TLS handshake
    failed", "timeout" or "connection lost"."""
    import openai

    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, ConnectionRefusedError):
            return "connection refused"
        if isinstance(seen, socket.gaierror):
            return "DNS lookup failed"
        if isinstance(seen, ssl.SSLError):
            return "TLS handshake failed"
        if isinstance(seen, (openai.APITimeoutError, TimeoutError)):
            return "timeout"
        seen = seen.__cause__ or seen.__context__
    return "connection lost"


def _answer_of(resp: object) -> dict | None:
    """{"content", "tokens", "p_aligned"} of a well-formed chat completion, None for anything else. The client
    builds its response models without validating them, so a 200 body of any shape arrives here as
    it was sent (a string for HTML, `choices` as a string, `total_tokens` as null): check each part
    that is read. No `usage` at all is well-formed (some endpoints leave it out): 0 tokens."""
    from openai.types import CompletionUsage
    from openai.types.chat import ChatCompletion, ChatCompletionMessage

    if not isinstance(resp, ChatCompletion):
        return None
    usage, choices = getattr(resp, "usage", None), getattr(resp, "choices", None)
    if usage is None:
        tokens = 0
    elif isinstance(usage, CompletionUsage) and type(usage.total_tokens) is int and usage.total_tokens >= 0:
        tokens = usage.total_tokens
    else:
        return None
    if not isinstance(choices, list):
        return None
    if not choices:  # well-formed, but nothing to read: an unparsable answer whose tokens count
        return {"content": None, "tokens": tokens}
    message = getattr(choices[0], "message", None)
    if not isinstance(message, ChatCompletionMessage) or not isinstance(message.content, (str, type(None))):
        return None
    return {"content": message.content, "tokens": tokens, "p_aligned": p_aligned(getattr(choices[0], "logprobs", None))}


def p_aligned(logprobs: object) -> float | None:
    """P("aligned": true) from a choice's `logprobs`: the token that follows `"aligned":` in the
    content, its probability and its alternatives', renormalised over `true` and `false` (whatever
    else the endpoint lists, the verdict is one of the two). None when the endpoint returned no
    log-probabilities or they cannot be read (a judge without them, an answer of another form)."""
    content = getattr(logprobs, "content", None)
    if not isinstance(content, list):
        return None
    text = ""
    for tok in content:
        word = getattr(tok, "token", None)
        if not isinstance(word, str):
            return None
        if _BEFORE_VERDICT.search(text) and word.strip():
            seen = {word.strip(): getattr(tok, "logprob", None)}
            for alt in getattr(tok, "top_logprobs", None) or []:
                seen.setdefault(str(getattr(alt, "token", "")).strip(), getattr(alt, "logprob", None))
            prob = {w: math.exp(v) for w, v in seen.items() if w in ("true", "false") and isinstance(v, (int, float))}
            if word.strip() not in prob:
                return None
            if len(prob) == 1:  # the other value was not listed: all the rest of the mass is its
                return prob["true"] if "true" in prob else 1.0 - prob["false"]
            total = prob["true"] + prob["false"]
            return prob["true"] / total if total > 0 else None
        text += word
    return None


def _retry_after(value: str | None) -> float | None:
    """Seconds a Retry-After header asks for (capped), or None."""
    try:
        return min(float(value), MAX_RETRY_AFTER_S) if value else None
    except ValueError:
        return None
