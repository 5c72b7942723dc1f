"""The whole SuTI pipeline on one Ray cluster: world -> scorer -> pretrain -> mine -> experts -> train ->
evaluate -> serve. Every stage reads and writes files under `paths`, so any stage can be re-run on its own.

    python -m apps.pipeline experiment=smoke
    python -m apps.pipeline experiment=demo
    python -m apps.pipeline experiment=demo stages='[train,evaluate]'
    python -m apps.pipeline -m experiment=demo stages='[train,dreambench]' filter.min_delta=0,0.02 dreambench.dino=...
"""

from __future__ import annotations

import json
import time

from actors.cluster import ray_cluster
from apps import demo_encoder, dreambench, evaluate, experts, mine, pretrain, readers, scorer, serve, train, world
from apps.config import stage_main
from core.config import PipelineConfig
from core.data import storage

STAGES = {
    "world": world.run,
    "scorer": scorer.run,
    "pretrain": pretrain.run,
    "mine": mine.run,
    "experts": experts.run,
    "train": train.run,
    "evaluate": evaluate.run,
    "serve": serve.run,
    "dreambench": dreambench.run,  # not in the default `stages`: it needs DINO and CLIP weights
    # Not in the default `stages` either: the toy world's readers ship in artifacts/, and the demo encoder's warm
    # start is an option of training (`apprentice.demo_encoder_init`).
    "readers": readers.run,
    "demo_encoder": demo_encoder.run,
}


def run(config: PipelineConfig) -> dict:
    unknown = [s for s in config.stages if s not in STAGES]
    if unknown:
        raise ValueError(f"unknown stages {unknown} in `stages`; known: {list(STAGES)}")
    summaries = {}
    with ray_cluster(config.cluster):
        for name in config.stages:
            start = time.perf_counter()
            summaries[name] = STAGES[name](config)
            summaries[name]["seconds"] = round(time.perf_counter() - start, 1)
            print(
                f"[pipeline] {name} done in {summaries[name]['seconds']} s: "
                f"{json.dumps(summaries[name], default=str)[:300]}",
                flush=True,
            )
            if summaries[name].get("finished") is False:  # apprentice.budget_s stopped training short of its steps
                rest = config.stages[config.stages.index(name) + 1 :]
                print(
                    f"[pipeline] the apprentice stopped at step {summaries[name]['steps']} of "
                    f"{config.apprentice.steps} (apprentice.budget_s): run again to go on; not run now: {rest}",
                    flush=True,
                )
                break
    return summaries


def closing(config: PipelineConfig, summaries: dict) -> None:
    """The main job ends on screen with the evaluation table and where its grid is."""
    if "evaluate" not in summaries:
        return
    table = storage.read_bytes(storage.join(config.paths.eval, "metrics.md")).decode()
    print(
        f"\n{table}\nThe grid (demos, then each row's image for every prompt): {config.paths.eval}/grid.png",
        flush=True,
    )


main = stage_main(run, closing)

if __name__ == "__main__":
    main()
