"""Mining at scale with Ray Data: a real corpus (parquet of url, image, caption) streams through a pool of scorer
actors, then the similarity filters run per URL group.

1. `read_parquet` of the corpus shards.
2. `map_batches(EmbedBatch, concurrency=N)`: each actor loads the open_clip scorer from its local path once, decodes
   the images (a corrupt one is marked, not fatal), and embeds images and captions (unit vectors).
3. `groupby("url").map_groups(select_group)`: `core.method.mining.select_cluster` on each group's embeddings, no model
   needed; one row per group (kept demos, or the reason it was dropped).
4. The driver turns kept groups into D_S rows (`core.method.mining.cluster_row`) in URL order, so the result equals the
   in-process `core.method.mining.mine` on the same corpus and scorer.
"""

from __future__ import annotations

import json
import logging
from collections import Counter

import numpy as np

from core.config import MineConfig
from core.data import storage

logger = logging.getLogger(__name__)


class EmbedBatch:
    """A Ray Data callable class: one scorer per actor, loaded once."""

    def __init__(self, scorer_uri: str, threads: int = 1):
        import torch

        from core.models.scorer import load_scorer

        torch.set_num_threads(threads)
        self.scorer = load_scorer(storage.local_dir(scorer_uri))
        size = self.scorer.model.visual.image_size
        self.size = size[0] if isinstance(size, (tuple, list)) else int(size)
        self.dim = int(self.scorer.encode_texts([""]).shape[-1])

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        from core.data.images import from_png
        from core.models.backbone import fit_images

        images, ok = [], []
        for data in batch["image"]:
            try:
                images.append(fit_images([from_png(bytes(data))], self.size)[0])
                ok.append(True)
            except ValueError:  # corrupt bytes: kept as a row, counted, never embedded
                ok.append(False)
        ok = np.asarray(ok, dtype=bool)
        image_emb = np.zeros((len(ok), self.dim), np.float32)
        text_emb = np.zeros((len(ok), self.dim), np.float32)
        if ok.any():
            image_emb[ok] = self.scorer.encode_images(np.stack(images)).numpy()
            text_emb[ok] = self.scorer.encode_texts([str(c or "") for c in batch["caption"][ok]]).numpy()
        return {**batch, "ok": ok, "image_emb": image_emb, "text_emb": text_emb}


def select_group(group: dict[str, np.ndarray], cfg: MineConfig) -> dict[str, np.ndarray]:
    """One URL group's decision (rows in corpus order): a single row with the kept demos or the drop reason."""
    from core.method.mining import select_cluster

    ok = np.asarray(group["ok"], dtype=bool)
    image_emb = np.stack(group["image_emb"])[ok]
    text_emb = np.stack(group["text_emb"])[ok]
    keep, reason, outliers = select_cluster(image_emb, text_emb, cfg)
    members = np.flatnonzero(ok)
    chosen = members[keep] if not reason else np.asarray([], dtype=int)
    truths = group["truth_subject_id"]
    return {
        "url": np.asarray([group["url"][0]]),
        "reason": np.asarray([reason]),
        "outliers": np.asarray([outliers]),
        "corrupt": np.asarray([int((~ok).sum())]),
        "images": np.asarray([len(ok)]),
        "demo_images": np.asarray([[bytes(group["image"][i]) for i in chosen]], dtype=object),
        "demo_captions": np.asarray([[str(group["caption"][i] or "") for i in chosen]], dtype=object),
        "truths": np.asarray([json.dumps([None if truths[i] is None else str(truths[i]) for i in chosen])]),
        # Purity counts the subjects among decodable images only, as the in-process miner sees them.
        "all_truths": np.asarray([json.dumps([None if truths[i] is None else str(truths[i]) for i in members])]),
    }


def mine_with_ray_data(
    corpus_uri: str,
    scorer_uri: str,
    cfg: MineConfig,
    resolution: int = 32,
    num_actors: int = 2,
    batch_size: int = 64,
    version: int = 1,
) -> tuple[list[dict], dict]:
    """D_S rows and summary counts for the corpus at `corpus_uri`, as `core.method.mining.mine` gives them."""
    import ray

    from core.data import schema
    from core.method.mining import DROP_COUNTERS, cluster_row, purity

    shards = storage.list_shards(corpus_uri)
    if not shards:
        raise storage.MissingInputError(
            f"corpus: no complete parquet shards under '{corpus_uri}' (config key `paths.corpus`)"
        )
    storage.check_shards(shards, "paths.corpus", "corpus")  # a bad file named here, not deep in a read task
    fs, paths = storage.shard_paths(corpus_uri, shards)
    # The scorer actors hold a CPU each for the whole run: leave one for Ray Data's read and groupby tasks, or they
    # wait forever behind the actors.
    cpus = int(ray.cluster_resources().get("CPU", 1))
    if num_actors > cpus - 1:
        if cpus < 2:
            raise RuntimeError(f"mining with Ray Data needs at least 2 CPUs in the cluster, it has {cpus}")
        logger.warning(
            "mine.num_actors=%d leaves no CPU for Ray Data's tasks on %d CPUs: using %d", num_actors, cpus, cpus - 1
        )
        num_actors = cpus - 1
    ray.data.DataContext.get_current().enable_progress_bars = False
    ds = ray.data.read_parquet(paths, filesystem=fs, schema=schema.CORPUS_SCHEMA)
    ds = ds.map_batches(
        EmbedBatch,
        fn_constructor_kwargs={"scorer_uri": scorer_uri},
        concurrency=num_actors,
        batch_size=batch_size,
        batch_format="numpy",
    )
    groups = sorted(
        ds.groupby("url").map_groups(select_group, fn_kwargs={"cfg": cfg}, batch_format="numpy").iter_rows(),
        key=lambda g: g["url"],
    )

    summary = Counter(
        groups=len(groups),
        images=sum(int(g["images"]) for g in groups),
        corrupt_images_skipped=sum(int(g["corrupt"]) for g in groups),
    )
    rng = np.random.default_rng(cfg.seed)
    rows, kept_truths = [], []
    for g in groups:
        summary["images_dropped_as_outliers"] += int(g["outliers"])
        if g["reason"]:
            summary[DROP_COUNTERS[str(g["reason"])]] += 1
            continue
        kept_truths.append(set(json.loads(g["truths"])))
        rows.append(
            cluster_row(
                str(g["url"]),
                list(g["demo_images"]),
                list(g["demo_captions"]),
                kept_truths[-1],
                cfg,
                rng,
                resolution,
                version,
            )
        )
    summary["kept"] = len(rows)
    decodable = [g for g in groups if int(g["images"]) > int(g["corrupt"])]
    summary.update(
        purity(
            [set(json.loads(g["all_truths"])) for g in decodable], kept_truths, [not g["reason"] for g in decodable]
        )
    )
    return rows, dict(summary)
