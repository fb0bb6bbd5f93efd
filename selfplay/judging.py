"""The run's judge over a policy: `judges.make_judge` (the one factory) with, for the self judge,
the policy's own Inspect through the rollout engine, so it inspects exactly as it does in a rollout;
a judge the run serves itself (`served_judge`); and what a GRPO round's judge costs (`JudgeMeter`)."""

from __future__ import annotations

import dataclasses
import json
import os
import pickle
import select
import subprocess
import sys
from collections import Counter
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Iterator

from judges import JudgeConfig, make_judge
from judges.unjudged import judge_stats
from rollout import Engine, RolloutConfig
from strokes.errors import InputError
from strokes.model.policy import Policy, checkpoint_image_side
from strokes.trajectory import Trajectory
from trainer.trl_common import use_cuda

from .inspector import Inspector
from .question_judge import load_judge_copy
from .rewards import ExactCheck, Judged, judge_rollouts
from .self_reading import TrajectoryReader

if TYPE_CHECKING:
    from .config import RunConfig


def policy_judge(cfg: JudgeConfig, checkpoint: str | Path, rollout_cfg: RolloutConfig):
    """The judge `cfg` names; the self judge inspects with the policy at `checkpoint`."""
    if cfg.kind != "self":
        return make_judge(cfg)
    inspect_fn = Engine(Policy.from_pretrained(checkpoint), rollout_cfg).inspect
    return make_judge(cfg, inspect_fn, checkpoint_image_side(checkpoint))


def grpo_judge(cfg: RunConfig, parent: str | Path, world):
    """The judge of a GRPO round over `parent`. The self judge is a frozen copy of the parent that
    reads each rolled-out trajectory whole (`TrajectoryReader`: labels from one forward, no text
    written), on the trainer's device; with `judge.inspector`, a frozen copy of the checkpoint that
    head was fitted on, the head deciding at its own threshold; with `judge.question_judge`, a judge
    copy (`selfplay fit-judge`) answers the finished picture's atomic questions for the final reward,
    or a transcriber copy reads the picture and `world`'s rule answers them (and, reading every
    sketch against its step and prompt, labels the states for the step credit too).
    Any other judge is the one `policy_judge` gives."""
    if cfg.judge.kind != "self":
        return policy_judge(cfg.judge, parent, cfg.rollout)
    graded = cfg.judge.final_reward == "likelihood"
    if cfg.judge.inspector:
        reader = TrajectoryReader.with_inspector(Inspector.load(cfg.judge.inspector), graded)
    else:
        reader = TrajectoryReader(Policy.from_pretrained(parent), cfg.rollout.inspect_threshold, graded)
    if cfg.judge.question_judge:
        reader.questions = load_judge_copy(cfg.judge.question_judge, world)
    if use_cuda(cfg.train):
        reader.policy.model.to("cuda")
        if reader.questions is not None:
            reader.questions.policy.model.to("cuda")
    return reader


