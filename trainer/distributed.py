"""Multi-worker SFT: the same `trainer.sft.train` in every worker of a Ray Train `TorchTrainer`.

`TrainConfig.distributed` chooses where a round trains:

- "none": in this process (`trainer.sft.train`, one device);
- "ray": `train.workers` processes started by Ray Train (`ray.train.torch.TorchTrainer`), one per
  GPU on a cluster (`train.device: cuda`) or CPU processes. Ray Train sets up the torch process
  group (NCCL on GPUs, gloo on CPUs) and the RANK/LOCAL_RANK/WORLD_SIZE variables; Hugging Face's
  Trainer (under TRL's `SFTTrainer`) sees them and runs data-parallel: each worker reads its own
  slice of every batch, gradients are averaged across workers, and only the first worker writes
  the checkpoint, the metrics and the summary (`trainer.sft.train` checks the rank).

Workers load the parent checkpoint and the round's dataset from paths, so `parent`, `dataset` and
`out` must be on storage every worker can read (one machine, or a shared filesystem on a cluster);
`out/checkpoint` is then where rollout actors load the next policy from. The effective batch is
`batch_size * grad_accum * workers` rows per optimizer step.

GRPO rounds train the same way with `distributed: ray` (`selfplay/grpo.py` hands its own worker
function to `run_workers`): every worker is a rank of TRL's `GRPOTrainer`, samples its share of each
step's prompts with its own engine on its own device, and the ranks average their gradients.

A worker that dies takes its group down; Ray Train starts the group again up to
`train.worker_restarts` times, and each new worker resumes from the last trainer checkpoint in
`out/trainer/` (every `save_steps`), as a rerun of a killed round does.

This module joins a running Ray instance, or the cluster at `address`; it does not start a local
one (the driver does that, with the loopback settings of docs/design.md §8: `rollout.cluster.connect`).
"""

from __future__ import annotations

import json
import tempfile
import threading
from pathlib import Path
from typing import Callable

from strokes.errors import InputError
from strokes.model.policy import Policy

from .config import TrainConfig
from .sft import train
from .sft_trainer import step_line


def _worker(config: dict) -> None:
    """One Ray Train worker: load the parent policy and the dataset, run `trainer.sft.train`."""
    import datasets
    import torch

    cfg: TrainConfig = config["cfg"]
    torch.set_num_threads(max(cfg.num_threads, 1))  # one worker per core (or GPU): no oversubscription
    policy = Policy.from_pretrained(config["parent"])
    # In memory: every worker tokenizes its own copy, so no two processes write the same cache file.
    data = datasets.load_from_disk(config["dataset"], keep_in_memory=True)
    report_summary(train(policy, data, cfg, config["out"]), policy.model)


def report_summary(summary: dict, model) -> None:
    """End a worker: hand the training summary (with the world size and whether the replicas ended
    in sync) back to the driver."""
    import ray.train

    ctx = ray.train.get_context()
    summary.update(workers=ctx.get_world_size(), replicas_in_sync=replicas_in_sync(model))
    metrics = json.loads(json.dumps(summary, default=float))
    # Ray Train (v2) hands back only metrics that come with a checkpoint: the first worker attaches a
    # small one holding the summary (the model itself is already in `out/checkpoint`). Every worker
    # must report, the same number of times: it is a barrier.
    if ctx.get_world_rank() == 0:
        with tempfile.TemporaryDirectory() as tmp:
            (Path(tmp) / "train_summary.json").write_text(json.dumps(metrics))
            ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(tmp))
    else:
        ray.train.report(metrics)


def replicas_in_sync(model) -> bool:
    """Whether every worker ended with the same weights: data parallelism averaged the gradients of
    different batches; without it (no process group, or a broken one) the replicas drift apart."""
    import torch
    import torch.distributed as dist

    if not dist.is_initialized():
        return False
    device = next(model.parameters()).device
    total = torch.stack([p.detach().double().sum() for p in model.parameters()]).sum().reshape(1).to(device)
    seen = [torch.zeros_like(total) for _ in range(dist.get_world_size())]
    dist.all_gather(seen, total)
    return all(torch.equal(x, seen[0]) for x in seen)


def use_gpus(cfg: TrainConfig) -> bool:
    """Workers get a GPU each with `device: cuda`, or with `auto` when the cluster has GPUs."""
    import ray

    if cfg.device == "cuda":
        return True
    return cfg.device == "auto" and ray.cluster_resources().get("GPU", 0) >= cfg.workers


