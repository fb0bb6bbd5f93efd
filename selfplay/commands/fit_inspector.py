"""`selfplay fit-inspector`: fit an attention Inspect head on a checkpoint's own labelled sketches.

Rolls the checkpoint out in process mode on training-split prompts (its own sampled verdicts),
labels every visual state with the run config's judge (the exact judge for ShapeWorld; a VLM
endpoint with `--config` of a GPT-judge run), fits the head of `selfplay/inspector.py` and saves it
with its threshold at `--false-alarm` on held-out states. Self-judged rounds then use it with
`judge.inspector: <out>` (configs/shapeworld-self-inspector.yaml); `benchmarks/inspect_head_probe.py
--attention` measures the same head on the validation split and the test suite.

    <out>/inspector.safetensors   the head's weights
    <out>/inspector.json          the checkpoint it reads, its threshold, its held-out AUC and recall
"""

from __future__ import annotations

import argparse
from pathlib import Path

from .fitting import add_arguments


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("fit-inspector", help="fit an attention Inspect head on a checkpoint's own labelled sketches")
    add_arguments(p, "folder for the fitted head", "the states", prompts=1800, seed=7)
    p.add_argument("--false-alarm", type=float, default=0.10, help="false-alarm rate the threshold is chosen for")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> None:
    import torch

    from strokes.errors import InputError
    from strokes.io import atomic_path
    from strokes.model.policy import Policy

    from ..inspect_eval import label_states
    from ..inspector import fit_inspector
    from ..judging import policy_judge, served_judge
    from .fitting import labelling_config, own_rollouts
    from .sample import quiet_loading

    checkpoint = Path(args.checkpoint)
    if not 0 < args.false_alarm < 1:
        raise InputError(f"--false-alarm must be in (0, 1), got {args.false_alarm}")
    cfg = labelling_config(args, "an inspector")
    quiet_loading()
    torch.manual_seed(args.seed)
    policy = Policy.from_pretrained(checkpoint)
    trajectories = own_rollouts(cfg, policy, args.prompts, args.seed)
    print(f"rolled out {len(trajectories)} trajectories on training-split prompts")
    with served_judge(cfg, log=lambda _: None) as judged:
        states, skipped = label_states(trajectories, policy_judge(judged.judge, checkpoint, judged.rollout))
    print(f"labelled {len(states)} visual states ({sum(s.wrong for s in states)} wrong, {skipped} not labelled)")
    try:
        inspector = fit_inspector(policy, str(args.checkpoint), trajectories, states, args.false_alarm, seed=args.seed)
    except ValueError as e:
        raise InputError(f"{checkpoint}: {e}") from None
    with atomic_path(Path(args.out), folder=True) as tmp:
        inspector.save(tmp)
    h = inspector.held_out
    print(f"held out {h['states']} states ({h['wrong']} wrong): AUC {h['auc']:.3f}, recall {h['recall']:.0%} at "
          f"{h['false_alarm']:.0%} false alarms (threshold {inspector.threshold:.3f}); written to {args.out}")
