"""The judge server under hostile, broken and slow clients, over real sockets on 127.0.0.1.

What it promises: the key and the declared length are checked before the body is read; malformed
requests get a 4xx, never a dropped connection; an unknown model gets 404 (as vLLM and OpenAI
answer); images other than the world's canvas are refused from their header; one client's bad step never costs another client its verdict; a burst of
connections waits in the backlog; idle and half-sent connections are closed.
"""

from __future__ import annotations

import base64
import dataclasses
import http.client
import io
import json
import socket
import struct
import time
import urllib.error
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


@pytest.fixture(scope="module")
def contexts():
    return labelled_contexts(10, seed=3)


@pytest.fixture()
def server():
    with JudgeServer(OracleJudge(), port=0, api_key=KEY) as srv:
        yield srv


def request(*headers: str, path: str = "/v1/chat/completions") -> bytes:
    return "\r\n".join([f"POST {path} HTTP/1.1", "Host: 127.0.0.1", *headers, "", ""]).encode()


def answer(sock: socket.socket) -> tuple[int, dict, str | None]:
    """The status, JSON body and Connection header of the next response on `sock`."""
    resp = http.client.HTTPResponse(sock)
    resp.begin()
    return resp.status, json.loads(resp.read()), resp.getheader("Connection")


def exchange(port: int, data: bytes) -> tuple[int, dict, str | None]:
    """Send raw bytes on a fresh connection and read the answer (2 s at most)."""
    with socket.create_connection(("127.0.0.1", port), timeout=2.0) as sock:
        sock.sendall(data)
        return answer(sock)


def post(srv: JudgeServer, messages: list[dict], **fields: object) -> tuple[int, dict]:
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
    status, body, connection = exchange(server.port, request("Content-Length: 100000000"))
    assert (status, body["error"]["code"], connection) == (401, "invalid_api_key", "close")
    # A small refused body is read and dropped: the connection stays usable.
    with socket.create_connection(("127.0.0.1", server.port), timeout=2.0) as sock:
        sock.sendall(request("Authorization: Bearer wrong", "Content-Length: 2") + b"{}")
        assert answer(sock)[0] == 401
        sock.sendall(b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        assert answer(sock)[:2] == (200, {"status": "ok"})


@pytest.mark.parametrize("length, status", [
    ("-1", 400),  # rfile.read(-1) would read until the client hangs up, past any cap
    ("abc", 400), ("1_0", 400), ("+2", 400), (None, 411), (str(MAX_BODY + 1), 413),
])
def test_a_malformed_or_oversized_content_length_is_refused(server, length, status):
    headers = [AUTH] + ([f"Content-Length: {length}"] if length is not None else [])
    got, body, connection = exchange(server.port, request(*headers) + b"{}")
    assert (got, connection) == (status, "close") and body["error"]["message"]
    assert exchange(server.port, request(AUTH, "Content-Length: 2") + b"{}")[0] == 400  # still serving


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
    t0 = time.perf_counter()
    for data, size in [(png(1, 1), "1x1"), (png(32, 32), "32x32"), (png(64, 32), "64x32"), (png(65, 64), "65x64"),
                       (png(4000, 4000), "4000x4000"), (png_header(4000, 4000), "4000x4000")]:
        status, body = post(server, with_image(contexts[0], data))
        assert status == 400 and body["error"]["message"].endswith(f"a {size} image; this judge reads 64x64 images"), size
    assert time.perf_counter() - t0 < 2  # nothing was decoded
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


# ---- one client's bad step, other clients' verdicts --------------------------------------------------------

def judged_together(srv: JudgeServer, steps: list[list[dict]]) -> list[tuple[int, dict]]:
    """Post every step at once, so the server gathers them into one batch."""
    with ThreadPoolExecutor(len(steps)) as pool:
        return list(pool.map(lambda m: post(srv, m), steps))


def test_a_bad_record_gets_400_and_the_other_clients_their_verdicts(contexts):
    prompts = load_prompts()
    bad = dataclasses.replace(contexts[0], record={"tag": "no_such_task"})
    steps = [build_messages(c, prompts) for c in contexts] + [build_messages(bad, prompts)]
    with JudgeServer(OracleJudge(), port=0, api_key=KEY, batch_wait_s=0.3) as srv:
        answers = judged_together(srv, steps)
    status, body = answers[-1]
    assert status == 400 and "'tag'" in body["error"]["message"]
    assert [s for s, _ in answers[:-1]] == [200] * len(contexts)
    assert [verdict_of(b) for _, b in answers[:-1]] == OracleJudge().judge(contexts)


class Fragile:
    """The oracle, except that any batch holding the prompt "explode" raises."""

    name = "fragile"

    def judge(self, contexts: list[StepContext]) -> list[Verdict | None]:
        if any(c.prompt == "explode" for c in contexts):
            raise RuntimeError("the judge broke")
        return OracleJudge().judge(contexts)


def test_a_step_that_breaks_the_judge_fails_alone(contexts):
    prompts = load_prompts()
    bomb = dataclasses.replace(contexts[0], prompt="explode")
    steps = [build_messages(c, prompts) for c in contexts] + [build_messages(bomb, prompts)]
    with JudgeServer(Fragile(), port=0, api_key=KEY, batch_wait_s=0.3) as srv:
        answers = judged_together(srv, steps)
    status, body = answers[-1]
    assert status == 500 and "the judge broke" in body["error"]["message"]
    assert [verdict_of(b) for _, b in answers[:-1]] == OracleJudge().judge(contexts)


# ---- connections -----------------------------------------------------------------------------------------

def test_a_burst_of_connections_waits_in_the_backlog():
    srv = JudgeServer(OracleJudge(), port=0)  # listening, not yet accepting: every connection queues
    try:
        clients = [socket.create_connection(("127.0.0.1", srv.port), timeout=1.0) for _ in range(64)]
    finally:
        srv.start()
    try:
        for c in clients:
            c.sendall(b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        assert [answer(c)[0] for c in clients] == [200] * 64
    finally:
        for c in clients:
            c.close()
        srv.stop()


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
