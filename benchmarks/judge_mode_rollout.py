"""Benchmark: what a judge in the loop costs the rollout engine. The shipped base model rolls out the
same prompts (a round's hard-task training prompts) in process mode (the policy alone), in judge mode
(the exact judge inspects every sketch as it is drawn and writes the inspection and correction) and
in judge mode with 2 redraws per rejected step (`loop.data_mode: judge`, `loop.data_retries: 2`).

Not a test, since a shared machine makes wall-clock assertions flaky; run it by hand on an idle machine:

    python benchmarks/judge_mode_rollout.py [--prompts 128]

Besides wall and CPU seconds it prints the decoder's own counts, which do not depend on the machine:
decode steps (one batched forward each), fed tokens, and rows per step (how full each forward was).
A judge-mode row waits at every sketch until every live row has reached a pause, and the judge's
inspection text is then fed one forced token per step, so judge mode takes more, emptier steps.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import time

os.environ.setdefault("OMP_NUM_THREADS", "1")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prompts", type=int, default=128)
    parser.add_argument("--checkpoint", default="checkpoints/base")
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()

    import torch

    torch.set_num_threads(1)
    from judges import OracleJudge
    from rollout import Engine, RolloutConfig
    from strokes.model.policy import Policy
    from strokes.shapeworld import make_suite
    from strokes.shapeworld.check import is_correct

    tasks = ("counting", "position", "color_attr")  # the tasks the base still misses (the main job's train.grpo.tasks)
    records = make_suite("train", -(-args.prompts // len(tasks)), args.seed, tasks)[: args.prompts]
    policy = Policy.from_pretrained(args.checkpoint)
    base = RolloutConfig(batch_size=64, max_steps=6, max_refines=1, seed=args.seed, device="cpu")
    arms = [("process: the policy alone", base),
            ("judge: the exact judge inspects each sketch", dataclasses.replace(base, mode="judge")),
            ("judge + 2 redraws per rejected step", dataclasses.replace(base, mode="judge", retries=2))]
    print(f"{policy.num_parameters() / 1e6:.2f}M parameters; {len(records)} prompts ({', '.join(tasks)}); "
          f"batch {base.batch_size}; torch threads {torch.get_num_threads()}; cores {os.cpu_count()}", flush=True)
    rows = []
    for name, cfg in arms:
        engine = Engine(policy, cfg, judge=OracleJudge() if cfg.mode == "judge" else None)
        wall, cpu = time.perf_counter(), time.process_time()
        trajs = engine.run(records)
        wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
        right = sum(t.final_image is not None and is_correct(r, t.final_image) for t, r in zip(trajs, records))
        s = engine.decoder.stats
        rows.append((name, len(trajs), right, s["steps"], s["fed_tokens"], s["row_steps"] / max(s["steps"], 1),
                     wall, cpu))
        print(rows[-1], flush=True)
    print("\n| arm | trajectories (right) | decode steps | fed tokens | rows per step | wall s | CPU s | "
          "wall vs process |")
    print("|---|---|---|---|---|---|---|---|")
    for name, n, right, steps, fed, per_step, wall, cpu in rows:
        print(f"| {name} | {n} ({right}) | {steps} | {fed} | {per_step:.1f} | {wall:.1f} | {cpu:.1f} | "
              f"{wall / rows[0][6]:.1f}x |")


if __name__ == "__main__":
    main()
