"""ray_cluster.yaml is a valid `ray up` config, checked offline with Ray's own autoscaler validator.

`ray up` resolves a config in two halves (ray.autoscaler._private.commands._bootstrap_config): an offline half,
`prepare_config` (merge the provider's defaults.yaml, merge setup commands, check docker, fill per-type worker
limits) followed by `validate_config` (jsonschema against ray/autoscaler/ray-schema.json plus cross-field
checks), and a cloud half (resource autodetection, IAM/keys/subnets), which is skipped here. A socket guard
makes any network attempt fail the test. Ray is imported, never started.
"""

from __future__ import annotations

import copy
import json
import os
import socket
from pathlib import Path

import jsonschema
import pytest
import ray.autoscaler
import yaml
from ray.autoscaler._private.util import prepare_config, validate_config

CONFIG_PATH = Path(__file__).resolve().parents[2] / "ray_cluster.yaml"
SCHEMA_PATH = Path(os.path.dirname(ray.autoscaler.__file__)) / "ray-schema.json"

# AWS instance families with NVIDIA GPUs (g4dn, g5, g6, g6e, p3, p4d, p5, ...).
GPU_INSTANCE_PREFIXES = ("g4dn.", "g5.", "g5g.", "g6.", "g6e.", "gr6.", "p3.", "p3dn.", "p4d.", "p4de.", "p5.")


@pytest.fixture(autouse=True)
def _no_network(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("the cluster config check must not touch the network")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket.socket, "connect_ex", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)


@pytest.fixture(scope="module")
def raw_config() -> dict:
    with open(CONFIG_PATH) as f:
        config = yaml.safe_load(f)
    assert isinstance(config, dict), "ray_cluster.yaml must be a mapping"
    return config


@pytest.fixture(scope="module")
def schema() -> dict:
    with open(SCHEMA_PATH) as f:
        return json.load(f)


def ray_up_offline_validate(config: dict, schema: dict) -> dict:
    """The raw file against the schema, then `ray up`'s own offline prepare + validate."""
    jsonschema.validate(config, schema)
    prepared = prepare_config(copy.deepcopy(config))
    validate_config(prepared)
    return prepared


def test_cluster_config_is_valid_for_ray_up(raw_config, schema):
    prepared = ray_up_offline_validate(raw_config, schema)

    assert raw_config["cluster_name"] == "suti"
    assert raw_config["provider"]["type"] == "aws"

    node_types = prepared["available_node_types"]
    head_type = prepared["head_node_type"]
    head = node_types[head_type]
    workers = {name: nt for name, nt in node_types.items() if name != head_type}
    assert workers, "there must be a worker node type besides the head"

    # The head has real CPUs but no GPU.
    assert head["resources"].get("CPU", 1) > 0
    assert head["resources"].get("GPU", 0) == 0
    assert not head["node_config"]["InstanceType"].startswith(GPU_INSTANCE_PREFIXES)

    # Some worker type has a GPU, by declared resources or a GPU instance family, and can scale from zero.
    gpu_workers = {
        name: nt
        for name, nt in workers.items()
        if nt["resources"].get("GPU", 0) >= 1
        or nt["node_config"].get("InstanceType", "").startswith(GPU_INSTANCE_PREFIXES)
    }
    assert gpu_workers, f"no GPU worker node type in {sorted(workers)}"
    for nt in gpu_workers.values():
        assert nt["min_workers"] == 0
        assert 0 < nt["max_workers"] <= prepared["max_workers"]

    # The project is shipped to every node and installed with the CUDA torch extra.
    mounts = raw_config["file_mounts"]
    assert "." in mounts.values(), f"file_mounts do not ship the project: {mounts}"
    project_dir = next(remote for remote, local in mounts.items() if local == ".")
    assert any(
        "pip install" in cmd and "-e" in cmd.split() and f"{project_dir}[torch]" in cmd
        for cmd in raw_config["setup_commands"]
    ), raw_config["setup_commands"]
    for pattern in (".venv", "outputs", ".git"):
        assert pattern in raw_config["rsync_exclude"]
    # After `ray up`'s merge, both head and workers run the install.
    for key in ("head_setup_commands", "worker_setup_commands"):
        assert any("[torch]" in cmd for cmd in prepared[key]), key

    # The dashboard (job API) listens on localhost only; auth mode is left at Ray's default.
    head_start = " ".join(raw_config["head_start_ray_commands"])
    assert "--dashboard-host=127.0.0.1" in head_start
    assert "RAY_AUTH_MODE" not in head_start + " ".join(raw_config["worker_start_ray_commands"])


@pytest.mark.parametrize(
    "breakage",
    [
        pytest.param(lambda c: c.__setitem__("max_workers", "many"), id="max_workers-not-int"),
        pytest.param(
            lambda c: c["available_node_types"][c["head_node_type"]].pop("node_config"),
            id="node-type-without-node_config",
        ),
        pytest.param(lambda c: c.__setitem__("max_worker", 8), id="unknown-top-level-key"),
        pytest.param(lambda c: c.__setitem__("head_node_type", "no_such_type"), id="head-type-undefined"),
    ],
)
def test_validator_rejects_a_broken_copy(raw_config, schema, breakage):
    broken = copy.deepcopy(raw_config)
    breakage(broken)
    with pytest.raises((jsonschema.ValidationError, ValueError)):
        ray_up_offline_validate(broken, schema)
