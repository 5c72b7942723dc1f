"""Stage `train`: Ray Data streams G (filtered by `filter.min_delta`) into a Ray Train TorchTrainer that trains
the apprentice; the final checkpoint is copied to `paths.apprentice`.

    python -m apps.train experiment=smoke
"""

from __future__ import annotations

import json
import math

import pyarrow.fs as pafs

from actors.apprentice_trainer import fit
from actors.cluster import ray_cluster
from actors.g_dataset import count_kept, read_g
from apps.config import require_base, stage_main
from core import storage
from core.config import PipelineConfig, config_hash, to_dict


def run(config: PipelineConfig) -> dict:
    base = require_base(config)
    storage.require(config.paths.g, "paths.g", "G (expert renders)")
    # A Ray Train run resumes from the latest checkpoint of a run of the same name: name the run by everything that
    # shapes it (apprentice config, threshold, base, the G shards), so a sweep never picks up another run's weights.
    identity = config_hash({"apprentice": to_dict(config.apprentice), "min_delta": config.filter.min_delta, "base": base, "g": storage.list_shards(config.paths.g)})
    run_name = f"apprentice-{config.experiment_name}-{identity}"
    acfg = config.apprentice
    kept = count_kept(config.paths.g, config.filter.min_delta)
    if kept == 0:
        raise RuntimeError(f"no G row passes filter.min_delta={config.filter.min_delta} in {config.paths.g}: nothing to train on")
    passes = min(32, math.ceil(acfg.steps * acfg.batch_size * acfg.num_workers / kept))
    with ray_cluster(config.cluster):
        dataset = read_g(config.paths.g, config.filter.min_delta, storage.join(base, "tokenizer"), acfg.num_demos, acfg.seed, passes)
        checkpoint = fit(config.apprentice, dataset, base, config.paths.train_storage, run_name, to_dict(config))
    fs, path = storage.resolve(config.paths.apprentice)
    fs.create_dir(path, recursive=True)
    pafs.copy_files(checkpoint.path, path, source_filesystem=checkpoint.filesystem, destination_filesystem=fs)
    state = json.loads(storage.read_bytes(storage.join(config.paths.apprentice, "train_state.json")))
    losses = state["losses"]
    k = max(1, len(losses) // 4)
    return {
        "stage": "train",
        "steps": state["step"],
        "g_rows_kept": kept,
        "passes_per_epoch": passes,
        "loss_first_quarter": sum(losses[:k]) / k,
        "loss_last_quarter": sum(losses[-k:]) / k,
        "max_abs_gate": max(abs(g) for g in state["gates"]),
        "run_name": run_name,
        "checkpoint": checkpoint.path,
        "out": config.paths.apprentice,
    }


main = stage_main(run)

if __name__ == "__main__":
    main()
