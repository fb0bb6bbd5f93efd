"""The judge server under hostile, broken and slow clients, over real sockets on 127.0.0.1, for both
backends: the standard library's http.server (`judges/server.py`) and Ray Serve (`judges/ray_serve.py`).

What it promises: the key and the declared length are checked before the body is read; malformed
requests get a 4xx, never a dropped connection; an unknown model gets 404 (as vLLM and OpenAI
answer); images other than the world's canvas are refused from their header; concurrent requests are
judged in one call, and one client's bad step never costs another client its verdict; a burst of
connections is answered; idle and half-sent connections are closed. Where Serve's proxy answers
before our code does (docs/failure_behaviour.md), the test says so.
"""

from __future__ import annotations

import base64
import dataclasses
import functools
import http.client
import io
import json
import socket
import struct
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
import zlib
from concurrent.futures import ThreadPoolExecutor

import pytest
from PIL import Image

from judges import OracleJudge
from judges.evaluate import labelled_contexts
from judges.messages import build_messages, load_prompts
from judges.server import MAX_BODY, JudgeServer
from strokes.verdict import StepContext, Verdict

KEY = "s3cret"
AUTH = f"Authorization: Bearer {KEY}"
BACKENDS = ("http.server", "ray")
# The Serve proxy's options for this module (one proxy for all apps). The request timeout bounds every
# Ray test's requests, not only the one that tests it: at 2 s a judged request on a loaded 2-core
# machine (a cold replica, another job beside the suite) timed out in CI-like runs.
RAY_IDLE_S, RAY_REQUEST_TIMEOUT_S = 1, 10


class Fragile:
    """The oracle, except that any batch holding the prompt "explode" raises; with a `tally` file,
    it appends the size of every batch it is given there (the judge may run in a Ray replica)."""

    name = "fragile"

    def __init__(self, tally: str | None = None) -> None:
        self.tally = tally

    def judge(self, contexts: list[StepContext]) -> list[Verdict | None]:
        if self.tally:
            with open(self.tally, "a") as f:
                f.write(f"{len(contexts)}\n")
        if any(c.prompt == "explode" for c in contexts):
            raise RuntimeError("the judge broke")
        return OracleJudge().judge(contexts)


@pytest.fixture(scope="module")
def contexts():
    return labelled_contexts(10, seed=3)


@pytest.fixture(scope="module")
def serve_port(request):
    """The port of this module's one Serve proxy (started by the first Ray app, shut down after the module)."""
    request.getfixturevalue("ray_cluster")
    pytest.importorskip("ray.serve")
    from ray import cloudpickle, serve

    from judges.ray_serve import free_port

    cloudpickle.register_pickle_by_value(sys.modules[__name__])  # the replicas build this module's judges
    yield free_port("127.0.0.1")
    serve.shutdown()
    cloudpickle.unregister_pickle_by_value(sys.modules[__name__])


def start_server(request, backend: str, make_judge, name: str, **options):
    """A judge server of `backend` with the key, started; the Ray app gets its own route prefix."""
    if backend == "http.server":
        return JudgeServer(make_judge(), port=0, api_key=KEY, **options).start()
    from judges.ray_serve import RayJudgeServer

    return RayJudgeServer(make_judge, f"strokes-{name}", port=request.getfixturevalue("serve_port"), api_key=KEY,
                          idle_timeout_s=RAY_IDLE_S, request_timeout_s=RAY_REQUEST_TIMEOUT_S, replica_cpus=0.5,
                          route_prefix=f"/{name}", **options).start()


@pytest.fixture(scope="module", params=BACKENDS)
def server(request):
    """The exact judge behind the key, one per backend for the module."""
    srv = start_server(request, request.param, OracleJudge, "oracle")
    yield srv
    srv.stop()


@pytest.fixture(scope="module", params=BACKENDS)
def batching(request, tmp_path_factory):
    """`Fragile` behind the key, waiting 0.3 s to gather a batch, tallying its batch sizes."""
    tally = tmp_path_factory.mktemp("tally") / "batches.txt"
    srv = start_server(request, request.param, functools.partial(Fragile, str(tally)), "fragile", batch_wait_s=0.3)
    yield srv, tally
    srv.stop()


