"""Stage `g_compact`: bring a G folder to the manifest layout and merge its small shards.

Records every complete shard the manifest does not list (a G written before the manifest existed, or shards whose
commit a killed driver never made; an unreadable one is moved aside under `_corrupt/`), merges shards smaller than
half of `g_layout.shard_rows` into shards of about that many rows (each merge one manifest commit; fewer rows than
that left over stay as they are), deletes the
files merged away more than `g_layout.retention_s` ago, and folds the manifest into one snapshot. Safe to re-run,
and to run while nothing writes G (a training run reading G is fine: merged-away files outlive the retention).

    python -m apps.g_compact paths.g=outputs/demo/g
    python -m apps.g_compact paths.g=s3://bucket/g g_layout.shard_rows=4096 g_layout.retention_s=0
"""

from __future__ import annotations

from apps.config import stage_main
from core.config import PipelineConfig
from core.data import g, storage
from core.data import g_manifest as manifest


def run(config: PipelineConfig) -> dict:
    uri, layout = config.paths.g, config.g_layout
    storage.require(uri, "paths.g", "G (expert renders)")
    before, moved, adopted = g.sync_manifest(uri)
    manifest.check_single(before)
    merged = manifest.compact(uri, layout.shard_rows)
    deleted = manifest.vacuum(uri, layout.retention_s)
    manifest.write_snapshot(uri)
    after = manifest.read(uri)
    return {
        "stage": "g_compact",
        "adopted_into_manifest": adopted,
        "moved_aside": [f"{m['shard']}: {m['error']}" for m in moved],
        "shards_before": before.live.num_rows,
        "merged_shards": len(merged),
        "deleted_after_merge": len(deleted),
        "shards": after.live.num_rows,
        "rows": int(sum(after.live.column("rows").to_pylist())),
        "out": uri,
    }


main = stage_main(run)

if __name__ == "__main__":
    main()
