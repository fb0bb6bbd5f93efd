"""`selfplay eval`: generate images for a suite with a checkpoint, in GenEval's layout, and score them.

    <out>/rollout/   the trajectories, shard by shard (a rerun resumes here)
    <out>/geneval/   final images in GenEval's layout (`selfplay score <out>/geneval` reads it)
    <out>/score.json the scores and the rollout's counts
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from strokes.io import write_atomic

from .sample import MODES, add_sampling_args, config_from_args, quiet_loading


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("eval", help="generate a suite's images with a checkpoint and score them")
    p.add_argument("checkpoint", help="policy folder (save_pretrained)")
    p.add_argument("--suite", required=True, help="GenEval-format JSONL (selfplay suite)")
    p.add_argument("--mode", choices=sorted(MODES), default="process")
    p.add_argument("--samples", type=int, default=1, help="images per record")
    p.add_argument("--actors", type=int, default=0, help="Ray actors (0: this process)")
    p.add_argument("--actor-cpus", type=float, default=0.5)
    p.add_argument("--shard-size", type=int, default=128)
    p.add_argument("--ray-address", default="", help="join this Ray cluster instead of starting one")
    p.add_argument("--out", default=None, help="output folder (default: eval-<suite>-<mode>)")
    add_sampling_args(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> None:
    from rollout import RolloutDir, rollout, write_geneval
    from strokes.errors import InputError
    from strokes.geneval import score_dir
    from strokes.shapeworld import read_records

    if args.samples < 1:
        raise InputError(f"--samples must be at least 1, got {args.samples}")
    records = read_records(args.suite)
    quiet_loading()
    cfg = config_from_args(args, actors=args.actors, actor_cpus=args.actor_cpus, shard_size=args.shard_size,
                           ray_address=args.ray_address)
    out = Path(args.out or f"eval-{Path(args.suite).stem}-{args.mode}")
    summary = rollout(records, out / "rollout", cfg, checkpoint=args.checkpoint, samples=args.samples)
    write_geneval(RolloutDir(out / "rollout").trajectories(), records, out / "geneval")
    score = score_dir(out / "geneval")
    result = {"checkpoint": str(args.checkpoint), "suite": str(args.suite), "mode": cfg.mode,
              "samples": args.samples, "score": score.to_json(), "rollout": summary.to_json()}
    write_atomic(out / "score.json", json.dumps(result, indent=2) + "\n")
    print(score.table())
    print(f"overall {100 * score.overall:.1f} ± {100 * score.standard_error():.1f} (SE), "
          f"{sum(score.counts.values())} images, {summary.failed} failed trajectories")
    print(json.dumps(result, indent=2))
