"""Benchmark: a GRPO step's judge time against its rollout time, with the judge served on loopback
(issue 26 item 3). Not a test (wall-clock); run it by hand:

    OMP_NUM_THREADS=1 python benchmarks/judge_step_cost.py [--config configs/shapeworld-vlm.yaml] [--steps 3]

Each step is what a GRPO step of the config does before the update: the base policy rolls out
`prompts_per_step` x `generations` trajectories, and the config's judge (here the stand-in VLM
behind the judge server on 127.0.0.1, reached through the `openai` client with `judge.concurrency`
requests in flight) labels every visual state and answers the final image's questions, the exact
judge labelling the same rollouts again for the agreement. Prints one row per step and the ratio.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="configs/shapeworld-vlm.yaml")
    parser.add_argument("--steps", type=int, default=3)
    args = parser.parse_args()

    import torch

    from rollout import Engine
    from selfplay.config import load_config
    from selfplay.evaluation import sampled_verdicts
    from selfplay.grpo import grpo_prompts, make_sampler
    from selfplay.judging import JudgeMeter, policy_judge, served_judge
    from selfplay.world import make_world
    from strokes.model.policy import Policy

    torch.set_num_threads(1)
    cfg = load_config(args.config)
    g = cfg.train.grpo
    world = make_world(cfg)
    engine = Engine(Policy.from_pretrained(Path(cfg.loop.base_checkpoint)),
                    dataclasses.replace(sampled_verdicts(cfg.rollout), mode="process", actors=0))
    prompts = grpo_prompts(cfg, 1)
    with served_judge(cfg, log=lambda line: None) as served:
        judge = policy_judge(served.judge, cfg.loop.base_checkpoint, cfg.rollout)
        meter = JudgeMeter(judge, served.judge, world.label_judge(), world.is_correct)
        sample = make_sampler(engine, judge, meter=meter, questions=served.judge.asks_questions)
        per_step = g.prompts_per_step
        print(f"{args.config}: {per_step} prompts x {g.generations} per step, judge {served.judge.kind}"
              f"{' (served ' + served.judge.serve + ')' if served.judge.serve else ''}, concurrency "
              f"{served.judge.concurrency}, final reward {'questions' if served.judge.asks_questions else 'holistic'}")
        print(f"{'step':>4} {'rollout s':>10} {'judge s':>8} {'ratio':>6} {'requests':>9} {'tokens':>8} {'agree %':>8}")
        for step in range(args.steps):
            batch = [p for p in prompts[step * per_step: (step + 1) * per_step] for _ in range(g.generations)]
            cost = sample(batch, step)["metrics"]
            print(f"{step + 1:4d} {cost['rollout/seconds']:10.1f} {cost['judge/seconds']:8.2f} "
                  f"{cost['judge/seconds'] / cost['rollout/seconds']:6.3f} {cost['judge/requests']:9.0f} "
                  f"{cost['judge/tokens']:8.0f} {100 * cost.get('agreement/states', float('nan')):8.1f}")
    t = meter.totals()
    print(f"total: judge {t['judge_seconds']:.1f} s against rollout {t['rollout_seconds']:.1f} s "
          f"(ratio {t['judge_to_rollout']:.3f}); {t['judge_requests']:.0f} requests, {t['judge_tokens']:.0f} tokens")
    print(json.dumps({k: v for k, v in t.items() if k != "agreement"}))


if __name__ == "__main__":
    main()
