"""`selfplay eval`: generate images for a suite with a checkpoint, in GenEval's layout, and score them.

    <out>/rollout/   the trajectories, shard by shard (a rerun resumes here)
    <out>/geneval/   final images in GenEval's layout (`selfplay score <out>/geneval` reads it)
    <out>/score.json the scores and the rollout's counts
    <out>/fingerprint.json  what made them: the checkpoint's files, the suite, the mode and settings

A rerun resumes only when its fingerprint is the one recorded (else one line names what differs;
`--fresh` discards the old output): a second checkpoint evaluated into the same folder used to be
reported with the first one's score.

With `--config RUN/config.yaml` the checkpoint is evaluated exactly as that run's eval does: its
`rollout` section (inspection mode and threshold, retries, caps, temperature), `loop.eval_seed` and
`loop.eval_samples`; so anyone can re-score a run's policies on their own suite.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import shutil
from contextlib import nullcontext
from pathlib import Path

from strokes.io import write_atomic

from .sample import CLI_MODES, add_sampling_args, config_from_args, quiet_loading


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("eval", help="generate a suite's images with a checkpoint and score them")
    p.add_argument("checkpoint", help="policy folder (save_pretrained)")
    p.add_argument("--suite", required=True, help="GenEval-format JSONL (selfplay suite)")
    p.add_argument("--mode", choices=sorted(CLI_MODES), default="process")
    p.add_argument("--samples", type=int, default=None, help="images per record (default 1, or the run's "
                                                              "loop.eval_samples with --config)")
    p.add_argument("--config", default=None, help="a run's config (RUN/config.yaml): roll out as its eval does; "
                                                  "the sampling flags below then come from it (change with --set)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a --config field")
    p.add_argument("--actors", type=int, default=0, help="Ray actors (0: this process)")
    p.add_argument("--actor-cpus", type=float, default=0.5)
    p.add_argument("--shard-size", type=int, default=128)
    p.add_argument("--ray-address", default="", help="join this Ray cluster instead of starting one")
    p.add_argument("--out", default=None, help="output folder (default: eval-<suite>-<mode>)")
    p.add_argument("--fresh", action="store_true", help="discard an earlier eval in --out and start over")
    add_sampling_args(p)
    p.set_defaults(func=run)


def run_eval_config(args: argparse.Namespace, pool: dict):
    """The run's config (`--config`), and the rollout settings and images per record of its eval
    for `--mode`."""
    from strokes.errors import InputError

    from ..config import load_config

    changed = [name for name, default in _sampling_defaults().items() if getattr(args, name) != default]
    if changed:
        flag = "--" + changed[0].replace("_", "-")
        raise InputError(f"{flag}: with --config the sampling settings come from the run's config "
                         f"(change them with --set rollout.{changed[0]}=...)")
    run_cfg = load_config(args.config, args.set)
    cfg = dataclasses.replace(run_cfg.rollout, mode=CLI_MODES[args.mode], seed=run_cfg.loop.eval_seed, **pool).validate()
    return run_cfg, cfg, args.samples or run_cfg.loop.eval_samples


def _sampling_defaults() -> dict:
    """The sampling flags' defaults, by destination."""
    p = argparse.ArgumentParser(add_help=False)
    add_sampling_args(p)
    return vars(p.parse_args([]))


# RolloutConfig fields that decide where and how fast a rollout runs, not what it produces.
INFRASTRUCTURE = {"actors", "actor_cpus", "num_gpus_per_actor", "ray_address", "ray_cpus", "object_store_mb",
                  "shard_size", "max_shard_retries", "batch_size"}
OUTPUTS = ("rollout", "geneval", "score.json", "fingerprint.json")  # what an eval writes into --out