def is_ray(srv) -> bool:
    return not isinstance(srv, JudgeServer)


def route(srv, path: str) -> str:
    """`path` (as under /v1) on `srv`, below its route prefix."""
    return urllib.parse.urlparse(srv.base_url).path.removesuffix("/v1") + path


def request(*headers: str, path: str = "/v1/chat/completions") -> bytes:
    return "\r\n".join([f"POST {path} HTTP/1.1", "Host: 127.0.0.1", *headers, "", ""]).encode()


def answer(sock: socket.socket) -> tuple[int, dict | str, str | None]:
    """The status, body (JSON, or text when the server says it is text) and Connection header of the
    next response on `sock`."""
    resp = http.client.HTTPResponse(sock)
    resp.begin()
    data = resp.read()
    is_json = resp.getheader("Content-Type", "").startswith("application/json")
    return resp.status, json.loads(data) if is_json else data.decode(), resp.getheader("Connection")


def exchange(port: int, data: bytes) -> tuple[int, dict, str | None]:
    """Send raw bytes on a fresh connection and read the answer (2 s at most)."""
    with socket.create_connection(("127.0.0.1", port), timeout=2.0) as sock:
        sock.sendall(data)
        return answer(sock)


def post(srv, messages: list[dict], **fields: object) -> tuple[int, dict]:
    """POST a step (the server's model unless `fields` say otherwise); the status and JSON answer."""
    body = json.dumps({"model": srv.model, "messages": messages, **fields}).encode()
    req = urllib.request.Request(srv.base_url + "/chat/completions", body,
                                 {"Content-Type": "application/json", "Authorization": f"Bearer {KEY}"})
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def verdict_of(payload: dict) -> Verdict:
    return Verdict.model_validate_json(payload["choices"][0]["message"]["content"])


# ---- the key and the declared length, before the body ---------------------------------------------------

def test_a_request_without_the_key_is_refused_before_its_body_is_read(server):
    # 100 MB declared, none sent: the answer comes at once, and the connection is closed.
    path = route(server, "/v1/chat/completions")
    t0 = time.perf_counter()
    status, body, connection = exchange(server.port, request("Content-Length: 100000000", path=path))
    assert (status, body["error"]["code"], connection) == (401, "invalid_api_key", "close")
    assert time.perf_counter() - t0 < 2
    # A small refused body is read and dropped: the connection stays usable.
    with socket.create_connection(("127.0.0.1", server.port), timeout=2.0) as sock:
        sock.sendall(request("Authorization: Bearer wrong", "Content-Length: 2", path=path) + b"{}")
        assert answer(sock)[0] == 401
        sock.sendall(f"GET {route(server, '/health')} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n".encode())
        assert answer(sock)[:2] == (200, {"status": "ok"})


@pytest.mark.parametrize("length, status", [
    ("-1", 400),  # rfile.read(-1) would read until the client hangs up, past any cap
    ("abc", 400), ("1_0", 400), ("+2", 400), (None, 411), (str(MAX_BODY + 1), 413),
])
def test_a_malformed_or_oversized_content_length_is_refused(server, length, status):
    headers = [AUTH] + ([f"Content-Length: {length}"] if length is not None else [])
    path = route(server, "/v1/chat/completions")
    # no body after no length: Serve's proxy would parse the unframed bytes as a malformed next request
    got, body, connection = exchange(server.port, request(*headers, path=path) + (b"{}" if length else b""))
    assert (got, connection) == (status, "close")
    if is_ray(server) and status == 400:  # Serve's proxy (h11) refuses a length it cannot parse itself, in text
        assert body == "Invalid HTTP request received."
    else:
        assert body["error"]["message"]
    assert exchange(server.port, request(AUTH, "Content-Length: 2", path=path) + b"{}")[0] == 400  # still serving


# ---- images ------------------------------------------------------------------------------------------------

def png(width: int, height: int) -> bytes:
    buf = io.BytesIO()
    Image.new("L", (width, height)).save(buf, "PNG")
    return buf.getvalue()


