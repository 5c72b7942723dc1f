"""Stage `readers`: train the toy world's attribute readers (one CNN, a head per attribute) on augmented renders of
train subjects of world `world.version`, as a Ray task, and save them to `paths.readers`.

    python -m apps.readers experiment=toy_base      # the readers shipped in artifacts/toy-v2/readers

A run trains for `readers.steps` steps or `readers.budget_s` seconds, whichever ends first, then writes the readers
(fp16 safetensors) and `info.json`: the command, steps, seconds and the readers' accuracy per attribute on
`readers.eval_n` clean renders of *test* subjects (every stage that reads images with them needs them right there).
"""

from __future__ import annotations

import json
import os
import tempfile
import time

from actors.cluster import ray_cluster, remote_call
from apps.config import invocation, stage_main
from core.config import PipelineConfig
from core.data import storage


def train_and_save(config: PipelineConfig, command: str) -> dict:
    import numpy as np
    import torch

    from core.toy import readers as rd
    from core.toy import world as toyworld
    from core.toy.evaluation import IDENTITY

    cfg, world = config.readers, config.world
    torch.set_num_threads(cfg.threads)
    train, test = toyworld.split_subjects(world.seed, world.test_fraction)
    began = time.perf_counter()
    deadline = time.monotonic() + cfg.budget_s if cfg.budget_s is not None else None
    reader, losses = rd.train_readers(
        train,
        cfg.steps,
        batch_size=cfg.batch_size,
        lr=cfg.lr,
        seed=cfg.seed,
        workers=cfg.workers,
        deadline=deadline,
        world_version=world.version,
    )
    seconds = time.perf_counter() - began
    images, labels = rd.labelled_batch(test, cfg.eval_n, np.random.default_rng(cfg.seed + 5), 32, world.version)
    acc = {k: round(v, 4) for k, v in rd.accuracy(reader, images, labels).items()}
    info = {
        "command": command,
        "date": time.strftime("%Y-%m-%d"),
        "world_version": world.version,
        "steps": len(losses),
        "seconds": round(seconds, 1),
        "last_loss": round(float(np.mean(losses[-50:])), 4),
        "clean_test_accuracy": acc,
        "clean_test_identity": round(float(np.mean([acc[k] for k in IDENTITY])), 4),
    }
    with tempfile.TemporaryDirectory() as folder:
        rd.save_readers(reader, folder)
        with open(os.path.join(folder, "info.json"), "w") as f:
            json.dump(info, f, indent=1)
        storage.upload_dir(folder, config.paths.readers)
    return info


def run(config: PipelineConfig) -> dict:
    command = invocation()
    with ray_cluster(config.cluster):
        out = remote_call(train_and_save, config, command, num_cpus=1)
    return {"stage": "readers", **out, "out": config.paths.readers}


main = stage_main(run)

if __name__ == "__main__":
    main()