def fingerprint(checkpoint: Path, suite: Path, cfg, samples: int) -> dict:
    """What an eval's output depends on: the checkpoint's files (their bytes: a retrained checkpoint
    can keep its sizes), the suite's content, and every rollout setting that changes trajectories."""
    from strokes.model.checkpoint_check import CHECKSUMS, file_digests

    files = json.dumps(file_digests(checkpoint, {CHECKSUMS}), sort_keys=True)
    settings = {k: v for k, v in dataclasses.asdict(cfg).items() if k not in INFRASTRUCTURE}
    return {"checkpoint": hashlib.sha256(files.encode()).hexdigest(),
            "suite": hashlib.sha256(suite.read_bytes()).hexdigest(),
            "settings": {**settings, "samples": samples}}


def claim_output(out: Path, mine: dict, fresh: bool) -> None:
    """Make `out` this eval's: record `mine` in `out/fingerprint.json`, resuming an earlier eval only
    when it was made by exactly the same checkpoint, suite and settings."""
    from strokes.errors import InputError

    path = out / "fingerprint.json"
    if fresh:
        for name in OUTPUTS:
            if (out / name).is_dir():
                shutil.rmtree(out / name)
            else:
                (out / name).unlink(missing_ok=True)
    elif path.is_file():
        try:
            theirs = json.loads(path.read_text())
            old, new = theirs["settings"], mine["settings"]
        except (ValueError, KeyError, TypeError):
            raise InputError(f"{path}: unreadable; give --fresh to discard the eval in {out}") from None
        differs = [k for k in ("checkpoint", "suite") if theirs.get(k) != mine[k]]
        differs += sorted(k for k in old.keys() | new.keys() if old.get(k) != new.get(k))
        if differs:
            raise InputError(f"{out}: holds an eval with another {', '.join(differs)}; "
                             f"give --fresh to discard it, or another --out")
        return
    elif any((out / name).exists() for name in OUTPUTS):
        raise InputError(f"{out}: holds an eval without {path.name} (cannot tell what made it); "
                         f"give --fresh to discard it, or another --out")
    write_atomic(path, json.dumps(mine, indent=2) + "\n")


def run(args: argparse.Namespace) -> None:
    from rollout import RolloutDir, rollout
    from strokes.errors import InputError
    from strokes.model.checkpoint_check import check_checkpoint
    from strokes.records import read_records
    from strokes.shapeworld import check_vocabulary

    from ..config import load_config
    from ..evaluation import score_rollouts
    from ..judging import served_judge

    if args.samples is not None and args.samples < 1:
        raise InputError(f"--samples must be at least 1, got {args.samples}")
    check_checkpoint(args.checkpoint)
    quiet_loading()
    pool = dict(actors=args.actors, actor_cpus=args.actor_cpus, shard_size=args.shard_size, ray_address=args.ray_address)
    if args.config:
        run_cfg, cfg, samples = run_eval_config(args, pool)
    else:
        if args.set:
            raise InputError("--set changes fields of --config; give --config too")
        run_cfg, cfg, samples = load_config(None), config_from_args(args, **pool), args.samples or 1
    shapeworld = run_cfg.world.kind == "shapeworld"  # it can draw only its own vocabulary
    records = read_records(args.suite, check_vocabulary if shapeworld else None)
    out = Path(args.out or f"eval-{Path(args.suite).stem}-{args.mode}")
    claim_output(out, fingerprint(Path(args.checkpoint), Path(args.suite), cfg, samples), args.fresh)
    summary = rollout(records, out / "rollout", cfg, checkpoint=args.checkpoint, samples=samples)
    # an open world's scores come from its judge; ShapeWorld's are decided exactly, no judge asked
    with nullcontext(run_cfg) if shapeworld else served_judge(run_cfg) as run_cfg:
        score = score_rollouts(run_cfg, RolloutDir(out / "rollout").trajectories(), records, out)
    result = {"checkpoint": str(args.checkpoint), "suite": str(args.suite), "mode": cfg.mode,
              "samples": samples, "score": score.to_json(), "rollout": summary.to_json()}
    write_atomic(out / "score.json", json.dumps(result, indent=2) + "\n")
    print(score.table())
    print(f"overall {100 * score.overall:.1f} ± {100 * score.standard_error():.1f} (SE), "
          f"{sum(score.counts.values())} images, {summary.failed} failed trajectories")
    print(json.dumps(result, indent=2))
