"""Shared fixtures: one local Ray cluster for the whole test session, and the smoke pipeline's outputs."""

import os
import shutil
import tempfile

import pytest

os.environ["HF_HUB_OFFLINE"] = "1"  # no test may reach a model hub
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ.setdefault("TQDM_DISABLE", "1")


@pytest.fixture(scope="session")
def ray_session():
    """One local cluster per session, started as the apps start theirs (every port on 127.0.0.1): fixed logical CPUs
    (room for Ray Data beside a Train worker), no dashboard, a bounded object store, and a temp dir of its own that
    is removed afterwards."""
    import ray

    from actors.cluster import start_local_cluster
    from core.config import ClusterConfig

    temp_dir = tempfile.mkdtemp(prefix="ray-", dir="/tmp")
    start_local_cluster(ClusterConfig(num_cpus=4, object_store_memory_mb=512), _temp_dir=temp_dir, log_to_driver=False)
    try:
        yield ray
    finally:
        ray.shutdown()
        shutil.rmtree(temp_dir, ignore_errors=True)


@pytest.fixture(scope="session")
def smoke(ray_session, tmp_path_factory):
    """`experiment=smoke` run end to end once per session: (config, per-stage summaries)."""
    from apps.config import compose, free_port
    from apps.pipeline import run

    root = tmp_path_factory.mktemp("smoke")
    config = compose(["experiment=smoke", f"paths.root={root}", f"serve.port={free_port()}"])
    summaries = run(config)
    return config, summaries
