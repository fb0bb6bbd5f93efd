"""`selfplay report`: write a run's self-contained report.html."""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("report", help="write RUN/report.html (plots, tables, trajectory strips)")
    p.add_argument("run", help="run directory")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> None:
    from pathlib import Path

    from strokes.errors import InputError

    from ..report import write_report

    run_dir = Path(args.run)
    if not (run_dir / "state.json").is_file():
        raise InputError(f"{run_dir}: not a run directory (no state.json)")
    print(write_report(run_dir))
