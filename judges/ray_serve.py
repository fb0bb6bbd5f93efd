"""The judge server on Ray Serve: the same endpoint (judges/endpoint.py) on replicas of a Ray cluster.

`selfplay judge-serve --backend ray --replicas N` deploys `JudgeDeployment`: N replicas, each
building its own judge (`make_judge`, called in the replica, so a model-backed judge loads once per
replica, on the replica's GPU when `ray_actor_options` gives it one), behind Serve's HTTP proxy.
Requests that reach a replica together are judged in one `judge()` call by `@serve.batch` (up to
`max_batch`, waiting `batch_wait_s` for more), with the shared rule that a failed batch is judged
again step by step (`judge_alone_on_failure`).

What differs from the http.server backend is what Serve's proxy (uvicorn, h11) does before our code
runs, all of it documented in docs/failure_behaviour.md: the proxy itself reads the request body
off the socket into its own queue while the replica decides from the headers alone (so a refused
body is never parsed or judged, but it is received); a `Content-Length` h11 cannot parse is a
plain-text 400 from the proxy; an idle connection is closed `keep_alive_timeout_s` after its last
answer, a request not answered in `request_timeout_s` gets Serve's 408, and a connection that never
finishes its headers is held until the client goes.
"""

from __future__ import annotations

import asyncio
import math
import socket
import time
from typing import Callable

from ray import serve
from starlette.requests import Request
from starlette.responses import Response

from strokes.verdict import Judge, StepContext

from .endpoint import IDLE_TIMEOUT_S, Endpoint, Outcome, Reply, judge_alone_on_failure
from .messages import Prompts

APP_NAME = "strokes-judge"
REQUEST_TIMEOUT_S = 120.0  # end to end: a request not answered in this long gets Serve's 408


@serve.deployment(name="judge")
class JudgeDeployment:
    """One replica: the endpoint's three steps (judges/endpoint.py) around a batched judge."""

    def __init__(self, make_judge: Callable[[], Judge], model: str, api_key: str | None, prompts: Prompts | None,
                 max_batch: int, batch_wait_s: float) -> None:
        self.judge = make_judge()
        self.endpoint = Endpoint.for_judge(self.judge, api_key, model, prompts)
        self.judge_batch.set_max_batch_size(max_batch)
        self.judge_batch.set_batch_wait_timeout_s(batch_wait_s)

    async def __call__(self, request: Request) -> Response:
        headers = request.headers
        reply = self.endpoint.head(request.method, _route(request), headers.get("authorization"),
                                   headers.getlist("content-length"))
        if reply is not None:  # answered from the headers: the body is never read here
            return _response(reply)
        step = self.endpoint.step(await request.body())
        if isinstance(step, Reply):
            return _response(step)
        return _response(self.endpoint.answer(step, await self.judge_batch(step.context)))

    @serve.batch(max_batch_size=32, batch_wait_timeout_s=0.002)
    async def judge_batch(self, contexts: list[StepContext]) -> list[Outcome]:
        # in a thread: the replica keeps taking requests (the next batch gathers) while this one is judged
        return await asyncio.to_thread(judge_alone_on_failure, self.judge, contexts)


def _route(request: Request) -> str:
    """The request's path below the app's route prefix (Serve passes the prefix as `root_path`)."""
    path, root = request.scope["path"], request.scope.get("root_path", "")
    return path[len(root):] if root and path.startswith(root + "/") else path


def _response(reply: Reply) -> Response:
    return Response(reply.body(), reply.status, {"Connection": "close"} if reply.close else None,
                    media_type="application/json")


def free_port(host: str) -> int:
    """A port nothing listens on now (Serve's proxy cannot bind port 0 and say which it got)."""
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


class RayJudgeServer:
    """Serves the judge `make_judge` builds, `replicas` times, on Ray Serve at host:port (port 0
    picks a free one) under `route_prefix`. Ray must already be connected (`rollout.cluster.connect`:
    a local cluster stays on loopback, docs/design.md §8). `start()` starts Serve's proxy on
    host:port unless Serve already runs on the cluster (then its proxy, with its own options, serves
    this app too) and deploys the app; `stop()` deletes the app and leaves Serve to the cluster.
    The same interface as `JudgeServer` (`start`/`stop`, `with`, `base_url`, `model`)."""

    def __init__(self, make_judge: Callable[[], Judge], model: str, host: str = "127.0.0.1", port: int = 8000,
                 api_key: str | None = None, prompts: Prompts | None = None, max_batch: int = 32,
                 batch_wait_s: float = 0.002, idle_timeout_s: float = IDLE_TIMEOUT_S,
                 request_timeout_s: float = REQUEST_TIMEOUT_S, replicas: int = 1, replica_cpus: float = 1.0,
                 replica_gpus: float = 0.0, route_prefix: str = "/") -> None:
        self.model, self.host, self.route_prefix = model, host, route_prefix.rstrip("/")
        self.app_name = APP_NAME + self.route_prefix.replace("/", "-")
        self.port = port or free_port(host)
        self.http_options = {"host": host, "port": self.port, "keep_alive_timeout_s": max(1, math.ceil(idle_timeout_s)),
                             "request_timeout_s": request_timeout_s}
        deployment = JudgeDeployment.options(
            num_replicas=replicas, ray_actor_options={"num_cpus": replica_cpus, "num_gpus": replica_gpus},
            # room for a full batch being judged and the next one gathering
            max_ongoing_requests=2 * max_batch)
        self.app = deployment.bind(make_judge, model, api_key, prompts, max_batch, batch_wait_s)

    @property
    def base_url(self) -> str:
        """What an OpenAI client takes as `base_url`."""
        return f"http://{self.host}:{self.port}{self.route_prefix}/v1"

    def start(self) -> "RayJudgeServer":
        import ray

        if not ray.is_initialized():  # serve.start would start a Ray of its own, off loopback
            raise RuntimeError("connect to Ray first (rollout.cluster.connect)")
        serve.start(http_options=self.http_options)
        serve.run(self.app, name=self.app_name, route_prefix=self.route_prefix or "/")
        return self

    def serve_forever(self) -> None:
        while True:
            time.sleep(3600)

    def stop(self) -> None:
        serve.delete(self.app_name)

    def __enter__(self) -> "RayJudgeServer":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
