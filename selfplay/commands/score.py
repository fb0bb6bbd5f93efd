"""`selfplay score`: GenEval-rule accuracy of a folder in GenEval's layout."""

from __future__ import annotations

import argparse
import json


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("score", help="score images in GenEval's folder layout")
    p.add_argument("dir", help="folder of <index:05d>/metadata.jsonl and samples/<k:04d>.png")
    p.add_argument("--size", type=int, default=64, help="expected image side in pixels")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table (accuracies as fractions)")
    p.add_argument("--strict", action="store_true",
                   help="fail (exit 2) when a record lacks a sample image another record has, instead of "
                        "scoring the images present and reporting the missing count")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> None:
    from strokes.errors import InputError
    from strokes.geneval import score_dir

    score = score_dir(args.dir, args.size)
    missing = len(score.missing)
    if missing and args.strict:
        raise InputError(f"{args.dir}: {missing} of {missing + sum(score.counts.values())} images missing, "
                         f"first {score.missing[0]} (--strict)")
    if args.json:
        print(json.dumps(score.to_json(), indent=2))
    else:
        print(score.table())
        print(f"overall {100 * score.overall:.1f} ± {100 * score.standard_error():.1f} (SE), "
              f"{sum(score.counts.values())} images" + (f", {missing} missing (first {score.missing[0]})"
                                                        if missing else ""))
