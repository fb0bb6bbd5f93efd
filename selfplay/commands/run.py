"""`selfplay run`: the self-improvement loop, resumable."""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("run", help="run the self-improvement loop (rounds of rollout, judge, critique, SFT, eval)")
    p.add_argument("config", help="run config YAML, e.g. configs/shapeworld.yaml")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a config field")
    p.add_argument("--name", help="run name (folder under --runs); default: the config file's stem")
    p.add_argument("--runs", default="runs", help="folder holding run directories")
    p.add_argument("--resume", action="store_true", help="continue an existing run at its first incomplete stage")
    p.add_argument("--from-scratch", action="store_true", help="train the base model (loop.base_recipe) instead of "
                                                                 "starting from the shipped checkpoint")
    p.add_argument("--dry-run", action="store_true", help="validate the config and print the plan; run nothing")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> None:
    import json
    import time
    from pathlib import Path

    from strokes.errors import InputError

    from ..config import load_config

    cfg = load_config(args.config, args.set)
    name = args.name or Path(args.config).stem
    run_dir = Path(args.runs) / name
    if args.dry_run:
        from ..dry_run import plan

        print(json.dumps(plan(cfg), indent=2))
        return
    if run_dir.exists() and any(run_dir.iterdir()) and not args.resume:
        raise InputError(f"{run_dir}: run exists; pass --resume to continue it or --name for a new one")
    from ..loop import run as run_loop

    t0 = time.time()
    state = run_loop(cfg, run_dir, from_scratch=args.from_scratch)
    print(f"done in {(time.time() - t0) / 60:.1f} min; current policy: {state.policy}")
    print(f"report: {run_dir / 'report.html'}")
