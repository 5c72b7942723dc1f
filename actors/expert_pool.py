"""The expert farm: a fixed pool of Ray actors, one per accelerator slot, each hosting one `core.method.expert.Expert`.

Each actor loads the base weights and the scorer once, then for every subject it is given resets to the base,
fine-tunes, samples, scores delta-CLIP and writes that subject's G shard atomically (temporary name, then
rename), kept and rejected renders alike. A subject whose actor died is retried on a fresh actor; a subject whose
data is bad is recorded as failed with its reason.
"""

from __future__ import annotations

import logging
import os
import resource
import time
from collections import Counter
from collections.abc import Iterable

import ray

from actors.pool import run_actor_pool
from core.config import ExpertConfig, FilterConfig, GLayoutConfig
from core.data import g, storage
from core.data import g_manifest as manifest

logger = logging.getLogger(__name__)


@ray.remote
class ExpertActor:
    def __init__(self, base_uri: str, scorer_uri: str, cfg: ExpertConfig, provenance: dict, world_version: int = 1):
        import torch

        from core.method.expert import Expert
        from core.models.backbone import load_backbone
        from core.models.scorer import load_scorer

        torch.set_num_threads(cfg.threads)
        from core.models.device import pick_device

        backbone = load_backbone(storage.local_dir(base_uri)).to(pick_device())
        scorer = load_scorer(storage.local_dir(scorer_uri))
        self.expert = Expert(backbone, scorer, cfg, provenance, world_version)

    def pid(self) -> int:

        return os.getpid()

    def run(self, record: dict, g_uri: str | None, min_delta: float | None) -> dict:
        """Fine-tune and render one subject; write its shard to `g_uri` (None: return the rows instead)."""
        return run_subject(self.expert, record, g_uri, min_delta)


