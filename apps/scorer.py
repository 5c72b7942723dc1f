"""Stage `scorer`: train the toy CLIP (a tiny open_clip model) contrastively on train-subject renders, as a Ray
task, and save it to `paths.scorer` with `info.json`: the command, steps, seconds, and how well it tells 256 test
subjects apart (`core.toy.scorer_training.retrieval_check`: each render's own caption, and another view of it).

    python -m apps.scorer experiment=smoke
    python -m apps.scorer experiment=toy_base       # the scorer shipped in artifacts/toy-v2/scorer
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


def train_and_save(config: PipelineConfig, command: str = "") -> dict:
    from core.models.scorer import save_scorer
    from core.toy import world as toyworld
    from core.toy.scorer_training import retrieval_check, train_scorer

    world = config.world
    train, test = toyworld.split_subjects(world.seed, world.test_fraction)
    began = time.perf_counter()
    scorer, losses = train_scorer(config.scorer, train, world.resolution, version=world.version)
    info = {
        "command": command,
        "date": time.strftime("%Y-%m-%d"),
        "world_version": world.version,
        "steps": len(losses),
        "batch_size": config.scorer.batch_size,
        "seconds": round(time.perf_counter() - began, 1),
        "first_loss": round(losses[0], 4),
        "last_loss": round(sum(losses[-10:]) / len(losses[-10:]), 4),
        "test_retrieval": retrieval_check(scorer, test, 256, config.scorer.seed + 7, world.resolution, world.version),
    }
    with tempfile.TemporaryDirectory() as folder:
        save_scorer(scorer, folder)
        with open(os.path.join(folder, "info.json"), "w") as f:
            json.dump(info, f, indent=1)
        storage.upload_dir(folder, config.paths.scorer)
    return info


def run(config: PipelineConfig) -> dict:
    command = invocation()
    with ray_cluster(config.cluster):
        out = remote_call(train_and_save, config, command, num_cpus=1)
    return {"stage": "scorer", **out, "out": config.paths.scorer}


main = stage_main(run)

if __name__ == "__main__":
    main()
