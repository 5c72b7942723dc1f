"""Stage `experts`: a pool of Ray actors fine-tunes one expert per D_S subject and writes G shards (kept and
rejected renders, with delta-CLIP scores and provenance) to `paths.g`, recorded in G's manifest and merged into
shards of about `g_layout.shard_rows` rows. D_S is streamed; re-running skips subjects already in G.

    python -m apps.experts experiment=smoke
"""

from __future__ import annotations

import json
import time
from itertools import islice

from actors.cluster import ray_cluster
from actors.expert_pool import run_pool
from apps.config import base_uri, require_base, stage_main
from core.config import PipelineConfig, config_hash, to_dict
from core.data import schema, storage
from core.models.backbone import weight_files


def provenance(config: PipelineConfig) -> dict:
    from core.models.scorer import load_scorer

    base = storage.local_dir(base_uri(config))
    return {
        "base_checkpoint_hash": storage.sha256_files(weight_files(base)),
        # What shapes the renders in G: not `checkpoints`, which only adds evaluate's renders on the way.
        "expert_config_hash": config_hash({k: v for k, v in to_dict(config.expert).items() if k != "checkpoints"}),
        "scorer_hash": load_scorer(storage.local_dir(config.paths.scorer)).digest,
    }


def run(config: PipelineConfig) -> dict:
    # D_S streams in batches of rows: the driver never holds it whole (demo images included).
    if config.expert.checkpoints:
        raise ValueError(
            "expert.checkpoints renders evaluate's fidelity-by-steps curve (evaluate.expert_steps sets it); the "
            "experts stage writes G at expert.steps: leave it empty"
        )
    total, records = storage.iter_rows(config.paths.ds, schema.DS_SCHEMA, "paths.ds", "D_S")
    require_base(config)
    storage.require(config.paths.scorer, "paths.scorer", "toy scorer")
    if config.expert.max_subjects is not None:
        total, records = min(total, config.expert.max_subjects), islice(records, config.expert.max_subjects)
    with ray_cluster(config.cluster):
        failures, summary = run_pool(
            records,
            base_uri(config),
            config.paths.scorer,
            config.expert,
            provenance(config),
            config.paths.g,
            config.filter,
            layout=config.g_layout,
            total=total,
            world_version=config.world.version,
        )
    if failures:
        report = json.dumps({"summary": summary, "failed": failures}, indent=1, default=str).encode()
        storage.write_bytes(storage.join(config.paths.g, "_reports", f"experts-{int(time.time())}.json"), report)
    if failures and not summary.get("done") and not summary.get("skipped_already_in_g"):
        raise RuntimeError(f"every expert subject failed; first reason: {failures[0].get('reason')}")
    return {
        "stage": "experts",
        **summary,
        "failures": [f"{r['subject_id']}: {r.get('reason')}" for r in failures][:10],
        "out": config.paths.g,
    }


main = stage_main(run)

if __name__ == "__main__":
    main()
