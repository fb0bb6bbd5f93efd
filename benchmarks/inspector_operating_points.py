"""Benchmark: what an inspector must reach before redrawing flagged steps pays.

The exact judge, degraded on purpose, stands in for an inspector of a given quality: it flags a wrong
visual state with probability `recall` and a right one with probability `false alarms`, independently.
The policy draws in judge mode with `rollout.retries` (a flagged step is forgotten and drawn again;
after the retries, the judge's correction is refined in context), so the table says how the process
score of a fixed checkpoint moves with the inspector's operating point — the target that the model's
own inspection (`selfplay inspect-eval`: recall at 5% / 10% false alarms) must meet. Each point runs
twice: the judge writing its whole inspection and correction (which name what is wrong and what the
prompt still lacks), and the judge writing only the verdict word (`rollout.judge_writes: verdict`),
which is all a thresholded own verdict or Inspect head gives. Not a test (it
takes minutes); run it by hand:

    OMP_NUM_THREADS=1 python benchmarks/inspector_operating_points.py [--checkpoint checkpoints/base]
        [--per-task 50] [--samples 2] [--retries 2] [--points 1:0,0.6:0.1,...]
"""

from __future__ import annotations

import argparse
import random
import tempfile
import time
from pathlib import Path

from judges import OracleJudge
from rollout import Engine, RolloutConfig, write_geneval
from strokes.shapeworld import score_folder
from strokes.model.policy import Policy
from strokes.records import PromptRecord
from strokes.shapeworld import detect, make_suite
from strokes.shapeworld.queries import missing_parts
from strokes.shapeworld.render import detections_to_scene
from strokes.verdict import StepContext, Verdict


class DegradedJudge:
    """The exact judge with its verdicts flipped at random: a wrong state is flagged with probability
    `recall`, a right one with probability `false_alarms`. A missed state reads as aligned (naming
    what the prompt still lacks, as an aligned inspection does); a false alarm is a bare conflict with
    no correction."""

    def __init__(self, recall: float, false_alarms: float, seed: int = 0) -> None:
        self.exact = OracleJudge()
        self.recall, self.false_alarms = recall, false_alarms
        self.rng = random.Random(seed)
        self.flagged = {"wrong": [0, 0], "right": [0, 0]}  # [flagged, seen]

    def judge(self, contexts: list[StepContext]) -> list[Verdict]:
        out = []
        for c, v in zip(contexts, self.exact.judge(contexts)):
            kind = "right" if v.aligned else "wrong"
            flag = self.rng.random() < (self.false_alarms if v.aligned else self.recall)
            self.flagged[kind][0] += flag
            self.flagged[kind][1] += 1
            if flag == (not v.aligned):
                out.append(v)
            elif flag:
                out.append(Verdict(aligned=False, conflicts=[], correction=""))
            else:
                scene = detections_to_scene(detect(c.image), c.image.shape[0])
                missing = missing_parts(PromptRecord.from_json(c.record), scene) if c.record else []
                out.append(Verdict(aligned=True, conflicts=[], correction="", missing=missing))
        return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--checkpoint", default="checkpoints/base")
    ap.add_argument("--per-task", type=int, default=50)
    ap.add_argument("--samples", type=int, default=2)
    ap.add_argument("--seed", type=int, default=1000)
    ap.add_argument("--retries", type=int, default=2)
    ap.add_argument("--points", default="1:0,0.8:0.05,0.6:0.1,0.45:0.05,0.3:0.1",
                    help="recall:false-alarm pairs, comma-separated")
    ap.add_argument("--writes", default="inspection,verdict",
                    help="what the judge writes (rollout.judge_writes), comma-separated: its whole inspection "
                         "and correction, or only the verdict word")
    args = ap.parse_args()
    policy = Policy.from_pretrained(args.checkpoint)
    suite = make_suite("test", args.per_task, args.seed)
    prompts = [r for r in suite for _ in range(args.samples)]
    base = dict(max_steps=6, max_refines=1, batch_size=64, seed=args.seed)
    print("| inspector | judge writes | recall (measured) | false alarms (measured) | process score (%) | seconds |")
    print("|---|---|---|---|---|---|")
    arms = [("own Inspect (process mode)", "–", None)] + [
        (f"exact judge at {r}:{f}", writes, (float(r), float(f)))
        for r, f in (p.split(":") for p in args.points.split(",")) for writes in args.writes.split(",")]
    for name, writes, point in arms:
        t0 = time.time()
        if point is None:
            engine, judge = Engine(policy, RolloutConfig(mode="process", retries=args.retries, **base)), None
        else:
            judge = DegradedJudge(*point, seed=args.seed)
            cfg = RolloutConfig(mode="judge", retries=args.retries, judge_writes=writes, **base)
            engine = Engine(policy, cfg, judge=judge)
        trajectories = engine.run(prompts)
        for k, t in enumerate(trajectories):
            t.meta["index"], t.meta["sample"] = k // args.samples, k % args.samples
        with tempfile.TemporaryDirectory() as tmp:
            write_geneval(trajectories, suite, Path(tmp))
            score = score_folder(Path(tmp))
        rates = ("–", "–") if judge is None else tuple(
            f"{100 * a / max(b, 1):.0f}%" for a, b in (judge.flagged["wrong"], judge.flagged["right"]))
        print(f"| {name} | {writes} | {rates[0]} | {rates[1]} | {100 * score.overall:.1f} ± {100 * score.standard_error():.1f} "
              f"| {time.time() - t0:.0f} |", flush=True)


if __name__ == "__main__":
    main()
