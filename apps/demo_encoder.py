"""Stage `demo_encoder`: a warm start for the apprentice's demo encoder, trained to recognise identity on demos of
train subjects of world `world.version` (core/toy/demo_encoder.py), as a Ray task; saved to `paths.demo_encoder`
(`demo_encoder.safetensors` and `info.json`). `apprentice.demo_encoder_init=<that folder>` starts training from it.

    python -m apps.demo_encoder experiment=smoke

The encoder is built as the apprentice builds it from the base at `paths.base` and the apprentice's settings
(`apprentice.demo_grid`, `zero_init`, `attention`), so its shapes fit the apprentice that loads it.
"""

from __future__ import annotations

import json
import os
import tempfile
import time

from actors.cluster import ray_cluster, remote_call
from apps.config import base_uri, invocation, require_base, stage_main
from core.config import PipelineConfig
from core.data import storage


def train_and_save(config: PipelineConfig, command: str) -> dict:
    import torch

    from core.method.apprentice import DEMO_ENCODER_FILE, Apprentice, save_demo_encoder
    from core.models.backbone import load_backbone
    from core.models.device import pick_device
    from core.toy import demo_encoder
    from core.toy import world as toyworld

    cfg, acfg, world = config.demo_encoder, config.apprentice, config.world
    torch.set_num_threads(cfg.threads)
    backbone = load_backbone(storage.local_dir(base_uri(config))).to(pick_device())
    apprentice = Apprentice(
        backbone, acfg.demo_grid, zero_init=acfg.zero_init, attention=acfg.attention, text_tokens=acfg.text_tokens
    )
    train, test = toyworld.split_subjects(world.seed, world.test_fraction)
    deadline = time.monotonic() + cfg.budget_s if cfg.budget_s is not None else None
    info = demo_encoder.pretrain(
        apprentice,
        train,
        test,
        cfg.steps,
        batch_size=cfg.batch_size,
        lr=cfg.lr,
        seed=cfg.seed,
        version=world.version,
        deadline=deadline,
        eval_n=cfg.eval_n,
    )
    info = {"command": command, "date": time.strftime("%Y-%m-%d"), "world_version": world.version, **info}
    with tempfile.TemporaryDirectory() as folder:
        save_demo_encoder(apprentice, os.path.join(folder, DEMO_ENCODER_FILE))
        with open(os.path.join(folder, "info.json"), "w") as f:
            json.dump(info, f, indent=1)
        storage.upload_dir(folder, config.paths.demo_encoder)
    return info


def run(config: PipelineConfig) -> dict:
    command = invocation()
    require_base(config)
    with ray_cluster(config.cluster):
        out = remote_call(train_and_save, config, command, num_cpus=1)
    return {"stage": "demo_encoder", **out, "out": config.paths.demo_encoder}


main = stage_main(run)

if __name__ == "__main__":
    main()
