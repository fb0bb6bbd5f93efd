"""`selfplay score`: GenEval accuracy of a folder in GenEval's layout, or of GenEval's own results.

A folder of ShapeWorld images is scored by the exact checker (GenEval's rules); a `results.jsonl`
written by GenEval's official scorer (`evaluate_images.py`, detector + CLIP, run on a team's cluster
over an eval folder this project wrote) is read and summarised the same way, per task and overall.
"""

from __future__ import annotations

import argparse
import json


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("score", help="score images in GenEval's folder layout, or read GenEval's results.jsonl")
    p.add_argument("path", help="folder of <index:05d>/metadata.jsonl and samples/<k:04d>.png (ShapeWorld "
                                "images, scored exactly), or a results.jsonl from GenEval's official scorer")
    p.add_argument("--size", type=int, default=64, help="expected image side in pixels (folders)")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table (accuracies as fractions)")
    p.add_argument("--strict", action="store_true",
                   help="fail (exit 2) when a record lacks a sample image another record has, instead of "
                        "scoring the images present and reporting the missing count")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> None:
    from pathlib import Path

    from strokes.errors import InputError
    from strokes.geneval import read_results
    from strokes.shapeworld import score_folder

    path = Path(args.path)
    score = read_results(path) if path.is_file() else score_folder(path, args.size)
    missing = len(score.missing)
    if missing and args.strict:
        raise InputError(f"{args.path}: {missing} of {missing + sum(score.counts.values())} images missing, "
                         f"first {score.missing[0]} (--strict)")
    if args.json:
        print(json.dumps(score.to_json(), indent=2))
    else:
        print(score.table())
        print(f"overall {100 * score.overall:.1f} ± {100 * score.standard_error():.1f} (SE), "
              f"{sum(score.counts.values())} images" + (f", {missing} missing (first {score.missing[0]})"
                                                        if missing else ""))
