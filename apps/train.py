"""Stage `train`: Ray Data streams G (filtered by `filter.min_delta`) into a Ray Train TorchTrainer that trains
the apprentice; the final checkpoint is copied to `paths.apprentice`.

    python -m apps.train experiment=smoke
"""

from __future__ import annotations

import pyarrow.fs as pafs

from actors.apprentice_trainer import fit
from actors.cluster import ray_cluster
from actors.g_dataset import read_g
from apps.config import base_uri, stage_main
from core import storage
from core.config import PipelineConfig, to_dict


def run(config: PipelineConfig) -> dict:
    base = base_uri(config)
    storage.require(base, "model.path" if config.model.path else "paths.base", "base model")
    with ray_cluster(config.cluster):
        dataset = read_g(config.paths.g, config.filter.min_delta, storage.join(base, "tokenizer"), config.apprentice.num_demos, config.apprentice.seed)
        checkpoint = fit(config.apprentice, dataset, base, config.paths.train_storage, f"apprentice-{config.experiment_name}", to_dict(config))
    fs, path = storage.resolve(config.paths.apprentice)
    fs.create_dir(path, recursive=True)
    pafs.copy_files(checkpoint.path, path, source_filesystem=checkpoint.filesystem, destination_filesystem=fs)
    import json

    state = json.loads(storage.read_bytes(storage.join(config.paths.apprentice, "train_state.json")))
    losses = state["losses"]
    k = max(1, len(losses) // 4)
    return {
        "stage": "train",
        "steps": state["step"],
        "loss_first_quarter": sum(losses[:k]) / k,
        "loss_last_quarter": sum(losses[-k:]) / k,
        "max_abs_gate": max(abs(g) for g in state["gates"]),
        "checkpoint": checkpoint.path,
        "out": config.paths.apprentice,
    }


main = stage_main(run)

if __name__ == "__main__":
    main()
