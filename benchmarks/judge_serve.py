"""Benchmark: the judge server's two backends on loopback, through the `openai` client (issue 26 item 5).
Not a test (wall-clock); run it by hand:

    OMP_NUM_THREADS=1 python benchmarks/judge_serve.py [--requests 300] [--concurrency 1,8,32] [--replicas 1,2]

Each arm is the real command in its own process, `selfplay judge-serve --judge oracle --port 0` (the
http.server backend) or the same with `--backend ray --replicas R` (a local Ray cluster of
`--ray-cpus` CPUs, each replica reserving 1/R of them, `HOME` a temporary folder), serving the exact
judge. This process is only the clients: C threads share one `openai.OpenAI` client (no retries), each
posting steps of `labelled_contexts` one after another; `--requests` are timed per (arm, C) after
`--warmup` untimed ones. Prints requests/s and the p50/p95 latency of each row.
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from typing import Iterator

os.environ.setdefault("OMP_NUM_THREADS", "1")
MODEL = "strokes-oracle"


@contextmanager
def served(backend_args: list[str], home: str) -> Iterator[str]:
    """Run `selfplay judge-serve` with `backend_args`; yield its base URL until the block ends."""
    env = {**os.environ, "HOME": home, "RAY_USAGE_STATS_ENABLED": "0", "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"}
    log = open(os.path.join(home, "serve.log"), "a")
    proc = subprocess.Popen([sys.executable, "-m", "selfplay.cli", "judge-serve", "--judge", "oracle", "--port", "0",
                             *backend_args], stdout=subprocess.PIPE, stderr=log, text=True, env=env)
    try:
        line = proc.stdout.readline()
        m = re.search(r"(http://127\.0\.0\.1:\d+/v1)", line)
        if not m:
            raise RuntimeError(f"judge-serve did not start: {line!r} (see {log.name})")
        yield m.group(1)
    finally:
        proc.terminate()
        proc.wait(timeout=120)
        log.close()


def measure(base_url: str, steps: list[list[dict]], concurrency: int, requests: int, warmup: int) -> dict:
    """requests/s and latency percentiles of `requests` posts by `concurrency` clients."""
    from openai import OpenAI

    client = OpenAI(base_url=base_url, api_key="unused", max_retries=0, timeout=60)

    def post(i: int) -> float:
        t0 = time.perf_counter()
        reply = client.chat.completions.create(model=MODEL, messages=steps[i % len(steps)])
        assert reply.choices[0].message.content, reply
        return time.perf_counter() - t0

    with ThreadPoolExecutor(concurrency) as pool:
        list(pool.map(post, range(warmup)))
        t0 = time.perf_counter()
        latencies = sorted(pool.map(post, range(requests)))
        wall = time.perf_counter() - t0
    q = statistics.quantiles(latencies, n=100)
    return {"rps": requests / wall, "p50": q[49] * 1000, "p95": q[94] * 1000}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=300, help="timed requests per (arm, concurrency)")
    parser.add_argument("--warmup", type=int, default=32)
    parser.add_argument("--concurrency", default="1,8,32")
    parser.add_argument("--replicas", default="1,2", help="Ray Serve arms")
    parser.add_argument("--ray-cpus", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0, help="seed of the judged steps")
    args = parser.parse_args()

    from judges.evaluate import labelled_contexts
    from judges.messages import build_messages, load_prompts

    prompts = load_prompts()
    steps = [build_messages(c, prompts) for c in labelled_contexts(64, seed=args.seed)]
    arms = [("http.server", 1, [])] + [
        ("ray", r, ["--backend", "ray", "--replicas", str(r), "--replica-cpus", f"{args.ray_cpus / r:g}",
                    "--ray-cpus", str(args.ray_cpus)]) for r in map(int, args.replicas.split(","))]
    print(f"exact judge, {args.requests} timed requests per row after {args.warmup}, {len(steps)} distinct steps "
          f"(seed {args.seed}), max batch 32; {os.cpu_count()} CPUs")
    print(f"| backend | replicas | clients | requests/s | p50 ms | p95 ms |\n|---|---:|---:|---:|---:|---:|", flush=True)
    for backend, replicas, backend_args in arms:
        with tempfile.TemporaryDirectory(ignore_cleanup_errors=True) as home, served(backend_args, home) as url:
            for c in map(int, args.concurrency.split(",")):
                r = measure(url, steps, c, args.requests, args.warmup)
                print(f"| {backend} | {replicas} | {c} | {r['rps']:.0f} | {r['p50']:.1f} | {r['p95']:.1f} |", flush=True)


if __name__ == "__main__":
    main()
