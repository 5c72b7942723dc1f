"""Stage `train`: Ray Data streams G (filtered by `filter.min_delta`) into a Ray Train TorchTrainer that trains
the apprentice; the final checkpoint is exported to `paths.apprentice` as a `SuTIPipeline` folder (EMA weights by
default), loadable without Ray.

    python -m apps.train experiment=smoke
    python -m apps.train experiment=smoke apprentice.g_wait_s=600 apprentice.passes_per_epoch=1   # beside the experts
    python -m apps.train experiment=toy_study apprentice.budget_s=3600   # an hour; run again to go on
"""

from __future__ import annotations

from actors.apprentice_trainer import export, fit
from actors.cluster import ray_cluster
from apps.config import require_base, stage_main
from core.config import PipelineConfig, config_hash, to_dict
from core.data import g, storage

# Apprentice options added after runs were named, with their defaults.
LATER_OPTIONS = {"init": None, "random_flip": False}


def run(config: PipelineConfig) -> dict:
    base = require_base(config)
    acfg = config.apprentice
    if acfg.min_demos is not None and not 1 <= acfg.min_demos <= acfg.num_demos:
        raise ValueError(
            f"apprentice.min_demos={acfg.min_demos} must lie in 1..apprentice.num_demos ({acfg.num_demos})"
        )
    if acfg.init:  # a trained apprentice brings its own demo encoder: demo_encoder_init is not used then
        storage.require(acfg.init, "apprentice.init", "trained apprentice to continue")
    elif acfg.demo_encoder_init:
        storage.require(acfg.demo_encoder_init, "apprentice.demo_encoder_init", "demo encoder warm start")
    if acfg.g_wait_s <= 0:
        storage.require(config.paths.g, "paths.g", "G (expert renders)")
        if g.count_kept(config.paths.g, config.filter.min_delta) == 0:
            raise RuntimeError(
                f"no G row passes filter.min_delta={config.filter.min_delta} in {config.paths.g}: nothing to train on"
            )
    # A Ray Train run resumes from the latest checkpoint of a run of the same name: name the run by everything that
    # shapes it (apprentice config, threshold, base, where G lives), so a sweep never picks up another run's weights
    # while a killed run, or one whose G grew, resumes. (Not the shard list: G may grow while training runs.)
    identity = config_hash(
        {
            # Not the budget (runs with other budgets continue each other), nor options added later while at their
            # defaults (names stay those of runs made before the options existed).
            "apprentice": {
                k: v
                for k, v in to_dict(acfg).items()
                if k != "budget_s" and not (k in LATER_OPTIONS and v == LATER_OPTIONS[k])
            },
            "min_delta": config.filter.min_delta,
            "base": base,
            "g": storage.absolute_uri(config.paths.g),
        }
    )
    run_name = f"apprentice-{config.experiment_name}-{identity}"
    with ray_cluster(config.cluster):
        result = fit(
            acfg, config.paths.g, config.filter.min_delta, base, config.paths.train_storage, run_name, to_dict(config)
        )
    with result.checkpoint.as_directory() as folder:
        state = export(folder, config.paths.apprentice, acfg.export_ema)
    losses, epochs = state["losses"], state["epochs"]
    k = max(1, len(losses) // 4)
    return {
        "stage": "train",
        "steps": state["step"],
        "finished": state["step"] >= acfg.steps,  # else apprentice.budget_s ended the run: run it again to go on
        "epochs": len(epochs),  # none with apprentice.steps=0: the export is the starting apprentice
        "g_rows_kept": epochs[-1]["kept_rows"] if epochs else None,
        "passes_per_epoch": epochs[-1]["passes"] if epochs else None,
        "resumes": len(state["resumes"]),
        "loss_first_quarter": sum(losses[:k]) / k if losses else None,
        "loss_last_quarter": sum(losses[-k:]) / k if losses else None,
        "max_abs_gate": max((abs(gate) for gate in state["gates"]), default=None),  # no gates with attention="joint"
        "final_metrics": {m: result.metrics.get(m) for m in ("loss", "lr", "samples_per_s")},
        "run_name": run_name,
        "already_finished": result.already_finished,  # the run had reached apprentice.steps: nothing was trained
        "checkpoint": result.checkpoint.path,
        "weights": "ema" if acfg.export_ema else "raw",
        "out": config.paths.apprentice,
    }


main = stage_main(run)

if __name__ == "__main__":
    main()
