"""`selfplay inspect-eval`: how well a checkpoint's own inspection sees its own mistakes.

Rolls the policy out in process mode on the validation split (training-split prompts, never the test
suite), labels every visual state it drew with the exact judge and prints the table of
`selfplay/inspect_eval.py`: ROC AUC of the model's P(conflict), recall at 5% and 10% false alarms
and the thresholds that give them (for `rollout.inspect: threshold`), by error kind and task. With
`--inspector DIR` the same rollouts' states are scored by that attention head (`selfplay
fit-inspector`) or, from a transcriber's folder (`selfplay fit-judge --transcribe`), by its reading of
each sketch held against the step's description and the prompt, instead of the verdict the model wrote.

    <out>/process/          the trajectories and their GenEval layout
    <out>/scores.json       the validation score
    <out>/inspection.json   the table (and how many trajectories could not be scored)
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("inspect-eval", help="ROC AUC of a checkpoint's own inspection on its own sketches")
    p.add_argument("checkpoint", help="policy folder (save_pretrained)")
    p.add_argument("--config", default=None, help="run config whose rollout and loop.validation_* settings to use "
                                                  "(e.g. RUN/config.yaml); default: the built-in defaults")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a config field")
    p.add_argument("--per-task", type=int, default=None, help="validation records per task (loop.validation_per_task)")
    p.add_argument("--out", default=None, help="output folder (default: inspect-eval-<checkpoint folder name>)")
    p.add_argument("--inspector", default=None, help="score an attention head's P(conflict) (selfplay fit-inspector's "
                                                     "folder) or a transcriber's reading (selfplay fit-judge "
                                                     "--transcribe's folder) instead of the model's verdict word")
    p.set_defaults(func=run)


def state_scorer(folder: str, world):
    """What `--inspector` names: an attention head's folder or a transcriber's; a question-answering
    judge copy (it answers questions about finished pictures, not states) is refused in one line."""
    from strokes.errors import InputError

    from ..inspector import Inspector
    from ..question_judge import META, Transcriber, load_judge_copy

    if not (Path(folder) / META).is_file():
        return Inspector.load(folder)
    copy = load_judge_copy(folder, world)
    if not isinstance(copy, Transcriber):
        raise InputError(f"{folder}: a question-answering judge copy answers questions about finished pictures; "
                         f"--inspector takes an attention head (selfplay fit-inspector) or a transcriber "
                         f"(selfplay fit-judge --transcribe)")
    return copy


def run(args: argparse.Namespace) -> None:
    import dataclasses

    from strokes.errors import InputError
    from strokes.io import atomic_path
    from strokes.model.checkpoint_check import check_checkpoint

    from ..config import load_config
    from ..evaluation import validate
    from ..inspect_eval import format_table
    from ..inspector import Inspector
    from ..judging import served_judge
    from ..run_dir import read_scores
    from ..world import make_world
    from .sample import quiet_loading

    checkpoint = Path(args.checkpoint)
    check_checkpoint(checkpoint)
    cfg = load_config(args.config, args.set)
    if args.per_task is not None:
        if args.per_task < 1:
            raise InputError(f"--per-task must be at least 1, got {args.per_task}")
        cfg = dataclasses.replace(cfg, loop=dataclasses.replace(cfg.loop, validation_per_task=args.per_task))
    inspector = state_scorer(args.inspector, make_world(cfg)) if args.inspector else None
    quiet_loading()
    out = Path(args.out or f"inspect-eval-{checkpoint.resolve().name}")
    with atomic_path(out, folder=True) as tmp, served_judge(cfg, log=lambda _: None) as judged:
        table = validate(judged, checkpoint, tmp, 0, log=lambda _: None, inspector=inspector)
    score = read_scores(out)["process"]
    skipped = json.loads((out / "inspection.json").read_text())["skipped"]
    if isinstance(inspector, Inspector):
        print(f"inspection by the attention head in {args.inspector} (reading {inspector.checkpoint}; "
              f"its threshold {inspector.threshold:.3f})")
    elif inspector is not None:
        print(f"inspection by the transcriber in {args.inspector}: each sketch read, held against its step's "
              f"description and the prompt (P(conflict) 0 or 1)")
    print(format_table(table))
    print(f"validation process {100 * score['overall']:.1f} ± {100 * score['overall_se']:.1f}; "
          f"{skipped} trajectories not scored; written to {out}")
