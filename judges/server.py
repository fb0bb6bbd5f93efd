"""The judge server: any judge behind an OpenAI-compatible `/v1/chat/completions` endpoint.

`POST /v1/chat/completions` takes one step in the message format of judges/prompts.yaml (text
parts plus base64 image_url parts; `response_format` of type json_schema, json_object or text is
accepted) and answers a chat completion whose message content is the `Verdict` JSON. A step the
judge cannot judge (the self judge's unparsable inspection) comes back as a refusal with no content.
`GET /v1/models` lists the one model. With an API key, every request must carry
`Authorization: Bearer <key>` or gets 401.

Hostile or broken input is refused with a 4xx before it costs anything: the key and the declared
`Content-Length` are checked before a byte of the body is read, and an image's size is read from its
header before it is decoded (nothing larger than the world's canvas is judged). A step that breaks
the judge fails only its own request (see `_Batcher`). Idle and slow connections time out, so
half-open ones do not hold threads for ever.

Requests arriving together are judged together: one worker thread gathers whatever is waiting (up
to `max_batch`, waiting at most `batch_wait_s` for more) into one `judge()` call, which keeps a
model-backed judge batched and single-threaded. Built on the standard library (ThreadingHTTPServer,
HTTP/1.1 keep-alive, TCP_NODELAY: without it each small answer waits ~40 ms for Nagle's algorithm).
"""

from __future__ import annotations

import hmac
import json
import logging
import queue
import re
import socket
import sys
import threading
import time
import uuid
from concurrent.futures import Future
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from strokes.verdict import Judge, StepContext

from .messages import Prompts, load_prompts, parse_messages

log = logging.getLogger(__name__)
MAX_BODY = 64 * 1024 * 1024
DRAIN_MAX = 1024 * 1024  # a refused body up to this size is read and dropped, keeping the connection
IDLE_TIMEOUT_S = 30.0  # per socket read or write: a connection silent this long is closed
BACKLOG = 256  # connections waiting to be accepted (the stdlib's 5 reset connections under a burst)


class _Batcher:
    """One worker that runs the judge on batches of waiting steps.

    A batch mixes steps of several clients, so a failed batch is judged again one step at a time:
    only the step that breaks the judge gets the error, every other client its verdict."""

    def __init__(self, judge: Judge, max_batch: int, wait_s: float) -> None:
        self.judge, self.max_batch, self.wait_s = judge, max_batch, wait_s
        self.queue: queue.Queue = queue.Queue()
        self.thread = threading.Thread(target=self._run, name="judge-batcher", daemon=True)
        self.thread.start()

    def submit(self, ctx: StepContext) -> Future:
        f: Future = Future()
        self.queue.put((ctx, f))
        return f

    def close(self) -> None:
        self.queue.put(None)

    def _run(self) -> None:
        while True:
            first = self.queue.get()
            if first is None:
                return
            batch = [first]
            deadline = time.monotonic() + self.wait_s
            while len(batch) < self.max_batch:
                try:
                    item = self.queue.get(timeout=max(0.0, deadline - time.monotonic()))
                except queue.Empty:
                    break
                if item is None:
                    self.queue.put(None)
                    break
                batch.append(item)
            self._settle(batch)

    def _settle(self, batch: list[tuple[StepContext, Future]]) -> None:
        try:
            verdicts = self.judge.judge([c for c, _ in batch])
            if len(verdicts) != len(batch):
                raise RuntimeError(f"judge returned {len(verdicts)} verdicts for {len(batch)} steps")
        except Exception as e:  # the server stays up
            if len(batch) > 1:
                log.warning("judge failed on a batch of %d (%s: %s); judging each step alone",
                            len(batch), type(e).__name__, e)
                for item in batch:
                    self._settle([item])
                return
            log.exception("judge failed on a step")
            batch[0][1].set_exception(e)  # that request gets a 500
            return
        for (_, f), v in zip(batch, verdicts):
            f.set_result(v)


