"""`selfplay suite`: write a GenEval-format ShapeWorld prompt suite."""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("suite", help="write a GenEval-format prompt suite (JSONL)")
    p.add_argument("--split", choices=("train", "test"), default="test")
    p.add_argument("--per-task", type=int, default=50, help="records per task (six tasks)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", required=True, help="output JSONL path")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> None:
    from strokes.errors import InputError
    from strokes.records import write_records
    from strokes.shapeworld import make_suite

    if args.per_task < 1:
        raise InputError(f"--per-task must be at least 1, got {args.per_task}")
    records = make_suite(args.split, args.per_task, args.seed)
    write_records(records, args.out)
    print(f"wrote {len(records)} records ({args.split} split, seed {args.seed}) to {args.out}")
