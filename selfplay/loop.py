"""The self-improvement loop (docs/design.md §1): round after round, resumable at every stage.

    round 0   the base checkpoint (shipped, or trained with --from-scratch) -> checkpoint/
              -> evaluate on the held-out suite -> eval/;  validation split -> validate/
    round r   data/:        GRPO rounds (`train.method: grpo`, the main job): the round's training prompts.
                            SFT rounds: rollouts of the current policy (rollouts/), every step judged,
                            critique traces built and mixed with base-data replay.
              checkpoint/:  train the next policy from the current one (or the base): GRPO rolls out
                            groups of trajectories from the live weights at every step and the judge
                            rewards them; SFT trains on the round's dataset
              eval/, validate/   as round 0
              control/, control_eval/, control_validate/   the same optimizer steps of SFT on base
                            data only, continuing the control of the round the parent came from
              promote/      the new policy becomes current unless its validation score fell by more
                            than `loop.promote_tolerance`

Each stage writes into `<stage>.tmp/` and renames it when complete, then records itself in
`state.json`; a killed run resumes at the first incomplete stage and, with the same seed, makes the
same data and metrics. With `loop.overlap` the stages off the critical path (training -> validation ->
promotion -> the next round's training), the held-out eval and the control arm, run in a second
process beside validation and promotion, never beside training (`side_process.py`); a round is
closed (its scores logged and tracked) when they are all back. The stage bodies are in `stages.py` and `evaluation.py`; the run folder's
layout in `run_dir.py`.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
import time
from functools import partial
from multiprocessing.pool import AsyncResult
from pathlib import Path
from typing import Callable

import torch
from rollout import RolloutFleet
from strokes.config_loader import dump
from strokes.io import atomic_path
from strokes.records import TASKS
from strokes.trajectory import read_jsonl

from .config import RunConfig
from .evaluation import evaluate, validate
from .judging import cost_line, served_judge
from .report import write_report
from .side_process import SideProcess, uses_side_process
from .run_dir import (CHECKPOINT, CONTROL, CONTROL_EVAL, CONTROL_INSPECT_HEAD, CONTROL_VALIDATE, DATA, EVAL,
                      INSPECT_HEAD, PROMOTE, ROLLOUTS, VALIDATE, RunDir, RunState, write_event)
from .stages import (base_stage, control_stage, critique_stage, data_rollouts_stage, head_stage, prompts_stage,
                     train_stage)
from .stats import gap
from .tracking import Tracker

Log = Callable[[str], None]


def run(cfg: RunConfig, run_dir: Path, from_scratch: bool = False, log: Log = print) -> RunState:
    """Run (or resume) every round; returns the final state."""
    run = RunDir(run_dir)
    run.path.mkdir(parents=True, exist_ok=True)
    dump(cfg, run.config)
    with served_judge(cfg, log) as cfg:
        loop = Loop(cfg, run, log)
        try:
            loop.rounds(from_scratch)
        finally:
            if loop.fleet is not None:
                loop.fleet.close()
            if loop.side is not None:
                loop.side.close()
    run.rebuild_metrics()
    write_report(run.path)
    loop.tracker.finish()
    return loop.state


class Loop:
    """One run's rounds: the config, the run folder and its state, the tracker, the rollout actors
    (`rollout.actors` > 0: started at the first rollout, they reload each round's checkpoint in place
    instead of restarting; None rolls out in this process) and the side process (`loop.overlap`)."""

    def __init__(self, cfg: RunConfig, run: RunDir, log: Log) -> None:
        self.cfg, self.run, self.log = cfg, run, log
        self.state = run.state()
        self.tracker = Tracker(run, cfg.tracking, cfg)
        self.fleet = RolloutFleet(cfg.rollout) if cfg.rollout.actors else None
        self.side = SideProcess() if uses_side_process(cfg) else None
        self.threads = torch.get_num_threads()  # training's; beside the side process this one takes 1
        self.queue: list[Job] = []  # stages off the critical path, not started yet
        self.running: tuple[Job, AsyncResult] | None = None  # the one on the side process
        self.open_rounds: list[int] = []  # rounds whose own stages are queued or done, not yet closed

    def stage(self, rnd: int, name: str, fn: Callable[[Path], object]) -> Path:
        """Run `fn(tmp)` unless the stage is complete, then rename tmp into place and record it. A
        line when it starts (what it does, how much) and when it ends, so a long stage is never silent.
        With a side process, training first waits for it to finish (a second process beside torch's
        threads slowed a GRPO step 1.8x) and takes every thread; any other stage runs beside it on one."""
        final = self.run.stage(rnd, name)
        if self.state.is_done(rnd, name) and final.exists():
            return final
        if self.side is not None:
            training = name == CHECKPOINT
            if training:
                self.drain()
            torch.set_num_threads(self.threads if training else 1)
            self.pump()
        self.announce(rnd, name)
        seconds = run_stage(final, rnd, name, fn)
        self.state.mark(rnd, name)
        self.log(f"round {rnd}: {name} done in {seconds:.0f}s")
        return final

    def announce(self, rnd: int, name: str, where: str = "") -> None:
        about = describe(self.cfg, rnd, name)
        self.log(f"round {rnd}: {name} ..." + (f" {about}" if about else "") + where)

    def later(self, rnd: int, name: str, fn: Callable[[Path], object], after: tuple[str, ...] = ()) -> Path:
        """A stage off the critical path: with a side process, queued to run beside the loop's next
        stages once the stages `after` (of the same round) are done (`fn` must pickle: a `partial` of
        a module-level function); without one, run now. Returns its folder (to be)."""
        if self.side is None:
            return self.stage(rnd, name, fn)
        final = self.run.stage(rnd, name)
        if not (self.state.is_done(rnd, name) and final.exists()):
            self.queue.append(Job(rnd, name, fn, after))
        return final

    def ready(self) -> Job | None:
        """The first queued stage whose prerequisites are done, taken off the queue."""
        for job in self.queue:
            if all(self.state.is_done(job.rnd, name) for name in job.after):
                self.queue.remove(job)
                return job
        return None

    def pump(self) -> None:
        """Collect the side process's finished stage, hand it the next ready one, close whole rounds."""
        if self.running is not None and self.running[1].ready():
            job, result = self.running
            self.running = None
            seconds = result.get()  # a stage that failed there raises its error here
            self.state.mark(job.rnd, job.name)
            self.log(f"round {job.rnd}: {job.name} done in {seconds:.0f}s (side process)")
        if self.running is None and (job := self.ready()) is not None:
            self.announce(job.rnd, job.name, " (side process)")
            self.running = job, self.side.submit(run_stage, self.run.stage(job.rnd, job.name), job.rnd, job.name,
                                                 job.fn)
        busy = {job.rnd for job in self.queue} | ({self.running[0].rnd} if self.running else set())
        while self.open_rounds and self.open_rounds[0] not in busy:
            self.close_round(self.open_rounds.pop(0))

    def drain(self) -> None:
        """Finish every queued stage: the side process takes one at a time and this process, on one
        thread, takes the next ready one meanwhile (a stage's prerequisites first)."""
        while True:
            self.pump()
            if self.running is None and not self.queue:
                return
            if self.running is not None and (job := self.ready()) is not None:
                self.stage(job.rnd, job.name, job.fn)
            elif self.running is not None:
                self.running[1].wait(1.0)
            else:  # nothing running, nothing ready: a prerequisite can never come
                raise RuntimeError(f"stages {[(j.rnd, j.name) for j in self.queue]} wait for stages never queued")

    def close_round(self, rnd: int) -> None:
        """Round `rnd`'s held-out scores (and its control's beside them) on the console and in wandb."""
        self.run.rebuild_metrics()
        self.log(f"round {rnd}: " + ", ".join(f"{mode} {100 * s['overall']:.1f} ± {100 * s['overall_se']:.1f}"
                                              for mode, s in self.run.scores(rnd, EVAL).items()))
        if control := self.run.scores(rnd, CONTROL_EVAL):
            self.log(control_line(rnd, self.run.scores(rnd, EVAL), control))
        self.tracker.sync(rnd)

    def rounds(self, from_scratch: bool) -> None:
        cfg = self.cfg
        base = self.stage(0, CHECKPOINT, lambda tmp: base_stage(cfg, from_scratch, tmp)) / "checkpoint"
        evaluated = self.eval_round(0, base)
        self.open_rounds.append(0)
        self.pump()
        if self.state.policy is None:
            self.state.policy = str(evaluated)
            self.state.save()
        for rnd in range(1, cfg.loop.rounds + 1):
            self.round(rnd, base)
            self.open_rounds.append(rnd)
            self.pump()
        self.drain()

    def round(self, rnd: int, base: Path) -> None:
        """Round `rnd`: data, training, evaluation, the control arm, promotion."""
        cfg = self.cfg
        current = Path(self.state.policy)  # the policy this round samples from and judges with
        parent = current if cfg.loop.train_from == "current" else base
        grpo = cfg.train.round_method(rnd) == "grpo"
        if grpo:  # GRPO rolls out inside training, on each step's weights
            data = self.stage(rnd, DATA, lambda tmp: prompts_stage(cfg, rnd, tmp))
        else:
            rollouts = self.stage(rnd, ROLLOUTS, lambda tmp: data_rollouts_stage(cfg, rnd, current, tmp, self.fleet))
            data = self.stage(rnd, DATA, lambda tmp: critique_stage(
                cfg, rnd, read_jsonl(rollouts / "trajectories"), current, tmp))
        if self.fleet is not None and cfg.train.distributed == "ray":
            self.fleet.close()  # Ray holds a live actor's GPUs: free them for training; the next rollout restarts it
        # GRPO samples each step's rollouts on the fleet (its actors get the step's weights) or here
        on_fleet = grpo and cfg.samples_on_fleet
        trained = self.stage(rnd, CHECKPOINT, lambda tmp: train_stage(cfg, parent, data / "dataset", tmp, rnd, "policy",
                                                                        fleet=self.fleet if on_fleet else None))
        summary = json.loads((trained / "train_summary.json").read_text())
        if grpo and summary.get("judge"):
            self.log(cost_line(rnd, summary["judge"]))
        if cfg.loop.control:  # queued first: the longest chain off the critical path
            self.control(rnd, base, json.loads((data / "summary.json").read_text()), summary["steps"])
        evaluated = self.eval_round(rnd, trained / "checkpoint")
        if not self.state.is_done(rnd, PROMOTE):
            self.promote(rnd, evaluated)

    def eval_round(self, rnd: int, checkpoint: Path) -> Path:
        """Evaluate round `rnd`'s policy (with its Inspect head when enabled); returns the checkpoint
        evaluated, the one promotion hands on."""
        checkpoint = self.with_head(rnd, checkpoint, "policy")
        self.later(rnd, EVAL, partial(evaluate, self.cfg, checkpoint, rnd=rnd, fleet=self.fleet))
        self.stage(rnd, VALIDATE, lambda tmp: validate(self.cfg, checkpoint, tmp, rnd, fleet=self.fleet, log=self.log))
        return checkpoint

    def with_head(self, rnd: int, checkpoint: Path, arm: str) -> Path:
        """The checkpoint an arm is evaluated and promoted as: with its own Inspect head when
        `inspect_head.enabled`, else as trained (the control's head is fitted beside)."""
        if not self.cfg.inspect_head.enabled:
            return checkpoint
        name = INSPECT_HEAD if arm == "policy" else CONTROL_INSPECT_HEAD
        fit = partial(head_stage, self.cfg, checkpoint, rnd=rnd, arm=arm, fleet=self.fleet)
        if arm == "policy":
            return self.stage(rnd, name, fit) / "checkpoint"
        return self.later(rnd, name, fit, after=(CONTROL,)) / "checkpoint"

    def control(self, rnd: int, base: Path, data_summary: dict, steps: int) -> None:
        """The control arm of round `rnd`: the same steps on base data, from the control twin of the
        round's parent (the control checkpoint of the round the parent came from), so that round r and
        its control have trained the same number of steps in all and differ only in what they saw."""
        cfg = self.cfg
        parent_round = self.state.policy_round if cfg.loop.train_from == "current" else 0
        twin = base if parent_round == 0 else self.run.stage(parent_round, CONTROL) / "checkpoint"
        train_cfg, log = cfg, self.log
        if self.side is not None:  # one thread wherever it runs; its lines in metrics.jsonl (no wandb run there)
            train_cfg = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, num_threads=1, report_to="none"))
            log = print  # the side process's own console line
        trained = self.later(rnd, CONTROL, partial(control_stage, train_cfg, rnd, twin, data_summary, steps))
        control = self.with_head(rnd, trained / "checkpoint", "control")
        ready = (CONTROL, CONTROL_INSPECT_HEAD) if cfg.inspect_head.enabled else (CONTROL,)
        self.later(rnd, CONTROL_EVAL, partial(evaluate, cfg, control, rnd=rnd, arm="control", fleet=self.fleet),
                   after=ready)
        self.later(rnd, CONTROL_VALIDATE, partial(validate, cfg, control, rnd=rnd, arm="control", fleet=self.fleet,
                                                  log=log), after=ready)

    def promote(self, rnd: int, checkpoint: Path) -> None:
        """Make round `rnd`'s policy current unless its validation score (never the test suite's)
        fell more than `loop.promote_tolerance` below the current policy's."""
        def overall(r: int) -> float:
            return self.run.scores(r, VALIDATE)["process"]["overall"]

        current_round = self.state.policy_round
        new, old = overall(rnd), overall(current_round)
        promoted = new >= old - self.cfg.loop.promote_tolerance
        decision = {"event": "promote", "round": rnd, "promoted": promoted, "new": new, "current": old,
                    "current_round": current_round, "tolerance": self.cfg.loop.promote_tolerance}
        folder = self.run.stage(rnd, PROMOTE)
        folder.mkdir(exist_ok=True)
        write_event(folder, decision, first=True)
        self.state.promotions[str(rnd)] = decision
        if promoted:
            self.state.policy = str(checkpoint)
            self.state.policy_round = rnd
        self.state.mark(rnd, PROMOTE)
        self.log(f"round {rnd}: {'promoted' if promoted else 'kept round ' + str(current_round)} "
                 f"(validation process {100 * new:.1f} vs {100 * old:.1f})")


