"""The side process: stages off the loop's critical path run in a second process, beside validation.

A round's critical path is training -> validation -> promotion -> the next round's training. The
held-out evaluation and the control arm (its training, evaluation and validation) feed only the
report, so with `loop.overlap` they run here, one torch thread, while the loop's process validates,
promotes and prepares the next round on one thread too; never while it trains (a busy process beside
a two-thread GRPO step made it 1.8x slower, docs/loop.md "Two processes").

The loop hands the worker one stage at a time (`selfplay/loop.py` decides which and when). It is
spawned, not forked (torch and Ray threads do not survive a fork), and exits when the loop's process
dies, so a killed run leaves no orphan writing into the run folder; the loop alone writes
`state.json`, marking a stage done only when its result comes back.
"""

from __future__ import annotations

import multiprocessing
import os
import threading
import time
from multiprocessing.pool import AsyncResult
from typing import TYPE_CHECKING, Any, Callable

if TYPE_CHECKING:
    from .config import RunConfig


def uses_side_process(cfg: RunConfig) -> bool:
    """`loop.overlap` on one machine: with rollout actors or Ray Train workers the work is spread
    already, and the side process could not share their Ray cluster."""
    return cfg.loop.overlap and not cfg.rollout.actors and cfg.train.distributed != "ray"


def _start(threads: int, parent: int) -> None:
    """Worker initializer: `threads` torch threads, no per-step lines (they would interleave with
    the main process's), and an exit as soon as `parent` is gone."""
    import torch

    from strokes import console

    torch.set_num_threads(threads)
    console.set_quiet(True)
    console.hush_libraries()
    threading.Thread(target=_exit_with, args=(parent,), daemon=True).start()


def _exit_with(parent: int) -> None:
    """Poll the parent's pid: a killed parent re-parents this process, which must then stop writing
    into a run folder a resumed run is about to redo."""
    while os.getppid() == parent:
        time.sleep(0.5)
    os._exit(1)


class SideProcess:
    """One spawned worker process with `threads` torch threads; `submit` queues a call on it."""

    def __init__(self, threads: int = 1) -> None:
        context = multiprocessing.get_context("spawn")
        self.pool = context.Pool(1, initializer=_start, initargs=(threads, os.getpid()))

    def submit(self, fn: Callable[..., Any], *args: Any) -> AsyncResult:
        """Run `fn(*args)` there (picklable: a module-level function and plain data) after anything
        submitted before it; the result's `get()` returns its value or raises its exception."""
        return self.pool.apply_async(fn, args)

    def close(self) -> None:
        """Stop the worker now, whatever it is running (the loop has finished or failed)."""
        self.pool.terminate()
        self.pool.join()
