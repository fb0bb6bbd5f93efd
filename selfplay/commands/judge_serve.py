"""`selfplay judge-serve`: serve a judge as an OpenAI-compatible endpoint on this machine.

Any client that speaks the chat-completions API (our GPT judge included) can then judge steps with
it over HTTP, so a team can share one judge service. Loopback only unless `--host` says otherwise
(and then a warning on stderr when no API key guards it). Two backends answer alike
(judges/endpoint.py): the standard library's http.server in this process (the default), or
`--backend ray`: `--replicas` copies of the judge on Ray Serve, on a local Ray cluster kept on
loopback or the one `--ray-address` names (docs/judges.md, "Serving judges at scale").
"""

from __future__ import annotations

import argparse
import functools
import ipaddress
import os
import socket
import sys


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("judge-serve", help="serve a judge as an OpenAI-compatible /v1/chat/completions endpoint")
    p.add_argument("--judge", choices=("oracle", "self", "vlm"), default="oracle",
                   help="oracle: exact ShapeWorld judge; self: a checkpoint's own Inspect; vlm: the stand-in "
                        "VLM judge (the exact one with --profile's mistakes)")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (127.0.0.1: this machine only)")
    p.add_argument("--port", type=int, default=8000, help="port (0 picks a free one)")
    p.add_argument("--api-key", default=None, help="require 'Authorization: Bearer KEY' on every request")
    p.add_argument("--api-key-env", default=None,
                   help="read the required key from this environment variable instead (keeps it out of `ps`)")
    add_self_judge_args(p)
    p.add_argument("--model-name", default=None, help="the model id to report (default strokes-<judge>)")
    p.add_argument("--prompts-file", default="", help="judge prompts file (default: the built-in one)")
    p.add_argument("--max-batch", type=int, default=32, help="steps judged together at most")
    p.add_argument("--backend", choices=("http.server", "ray"), default="http.server",
                   help="http.server: this process; ray: replicas of the judge on Ray Serve")
    p.add_argument("--replicas", type=int, default=1,
                   help="--backend ray: copies of the judge, each batching its own requests")
    p.add_argument("--replica-cpus", type=float, default=1.0, help="--backend ray: CPUs Ray reserves per replica")
    p.add_argument("--replica-gpus", type=float, default=0.0, help="--backend ray: GPUs Ray reserves per replica")
    p.add_argument("--ray-address", default="",
                   help="--backend ray: join this Ray cluster ('auto': the one this machine belongs to); "
                        "default: start a local one on loopback")
    p.add_argument("--ray-cpus", type=int, default=0, help="--backend ray: CPUs of the local cluster (0: all)")
    p.set_defaults(func=run)


def add_self_judge_args(p: argparse.ArgumentParser) -> None:
    """The options of the self and the stand-in VLM judges (shared with `judge-eval`)."""
    p.add_argument("--profile", default="typical",
                   help="error profile of --judge vlm: strong, typical (shipped) or a YAML file (docs/judges.md)")
    p.add_argument("--profile-seed", type=int, default=0, help="seed of --judge vlm's mistakes")
    p.add_argument("--checkpoint", default=None, help="policy checkpoint folder (for --judge self)")
    p.add_argument("--temperature", type=float, default=1.0,
                   help="sampling temperature of the self judge's Inspect (0: greedy; default: as rollouts sample)")
    p.add_argument("--device", default="auto", help="device of the self judge's policy (auto, cpu, cuda)")


def judge_from_args(args: argparse.Namespace, cfg=None):
    """The judge the command line names (`cfg`, a `JudgeConfig`, or `--judge` alone), built by the one
    factory (`selfplay.judging.policy_judge`); the self judge inspects with `--checkpoint`."""
    from judges import JudgeConfig
    from rollout.config import RolloutConfig

    from ..judging import policy_judge

    cfg = cfg or JudgeConfig(kind=args.judge, profile=args.profile, profile_seed=args.profile_seed)
    if cfg.kind == "self":
        check_self_judge_args(args)
    return policy_judge(cfg, args.checkpoint, RolloutConfig(temperature=args.temperature, device=args.device))


def check_self_judge_args(args: argparse.Namespace) -> None:
    """The self judge's options, checked before any policy loads."""
    from strokes.errors import InputError

    from .sample import check_device

    if not args.checkpoint:
        raise InputError("--checkpoint is required with --judge self")
    if args.temperature < 0:
        raise InputError(f"--temperature must be >= 0, got {args.temperature}")
    check_device(args.device)


def is_loopback(host: str) -> bool:
    """Whether `host` (an address or a name) binds this machine only; "" and 0.0.0.0 bind every interface."""
    try:
        return ipaddress.ip_address(socket.gethostbyname(host)).is_loopback
    except OSError:  # a name that does not resolve: the bind will fail anyway
        return False


