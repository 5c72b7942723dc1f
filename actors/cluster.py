"""Connecting to (or starting) the Ray cluster a stage runs on."""

from __future__ import annotations

import contextlib
from pathlib import Path

import ray

from core.config import ClusterConfig

PROJECT_ROOT = str(Path(__file__).resolve().parent.parent)


@contextlib.contextmanager
def ray_cluster(cfg: ClusterConfig):
    """Join the cluster at `cfg.address`, or start a local one; shut down only a cluster this call started.

    When Ray is already initialised (a test session's cluster, or the pipeline chaining stages) it is reused.
    """
    if ray.is_initialized():
        yield
        return
    if cfg.address:
        ray.init(address=cfg.address)
    else:
        ray.init(
            num_cpus=cfg.num_cpus,
            include_dashboard=False,
            object_store_memory=cfg.object_store_memory_mb * 1024 * 1024,
            # Workers do not see the driver's sys.path: point them at this checkout, installed or not.
            runtime_env={"env_vars": {"PYTHONPATH": PROJECT_ROOT}},
        )
    try:
        yield
    finally:
        # A driver that exits without this leaves its worker processes running.
        ray.shutdown()


def remote_call(fn, *args, num_cpus: float = 1, num_gpus: float = 0, resources: dict | None = None, **kwargs):
    """Run `fn(*args, **kwargs)` as one Ray task with the given resources and wait for its result.

    Single-process stages (scorer and base training, evaluation sampling) run this way, so on a cluster they land on
    a node with the accelerator they ask for instead of on the head node.
    """
    task = ray.remote(fn).options(num_cpus=num_cpus, num_gpus=num_gpus, resources=resources or {}, max_retries=0)
    return ray.get(task.remote(*args, **kwargs))
