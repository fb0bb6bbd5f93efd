"""`selfplay train`: SFT a policy on a dataset of trajectories with TRL."""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("train", help="train a policy on trajectory data (TRL SFTTrainer)")
    p.add_argument("--config", required=True, help="run config YAML (model, data, train sections)")
    p.add_argument("--data", help="dataset folder (from `selfplay data build`); built from the config's "
                                   "data section into OUT/data when omitted")
    p.add_argument("--out", required=True, help="output folder: checkpoint/, trainer/ (resume), metrics.jsonl")
    p.add_argument("--init", help="checkpoint to start from; a fresh model from the config's model section when omitted")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a config field")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> None:
    import json
    from pathlib import Path

    from strokes.config_loader import dump
    from strokes.data.build import build, load
    from strokes.model.checkpoint_check import check_checkpoint
    from strokes.model.policy import Policy

    from ..config import load_config

    cfg = load_config(args.config, args.set)
    if args.init:
        check_checkpoint(args.init)  # before OUT exists: a bad --init leaves nothing behind
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    dump(cfg, out / "config.yaml")
    data_dir = Path(args.data) if args.data else out / "data"
    if not args.data and not (data_dir / "summary.json").is_file():
        print(f"building {cfg.data.size} base trajectories into {data_dir}")
        build(cfg.data, data_dir)
    dataset = load(data_dir)
    policy = Policy.from_pretrained(args.init) if args.init else Policy.build(cfg.model)
    print(f"policy: {policy.num_parameters() / 1e6:.2f}M parameters; {len(dataset)} trajectories")
    from trainer.sft import train

    summary = train(policy, dataset, cfg.train, out)
    print(json.dumps(summary, indent=2, default=float))
    print(f"checkpoint: {out / 'checkpoint'}")