def run(args: argparse.Namespace) -> int:
    from strokes.errors import InputError

    if not 0 <= args.port <= 65535:
        raise InputError(f"--port must be between 0 and 65535, got {args.port}")
    if args.max_batch < 1:
        raise InputError(f"--max-batch must be at least 1, got {args.max_batch}")
    check_ray_args(args)
    key = args.api_key
    if args.api_key_env:
        key = os.environ.get(args.api_key_env)
        if not key:
            raise InputError(f"--api-key-env: environment variable {args.api_key_env} is not set")
    if not key and not is_loopback(args.host):
        print(f"selfplay judge-serve: warning: --host {args.host} is not loopback and no API key is set: "
              "anyone who can reach it can use the judge", file=sys.stderr, flush=True)
    server = ray_server(args, key) if args.backend == "ray" else stdlib_server(args, key)
    what = f"vlm judge (profile {args.profile}, seed {args.profile_seed})" if args.judge == "vlm" else f"{args.judge} judge"
    where = f" on Ray Serve ({args.replicas} replica{'s' if args.replicas > 1 else ''})" if args.backend == "ray" else ""
    print(f"serving the {what} at {server.base_url}{where} as model {server.model}"
          f"{' (API key required)' if key else ''}", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.stop()
    return 0


def check_ray_args(args: argparse.Namespace) -> None:
    """The Ray options make sense only with `--backend ray`, and there within their ranges."""
    from strokes.errors import InputError

    ray_options = {"--replicas": args.replicas != 1, "--replica-cpus": args.replica_cpus != 1.0,
                   "--replica-gpus": args.replica_gpus != 0.0, "--ray-address": bool(args.ray_address),
                   "--ray-cpus": args.ray_cpus != 0}
    given = [name for name, changed in ray_options.items() if changed]
    if args.backend != "ray" and given:
        raise InputError(f"{given[0]} needs --backend ray")
    if args.replicas < 1:
        raise InputError(f"--replicas must be at least 1, got {args.replicas}")
    for name, value in (("--replica-cpus", args.replica_cpus), ("--replica-gpus", args.replica_gpus),
                        ("--ray-cpus", args.ray_cpus)):
        if value < 0:
            raise InputError(f"{name} must be >= 0, got {value}")


def stdlib_server(args: argparse.Namespace, key: str | None):
    """The judge behind http.server in this process, listening already."""
    from judges.messages import load_prompts
    from judges.server import JudgeServer
    from strokes.errors import InputError

    judge = judge_from_args(args)
    try:
        return JudgeServer(judge, args.host, args.port, key, args.model_name, load_prompts(args.prompts_file),
                           args.max_batch)
    except OSError as e:
        raise InputError(f"--host/--port: cannot listen on {args.host}:{args.port} ({e.strerror or e})") from None


def ray_server(args: argparse.Namespace, key: str | None):
    """The judge on Ray Serve, deployed: each replica builds it from these arguments. A local cluster
    is started the project's way (`rollout.cluster.connect`, loopback only); the port is checked
    here first, since Serve's proxy would not say that it cannot listen."""
    from judges.endpoint import default_model
    from judges.messages import load_prompts
    from rollout.cluster import connect
    from strokes.errors import InputError

    try:
        from judges.ray_serve import RayJudgeServer
    except ImportError as e:
        raise InputError(f"--backend ray needs Ray Serve ({e}): pip install -e '.[serve]' in the checkout") from None

    if not args.ray_address and args.port:
        try:
            with socket.socket() as s:
                s.bind((args.host, args.port))
        except OSError as e:
            raise InputError(f"--host/--port: cannot listen on {args.host}:{args.port} ({e.strerror or e})") from None
    if args.judge == "self":  # checked here: in a replica it would fail as a deployment error
        check_self_judge_args(args)
    else:
        judge_from_args(args)  # cheap: a bad --profile fails here, in one line
    # the replicas may not share this process's working directory
    args = argparse.Namespace(**{**vars(args), "checkpoint": args.checkpoint and os.path.abspath(args.checkpoint),
                                 "profile": os.path.abspath(args.profile) if os.path.isfile(args.profile) else args.profile})
    connect(args.ray_address, args.ray_cpus)
    model = args.model_name or default_model(args.judge)
    server = RayJudgeServer(functools.partial(judge_from_args, args), model,
                            args.host, args.port, key, load_prompts(args.prompts_file), args.max_batch,
                            replicas=args.replicas, replica_cpus=args.replica_cpus, replica_gpus=args.replica_gpus)
    return server.start()
