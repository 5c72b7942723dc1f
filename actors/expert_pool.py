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

import ray

from actors.pool import run_actor_pool
from core.config import ExpertConfig, FilterConfig
from core.data import g, storage

logger = logging.getLogger(__name__)


@ray.remote
class ExpertActor:
    def __init__(self, base_uri: str, scorer_uri: str, cfg: ExpertConfig, provenance: dict):
        import torch

        from core.method.expert import Expert
        from core.models.backbone import load_backbone
        from core.models.scorer import load_scorer

        torch.set_num_threads(cfg.threads)
        from core.models.device import pick_device

        backbone = load_backbone(storage.local_dir(base_uri)).to(pick_device())
        scorer = load_scorer(storage.local_dir(scorer_uri))
        self.expert = Expert(backbone, scorer, cfg, provenance)

    def pid(self) -> int:

        return os.getpid()

    def run(self, record: dict, g_uri: str | None, min_delta: float | None) -> dict:
        """Fine-tune and render one subject; write its shard to `g_uri` (None: return the rows instead)."""
        return run_subject(self.expert, record, g_uri, min_delta)


def run_subject(expert, record: dict, g_uri: str | None, min_delta: float | None) -> dict:
    """One subject's whole unit of work, as an actor does it (and `benchmarks.expert_throughput`'s plain processes):
    fine-tune, render, score, write the shard. Carries the worker's pid and peak memory so far."""
    try:
        rows, stats = expert.run_subject(record)
    except ValueError as err:  # bad subject data (an undecodable demo): fail it, don't retry it
        return {"subject_id": record["subject_id"], "status": "failed", "reason": str(err)}
    kept = int(g.passes([r["delta"] for r in rows], min_delta).sum())  # for the summary; G stores every render
    out = {"status": "done", **stats, "total": len(rows), "kept": kept}
    if g_uri is None:
        out["rows"] = rows
    else:
        g.write_subject(rows, g_uri, record["subject_id"])
    out["pid"] = os.getpid()
    out["peak_rss_mb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)  # Linux: KiB
    return out


def run_pool(
    records: list[dict],
    base_uri: str,
    scorer_uri: str,
    cfg: ExpertConfig,
    provenance: dict,
    g_uri: str | None,
    filter_cfg: FilterConfig,
    progress: bool = True,
) -> tuple[list[dict], dict]:
    """Run every record through the pool (`actors.pool.run_actor_pool`) with at most `max_tasks_in_flight` tasks per
    actor, retrying a subject whose actor died up to `max_retries` times.

    Returns (one result dict per subject, summary counts). With `g_uri`, subjects whose shard is already there are
    skipped (a re-run resumes), and an unreadable shard found there is moved aside, listed in the summary's
    `moved_aside`, and its subject rendered again; without it, result dicts carry their G rows.
    """
    found = g.resume_state(g_uri, provenance) if g_uri else g.ResumeState(set(), [])
    for moved in found.moved_aside:
        logger.warning("G shard %s is unreadable (%s): moved to %s", moved["shard"], moved["error"], moved["moved_to"])
    todo = [r for r in records if r["subject_id"] not in found.done]
    summary = Counter(subjects=len(records), skipped_already_in_g=len(records) - len(todo))
    moved = {"moved_aside": [m["shard"] for m in found.moved_aside]} if found.moved_aside else {}
    if not todo:
        return [], {**summary, **moved}

    options = {"num_cpus": cfg.num_cpus, "num_gpus": cfg.num_gpus, "resources": dict(cfg.resources)}
    start = time.perf_counter()
    results, restarts = run_actor_pool(
        lambda: ExpertActor.options(**options).remote(base_uri, scorer_uri, cfg, provenance),
        todo,
        lambda actor, record: actor.run.remote(record, g_uri, filter_cfg.min_delta),
        key=lambda record: record["subject_id"],
        key_field="subject_id",
        num_actors=cfg.num_actors,
        max_in_flight=cfg.max_tasks_in_flight,
        max_retries=cfg.max_retries,
        desc="experts",
        progress=progress,
    )
    summary["seconds"] = round(time.perf_counter() - start, 2)
    if restarts:
        summary["actor_restarts"] = restarts
    for result in results:
        if result["status"] == "done":
            summary["done"] += 1
            summary["renders"] += result["total"]
            summary["kept"] += result["kept"]
            summary["rejected"] += result["total"] - result["kept"]
        else:
            summary["failed"] += 1
    return results, {**summary, **moved}
