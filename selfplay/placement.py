"""Where a GRPO round's work lands on a GPU machine: the trainer's GPUs and each rollout actor's.

A GRPO round trains in the loop's process and, with `rollout.actors` > 0 (and `train.grpo.sample_on:
fleet`), samples every step on the run's Ray fleet (`RunConfig.samples_on_fleet`). The trainer keeps the first
`rollout.reserved_gpus` GPUs (a local Ray cluster is started without them, `rollout/cluster.py`);
Ray hands the actors the others, `num_gpus_per_actor` each (fractions pack several actors on one
GPU). `grpo_placement` works that out for a machine of `gpus` GPUs without starting anything, so a
dry run can print it and say what does not fit.
"""

from __future__ import annotations

import math

from .config import RunConfig


def grpo_placement(cfg: RunConfig, gpus: int) -> dict:
    """The layout of `cfg`'s GRPO rounds on a machine with `gpus` GPUs: {"trainer": GPU ids,
    "actors": [GPU ids per actor], "gpus_needed", "gpus_idle", "warnings": [lines]}. GPU ids are
    positions among the machine's visible GPUs; an actor's list is empty when it runs on CPUs."""
    r = cfg.rollout
    cuda = cfg.train.device == "cuda" or r.num_gpus_per_actor > 0
    trainer = list(range(r.reserved_gpus)) if r.reserved_gpus else ([0] if cuda else [])
    per = r.num_gpus_per_actor
    actors: list[list[int]] = []
    if per >= 1:
        whole = math.ceil(per)
        actors = [list(range(r.reserved_gpus + k * whole, r.reserved_gpus + (k + 1) * whole)) for k in range(r.actors)]
    elif per > 0:
        share = int(1 / per)  # actors per GPU
        actors = [[r.reserved_gpus + k // share] for k in range(r.actors)]
    used = sorted({g for ids in actors for g in ids} | set(trainer))
    needed = max(used) + 1 if used else 0
    warnings = []
    if needed > gpus:
        warnings.append(f"warning: this layout needs {needed} GPUs (trainer {len(trainer)}, "
                        f"{r.actors} actors x {per:g}); the machine has {gpus}")
    if cfg.train.distributed == "ray":
        warnings.append(f"note: train.distributed is ray: {cfg.train.workers} Ray Train workers each sample, judge "
                        "and train their share of every GRPO step" + (", the actors serve evaluation" if r.actors else ""))
    elif not r.actors:
        warnings.append("note: rollout.actors is 0: GRPO samples in the trainer's process, on its device")
    elif not cfg.samples_on_fleet:
        warnings.append("note: train.grpo.sample_on is trainer: GRPO samples in the trainer's process, "
                        "the actors serve evaluation")
    elif cuda and not r.reserved_gpus and per > 0:
        warnings.append("warning: rollout.reserved_gpus is 0: the trainer (cuda:0) shares GPU 0 with the first actor")
    return {"trainer": trainer, "actors": actors, "gpus_needed": needed, "gpus_idle": max(gpus - needed, 0),
            "warnings": warnings}
