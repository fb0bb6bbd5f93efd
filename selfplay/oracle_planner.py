"""The external-planner eval mode (paper Table 4): the oracle writes every plan, the policy only
sketches, inspects and refines.

The paper's baseline drives the base model with an external planner: a separate system reads the
prompt and writes each step's instruction and scene description, and the unified model draws what it
is told. Here the planner is exact: for every prompt it makes the clean, additive scene-graph plan the
base data teaches (`TrajectoryMaker.scene_graph` with no detours: one object per step, references
before the objects placed relative to them), and `OraclePlanner` rewrites the policy's own `<ins>` /
`<des>` of step k with the plan's step k (through the engine's `plan_hook`, so nothing is
re-encoded). Like any planner that writes its plan from the prompt alone, it never sees the canvas:
what the model sketches, inspects and refines is the model's own. When the model opens a step past
the end of the plan, the planner has nothing left to say and the model's own plan stands (counted in
`stats["beyond_plan"]`); a model that stops early stops.

`planner_rollout` is the rollout of this mode: the same shards and seeds as the loop's process-mode
rollout (`rollout.make_shards`), in this process, with the hook attached.
"""

from __future__ import annotations

import dataclasses
import json
import random
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

from rollout import Engine
from rollout.shards import label, make_shards
from strokes.data.pipelines import PipelineConfig, TrajectoryMaker
from strokes.errors import InputError
from strokes.model.policy import Policy
from strokes.records import PromptRecord
from strokes.trajectory import write_jsonl

from .config import RunConfig


class OraclePlanner:
    """A `plan_hook(prompt, step, instruction, description)` that answers each step with the exact
    plan for the prompt. `records` are the prompts it may be asked about (looked up by their text);
    the same prompt text always gets the same plan for a given `seed`."""

    def __init__(self, records: Sequence[PromptRecord], seed: int = 0, image_size: int = 64) -> None:
        self.records = {r.text: r for r in records}
        self.seed = seed
        self.maker = TrajectoryMaker(PipelineConfig(detour_prob=0.0), image_size)
        self.plans: dict[str, list[tuple[str, str]]] = {}
        self.stats: Counter = Counter()

    def plan(self, prompt: str) -> list[tuple[str, str]]:
        """(instruction, description) per step for `prompt`."""
        if prompt not in self.plans:
            rec = self.records.get(prompt)
            if rec is None:
                raise InputError(f"planner: no prompt record for {prompt!r}")
            traj = self.maker.scene_graph(rec, random.Random(f"planner:{self.seed}:{prompt}"))
            self.plans[prompt] = [(s.instruction, s.description) for s in traj.steps]
        return self.plans[prompt]

    def __call__(self, prompt: str, step: int, instruction: str, description: str) -> tuple[str, str] | None:
        plan = self.plan(prompt)
        if step > len(plan):
            self.stats["beyond_plan"] += 1
            return None
        self.stats["planned"] += 1
        if plan[step - 1] == (instruction, description):
            self.stats["model_agreed"] += 1
        return plan[step - 1]


def planner_rollout(cfg: RunConfig, checkpoint: Path, records: Sequence[PromptRecord], seed: int, out: Path,
                    samples: int = 1) -> list:
    """Trajectories of the policy at `checkpoint` on `records` (`samples` each) with the oracle as its
    planner, saved to `out/trajectories` (as the loop's `rollout_stage` saves its own) with the
    planner's counts in `out/planner.json`. `cfg` is a run config; its `rollout` section sets sampling
    and caps (the mode is process)."""
    rcfg = dataclasses.replace(cfg.rollout, mode="process", seed=seed)
    engine = Engine(Policy.from_pretrained(checkpoint), rcfg)
    planner = OraclePlanner(records, seed)
    trajs = []
    for shard in make_shards(list(records), samples, rcfg.shard_size, seed):
        done = engine.run(shard.prompts, seed=shard.seed, plan_hook=planner)
        trajs.extend(label(t, shard, n) for n, t in enumerate(done))
    for t in trajs:
        t.meta["mode"] = "planner"
    out.mkdir(parents=True, exist_ok=True)
    write_jsonl(trajs, out / "trajectories")
    (out / "planner.json").write_text(json.dumps(dict(planner.stats), indent=2))
    return trajs
