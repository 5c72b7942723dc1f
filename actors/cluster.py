"""Connecting to (or starting) the Ray cluster a stage runs on."""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

import ray
from ray._private import ray_constants

from core.config import ClusterConfig

PROJECT_ROOT = str(Path(__file__).resolve().parent.parent)


# Ray's single-machine mode: with it off, Ray takes 127.0.0.1 as the node's address, and every server of a cluster
# started here (GCS, raylet, object manager, agents, metrics exporters, workers) binds that address.
_MULTI_NODE_ENV = ray_constants.ENABLE_RAY_CLUSTERS_ENV_VAR


@contextlib.contextmanager
def loopback_only():
    """Start the local clusters of this block on the loopback interface only (see `ClusterConfig.loopback_only`).

    Ray reads the setting from the environment when it is imported: the processes a cluster starts inherit the
    variable, and this driver, which imported Ray already, gets the constant set for the block's duration.
    """
    saved_env, saved_flag = os.environ.get(_MULTI_NODE_ENV), ray_constants.ENABLE_RAY_CLUSTER
    os.environ[_MULTI_NODE_ENV] = "0"
    ray_constants.ENABLE_RAY_CLUSTER = False
    try:
        yield
    finally:
        ray_constants.ENABLE_RAY_CLUSTER = saved_flag
        if saved_env is None:
            os.environ.pop(_MULTI_NODE_ENV, None)
        else:
            os.environ[_MULTI_NODE_ENV] = saved_env


def start_local_cluster(cfg: ClusterConfig, **init_kwargs) -> None:
    """`ray.init` a local cluster as `cfg` says: its logical CPUs, no dashboard, a bounded object store, and by
    default every port on 127.0.0.1."""
    scope = loopback_only() if cfg.loopback_only else contextlib.nullcontext()
    with scope:
        ray.init(
            num_cpus=cfg.num_cpus,
            include_dashboard=False,
            object_store_memory=cfg.object_store_memory_mb * 1024 * 1024,
            # Workers do not see the driver's sys.path: point them at this checkout, installed or not.
            runtime_env={"env_vars": {"PYTHONPATH": PROJECT_ROOT}},
            **init_kwargs,
        )


@contextlib.contextmanager
def ray_cluster(cfg: ClusterConfig):
    """Join the cluster at `cfg.address`, or start a local one; shut down only a cluster this call started.

    When Ray is already initialised (a test session's cluster, or the pipeline chaining stages) it is reused.
    """
    if ray.is_initialized():
        yield
        return
    if cfg.address:
        # A cluster on this machine's loopback interface is joined in the same single-machine mode it was started in.
        host = cfg.address.split("://")[-1].rsplit(":", 1)[0]
        scope = loopback_only() if host in ("127.0.0.1", "localhost", "::1") else contextlib.nullcontext()
        with scope:
            ray.init(address=cfg.address)
    else:
        start_local_cluster(cfg)
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