def png_header(width: int, height: int) -> bytes:
    """A PNG that declares width x height pixels and holds none: all a decompression bomb needs."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)) + \
        chunk(b"IEND", b"")


def with_image(ctx: StepContext, data: bytes) -> list[dict]:
    """The step's messages with the image to judge replaced by `data`."""
    messages = build_messages(dataclasses.replace(ctx, history=[], previous_image=None), load_prompts())
    url = "data:image/png;base64," + base64.b64encode(data).decode()
    messages[1]["content"][2]["image_url"]["url"] = url
    return messages


def test_only_images_of_the_canvas_are_judged_and_others_refused_from_the_header(server, contexts):
    assert post(server, with_image(contexts[0], png(64, 64)))[0] == 200
    # the header-only PNG holds no pixels: had the server decoded it, its error would name a truncated
    # file, not the size, so the size is refused from the header (no timing needed to show it)
    for data, size in [(png(1, 1), "1x1"), (png(32, 32), "32x32"), (png(64, 32), "64x32"), (png(65, 64), "65x64"),
                       (png(4000, 4000), "4000x4000"), (png_header(4000, 4000), "4000x4000")]:
        status, body = post(server, with_image(contexts[0], data))
        assert status == 400 and body["error"]["message"].endswith(f"a {size} image; this judge reads 64x64 images"), size
    # 20000 x 20000 trips PIL's decompression-bomb guard while the header is read: a 400 all the same.
    status, body = post(server, with_image(contexts[0], png_header(20000, 20000)))
    assert status == 400 and "readable image" in body["error"]["message"]


def test_an_unknown_model_is_404_as_vllm_and_openai_answer(server, contexts):
    messages = build_messages(contexts[0], load_prompts())
    for model, status in [("strokes-oracel", 404), ("gpt-4.1-mini", 404), (None, 400), ("", 400), (server.model, 200)]:
        got, payload = post(server, messages, model=model)
        assert got == status, model
        if status == 404:
            assert payload["error"]["code"] == "model_not_found" and f"`{model}`" in payload["error"]["message"]
    listed = urllib.request.Request(server.base_url + "/models", headers={"Authorization": f"Bearer {KEY}"})
    with urllib.request.urlopen(listed, timeout=10) as r:
        assert [m["id"] for m in json.loads(r.read())["data"]] == [server.model]
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(server.base_url + "/models", timeout=10)
    assert refused.value.code == 401


# ---- batches: together, and one client's bad step alone ------------------------------------------------

def judged_together(srv, steps: list[list[dict]]) -> list[tuple[int, dict]]:
    """Post every step at once, so the server gathers them into one batch."""
    with ThreadPoolExecutor(len(steps)) as pool:
        return list(pool.map(lambda m: post(srv, m), steps))


def test_requests_arriving_together_are_judged_in_one_call(batching, contexts):
    srv, tally = batching
    tally.write_text("")
    prompts = load_prompts()
    answers = judged_together(srv, [build_messages(c, prompts) for c in contexts])
    assert [verdict_of(b) for _, b in answers] == OracleJudge().judge(contexts)
    sizes = [int(n) for n in tally.read_text().split()]
    assert sum(sizes) == len(contexts) and max(sizes) > 1, sizes


def test_a_bad_record_gets_400_and_the_other_clients_their_verdicts(batching, contexts):
    srv, _ = batching
    prompts = load_prompts()
    bad = dataclasses.replace(contexts[0], record={"tag": "no_such_task"})
    steps = [build_messages(c, prompts) for c in contexts] + [build_messages(bad, prompts)]
    answers = judged_together(srv, steps)
    status, body = answers[-1]
    assert status == 400 and "'tag'" in body["error"]["message"]
    assert [s for s, _ in answers[:-1]] == [200] * len(contexts)
    assert [verdict_of(b) for _, b in answers[:-1]] == OracleJudge().judge(contexts)


