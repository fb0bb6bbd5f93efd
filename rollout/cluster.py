"""Connecting to Ray: join a cluster by address, or start a local one that stays on this machine.

A local cluster gets an explicit CPU count and a small object store, and is configured the way
docs/design.md §8 found keeps all of Ray's traffic on loopback: `RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0`,
`RAY_USAGE_STATS_ENABLED=0`, and `$HOME/ray_bootstrap_config.yaml` holding `cluster_name: local`
and `provider: {type: local}` (without it Ray binds the non-loopback address and probes a cloud
metadata address). A local cluster also gives Serve's HTTP proxy 60 s, not Serve's 5 s, to report
ready (`RAY_SERVE_PROXY_READY_CHECK_TIMEOUT_S`, unless set): on a busy 2-core machine the proxy
takes longer, and Serve kills it and every judge-serve request fails (ray-project/ray#39739; seen
in this project's CI beside two training jobs). Joining a real cluster (`address`) changes none of this.

`reserved_gpus` keeps the first GPUs of the machine out of a local cluster: Ray hands its actors
GPUs from the list of visible ones it finds when it starts (`CUDA_VISIBLE_DEVICES`, which its
workers inherit and narrow), so the list is narrowed for the start and restored after it, and this
process (a GRPO trainer, `cuda:0`) keeps the GPUs the actors never get.
"""

from __future__ import annotations

import os
from pathlib import Path

from strokes.io import write_atomic

BOOTSTRAP = "ray_bootstrap_config.yaml"
BOOTSTRAP_TEXT = "cluster_name: local\nprovider:\n  type: local\n"
LOCAL_ENV = {"RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0", "RAY_USAGE_STATS_ENABLED": "0"}
LOCAL_DEFAULTS = {"RAY_SERVE_PROXY_READY_CHECK_TIMEOUT_S": "60"}  # module docstring


def write_bootstrap_config(home: str | Path) -> Path:
    """Put the local-provider bootstrap config in `home` (an existing one is left alone)."""
    path = Path(home) / BOOTSTRAP
    if not path.exists():
        write_atomic(path, BOOTSTRAP_TEXT)
    return path


def visible_gpus() -> list[str]:
    """The GPU ids this process may use: `CUDA_VISIBLE_DEVICES`, else every GPU torch counts."""
    listed = os.environ.get("CUDA_VISIBLE_DEVICES")
    if listed is not None:
        return [x.strip() for x in listed.split(",") if x.strip()]
    import torch

    return [str(i) for i in range(torch.cuda.device_count())]


def connect(address: str = "", num_cpus: int = 0, object_store_mb: int = 200, reserved_gpus: int = 0) -> None:
    """Make sure this process is connected to Ray (a no-op when it already is); a local cluster
    leaves the first `reserved_gpus` GPUs to this process (module docstring)."""
    import ray

    if ray.is_initialized():
        return
    if address:
        ray.init(address=address, log_to_driver=False)
        return
    os.environ.update(LOCAL_ENV)
    for key, value in LOCAL_DEFAULTS.items():
        os.environ.setdefault(key, value)
    write_bootstrap_config(Path.home())
    kwargs = {"num_cpus": num_cpus or os.cpu_count() or 1, "object_store_memory": object_store_mb << 20,
              "include_dashboard": False, "log_to_driver": False}
    if not reserved_gpus:
        ray.init(**kwargs)
        return
    before = os.environ.get("CUDA_VISIBLE_DEVICES")
    actors_gpus = visible_gpus()[reserved_gpus:]
    os.environ["CUDA_VISIBLE_DEVICES"] = ",".join(actors_gpus)
    try:
        ray.init(num_gpus=len(actors_gpus), **kwargs)
    finally:
        if before is None:
            del os.environ["CUDA_VISIBLE_DEVICES"]
        else:
            os.environ["CUDA_VISIBLE_DEVICES"] = before