class _HTTPServer(ThreadingHTTPServer):
    """A ThreadingHTTPServer with a real backlog, whose log gets one line, not a traceback, when a
    client resets, hangs up or times out mid-request (the client's fault, not the server's)."""

    daemon_threads = True
    request_queue_size = BACKLOG

    def handle_error(self, request: object, client_address: tuple) -> None:
        exc = sys.exc_info()[1]
        if isinstance(exc, OSError):
            log.info("connection from %s ended: %s: %s", client_address[0], type(exc).__name__, exc)
        else:
            log.exception("error handling a request from %s", client_address[0])


class JudgeServer:
    """Serves `judge` on host:port (port 0 picks a free one). Use `start()`/`stop()` or `with`."""

    def __init__(self, judge: Judge, host: str = "127.0.0.1", port: int = 8000, api_key: str | None = None,
                 model: str | None = None, prompts: Prompts | None = None, max_batch: int = 32,
                 batch_wait_s: float = 0.002, idle_timeout_s: float = IDLE_TIMEOUT_S) -> None:
        self.judge = judge
        # the one image size the judge reads (the exact judge's 64-px canvas, a policy's images); a
        # judge that does not say reads any up to MAX_SIDE
        self.image_side: int | None = getattr(judge, "image_side", None)
        self.model = model or f"strokes-{getattr(judge, 'name', 'judge')}"
        self.api_key = api_key or None
        self.prompts = prompts or load_prompts()
        self.idle_timeout_s = idle_timeout_s
        self.batcher = _Batcher(judge, max_batch, batch_wait_s)
        self.httpd = _HTTPServer((host, port), _handler(self))
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self.served = 0  # authorised chat-completion requests with a JSON body, for monitoring

    @property
    def host(self) -> str:
        return self.httpd.server_address[0]

    @property
    def port(self) -> int:
        return self.httpd.server_address[1]

    @property
    def base_url(self) -> str:
        """What an OpenAI client takes as `base_url`."""
        return f"http://{self.host}:{self.port}/v1"

    def serve_forever(self) -> None:
        self.httpd.serve_forever(poll_interval=0.2)

    def start(self) -> "JudgeServer":
        self._thread = threading.Thread(target=self.serve_forever, name="judge-server", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        self.batcher.close()

    def __enter__(self) -> "JudgeServer":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # ---- request handling ------------------------------------------------------------------------

    def authorized(self, header: str | None) -> bool:
        if self.api_key is None:
            return True
        return hmac.compare_digest((header or "").encode(), f"Bearer {self.api_key}".encode())

    def completion(self, body: object) -> tuple[int, dict]:
        """(status, JSON) for a chat-completions request body."""
        with self._lock:
            self.served += 1
        if not isinstance(body, dict):
            return 400, _error("the request body must be a JSON object")
        model = body.get("model")
        if not isinstance(model, str) or not model:
            return 400, _error("you must provide a model parameter", "model")
        if model != self.model:  # as vLLM and OpenAI answer: a typo in judge.model fails here as it would there
            return 404, _error(f"The model `{model}` does not exist (this server serves `{self.model}`).",
                               "model", "invalid_request_error", "model_not_found")
        if body.get("stream"):
            return 400, _error("streaming is not supported", "stream")
        rf = body.get("response_format")
        if rf is not None and (not isinstance(rf, dict) or rf.get("type") not in ("json_schema", "json_object", "text")):
            return 400, _error("response_format must be of type json_schema, json_object or text", "response_format")
        try:
            ctx = parse_messages(body.get("messages"), self.prompts, self.image_side)
        except ValueError as e:
            return 400, _error(str(e), "messages")
        try:
            verdict = self.batcher.submit(ctx).result()
        except Exception as e:
            return 500, _error(f"the judge failed: {type(e).__name__}: {e}", None, "server_error")
        if verdict is None:
            message = {"role": "assistant", "content": None, "refusal": "the judge could not judge this step"}
            content = ""
        else:
            content = verdict.model_dump_json()
            message = {"role": "assistant", "content": content, "refusal": None}
        prompt_tokens = _estimate_tokens(body.get("messages"))
        completion_tokens = max(1, len(content) // 4)
        return 200, {
            "id": f"chatcmpl-{uuid.uuid4().hex[:24]}", "object": "chat.completion", "created": int(time.time()),
            "model": self.model,
            "choices": [{"index": 0, "message": message, "finish_reason": "stop", "logprobs": None}],
            "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
                      "total_tokens": prompt_tokens + completion_tokens},
        }

    def models(self) -> dict:
        return {"object": "list", "data": [{"id": self.model, "object": "model", "created": 0, "owned_by": "strokes"}]}


def _unauthorized() -> dict:
    return _error("invalid or missing API key", None, "invalid_request_error", "invalid_api_key")


def _error(message: str, param: str | None = None, kind: str = "invalid_request_error", code: str | None = None) -> dict:
    return {"error": {"message": message, "type": kind, "param": param, "code": code}}


def _estimate_tokens(messages: object) -> int:
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


def _declared_length(values: list[str] | None) -> int | None:
    """The one Content-Length of a request; None when it is missing, repeated or not a plain
    non-negative integer (int() alone accepts "-1", "+5" and "1_0")."""
    if not values or len(values) != 1 or not re.fullmatch(r"[0-9]{1,15}", values[0].strip()):
        return None
    return int(values[0])


def _handler(server: JudgeServer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        server_version = "strokes-judge/1"
        timeout = server.idle_timeout_s

        def setup(self) -> None:
            super().setup()
            self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

        def log_message(self, format: str, *args: object) -> None:  # noqa: A002 (stdlib signature)
            log.debug("%s " + format, self.address_string(), *args)

        def _send(self, status: int, payload: dict) -> None:
            data = json.dumps(payload).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            if self.close_connection:
                self.send_header("Connection", "close")
            self.end_headers()
            self.wfile.write(data)

        def _refuse(self, status: int, payload: dict, length: int | None) -> None:
            """Answer before the body is read. A small body is read and dropped so the connection
            stays usable; after a large or undeclared one the connection is closed instead."""
            if length is not None and length <= DRAIN_MAX:
                self.rfile.read(length)
            else:
                self.close_connection = True
            self._send(status, payload)

        def _path(self) -> str:
            return self.path.split("?", 1)[0].rstrip("/")

        def _auth(self) -> bool:
            if server.authorized(self.headers.get("Authorization")):
                return True
            self._send(401, _unauthorized())
            return False

        def do_GET(self) -> None:
            path = self._path()
            if path in ("/health", "/v1/health"):
                return self._send(200, {"status": "ok"})
            if not self._auth():
                return None
            if path == "/v1/models":
                return self._send(200, server.models())
            return self._send(404, _error(f"no route {path}", None, "not_found_error"))

        def do_POST(self) -> None:
            values = self.headers.get_all("Content-Length")
            length = _declared_length(values)
            if not server.authorized(self.headers.get("Authorization")):
                return self._refuse(401, _unauthorized(), length)
            if length is None:
                self.close_connection = True
                if not values:
                    return self._send(411, _error("a Content-Length header is required"))
                return self._send(400, _error("Content-Length must be one non-negative integer"))
            if length > MAX_BODY:
                return self._refuse(413, _error(f"request body too large (at most {MAX_BODY} bytes)"), length)
            path = self._path()
            if path != "/v1/chat/completions":
                return self._refuse(404, _error(f"no route {path}", None, "not_found_error"), length)
            raw = self.rfile.read(length)
            try:
                body = json.loads(raw)
            except (json.JSONDecodeError, UnicodeDecodeError):
                return self._send(400, _error("the request body is not JSON"))
            status, payload = server.completion(body)
            return self._send(status, payload)

    return Handler