def run_stage(final: Path, rnd: int, name: str, fn: Callable[[Path], object]) -> float:
    """A stage's body: `fn` writes into `<final>.tmp`, renamed onto `final` when complete, with the
    stage's `stage` event; returns its seconds. Runs in the loop's process or the side process."""
    shutil.rmtree(final, ignore_errors=True)  # a copy no stage record vouches for (killed before marking)
    t0 = time.time()
    with atomic_path(final, folder=True) as tmp:
        fn(tmp)
        write_event(tmp, {"event": "stage", "round": rnd, "stage": name, "seconds": round(time.time() - t0, 2)})
    return time.time() - t0


@dataclasses.dataclass
class Job:
    """A stage queued for the side process: round, name, body, and the stages of its round it needs."""

    rnd: int
    name: str
    fn: Callable[[Path], object]
    after: tuple[str, ...] = ()


UPDATES = {"signed": "", "positive": "; the SFT loss on the rollouts that beat their group, by advantage",
           "accepted": "; the SFT loss on the rollouts the judge accepts"}
"""What a GRPO round's start line adds for each `train.grpo.advantages`: the last two are SFT losses."""


def describe(cfg: RunConfig, rnd: int, name: str) -> str:
    """What stage `name` of round `rnd` does and how much work it is, for its start line."""
    loop, g = cfg.loop, cfg.train.grpo
    evals = len(TASKS) * loop.eval_per_task * loop.eval_samples
    validation = len(TASKS) * loop.validation_per_task * (2 if cfg.rollout.retries else 1)
    steps = f"{cfg.train.max_steps} steps" if cfg.train.max_steps > 0 else f"{cfg.train.epochs:g} epoch(s)"
    grpo = rnd > 0 and cfg.train.round_method(rnd) == "grpo"
    judged = f" ({cfg.judge.kind} judge, {loop.data_retries} redraw(s) per step)" if loop.data_mode == "judge" else ""
    return {
        CHECKPOINT: "the base policy" if rnd == 0 else
        f"GRPO ({g.steps} steps of {g.prompts_per_step} prompts x {g.generations} trajectories, "
        f"{cfg.judge.kind} judge rewards{UPDATES[g.advantages]})" if grpo else f"SFT on the round's data ({steps})",
        ROLLOUTS: f"{loop.prompts_per_round * loop.samples_per_prompt} {loop.data_mode}-mode rollouts on training "
                  f"prompts{judged}",
        DATA: f"{g.prompts} training prompts for GRPO" if grpo else
        f"{cfg.judge.kind} judge on every step -> "
        f"{'critique traces' if cfg.critique.error_traces else 'the rollouts it finds right'} + base-data replay",
        INSPECT_HEAD: f"Inspect head fitted on {cfg.inspect_head.prompts} rollouts' own sketches",
        EVAL: f"{evals} rollouts per mode ({', '.join(loop.eval_modes)}) on the held-out suite"
              f" + {len(loop.strip_prompts)} strip(s)",
        VALIDATE: f"{validation} process-mode rollouts on the validation split",
        CONTROL: "control arm: SFT on base data only (the policy's step count)",
        CONTROL_INSPECT_HEAD: f"control's Inspect head on {cfg.inspect_head.prompts} rollouts",
        CONTROL_EVAL: f"control: {evals} rollouts per mode on the held-out suite",
        CONTROL_VALIDATE: f"control: {validation} process-mode rollouts on the validation split",
    }.get(name, "")


def control_line(rnd: int, policy: dict, control: dict) -> str:
    """The control's held-out scores beside the policy's, with the gap (points ± SE): whether the
    round's training beat the same steps on base data."""
    parts = []
    for mode in (m for m in policy if m in control):
        d, se = gap(policy[mode], control[mode])
        parts.append(f"{mode} policy {100 * policy[mode]['overall']:.1f} vs control {100 * control[mode]['overall']:.1f} "
                     f"(gap {100 * d:+.1f} ± {100 * se:.1f})")
    return f"round {rnd}: " + ", ".join(parts)
