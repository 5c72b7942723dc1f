"""The expert farm: a fixed pool of Ray actors, one per accelerator slot, each hosting one `core.expert.Expert`.

Each actor loads the base weights and the scorer once, then for every subject it is given resets to the base,
fine-tunes, samples, scores delta-CLIP and writes that subject's G shard atomically (temporary name, then
rename), kept and rejected renders alike. A subject whose actor died is retried on a fresh actor; a subject whose
data is bad is recorded as failed with its reason.
"""

from __future__ import annotations

import logging
import time
from collections import Counter

import ray
from ray.exceptions import ActorDiedError, ActorUnavailableError, RayActorError, RayTaskError
from tqdm import tqdm

from core import schema, storage
from core.config import ExpertConfig, FilterConfig

log = logging.getLogger(__name__)


@ray.remote
class ExpertActor:
    def __init__(self, base_uri: str, scorer_uri: str, cfg: ExpertConfig, provenance: dict):
        import torch

        from core.backbone import load_backbone
        from core.expert import Expert
        from core.scorer import load_scorer

        torch.set_num_threads(cfg.threads)
        from core.device import pick_device

        backbone = load_backbone(storage.local_dir(base_uri)).to(pick_device())
        scorer = load_scorer(storage.local_dir(scorer_uri))
        self.expert = Expert(backbone, scorer, cfg, provenance)

    def pid(self) -> int:
        import os

        return os.getpid()

    def run(self, record: dict, g_uri: str | None, min_delta: float | None) -> dict:
        """Fine-tune and render one subject; write its shard to `g_uri` (None: return the rows instead)."""
        try:
            rows, stats = self.expert.run_subject(record, min_delta)
        except ValueError as err:  # bad subject data (an undecodable demo): fail it, don't retry it
            return {"subject_id": record["subject_id"], "status": "failed", "reason": str(err)}
        out = {"status": "done", **stats, "total": len(rows), "kept": sum(r["kept"] for r in rows)}
        if g_uri is None:
            out["rows"] = rows
        else:
            table = schema.table_from_rows(rows, schema.G_SCHEMA, "G")
            storage.write_shard(table, g_uri, schema.G_SCHEMA, name=f"{SHARD_PREFIX}{record['subject_id']}")
        return out


SHARD_PREFIX = "subject-"  # one G shard per subject: a re-run knows what is done from the file names


def shard_name_subject(shard_uri: str) -> str:
    name = shard_uri.rsplit("/", 1)[-1]
    return name[len(SHARD_PREFIX) : -len(storage.SHARD_SUFFIX)] if name.startswith(SHARD_PREFIX) else ""


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
    """Run every record through the pool with at most `max_tasks_in_flight` tasks per actor.

    Returns (one result dict per subject, summary counts). With `g_uri`, subjects whose shard is already there are
    skipped (a re-run resumes); without it, result dicts carry their G rows.
    """
    done_before = set()
    if g_uri:
        from actors.g_dataset import PROVENANCE, shard_provenance

        mine = tuple(provenance[k] for k in PROVENANCE)
        for shard in storage.list_shards(g_uri):
            if shard_provenance(shard) != {mine}:
                raise ValueError(
                    f"{shard} was rendered by another base, expert config or scorer ({shard_provenance(shard)} vs {mine}); "
                    "write this run to a new `paths.g`"
                )
            done_before.add(shard_name_subject(shard))
    todo = [r for r in records if r["subject_id"] not in done_before]
    summary = Counter(subjects=len(records), skipped_already_in_g=len(records) - len(todo))
    results: list[dict] = []
    if not todo:
        return results, dict(summary)

    options = {"num_cpus": cfg.num_cpus, "num_gpus": cfg.num_gpus, "resources": dict(cfg.resources)}

    def new_actor():
        return ExpertActor.options(**options).remote(base_uri, scorer_uri, cfg, provenance)

    actors = [new_actor() for _ in range(min(cfg.num_actors, len(todo)))]
    queue = list(todo)
    attempts: Counter = Counter()
    in_flight: dict = {}  # ObjectRef -> (actor index, actor handle, record)
    bar = tqdm(total=len(todo), desc="experts", disable=not progress)

    def submit(i: int) -> None:
        record = queue.pop(0)
        attempts[record["subject_id"]] += 1
        in_flight[actors[i].run.remote(record, g_uri, filter_cfg.min_delta)] = (i, actors[i], record)

    try:
        for i in range(len(actors)):
            for _ in range(cfg.max_tasks_in_flight):
                if queue:
                    submit(i)
        start = time.perf_counter()
        while in_flight:
            ready, _ = ray.wait(list(in_flight), num_returns=1)
            i, actor, record = in_flight.pop(ready[0])
            try:
                result = ray.get(ready[0])
            except (RayActorError, ActorDiedError, ActorUnavailableError) as err:
                sid = record["subject_id"]
                log.warning("expert actor %d died on subject %s (%s)", i, sid, type(err).__name__)
                if actors[i] is actor:  # the other tasks queued on the dead actor fail too: replace it once
                    summary["actor_restarts"] += 1
                    actors[i] = new_actor()
                if attempts[sid] <= cfg.max_retries:
                    queue.insert(0, record)
                else:
                    results.append({"subject_id": sid, "status": "failed", "reason": f"actor died {attempts[sid]} times"})
                    summary["failed"] += 1
                    bar.update(1)
            except RayTaskError as err:  # a bug or bad data inside the task: record it, don't retry it forever
                results.append({"subject_id": record["subject_id"], "status": "failed", "reason": str(err.cause)[:500]})
                summary["failed"] += 1
                bar.update(1)
            else:
                results.append(result)
                bar.update(1)
                if result["status"] == "done":
                    summary["done"] += 1
                    summary["renders"] += result["total"]
                    summary["kept"] += result["kept"]
                    summary["rejected"] += result["total"] - result["kept"]
                else:
                    summary["failed"] += 1
            while queue and sum(1 for a, _, _ in in_flight.values() if a == i) < cfg.max_tasks_in_flight:
                submit(i)
        summary["seconds"] = round(time.perf_counter() - start, 2)
    finally:
        bar.close()
        for actor in actors:
            ray.kill(actor)  # never leave actors holding CPUs that the next stage needs
    return results, dict(summary)
