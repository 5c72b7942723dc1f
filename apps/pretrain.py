"""Stage `pretrain`: train the base model (preset `model.preset`) on train-subject renders, as a Ray task, and save
it to `paths.base`.

    python -m apps.pretrain experiment=smoke
    python -m apps.pretrain experiment=toy_base pretrain.budget_s=3600     # one more hour on the shipped base

A run trains for `pretrain.budget_s` seconds (or up to `pretrain.steps`), then writes a checkpoint to `paths.base`:
the EMA weights in fp16 and `report.json` (the step reached, the recipe, and per run its command, steps, minutes and,
with `pretrain.eval_n`, the identity that the readers at `paths.readers` read from its samples of test subjects, and
the readers' accuracy on test renders this base noised halfway and denoised).
The checkpoint is also rewritten every `pretrain.save_every` steps, so a killed run loses at most that much. With
`pretrain.resume` (the default) a run continues from the checkpoint there: the learning-rate schedule is a function
of the step, so a series of time-boxed runs follows one schedule. `pretrain.eval_every_s` adds a point to the run's
identity curve every so many seconds of training (the time spent measuring is not counted). `pretrain.budget_s=0`
trains nothing and only measures the checkpoint (a run of no steps in the report). With `pretrain.guidance_sweep`, the
guidance scale of that measurement is chosen first, by identity on train subjects.
"""

from __future__ import annotations

import platform
import time

from actors.cluster import ray_cluster, remote_call
from apps.config import invocation, stage_main
from core.config import PipelineConfig
from core.data import storage


def train_and_save(config: PipelineConfig, command: str) -> dict:
    import numpy as np
    import torch

    from core.models.backbone import Backbone, create_backbone
    from core.models.device import pick_device
    from core.toy import readers as rd
    from core.toy import world as toyworld
    from core.toy.evaluation import choose_guidance, measure_identity, readers_on_renoised
    from core.toy.pretrain import checkpoint_recipe, load_checkpoint, pretrain, save_checkpoint, write_report

    cfg, world = config.pretrain, config.world
    train, test = toyworld.split_subjects(world.seed, world.test_fraction)
    recipe = checkpoint_recipe(config.model.preset, cfg, world.version)
    found = load_checkpoint(config.paths.base, recipe) if cfg.resume else None
    if found is None:
        backbone, resume, report = create_backbone(config.model.preset, seed=cfg.seed), None, {"recipe": recipe}
    else:
        backbone, resume, report = found
    if found is None and cfg.budget_s == 0:
        raise ValueError(f"pretrain.budget_s=0 measures a checkpoint, and there is none at {config.paths.base}")
    start = int(resume["step"]) if resume is not None else 0
    if start >= cfg.steps and cfg.budget_s != 0:
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
    reader = None
    if cfg.eval_n:
        storage.require(config.paths.readers, "paths.readers", f"attribute readers of world version {world.version}")
        reader = rd.load_readers(storage.local_dir(config.paths.readers)).to(device)
    began, measuring = time.perf_counter(), {"s": 0.0}

    def save_state(state: dict) -> None:
        minutes = (time.perf_counter() - began - measuring["s"]) / 60  # training time: the curve's points excluded
        run.update(to_step=int(state["step"]), minutes=round(minutes, 1))
        save_checkpoint(backbone, state, config.paths.base, {**report, "runs": [*runs, run]})

    def on_mark(seconds: float, step: int, modules: torch.nn.ModuleList) -> None:
        """A point of the run's identity curve, from the EMA weights."""
        t = time.perf_counter()
        view = Backbone(modules[0], modules[1], backbone.tokenizer, backbone.noise_scheduler, backbone.resolution)
        acc = measure_identity(view, reader, test, cfg.eval_n, cfg.eval_guidance, cfg.seed, world.version, check=False)
        run.setdefault("curve", []).append({"step": step, "minutes": round(seconds / 60, 1), **acc})
        measuring["s"] += time.perf_counter() - t

    if cfg.budget_s == 0:  # measure only: the checkpoint's weights (its scheduler has the recipe's prediction type)
        losses = []
        run.update(to_step=start, minutes=0.0)
    else:
        every = cfg.eval_every_s if reader is not None and cfg.eval_every_s else None
        marks = tuple(np.arange(every, cfg.budget_s or 0.0, every)) if every else ()
        losses = pretrain(
            backbone,
            train,
            cfg,
            world_version=world.version,
            resume=resume,
            save_state=save_state,
            save_every=cfg.save_every,
            marks_s=marks,
            on_mark=on_mark,
        )
        run["last_loss"] = round(float(np.mean(losses[-100:])), 4)
    if reader is not None:
        guidance = cfg.eval_guidance
        if cfg.guidance_sweep:  # chosen on train subjects; the test subjects are measured at the chosen scale only
            run["guidance_choice"] = choose_guidance(
                backbone, reader, train, list(cfg.guidance_sweep), cfg.eval_n, cfg.seed, world.version
            )
            guidance = run["guidance_choice"]["chosen"]
        run["test_identity"] = measure_identity(backbone, reader, test, cfg.eval_n, guidance, cfg.seed, world.version)
        # Whether the readers can be trusted on what this base draws: test renders it noised halfway and denoised.
        run["readers_on_renoised_test"] = readers_on_renoised(
            backbone, reader, test, cfg.eval_n, 0.5, cfg.seed + 5, world.version
        )
    # The weights are in the checkpoint already (written at the end of training): now the run's loss and identity.
    write_report(config.paths.base, {**report, "runs": [*runs, run]}, start + len(losses))
    return {"first_loss": losses[0] if losses else None, **run}


def run(config: PipelineConfig) -> dict:
    command = invocation()
    with ray_cluster(config.cluster):
        out = remote_call(train_and_save, config, command, num_cpus=1)
    return {"stage": "pretrain", **out, "out": config.paths.base}


main = stage_main(run)

if __name__ == "__main__":
    main()
