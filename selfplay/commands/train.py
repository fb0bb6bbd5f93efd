"""`selfplay train`: SFT a policy on a dataset of trajectories with TRL."""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("train", help="train a policy on trajectory data (TRL SFTTrainer)")
    p.add_argument("--config", required=True, help="run config YAML (model, data, train sections)")
    p.add_argument("--data", help="trajectories to train on: a dataset folder (from `selfplay data build`, or "
                                   "your own saved with save_to_disk), a folder with trajectories.jsonl, or a "
                                   ".jsonl file with image paths (docs/data.md); built from the config's data "
                                   "section into OUT/data when omitted")
    p.add_argument("--out", required=True, help="output folder: checkpoint/, trainer/ (resume), metrics.jsonl")
    p.add_argument("--init", help="checkpoint to start from; a fresh model from the config's model section when omitted")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a config field")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> None:
    import json
    from pathlib import Path

    from strokes.config_loader import dump
    from strokes.data.build import build, load
    from strokes.data.external import load_trajectories
    from strokes.model.checkpoint_check import check_checkpoint
    from strokes.model.policy import Policy

    from ..config import load_config

    cfg = load_config(args.config, args.set)
    if args.init:
        check_checkpoint(args.init)  # before OUT exists: bad input leaves nothing behind
    policy = Policy.from_pretrained(args.init) if args.init else Policy.build(cfg.model)
    # a processor that tokenizes a fixed canvas (the tiny model's codebook) takes only that size
    dataset = load_trajectories(args.data, getattr(policy.processor, "fixed_side", None)) if args.data else None
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    dump(cfg, out / "config.yaml")
    if dataset is None:
        data_dir = out / "data"
        if not (data_dir / "summary.json").is_file():
            print(f"building {cfg.data.size} base trajectories into {data_dir}")
            build(cfg.data, data_dir)
        dataset = load(data_dir)
    print(f"policy: {policy.num_parameters() / 1e6:.2f}M parameters; {len(dataset)} trajectories")
    from trainer.sft import train

    summary = train(policy, dataset, cfg.train, out)
    print(json.dumps(summary, indent=2, default=float))
    print(f"checkpoint: {out / 'checkpoint'}")
