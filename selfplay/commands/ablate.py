"""`selfplay ablate`: all arms of one ablation table, equal compute, resumable."""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("ablate", help="run every arm of an ablation table (configs/ablations/*.yaml)")
    p.add_argument("config", help="ablation YAML: base run config, arms (overrides), seeds, columns")
    p.add_argument("--runs", default="runs", help="folder for the arms' run directories")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> None:
    from pathlib import Path

    from ..ablate import run_ablation

    out = run_ablation(args.config, args.runs)
    root = Path(args.runs) / Path(args.config).stem
    print((root / "table.md").read_text())
    print(f"results: {root / 'results.json'}; plot: {root / 'plot.png'}")
    return 0 if out["results"] else 1
