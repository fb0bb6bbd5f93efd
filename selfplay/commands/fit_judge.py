"""`selfplay fit-judge`: train a judge copy of a checkpoint to answer atomic questions about its own
pictures (selfplay/question_judge.py).

Rolls the checkpoint out in process mode on training-split prompts of the run's GRPO tasks, asks of
every finished picture its prompt's atomic questions and another prompt's questions (with
`--near-misses`, also the same questions of a near miss of it: one object dropped, copied, moved,
recoloured or reshaped, where the world can edit a picture exactly), labels every answer with the
run config's judge (the exact judge for ShapeWorld; a VLM endpoint with `--config` of a GPT-judge
run), and trains a copy of the checkpoint on the answers (SFT, loss on the verdict only). A fifth of
the prompts is held out: their questions measure the copy (ROC AUC, recall and false alarms at its
threshold) and the base it started from. Self-judged rounds then use it with `judge.question_judge:
<out>` (docs/loop.md, "Self-judged rounds on atomic questions", has the command line).

With `--transcribe` the copy learns to read instead (selfplay/question_judge.py, `Transcriber`):
`--rows` pictures the world renders, a share with stray fragments of the checkpoint's image codes,
each with its transcript; no judge is asked and nothing the checkpoint drew is used. Held out: the
last 500 pictures (a tenth of fewer), the share it transcribes exactly.

    <out>/questions/     the labelled training questions (--transcribe: the pictures; kept: a killed fit
                         resumes from them)
    <out>/held_out/      the held-out prompts' labelled questions
    <out>/checkpoint/    the judge copy (save_pretrained), <out>/trainer/ its resumable trainer state
    <out>/judge.json     the checkpoint it was trained from, its threshold, its held-out figures
"""

from __future__ import annotations

import argparse
from pathlib import Path

