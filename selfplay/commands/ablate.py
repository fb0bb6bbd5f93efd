"""`selfplay ablate`: all arms of one ablation table, equal compute, resumable."""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("ablate", help="run every arm of an ablation table (configs/ablations/*.yaml)")
    p.add_argument("config", help="ablation YAML: base run config, arms, seeds, columns (selfplay/ablate.py)")
    p.add_argument("--runs", default="runs", help="folder for the arms' run directories (RUNS/<table>/...)")
    p.add_argument("--only", action="append", metavar="ARM",
                   help="run (or resume) just this arm, in this process; repeatable; writes no table")
    p.add_argument("--seed", type=int, help="with --only: just this seed")
    p.add_argument("--table", action="store_true", help="only re-read the finished runs and rewrite the table")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from strokes.errors import InputError

    from ..ablate import load_ablation, run_ablation, tabulate

    root = Path(args.runs) / Path(args.config).stem
    if args.seed is not None and not args.only:
        raise InputError("--seed needs --only ARM")
    if args.table:
        out = tabulate(load_ablation(args.config), root)
    else:
        out = run_ablation(args.config, args.runs, only=args.only, seed=args.seed)
        if out is None:
            return 0
    print((root / "table.md").read_text())
    print(f"results: {root / 'results.json'}; plot: {root / 'plot.png'}")
    return 0
