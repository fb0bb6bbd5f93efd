"""`selfplay run`: the self-improvement loop, resumable."""

from __future__ import annotations

import argparse
from fnmatch import fnmatchcase
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ..config import RunConfig

# Fields a resumed run may change with `--allow-change`: they decide where and how fast the work
# runs, not what is sampled, judged or trained (batch and shard sizes regroup the rollouts, which
# changes their random draws but not their distribution), and `loop.rounds`, which no round reads
# (a finished run given more rounds goes on as if it had asked for them at the start). Everything
# else must match the run's own config.yaml, or a round would mix two settings (and the saved config
# would describe neither).
RESUME_SAFE = ("tracking.*", "rollout.actors", "rollout.actor_cpus", "rollout.ray_address", "rollout.ray_cpus",
               "rollout.object_store_mb", "rollout.batch_size", "rollout.shard_size", "train.num_threads",
               "train.tokenize_workers", "data.workers", "loop.overlap", "loop.rounds")


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("run", help="run the self-improvement loop (rounds of rollout, judge, critique, SFT, eval)")
    p.add_argument("config", help="run config YAML, e.g. configs/shapeworld.yaml")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a config field")
    p.add_argument("--name", help="run name (folder under --runs); default: the config file's stem")
    p.add_argument("--runs", default="runs", help="folder holding run directories")
    p.add_argument("--resume", action="store_true", help="continue an existing run at its first incomplete stage; "
                                                         "the config must match the run's config.yaml")
    p.add_argument("--allow-change", action="append", default=[], metavar="FIELD",
                   help="with --resume, let this field differ from the run's config.yaml (repeatable); only "
                        f"{', '.join(RESUME_SAFE)}")
    p.add_argument("--from-scratch", action="store_true", help="train the base model (loop.base_recipe) instead of "
                                                                 "starting from the shipped checkpoint")
    p.add_argument("--dry-run", action="store_true", help="validate the config and print the plan (what runs "
                                                          "where, memory per device, warnings); run nothing")
    p.add_argument("--gpu-memory", type=float, default=80.0, metavar="GB",
                   help="with --dry-run: the memory of one GPU the plan is checked against")
    p.add_argument("--quiet", action="store_true", help="no progress bars or per-step training lines (bars show "
                                                        "only when stderr is a terminal anyway)")
    p.set_defaults(func=run)


def _flat(data: dict, prefix: str = "") -> dict:
    """A nested config dict as {"section.field": value}, down to the leaves (`data.mixture.conflict`)."""
    out = {}
    for k, v in data.items():
        key = f"{prefix}{k}"
        out.update(_flat(v, key + ".") if isinstance(v, dict) else {key: v})
    return out


def _check_resume(cfg: RunConfig, run_dir: Path, allowed: list[str]) -> None:
    """Refuse to resume `run_dir` with a config other than its own config.yaml, but for fields named
    in `allowed` (each within `RESUME_SAFE`); refuse a damaged state.json too. Called before the
    loop starts, which rewrites config.yaml, so a refused resume leaves the run as it was."""
    import dataclasses

    from strokes.config_loader import load
    from strokes.errors import InputError

    from ..config import RunConfig
    from ..run_dir import RunState

    new = _flat(dataclasses.asdict(cfg))
    for name in allowed:
        if not any(fnmatchcase(name, safe) for safe in RESUME_SAFE):
            raise InputError(f"--allow-change {name}: not a field a resume may change (only {', '.join(RESUME_SAFE)})")
        if not any(fnmatchcase(key, name) for key in new):
            raise InputError(f"--allow-change {name}: no such config field")
    RunState.load(run_dir)
    saved = run_dir / "config.yaml"
    if not saved.is_file():  # killed before the loop wrote it: nothing ran under another config
        return
    try:
        old = _flat(dataclasses.asdict(load(RunConfig, saved)))
    except InputError as e:
        raise InputError(f"{saved}: the run's own config no longer loads ({e})") from None
    unset = object()
    diff = [k for k in sorted(old.keys() | new.keys()) if old.get(k, unset) != new.get(k, unset)
            and not any(fnmatchcase(k, name) for name in allowed)]
    if diff:
        def shown(flat: dict, k: str) -> str:
            return repr(flat[k]) if k in flat else "unset"

        show = "; ".join(f"{k} ({shown(old, k)} -> {shown(new, k)})" for k in diff)
        raise InputError(f"--resume: the config differs from the run's ({saved}) in {show}; resume with the "
                         f"run's config (--allow-change FIELD lets one of {', '.join(RESUME_SAFE)} differ)")


def run(args: argparse.Namespace) -> None:
    import dataclasses
    import json
    import time

    from strokes import console
    from strokes.errors import InputError

    from ..config import load_config

    console.set_quiet(args.quiet)
    cfg = load_config(args.config, args.set)
    name = args.name or Path(args.config).stem
    run_dir = Path(args.runs) / name
    if args.from_scratch and cfg.world.kind != "shapeworld":
        raise InputError("--from-scratch trains ShapeWorld's base model; an open world starts from loop.base_checkpoint")
    if args.allow_change and not args.resume:
        raise InputError("--allow-change only applies with --resume")
    if args.resume and run_dir.is_dir():
        _check_resume(cfg, run_dir, args.allow_change)
    if args.dry_run:
        import sys

        from ..dry_run import placement_table, plan, warnings

        import yaml

        if args.gpu_memory <= 0:
            raise InputError(f"--gpu-memory must be positive, got {args.gpu_memory:g}")
        planned = plan(cfg, args.from_scratch, args.gpu_memory)
        print(f"# the resolved config: {args.config}, its parents and --set\n"
              + yaml.safe_dump(dataclasses.asdict(cfg), sort_keys=False))
        print("# the plan\n" + json.dumps(planned, indent=2))
        print("# what runs where (each round)\n" + placement_table(planned))
        for line in warnings(cfg, planned):
            print(line, file=sys.stderr)
        return
    if run_dir.exists() and any(run_dir.iterdir()) and not args.resume:
        raise InputError(f"{run_dir}: run exists; pass --resume to continue it or --name for a new one")
    from ..loop import run as run_loop

    console.hush_libraries()

    t0 = time.time()
    state = run_loop(cfg, run_dir, from_scratch=args.from_scratch)
    print(f"done in {(time.time() - t0) / 60:.1f} min; current policy: {state.policy}")
    print(f"report: {run_dir / 'report.html'}")
