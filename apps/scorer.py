"""Stage `scorer`: train the toy CLIP (a tiny open_clip model) contrastively on train-subject renders, as a Ray
task, and save it to `paths.scorer`.

    python -m apps.scorer experiment=smoke
"""

from __future__ import annotations

import tempfile

from actors.cluster import ray_cluster, remote_call
from apps.config import stage_main
from core.config import PipelineConfig
from core.data import storage


def train_and_save(config: PipelineConfig) -> dict:
    from core.models.scorer import save_scorer
    from core.toy import world as toyworld
    from core.toy.scorer_training import train_scorer

    train, _ = toyworld.split_subjects(config.world.seed, config.world.test_fraction)
    scorer, losses = train_scorer(config.scorer, train, config.world.resolution, version=config.world.version)
    with tempfile.TemporaryDirectory() as folder:
        save_scorer(scorer, folder)
        storage.upload_dir(folder, config.paths.scorer)
    return {"first_loss": losses[0], "last_loss": sum(losses[-10:]) / len(losses[-10:])}


def run(config: PipelineConfig) -> dict:
    with ray_cluster(config.cluster):
        out = remote_call(train_and_save, config, num_cpus=1)
    return {"stage": "scorer", **out, "out": config.paths.scorer}


main = stage_main(run)

if __name__ == "__main__":
    main()