@contextmanager
def served_judge(cfg: RunConfig, log: Callable[[str], None] = print) -> Iterator[RunConfig]:
    """`cfg` with its judge reachable. When `judge.serve` names one of our judges, that judge runs
    behind the judge server on a free loopback port for the block, in a process of its own
    (`selfplay/judge_process.py`, as `selfplay judge-serve` would run beside a trainer), and the GPT
    judge of the config yielded points at it: every verdict crosses the OpenAI API as a remote
    endpoint's would, and the server's work (reading each request's images, judging) runs beside the
    client's instead of sharing its interpreter (a GRPO step's judge time a quarter lower than with
    the server on a thread of the run; docs/judges.md). A served self judge is
    `loop.base_checkpoint`'s Inspect, its verdict word decided by its P(conflict) at
    `rollout.inspect_threshold` rather than sampled: asked twice, a judge answers the same."""
    j = cfg.judge
    if not j.serve:
        yield cfg
        return
    inner = dataclasses.replace(j, kind=j.serve, serve="")
    decided = dataclasses.replace(cfg.rollout, inspect="threshold")
    # the child imports this very copy of the project, installed or not
    paths = [str(Path(__file__).resolve().parents[1])] + [p for p in [os.environ.get("PYTHONPATH")] if p]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(paths)}
    proc = subprocess.Popen([sys.executable, "-m", "selfplay.judge_process"], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, env=env)
    try:
        proc.stdin.write(pickle.dumps((inner, str(cfg.loop.base_checkpoint), decided)))
        proc.stdin.flush()
        reply = _message(proc, SERVER_START_S)
        if "base_url" not in reply:
            raise InputError(f"judge.serve: the {j.serve} judge server did not start ({reply['error']})")
        what = f"{j.serve} judge (profile {j.profile}, seed {j.profile_seed})" if j.serve == "vlm" else f"{j.serve} judge"
        log(f"judge: the {what} behind the judge server on {reply['base_url']} (process {proc.pid})")
        try:
            yield dataclasses.replace(cfg, judge=dataclasses.replace(j, base_url=reply["base_url"], model=reply["model"]))
        finally:
            try:
                proc.stdin.write(b"stop\n")
                proc.stdin.flush()
                served = _message(proc, 30.0).get("served", "?")
            except OSError:
                served = "? (its process had exited)"
            log(f"judge server on {reply['base_url']} answered {served} requests")
    finally:
        try:
            proc.stdin.close()
        except OSError:
            pass
        proc.stdout.close()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


SERVER_START_S = 300.0
"""How long a served judge may take to listen (a self judge loads its checkpoint first)."""


def _message(proc: subprocess.Popen, timeout_s: float) -> dict:
    """The served judge's next line on stdout; an "error" when none comes in time or it has exited.
    Waiting on the pipe (not the reader's buffer) is sound because the child writes one line and
    then waits to be asked: nothing is ever left buffered."""
    ready, _, _ = select.select([proc.stdout], [], [], timeout_s)
    line = proc.stdout.readline() if ready else None
    if line:
        return json.loads(line)
    if line is None:
        return {"error": f"nothing said after {timeout_s:.0f} s"}
    return {"error": f"its process exited with code {proc.wait()}"}


