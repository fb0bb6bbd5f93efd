"""The judge server: any judge behind an OpenAI-compatible `/v1/chat/completions` endpoint.

`POST /v1/chat/completions` takes one step in the message format of judges/prompts.yaml (text
parts plus base64 image_url parts; `response_format` of type json_schema, json_object or text is
accepted) and answers a chat completion whose message content is the `Verdict` JSON; asked for
`logprobs`, a judge that says how sure it is (the stand-in VLM) gives the verdict word's
log-probabilities, any other `logprobs: null`. A step the judge cannot judge (the self judge's
unparsable inspection) comes back as a refusal with no content.
`GET /v1/models` lists the one model. With an API key, every request must carry
`Authorization: Bearer <key>` or gets 401.

Hostile or broken input is refused with a 4xx before it costs anything: the key and the declared
`Content-Length` are checked before a byte of the body is read, and an image's size is read from its
header before it is decoded (nothing larger than the world's canvas is judged). A step that breaks
the judge fails only its own request. Idle and slow connections time out, so half-open ones do not
hold threads for ever. What is answered to each request is decided in `judges/endpoint.py`, which
the Ray Serve backend (`judges/ray_serve.py`) shares; this module is the I/O and the batching.

Requests arriving together are judged together: one worker thread gathers whatever is waiting (up
to `max_batch`, waiting at most `batch_wait_s` for more) into one `judge()` call, which keeps a
model-backed judge batched and single-threaded. Built on the standard library (ThreadingHTTPServer,
HTTP/1.1 keep-alive, TCP_NODELAY: without it each small answer waits ~40 ms for Nagle's algorithm).
"""

from __future__ import annotations

import logging
import queue
import socket
import sys
import threading
import time
from concurrent.futures import Future
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from strokes.verdict import Judge, StepContext

from .endpoint import DRAIN_MAX, IDLE_TIMEOUT_S, MAX_BODY, Endpoint, Outcome, Reply, judge_alone_on_failure
from .messages import Prompts

log = logging.getLogger(__name__)
BACKLOG = 256  # connections waiting to be accepted (the stdlib's 5 reset connections under a burst)
__all__ = ["BACKLOG", "DRAIN_MAX", "IDLE_TIMEOUT_S", "MAX_BODY", "JudgeServer"]


class _Batcher:
    """One worker that runs the judge on batches of waiting steps (`judge_alone_on_failure`)."""

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
            outcomes = judge_alone_on_failure(self.judge, [c for c, _ in batch])
            for (_, f), outcome in zip(batch, outcomes):
                f.set_result(outcome)


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
        self.endpoint = Endpoint.for_judge(judge, api_key, model, prompts)
        self.idle_timeout_s = idle_timeout_s
        self.batcher = _Batcher(judge, max_batch, batch_wait_s)
        self.httpd = _HTTPServer((host, port), _handler(self))
        self._thread: threading.Thread | None = None

    @property
    def model(self) -> str:
        return self.endpoint.model

    @property
    def served(self) -> int:
        """Authorised chat-completion requests with a JSON body, for monitoring."""
        return self.endpoint.served

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

    def judge_one(self, ctx: StepContext) -> Outcome:
        """The step's outcome, judged in whatever batch the batcher gathers it into."""
        return self.batcher.submit(ctx).result()


def _handler(server: JudgeServer) -> type[BaseHTTPRequestHandler]:
    endpoint = server.endpoint

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        server_version = "strokes-judge/1"
        timeout = server.idle_timeout_s

        def setup(self) -> None:
            super().setup()
            self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

        def log_message(self, format: str, *args: object) -> None:  # noqa: A002 (stdlib signature)
            log.debug("%s " + format, self.address_string(), *args)

        def _send(self, reply: Reply) -> None:
            data = reply.body()
            self.close_connection = self.close_connection or reply.close
            self.send_response(reply.status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            if self.close_connection:
                self.send_header("Connection", "close")
            self.end_headers()
            self.wfile.write(data)

        def _head(self, method: str) -> tuple[Reply | None, list[str]]:
            lengths = self.headers.get_all("Content-Length") or []
            return endpoint.head(method, self.path, self.headers.get("Authorization"), lengths), lengths

        def do_GET(self) -> None:
            reply, _ = self._head("GET")
            self._send(reply)

        def do_POST(self) -> None:
            reply, lengths = self._head("POST")
            if reply is not None:
                if not reply.close:  # a small refused body: read and dropped, the connection stays usable
                    self.rfile.read(int(lengths[0]))
                return self._send(reply)
            step = endpoint.step(self.rfile.read(int(lengths[0])))
            if isinstance(step, Reply):
                return self._send(step)
            return self._send(endpoint.answer(step, server.judge_one(step.context)))

    return Handler
