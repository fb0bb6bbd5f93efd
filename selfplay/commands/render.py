"""`selfplay render`: ground-truth images for GenEval-format records, in GenEval's folder layout."""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("render", help="render ground-truth images for a suite in GenEval's layout")
    p.add_argument("--metadata", required=True, help="GenEval-format JSONL (any ShapeWorld records)")
    p.add_argument("--samples", type=int, default=4, help="images per record")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--size", type=int, default=64, help="canvas side in pixels")
    p.add_argument("--out", required=True, help="output folder")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> None:
    import random

    from tqdm import tqdm

    from strokes.errors import InputError
    from strokes.geneval import write_samples
    from strokes.shapeworld import read_records, render, target_scene

    if args.samples < 1:
        raise InputError(f"--samples must be at least 1, got {args.samples}")
    records = read_records(args.metadata)
    # Every scene is built before anything is written, so an impossible record fails the command
    # with its line number and leaves no output behind.
    rendered = []
    for i, rec in enumerate(tqdm(records, desc="render", unit="record", disable=None)):
        rng = random.Random(f"{args.seed}:{i}")
        try:
            rendered.append((rec, [render(target_scene(rec, rng, args.size)) for _ in range(args.samples)]))
        except InputError as e:
            raise InputError(f"{args.metadata}:{i + 1}: {e}") from None
    n = write_samples(args.out, rendered)
    print(f"wrote {n} records x {args.samples} images to {args.out}")
