"""Stage `pretrain`: train the base model (preset `model.preset`) on train-subject renders, as a Ray task, and save
it to `paths.base`.

    python -m apps.pretrain experiment=smoke
"""

from __future__ import annotations

import tempfile

from actors.cluster import ray_cluster, remote_call
from apps.config import stage_main
from core.config import PipelineConfig
from core.data import storage


def train_and_save(config: PipelineConfig) -> dict:
    from core.models.backbone import create_backbone, save_backbone
    from core.models.device import pick_device
    from core.toy import world as toyworld
    from core.toy.pretrain import pretrain

    train, _ = toyworld.split_subjects(config.world.seed, config.world.test_fraction)
    backbone = create_backbone(config.model.preset, seed=config.pretrain.seed).to(pick_device())
    losses = pretrain(backbone, train, config.pretrain, world_version=config.world.version)
    with tempfile.TemporaryDirectory() as folder:
        save_backbone(backbone.to("cpu"), folder)
        storage.upload_dir(folder, config.paths.base)
    return {"first_loss": losses[0], "last_loss": sum(losses[-10:]) / len(losses[-10:])}


def run(config: PipelineConfig) -> dict:
    with ray_cluster(config.cluster):
        out = remote_call(train_and_save, config, num_cpus=1)
    return {"stage": "pretrain", **out, "out": config.paths.base}


main = stage_main(run)

if __name__ == "__main__":
    main()