class JudgeMeter:
    """What a GRPO round's judge costs and how far it is from the exact judge, step by step.

    Cost: requests and tokens (read from the judge's own counters; an in-process judge sends none),
    verdicts asked, and the seconds spent judging against the seconds spent rolling out. It also
    says when the judge's budget cannot pay for another step, so the round stops after a whole step
    instead of in the middle of one. Agreement: with a `reference` (the world's exact judge, when
    the training judge is another), every visual state and final image the training judge labelled
    is labelled again by the reference, and the two are compared per task: how often they agree,
    the mistakes the training judge missed and the false alarms it raised."""

    def __init__(self, judge: object, cfg: JudgeConfig, reference: object = None,
                 reference_exact: ExactCheck | None = None) -> None:
        self.judge, self.cfg = judge, cfg
        self.reference, self.reference_exact = reference, reference_exact
        self.steps: list[dict] = []
        self.by_task: dict[str, Counter] = {}
        self._seen = self._counters()

    def _counters(self) -> tuple[int, int]:
        stats = judge_stats(self.judge)
        return int(stats.get("requests", 0)), int(stats.get("tokens", 0))

    def step(self, trajectories: list[Trajectory], judged: list[Judged], rollout_s: float, judge_s: float) -> dict:
        """Record one step; its metrics as logged (`judge/requests`, `judge/tokens`, `judge/verdicts`,
        `judge/seconds`, `rollout/seconds`, and with a reference `agreement/states`, `agreement/final`,
        and the shares of final images the training judge and the exact judge call right,
        `agreement/final_judge_right` and `agreement/final_exact_right`: a policy that learns to
        please its judge opens a gap between the two)."""
        now = self._counters()
        requests, tokens = now[0] - self._seen[0], now[1] - self._seen[1]
        self._seen = now
        cost = {"judge/requests": float(requests), "judge/tokens": float(tokens),
                "judge/verdicts": float(sum(j.asked for j in judged)), "judge/seconds": judge_s,
                "rollout/seconds": rollout_s}
        self.steps.append(cost)
        if self.reference is not None:
            counts = self._compare(judged, judge_rollouts(trajectories, self.reference, self.reference_exact))
            for name, total, agree in (("states", "states", "states_agree"), ("final", "finals", "finals_agree"),
                                       ("final_judge_right", "finals", "finals_judge_right"),
                                       ("final_exact_right", "finals", "finals_exact_right")):
                if counts[total]:
                    cost[f"agreement/{name}"] = counts[agree] / counts[total]
        return cost

    def _compare(self, judged: list[Judged], reference: list[Judged]) -> Counter:
        """Per task and in all, states both labelled, how many alike, missed and false alarms; and
        final verdicts both gave and how many alike."""
        step = Counter()
        for mine, ref in zip(judged, reference):
            c = self.by_task.setdefault(mine.task or "-", Counter())
            theirs = {index: wrong for index, wrong, _ in ref.verdicts}
            for index, wrong, _ in mine.verdicts:
                if index in theirs:
                    d = Counter(states=1, states_agree=wrong == theirs[index], missed=theirs[index] and not wrong,
                                false_alarms=wrong and not theirs[index], reference_wrong=theirs[index])
                    c.update(d)
                    step.update(d)
            if mine.final is not None and ref.final is not None and not mine.broken:
                d = Counter(finals=1, finals_agree=mine.final == ref.final, finals_judge_right=mine.final,
                            finals_exact_right=ref.final)
                c.update(d)
                step.update(d)
        return step

    def over_budget(self) -> str | None:
        """Why the next step cannot be paid for (its cost taken as the dearest step so far), or None."""
        if not self.steps:
            return None
        requests, tokens = self._counters()
        need = {k: max(s[f"judge/{k}"] for s in self.steps) for k in ("requests", "tokens")}
        for name, spent, budget in (("requests", requests, self.cfg.budget_requests),
                                    ("tokens", tokens, self.cfg.budget_tokens)):
            if budget and spent + need[name] > budget:
                return (f"judge.budget_{name}: {spent} of {budget} {name} spent after {len(self.steps)} steps, "
                        f"a step takes up to {need[name]:.0f}; the round stops here")
        return None

    def totals(self) -> dict:
        """The round's sums, the judge-to-rollout time ratio and, with a reference, the agreement per
        task (the `judge` entry of the round's training summary)."""
        keys = ("judge/requests", "judge/tokens", "judge/verdicts", "judge/seconds", "rollout/seconds")
        out: dict = {k.replace("/", "_"): sum(s[k] for s in self.steps) for k in keys}
        out["steps"] = len(self.steps)
        out["judge_to_rollout"] = out["judge_seconds"] / out["rollout_seconds"] if out["rollout_seconds"] else None
        if self.reference is not None:
            out["agreement"] = {task: dict(c) for task, c in sorted(self.by_task.items())}
        return out


def cost_line(rnd: int, totals: dict) -> str:
    """The console's line for a GRPO round's judge: what it cost and, against the exact judge, how
    often it agreed."""
    steps = max(1, totals["steps"])
    line = (f"round {rnd}: judge {totals['judge_requests']:.0f} requests, {totals['judge_tokens'] / 1000:.1f}k tokens, "
            f"{totals['judge_verdicts']:.0f} verdicts over {totals['steps']} steps; per step judge "
            f"{totals['judge_seconds'] / steps:.2f}s against rollout {totals['rollout_seconds'] / steps:.2f}s")
    agreement = totals.get("agreement")
    if agreement:
        states = sum(c.get("states", 0) for c in agreement.values())
        agree = sum(c.get("states_agree", 0) for c in agreement.values())
        if states:
            line += f"; agrees with the exact judge on {100 * agree / states:.1f}% of {states} states"
    return line
