"""SFT through Ray Train: two CPU workers run the same `trainer.sft.train`, data-parallel, and the
first one writes a checkpoint that loads.

The driver runs in a fresh (spawned) process that starts its own local cluster the project's way
(`rollout.cluster.connect`, HOME pointed at a temporary folder: loopback only, docs/design.md §8) and
shuts it down. The test process itself never starts Ray: the rollout tests own its one Ray session
per test process, and restarting Ray inside a process is what docs/design.md §8 warns against.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch
from test_rollout_support import tiny_checkpoint

from strokes.errors import InputError
from trainer.config import TrainConfig

ray = pytest.importorskip("ray")


def _drive(parent: str, dataset: str, out: str, home: str) -> dict:
    """In a spawned process: start a local cluster, train on it, shut it down."""
    os.environ["HOME"] = home
    from rollout.cluster import BOOTSTRAP, connect
    from trainer.distributed import train_on_ray

    connect(num_cpus=2, object_store_mb=100)
    try:
        assert (Path(home) / BOOTSTRAP).is_file()
        cfg = TrainConfig(distributed="ray", workers=2, worker_cpus=0.5, max_steps=2, batch_size=2, max_length=768,
                          lr=1e-2, warmup_steps=0, logging_steps=1, save_steps=1000, tokenize_workers=1,
                          num_threads=1, device="cpu")
        return train_on_ray(parent, dataset, cfg, out)
    finally:
        ray.shutdown()


@pytest.fixture(scope="module")
def dataset_dir(tmp_path_factory):
    from strokes.data.build import DataConfig, make_rows
    from strokes.trajectory import from_row, to_dataset

    path = tmp_path_factory.mktemp("ray-train-data") / "dataset"
    rows = make_rows(DataConfig(size=16, seed=2, workers=1), progress=False)
    to_dataset([from_row(r) for r in rows]).save_to_disk(str(path))
    return path


def test_config_names_a_bad_distributed_setting_in_one_line():
    with pytest.raises(InputError, match="train.distributed"):
        TrainConfig(distributed="accelerate")
    with pytest.raises(InputError, match="train.workers"):
        TrainConfig(workers=2)


def test_ray_training_without_a_cluster_is_refused_in_one_line(dataset_dir, tmp_path_factory, tmp_path):
    from trainer.distributed import train_on_ray

    if ray.is_initialized():
        pytest.skip("a Ray cluster is running in this session")
    cfg = TrainConfig(distributed="ray", workers=2)
    with pytest.raises(InputError, match="train.distributed"):
        train_on_ray(tiny_checkpoint(tmp_path_factory), dataset_dir, cfg, tmp_path)


@pytest.mark.slow
def test_two_ray_workers_train_one_checkpoint(dataset_dir, tmp_path_factory, tmp_path):
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    from strokes.model.policy import Policy
    from strokes.trajectory import from_row

    parent = tiny_checkpoint(tmp_path_factory)
    home = tmp_path_factory.mktemp("ray-home")
    with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as pool:
        summary = pool.submit(_drive, str(parent), str(dataset_dir), str(tmp_path), str(home)).result(timeout=500)
    assert summary["workers"] == 2 and summary["world_size"] == 2  # Hugging Face's Trainer saw both
    assert summary["steps"] == 2 and summary["complete"]
    assert summary["replicas_in_sync"]  # different batches, gradients averaged: the same weights
    lines = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [x["step"] for x in lines if x["event"] == "train"] == [1, 2]  # written by one worker only
    assert json.loads((tmp_path / "train_summary.json").read_text())["steps"] == 2
    before, after = Policy.from_pretrained(parent), Policy.from_pretrained(tmp_path / "checkpoint")
    import datasets

    ids = torch.tensor([after.processor.encode(from_row(datasets.load_from_disk(str(dataset_dir))[0])).input_ids])
    with torch.no_grad():
        assert not torch.allclose(before.model(ids).logits, after.model(ids).logits)