def run_subject(expert, record: dict, g_uri: str | None, min_delta: float | None) -> dict:
    """One subject's whole unit of work, as an actor does it (and `benchmarks.expert_throughput`'s plain processes):
    fine-tune, render, score, write the shard. The result carries the shard's manifest entry (`entry`), which the
    driver commits, the worker's pid and its peak memory so far."""
    try:
        rows, stats = expert.run_subject(record)
    except ValueError as err:  # bad subject data (an undecodable demo): fail it, don't retry it
        return {"subject_id": record["subject_id"], "status": "failed", "reason": str(err)}
    kept = int(g.passes([r["delta"] for r in rows], min_delta).sum())  # for the summary; G stores every render
    out = {"status": "done", **stats, "total": len(rows), "kept": kept}
    if g_uri is None:
        out["rows"] = rows
    else:
        out.pop("checkpoints", None)  # G holds the renders at expert.steps; the others are evaluate's curve
        out["entry"] = g.write_subject(rows, g_uri, record["subject_id"], kind=expert.cfg.kind, commit=False)
    out["pid"] = os.getpid()
    out["peak_rss_mb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)  # Linux: KiB
    return out


class ManifestWriter:
    """The driver's side of G's manifest during a run: commits finished subjects' entries in batches, folds the
    manifest's segments into a snapshot now and then, and merges small shards into shards of about
    `layout.shard_rows` rows. Only entries whose results reached the driver are committed, so a merge never holds a
    subject that a retry may write again."""

    def __init__(self, g_uri: str, layout: GLayoutConfig):
        self.g_uri, self.layout = g_uri, layout
        self.pending: list[dict] = []
        self.last_commit = time.monotonic()
        self.segments = self.since_merge = self.deleted = 0
        self.merged = 0

    def add(self, entry: dict) -> None:
        self.pending.append(entry)
        self.since_merge += 1
        due = time.monotonic() - self.last_commit >= self.layout.commit_every_s
        if len(self.pending) >= self.layout.commit_every or due:
            self.commit()
        if self.since_merge >= self.layout.compact_every:
            self.merge(final=False)

    def commit(self) -> None:
        if self.pending:
            manifest.commit(self.g_uri, self.pending)
            self.pending, self.segments = [], self.segments + 1
        self.last_commit = time.monotonic()
        if self.segments >= self.layout.snapshot_every:
            manifest.write_snapshot(self.g_uri)
            self.segments = 0

    def merge(self, final: bool) -> None:
        """Commit, merge small shards, and delete the files merged away `retention_s` ago (so the manifest's
        tombstones stay as few as the shards merged within that window)."""
        self.commit()
        self.merged += len(manifest.compact(self.g_uri, self.layout.shard_rows, final=final))
        self.deleted += len(manifest.vacuum(self.g_uri, self.layout.retention_s))
        self.since_merge = 0

    def close(self) -> dict:
        """Commit the rest, merge small shards into whole groups of `shard_rows` (fewer rows left over stay as they
        are, so a small G keeps a shard per subject to split among workers), delete what was merged away
        `retention_s` ago, and fold what is left into a snapshot."""
        self.merge(final=False)
        m = manifest.read(self.g_uri)
        if m.segments:
            manifest.write_snapshot(self.g_uri, m)
        return {"merged_shards": self.merged, "deleted_after_merge": self.deleted}


def run_pool(
    records: Iterable[dict],
    base_uri: str,
    scorer_uri: str,
    cfg: ExpertConfig,
    provenance: dict,
    g_uri: str | None,
    filter_cfg: FilterConfig,
    progress: bool = True,
    layout: GLayoutConfig | None = None,
    total: int | None = None,
    keep_rows: bool = False,
    actor_class=None,
    world_version: int = 1,
) -> tuple[list[dict], dict]:
    """Run a stream of D_S records through the pool (`actors.pool.run_actor_pool`) with at most
    `max_tasks_in_flight` tasks per actor, retrying a subject whose actor died up to `max_retries` times.

    Returns (the failed subjects' results, or every result when `keep_rows` or without `g_uri`, summary counts).
    Results are summarised as they arrive, so the driver's memory does not grow with the subjects. With `g_uri`,
    subjects already in G are skipped (a re-run resumes), an unreadable shard found there is moved aside, listed in
    the summary's `moved_aside`, and its subject rendered again, and the manifest is written by a `ManifestWriter`;
    without it, result dicts carry their G rows. `actor_class` (default `ExpertActor`) is any Ray actor class with
    the same constructor and `run` (the scale benchmark's stub expert, which writes rows without a model).
    `world_version`: the toy world whose scenes `cfg.kind` "oracle" draws.
    """
    found = g.resume_state(g_uri, {**provenance, "kind": cfg.kind}) if g_uri else g.ResumeState(set(), [])
    for moved in found.moved_aside:
        logger.warning("G shard %s is unreadable (%s): moved to %s", moved["shard"], moved["error"], moved["moved_to"])
    summary = Counter(subjects=0, skipped_already_in_g=0)
    if found.adopted:
        summary["adopted_into_manifest"] = found.adopted

    def todo():
        for record in records:
            summary["subjects"] += 1
            if record["subject_id"] in found.done:
                summary["skipped_already_in_g"] += 1
                continue
            yield record

    writer = ManifestWriter(g_uri, layout or GLayoutConfig()) if g_uri else None
    kept: list[dict] = []

    def on_result(result: dict) -> None:
        if result["status"] == "done":
            summary["done"] += 1
            summary["renders"] += result["total"]
            summary["kept"] += result["kept"]
            summary["rejected"] += result["total"] - result["kept"]
            if writer is not None:
                writer.add(result.pop("entry"))
            if keep_rows or g_uri is None:
                kept.append(result)
        else:
            summary["failed"] += 1
            kept.append(result)

    options = {"num_cpus": cfg.num_cpus, "num_gpus": cfg.num_gpus, "resources": dict(cfg.resources)}
    start = time.perf_counter()
    _, restarts = run_actor_pool(
        lambda: (
            (actor_class or ExpertActor)
            .options(**options)
            .remote(base_uri, scorer_uri, cfg, provenance, world_version)
        ),
        todo(),
        lambda actor, record: actor.run.remote(record, g_uri, filter_cfg.min_delta),
        key=lambda record: record["subject_id"],
        key_field="subject_id",
        num_actors=cfg.num_actors,
        max_in_flight=cfg.max_tasks_in_flight,
        max_retries=cfg.max_retries,
        desc="experts",
        progress=progress,
        total=None if total is None else max(0, total - len(found.done)),
        on_result=on_result,
    )
    if summary["done"] or summary["failed"]:
        summary["seconds"] = round(time.perf_counter() - start, 2)
    if restarts:
        summary["actor_restarts"] = restarts
    out = dict(summary)
    if writer is not None:
        out.update(writer.close())
    if found.moved_aside:
        out["moved_aside"] = [m["shard"] for m in found.moved_aside]
    return kept, out