def train_on_ray(parent: str | Path, dataset: str | Path, cfg: TrainConfig, out: str | Path,
                 address: str = "") -> dict:
    """Train the policy saved at `parent` on the HF dataset saved at `dataset` with `cfg.workers`
    Ray Train workers; writes `out/checkpoint` (and what `trainer.sft.train` writes) and returns
    the first worker's summary (`world_size`: processes the trainer trained with; `replicas_in_sync`)."""
    parent, dataset, out = Path(parent).resolve(), Path(dataset).resolve(), Path(out).resolve()
    if not (parent / "config.json").is_file():
        raise InputError(f"{parent}: not a checkpoint (no config.json)")
    if not (dataset / "dataset_info.json").is_file() and not (dataset / "dataset_dict.json").is_file():
        raise InputError(f"{dataset}: not a dataset saved with save_to_disk")
    return run_workers(_worker, {"cfg": cfg, "parent": str(parent), "dataset": str(dataset), "out": str(out)},
                       cfg, out, "sft", address)


def run_workers(worker: Callable[[dict], None], config: dict, cfg: TrainConfig, out: Path, name: str,
                address: str = "") -> dict:
    """Run `worker(config)` on `cfg.workers` Ray Train workers (restarted up to
    `cfg.worker_restarts` times after a worker dies) that write `out/checkpoint`; returns the first
    worker's summary."""
    import ray
    from ray.train import FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    if not ray.is_initialized():
        if not address:
            raise InputError("train.distributed: 'ray' needs a Ray cluster: pass its address (rollout.ray_address) "
                             "or connect first (rollout.cluster.connect starts a local one)")
        ray.init(address=address, log_to_driver=False)
    out.mkdir(parents=True, exist_ok=True)
    trainer = TorchTrainer(
        worker,
        train_loop_config=config,
        scaling_config=ScalingConfig(num_workers=cfg.workers, use_gpu=use_gpus(cfg),
                                     resources_per_worker={"CPU": cfg.worker_cpus}),
        run_config=RunConfig(name=name, storage_path=str(out / "ray"),
                             failure_config=FailureConfig(max_failures=cfg.worker_restarts)),
    )
    with MetricsEcho(out / "metrics.jsonl", cfg.grpo.steps if name == "grpo" else cfg.max_steps):
        result = trainer.fit()
    if not (out / "checkpoint" / "config.json").is_file():
        raise RuntimeError(f"Ray Train finished but wrote no checkpoint under {out}")
    return dict(result.metrics or {})


class MetricsEcho:
    """While Ray Train runs, the console's step lines (`step 20/60 loss ...`, as in-process training
    prints them) from the log lines the first worker appends to `path`: the workers' own output does
    not reach the driver (`log_to_driver=False`, or it would bring every worker's and Ray's too)."""

    def __init__(self, path: Path, max_steps: int, every_s: float = 2.0) -> None:
        self.path, self.max_steps, self.every_s = path, max_steps, every_s
        self.seen = 0  # bytes of `path` already read
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._follow, daemon=True)

    def __enter__(self) -> "MetricsEcho":
        self.seen = self.path.stat().st_size if self.path.is_file() else 0  # a resumed round's old lines
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop.set()
        self.thread.join()
        self._echo()  # the last lines

    def _follow(self) -> None:
        while not self.stop.wait(self.every_s):
            self._echo()

    def _echo(self) -> None:
        if not self.path.is_file():
            return
        with self.path.open("rb") as f:
            f.seek(self.seen)
            chunk = f.read()
        complete = chunk[: chunk.rfind(b"\n") + 1]  # a line still being written waits for the next look
        self.seen += len(complete)
        for raw in complete.splitlines():
            logs = json.loads(raw)
            if "loss" in logs and "step" in logs:
                print(step_line(int(logs["step"]), self.max_steps, logs), flush=True)


def fit(parent: str | Path, dataset: str | Path, cfg: TrainConfig, out: str | Path, address: str = "") -> dict:
    """One round's SFT where `cfg.distributed` says: in this process, or on Ray Train workers."""
    if cfg.distributed == "ray":
        return train_on_ray(parent, dataset, cfg, out, address)
    import datasets

    return train(Policy.from_pretrained(parent), datasets.load_from_disk(str(dataset)), cfg, out)