from .fitting import add_arguments


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("fit-judge",
                       help="train a judge copy of a checkpoint to answer atomic questions about its pictures")
    add_arguments(p, "folder for the judge (its checkpoint, questions and judge.json)",
                  "the answers (its GRPO tasks: the prompts)", prompts=1200, seed=4321)
    p.add_argument("--generations", type=int, default=2, help="pictures per prompt")
    p.add_argument("--epochs", type=float, default=None, help="passes over the questions (default 2; --transcribe: 1)")
    p.add_argument("--lr", type=float, default=None,
                   help="peak learning rate (cosine, 20 warmup steps; default 3e-4, --transcribe: 1e-3)")
    p.add_argument("--near-misses", action="store_true",
                   help="also ask each picture's near miss (one object edited, where the world can edit exactly); "
                        "measured: it raised the held-out AUC and lowered the ranking of a prompt's own pictures")
    p.add_argument("--transcribe", action="store_true",
                   help="train a transcriber instead: it writes what a picture holds, learnt from the world's "
                        "rendered pictures, and the world's rule answers the questions")
    p.add_argument("--rows", type=int, default=80000, help="--transcribe: rendered pictures to learn from")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> None:
    import dataclasses
    import random

    from strokes.errors import InputError
    from strokes.language import says_conflict
    from strokes.model.policy import Policy
    from strokes.trajectory import read_jsonl, write_jsonl

    from ..judging import policy_judge, served_judge
    from ..question_judge import QuestionJudge, question_rows
    from ..questions import question_contexts
    from ..world import make_world
    from .fitting import labelling_config, own_rollouts
    from .sample import quiet_loading

    checkpoint = Path(args.checkpoint)
    args.epochs = args.epochs if args.epochs is not None else 1.0 if args.transcribe else 2.0
    args.lr = args.lr if args.lr is not None else 1e-3 if args.transcribe else 3e-4
    for name in ("generations", "epochs", "lr", "rows"):
        if getattr(args, name) <= 0:
            raise InputError(f"--{name} must be positive, got {getattr(args, name)}")
    if args.transcribe:
        return fit_transcriber(args)
    cfg = labelling_config(args, "a judge copy")
    quiet_loading()
    out = Path(args.out)
    questions, held_out = out / "questions", out / "held_out"
    if not (held_out / "trajectories.jsonl").is_file():
        world = make_world(cfg)
        rng = random.Random(args.seed)
        rolled = own_rollouts(cfg, Policy.from_pretrained(checkpoint), args.prompts, args.seed,
                              tuple(cfg.train.grpo.tasks), args.generations)
        finished = [n for n, t in enumerate(rolled) if t.steps and t.record is not None and "failed" not in t.meta]
        print(f"rolled out {len(rolled)} trajectories on {args.prompts} training-split prompts "
              f"({len(finished)} finished)")
        contexts, split = [], []
        cut = args.prompts - args.prompts // 5  # the last fifth of the prompts is held out
        for n in finished:
            t = rolled[n]
            asked = question_contexts(t)
            edited = world.near_miss(t.final_image, rng) if args.near_misses and world.near_miss else None
            if edited is not None:
                last = dataclasses.replace(t.steps[-1], image=edited, refinements=[])
                asked += question_contexts(dataclasses.replace(t, steps=[*t.steps[:-1], last]))
            asked += question_contexts(dataclasses.replace(t, record=rolled[rng.choice(finished)].record))
            contexts += asked
            split += [n // args.generations >= cut] * len(asked)
        with served_judge(cfg, log=lambda _: None) as judged:
            verdicts = policy_judge(judged.judge, checkpoint, judged.rollout).judge(contexts)
        rows = question_rows(contexts, verdicts)
        kept = [h for h, v in zip(split, verdicts) if v is not None]
        train_rows = [r for r, h in zip(rows, kept) if not h]
        rng.shuffle(train_rows)
        write_jsonl(train_rows, questions)
        write_jsonl([r for r, h in zip(rows, kept) if h], held_out)
        conflicts = sum(says_conflict(r.steps[0].inspection) for r in rows)
        print(f"labelled {len(rows)} questions ({conflicts} answered no, {len(contexts) - len(rows)} unanswered); "
              f"{len(train_rows)} to train on")
    copy, summary = train_copy(args, cfg, questions)
    judge = QuestionJudge(copy, meta={"checkpoint": str(checkpoint), "labelled_by": cfg.judge.kind, "train": summary})
    rows = read_jsonl(held_out)
    judge.meta["held_out"] = held_out_figures(judge, rows)
    judge.meta["held_out_base"] = held_out_figures(QuestionJudge(Policy.from_pretrained(checkpoint)), rows)
    judge.save_meta(out)
    h, b = judge.meta["held_out"], judge.meta["held_out_base"]
    print(f"held out {h['questions']} questions ({h['wrong']} answered no): AUC {h['auc']:.3f} (the checkpoint it "
          f"was trained from: {b['auc']:.3f}), recall {h['recall']:.0%} at {h['false_alarm']:.0%} false alarms "
          f"(threshold {judge.threshold}); written to {out}")


def train_copy(args: argparse.Namespace, cfg, rows: Path):
    """A copy of the checkpoint trained on the rows in `rows` (SFT, loss on the inspection slot only:
    a verdict or a transcript), resumable from `--out`'s trainer state; the copy and its summary."""
    from strokes.data.external import load_trajectories
    from strokes.model.policy import Policy
    from trainer.config import TrainConfig
    from trainer.sft import train

    train_cfg = TrainConfig(lr=args.lr, warmup_steps=20, batch_size=6, max_length=768, epochs=args.epochs,
                            seed=args.seed, num_threads=cfg.train.num_threads, logging_steps=20, save_steps=100)
    copy = Policy.from_pretrained(args.checkpoint)
    summary = train(copy, load_trajectories(rows, getattr(copy.processor, "fixed_side", None)), train_cfg, args.out)
    return copy, {k: summary.get(k) for k in ("steps", "complete", "seconds")}


def fit_transcriber(args: argparse.Namespace) -> None:
    """`--transcribe`: the copy learns to write what the world's rendered pictures hold (module docstring)."""
    from strokes.errors import InputError
    from strokes.model.checkpoint_check import check_checkpoint
    from strokes.model.policy import Policy
    from strokes.trajectory import read_jsonl, write_jsonl

    from ..config import load_config
    from ..question_judge import Transcriber, code_noise, transcription_row
    from ..world import make_world
    from .sample import quiet_loading

    check_checkpoint(Path(args.checkpoint))
    cfg = load_config(args.config, args.set)
    world = make_world(cfg)
    if world.understanding_pictures is None:
        raise InputError(f"--transcribe: the {world.name} world has no pictures with transcripts to learn from "
                         "(ShapeWorld has)")
    if args.rows < 20:
        raise InputError(f"--rows must be at least 20 with --transcribe, got {args.rows}")
    quiet_loading()
    out = Path(args.out)
    pictures, held_out = out / "questions", out / "held_out"
    if not (held_out / "trajectories.jsonl").is_file():
        made = world.understanding_pictures(args.rows, args.seed, code_noise(Policy.from_pretrained(args.checkpoint)))
        rows = [transcription_row(image, text) for image, text in made]
        cut = len(rows) - min(HELD_OUT, len(rows) // 10)
        write_jsonl(rows[:cut], pictures)
        write_jsonl(rows[cut:], held_out)
        print(f"rendered {len(rows)} pictures with their transcripts; {cut} to train on")
    copy, summary = train_copy(args, cfg, pictures)
    judge = Transcriber(copy, world, {"checkpoint": str(args.checkpoint), "train": summary})
    rows = read_jsonl(held_out)
    read = judge.read([r.steps[0].image for r in rows])
    judge.meta["held_out"] = {"pictures": len(rows),
                              "exact": sum(a == r.steps[0].inspection for a, r in zip(read, rows)) / len(rows)}
    judge.save_meta(out)
    print(f"held out {len(rows)} pictures: {judge.meta['held_out']['exact']:.1%} transcribed exactly; written to {out}")


HELD_OUT = 500  # pictures a transcriber is measured on (at most a tenth of them)


def held_out_figures(judge, rows) -> dict:
    """How a judge copy answers labelled questions: ROC AUC of its P(conflict), and its recall and
    false alarms at its threshold."""
    import numpy as np
    from sklearn.metrics import roc_auc_score

    from strokes.language import says_conflict

    from ..question_judge import question_of

    wrong = np.array([says_conflict(r.steps[0].inspection) for r in rows])
    p = judge.p_conflict([question_of(r) for r in rows])
    flagged = p >= judge.threshold
    return {"questions": len(rows), "wrong": int(wrong.sum()),
            "auc": float(roc_auc_score(wrong, p)) if 0 < wrong.sum() < len(rows) else float("nan"),
            "recall": float(flagged[wrong].mean()) if wrong.any() else float("nan"),
            "false_alarm": float(flagged[~wrong].mean()) if (~wrong).any() else float("nan")}