def test_a_step_that_breaks_the_judge_fails_alone(batching, contexts):
    srv, tally = batching
    tally.write_text("")
    prompts = load_prompts()
    bomb = dataclasses.replace(contexts[0], prompt="explode")
    steps = [build_messages(c, prompts) for c in contexts] + [build_messages(bomb, prompts)]
    answers = judged_together(srv, steps)
    status, body = answers[-1]
    assert status == 500 and "the judge broke" in body["error"]["message"]
    assert [verdict_of(b) for _, b in answers[:-1]] == OracleJudge().judge(contexts)
    assert max(int(n) for n in tally.read_text().split()) > 1  # the bomb did share a batch, which failed


# ---- connections -----------------------------------------------------------------------------------------

def test_a_burst_of_connections_waits_in_the_backlog():
    srv = JudgeServer(OracleJudge(), port=0)  # listening, not yet accepting: every connection queues
    try:
        clients = [socket.create_connection(("127.0.0.1", srv.port), timeout=1.0) for _ in range(64)]
    finally:
        srv.start()
    try:
        assert [health(c, "/health") for c in clients] == [200] * 64
    finally:
        for c in clients:
            c.close()
        srv.stop()


def health(sock: socket.socket, path: str) -> int:
    sock.sendall(f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n".encode())
    return answer(sock)[0]


def test_a_burst_of_connections_is_answered(server):
    clients = [socket.create_connection(("127.0.0.1", server.port), timeout=5.0) for _ in range(64)]
    try:
        for c in clients:
            c.sendall(f"GET {route(server, '/health')} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n".encode())
        assert [answer(c)[0] for c in clients] == [200] * 64
    finally:
        for c in clients:
            c.close()


def test_idle_and_half_sent_connections_are_closed(capfd):
    with JudgeServer(OracleJudge(), port=0, api_key=KEY, idle_timeout_s=0.5) as srv:
        idle = socket.create_connection(("127.0.0.1", srv.port), timeout=3.0)
        half = socket.create_connection(("127.0.0.1", srv.port), timeout=3.0)
        half.sendall(request(AUTH, "Content-Length: 100") + b'{"model": ')
        t0 = time.perf_counter()
        assert idle.recv(1) == b"" and half.recv(1) == b""  # closed by the server
        assert time.perf_counter() - t0 < 2.5
        idle.close()
        half.close()
        assert exchange(srv.port, request(AUTH, "Content-Length: 2") + b"{}")[0] == 400  # still serving
    assert "Traceback" not in capfd.readouterr().err


@pytest.mark.parametrize("server", ["ray"], indirect=True)
def test_on_ray_a_connection_idle_after_an_answer_is_closed_and_a_half_sent_one_timed_out(server):
    path = route(server, "/v1/chat/completions")
    idle = socket.create_connection(("127.0.0.1", server.port), timeout=RAY_REQUEST_TIMEOUT_S + 5.0)
    half = socket.create_connection(("127.0.0.1", server.port), timeout=RAY_REQUEST_TIMEOUT_S + 5.0)
    try:
        assert health(idle, route(server, "/health")) == 200
        half.sendall(request(AUTH, "Content-Length: 100", path=path) + b'{"model": ')
        t0 = time.perf_counter()
        assert idle.recv(1) == b""  # keep_alive_timeout_s after its answer
        assert time.perf_counter() - t0 < RAY_IDLE_S + 2
        status, _, _ = answer(half)  # request_timeout_s after it began: Serve's 408
        assert status == 408 and time.perf_counter() - t0 < RAY_REQUEST_TIMEOUT_S + 2
        assert half.recv(1) == b""
    finally:
        idle.close()
        half.close()
    assert exchange(server.port, request(AUTH, "Content-Length: 2", path=path) + b"{}")[0] == 400  # still serving


@pytest.mark.xfail(strict=True, reason="Serve's proxy (uvicorn, h11) has no timeout before a request's headers "
                                       "are complete: documented in docs/failure_behaviour.md")
@pytest.mark.parametrize("server", ["ray"], indirect=True)
def test_on_ray_a_connection_that_never_sends_a_byte_is_closed(server):
    with socket.create_connection(("127.0.0.1", server.port), timeout=RAY_IDLE_S + 3.0) as silent:
        assert silent.recv(1) == b""
