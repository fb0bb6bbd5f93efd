"""`selfplay sample`: one prompt through a checkpoint, printed step by step, with its image strip.

`--interactive` stops after each plan (<ins>, <des>) and lets a person keep it or rewrite it before
the model sketches it; the rewritten plan replaces the model's in the context (nothing re-encoded).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from rollout.config import RolloutConfig
from strokes.trajectory import MODES

# The modes a policy samples in alone (judge mode needs a judge), by their command-line spellings.
CLI_MODES = {spelling: m for m in MODES if m != "judge" for spelling in {m, m.replace("_", "-")}}

# The sampling flags: the `RolloutConfig` field each sets, its type and help (defaults are the config's).
SAMPLING_FLAGS = {"seed": (int, "sampling seed"),
                  "temperature": (float, "0 is greedy; below 1 collapses images"),
                  "top_k": (int, "sample among the k most likely tokens (0: off)"),
                  "top_p": (float, "nucleus sampling mass (1: off)"),
                  "max_steps": (int, "cap on plan-sketch-inspect steps"),
                  "max_refines": (int, "cap on refinements per step"),
                  "batch_size": (int, "rows decoded together"),
                  "device": (str, "auto, cpu, cuda, cuda:1, ...")}


def add_sampling_args(p: argparse.ArgumentParser) -> None:
    """Sampling flags shared by `sample` and `eval`, with `RolloutConfig`'s defaults."""
    defaults = RolloutConfig()
    for name, (kind, what) in SAMPLING_FLAGS.items():
        p.add_argument("--" + name.replace("_", "-"), type=kind, default=getattr(defaults, name), help=what)


def config_from_args(args: argparse.Namespace, **extra) -> RolloutConfig:
    fields = {name: getattr(args, name) for name in SAMPLING_FLAGS}
    check_device(args.device)
    return RolloutConfig(**{**fields, "mode": CLI_MODES[args.mode], **extra}).validate()


def check_device(device: str, flag: str = "--device") -> None:
    """Refuse a device this torch cannot use in one line (docs/failure_behaviour.md), before any
    model loads: `cuda` on a CPU-only build used to end in torch's 31-line traceback."""
    import torch

    from strokes.errors import InputError

    if device == "auto":
        return
    try:
        kind = torch.device(device)
    except RuntimeError:
        raise InputError(f"{flag} {device}: not a device (auto, cpu, cuda, cuda:1, ...)") from None
    if kind.type == "cuda":
        if not torch.cuda.is_available():
            build = f"built for CUDA {torch.version.cuda}, but sees no GPU" if torch.version.cuda else "a CPU-only build"
            raise InputError(f"{flag} {device}: this torch ({torch.__version__}) has no CUDA device ({build}); "
                             "use --device cpu or auto")
        if kind.index is not None and kind.index >= torch.cuda.device_count():
            raise InputError(f"{flag} {device}: only {torch.cuda.device_count()} CUDA device(s) here")
    elif kind.type != "cpu":
        raise InputError(f"{flag} {device}: only cpu and cuda devices are supported")


def quiet_loading() -> None:
    """No weight-loading progress bars: a command's stderr is for its one-line errors."""
    from transformers.utils import logging

    logging.disable_progress_bar()


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("sample", help="sample one trajectory for a prompt and write its image strip")
    p.add_argument("checkpoint", help="policy folder (save_pretrained)")
    p.add_argument("prompt", help='e.g. "a red circle left of a blue square"')
    p.add_argument("--out", default="out/strip.png", help="image strip: every visual state side by side "
                                                           "(folders are made)")
    p.add_argument("--interactive", action="store_true", help="accept or rewrite each plan before its sketch")
    p.add_argument("--mode", choices=sorted(CLI_MODES), default="process", help="how the policy draws")
    p.add_argument("--scale", type=int, default=4, help="upscaling of the strip")
    add_sampling_args(p)
    p.set_defaults(func=run)


def _unknown_words(processor, text: str) -> list[str]:
    """Words of `text` outside the model's text vocabulary (or a note that there are none at all)."""
    words = [w for w, _ in processor.tokenizer.backend_tokenizer.pre_tokenizer.pre_tokenize_str(text)]
    if not words:
        return ["(no words)"]
    known = set(processor.text_ids)
    return [w for w in words if processor.tokenizer.convert_tokens_to_ids(w) not in known]


def in_vocabulary(processor, text: str) -> tuple[str, list[str]]:
    """`text` as the model can read it, and the words it still does not know. A model whose
    vocabulary is lower case (the tiny one) reads "Two red squares" as "two red squares", instead of
    refusing the capital letter."""
    bad = _unknown_words(processor, text)
    if bad and text != text.lower() and not _unknown_words(processor, text.lower()):
        return text.lower(), []
    return text, bad


def _ask_plan(processor, prompt: str, step: int, ins: str, des: str):
    """The interactive plan hook: Enter keeps a part, a line rewrites it; end of input keeps all."""
    print(f"\nstep {step} plan\n  <ins> {ins}\n  <des> {des}", flush=True)
    answer = []
    for part, current in (("instruction", ins), ("description", des)):
        while True:
            try:
                line = input(f"{part} [Enter keeps it]: ").strip()
            except EOFError:
                print()
                return None if not answer else (answer[0], des)
            if not line:
                answer.append(current)
                break
            line, bad = in_vocabulary(processor, line)
            if bad:
                print(f"  unknown words: {', '.join(bad)}; try again", flush=True)
                continue
            answer.append(line)
            break
    return tuple(answer)


def run(args: argparse.Namespace) -> None:
    from rollout import Engine
    from rollout.outputs import save_png_atomic
    from strokes.errors import InputError
    from strokes.model.policy import Policy
    from strokes.shapeworld import record_from_text

    from ..visualize import describe, strip_image

    if args.scale < 1:
        raise InputError(f"--scale must be at least 1, got {args.scale}")
    cfg = config_from_args(args, batch_size=1)
    if args.interactive and cfg.mode != "process":
        raise InputError("--interactive reviews plans, so it needs --mode process")
    quiet_loading()
    policy = Policy.from_pretrained(args.checkpoint)
    prompt, bad = in_vocabulary(policy.processor, args.prompt)
    if bad:
        raise InputError(f"prompt: words the model does not know: {', '.join(bad)}")
    engine = Engine(policy, cfg)
    hook = None
    if args.interactive:
        def hook(prompt: str, step: int, ins: str, des: str):
            return _ask_plan(policy.processor, prompt, step, ins, des)
    record = record_from_text(prompt)  # the same prompt text, and the exact judge can check the result
    traj = engine.run([record or prompt], plan_hook=hook)[0]
    print(describe(traj, header=False))
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    path = save_png_atomic(strip_image(traj, args.scale), args.out)
    print(f"wrote {path}")
    print(verdict_lines(traj))
    sys.stdout.flush()


def verdict_lines(traj) -> str:
    """How the sample ended: whether the final image satisfies the prompt by the exact judge, and
    which steps the model's own inspection flagged."""
    from ..visualize import flagged_steps
    from ..world.shapeworld import final_conflicts

    conflicts = final_conflicts(traj)
    if conflicts is None:
        verdict = "unknown (the prompt fits none of ShapeWorld's templates, so the exact judge cannot check it)"
    else:
        verdict = "yes" if not conflicts else "no: " + "; ".join(conflicts)
    steps = flagged_steps(traj)
    return (f"final image satisfies the prompt (exact judge): {verdict}\n"
            f"steps the model flagged: {', '.join(map(str, steps)) if steps else 'none'}")
