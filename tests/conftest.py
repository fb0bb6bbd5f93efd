"""Shared test setup: deterministic, single-threaded, and offline; one Ray cluster per test process."""

from __future__ import annotations

import os

import pytest

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")


@pytest.fixture(scope="session")
def ray_cluster(tmp_path_factory):
    """The test process's one local Ray cluster, started the project's way (`rollout.cluster.connect`)
    with `HOME` pointed at a temporary folder, so it also checks the bootstrap config lands there.

    Every test that needs Ray asks for this fixture: Ray 2.60 does not survive a restart inside one
    process (the first `ray.init` turns on token auth and keeps the token of that `HOME`; a second
    cluster's GCS then finds no token and never starts).
    """
    ray = pytest.importorskip("ray")
    from rollout.cluster import BOOTSTRAP, BOOTSTRAP_TEXT, connect

    assert not ray.is_initialized(), "a test started Ray without the ray_cluster fixture"
    proxy_wait = os.environ.get("RAY_SERVE_PROXY_READY_CHECK_TIMEOUT_S", "60")  # a user's own value wins
    home = tmp_path_factory.mktemp("ray-home")
    old = os.environ.get("HOME")
    os.environ["HOME"] = str(home)
    try:
        connect(num_cpus=2, object_store_mb=100)
    finally:
        if old is None:
            del os.environ["HOME"]
        else:
            os.environ["HOME"] = old
    assert (home / BOOTSTRAP).read_text() == BOOTSTRAP_TEXT
    assert os.environ["RAY_USAGE_STATS_ENABLED"] == "0" and os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] == "0"
    # Serve's proxy gets a minute to start on a busy machine (rollout/cluster.py), not Serve's 5 s
    assert os.environ["RAY_SERVE_PROXY_READY_CHECK_TIMEOUT_S"] == proxy_wait
    yield ray
    ray.shutdown()
