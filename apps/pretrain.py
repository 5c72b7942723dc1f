"""Stage `pretrain`: train the base model (preset `model.preset`) on train-subject renders, as a Ray task, and save
it to `paths.base`.

    python -m apps.pretrain experiment=smoke
    python -m apps.pretrain experiment=toy_base pretrain.budget_s=3600     # one more hour on the shipped base

A run trains for `pretrain.budget_s` seconds (or up to `pretrain.steps`), then writes a checkpoint to `paths.base`:
the EMA weights in fp16 and `report.json` (the step reached, the recipe, and per run its command, steps, minutes and,
with `pretrain.eval_n`, the identity that the readers at `paths.readers` read from its samples of test subjects).
The checkpoint is also rewritten every `pretrain.save_every` steps, so a killed run loses at most that much. With
`pretrain.resume` (the default) a run continues from the checkpoint there: the learning-rate schedule is a function
of the step, so a series of time-boxed runs follows one schedule.
"""

from __future__ import annotations

import platform
import sys
import time

from actors.cluster import ray_cluster, remote_call
from apps.config import stage_main
from core.config import PipelineConfig
from core.data import storage


def train_and_save(config: PipelineConfig, command: str) -> dict:
    import numpy as np
    import torch

    from core.models.backbone import create_backbone
    from core.models.device import pick_device
    from core.toy import readers as rd
    from core.toy import world as toyworld
    from core.toy.evaluation import base_identity
    from core.toy.pretrain import checkpoint_recipe, load_checkpoint, pretrain, save_checkpoint

    cfg, world = config.pretrain, config.world
    train, test = toyworld.split_subjects(world.seed, world.test_fraction)
    recipe = checkpoint_recipe(config.model.preset, cfg, world.version)
    found = load_checkpoint(config.paths.base, recipe) if cfg.resume else None
    if found is None:
        backbone, resume, report = create_backbone(config.model.preset, seed=cfg.seed), None, {"recipe": recipe}
    else:
        backbone, resume, report = found
    start = int(resume["step"]) if resume is not None else 0
    if start >= cfg.steps:
        return {"steps": start, "note": f"the checkpoint at {config.paths.base} has all {cfg.steps} steps already"}
    device = pick_device()
    backbone.to(device)
    runs = list(report.get("runs", []))
    run = {
        "command": command,
        "date": time.strftime("%Y-%m-%d"),
        "machine": torch.cuda.get_device_name() if device.type == "cuda" else f"{platform.machine()} CPU",
        "threads": cfg.threads,
        "from_step": start,
    }
    began = time.perf_counter()

    def save_state(state: dict) -> None:
        run.update(to_step=int(state["step"]), minutes=round((time.perf_counter() - began) / 60, 1))
        save_checkpoint(backbone, state, config.paths.base, {**report, "runs": [*runs, run]})

    losses = pretrain(
        backbone,
        train,
        cfg,
        world_version=world.version,
        resume=resume,
        save_state=save_state,
        save_every=cfg.save_every,
    )
    run["last_loss"] = round(float(np.mean(losses[-100:])), 4)
    if cfg.eval_n:
        storage.require(config.paths.readers, "paths.readers", f"attribute readers of world version {world.version}")
        reader = rd.load_readers(storage.local_dir(config.paths.readers)).to(device)
        acc, _ = base_identity(
            backbone,
            reader,
            test,
            cfg.eval_n,
            np.random.default_rng(cfg.seed + 3),
            cfg.seed + 2000,
            cfg.eval_guidance,
            version=world.version,
        )
        run["test_identity"] = {"guidance": cfg.eval_guidance, "samples": cfg.eval_n, **acc}
    # The final weights again (the backbone holds the EMA weights now), with the run's loss and identity.
    weights = torch.nn.ModuleList([backbone.unet, backbone.text_encoder]).state_dict()
    state = {"model": weights, "step": torch.tensor(start + len(losses))}
    save_checkpoint(backbone, state, config.paths.base, {**report, "runs": [*runs, run]})
    return {"first_loss": losses[0], **run}


def run(config: PipelineConfig) -> dict:
    command = "python -m apps.pretrain " + " ".join(sys.argv[1:])
    with ray_cluster(config.cluster):
        out = remote_call(train_and_save, config, command, num_cpus=1)
    return {"stage": "pretrain", **out, "out": config.paths.base}


main = stage_main(run)

if __name__ == "__main__":
    main()
