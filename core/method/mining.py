"""Mining: group a corpus by URL, keep the clusters whose images agree with each other and with their captions.

The result is D_S: one subject cluster C_s per kept group (3 to `max_demos` images with their own captions) plus
unseen prompts p_s written from templates. Corrupt images are skipped and counted, never fatal.
"""

from __future__ import annotations

import hashlib
import json
from collections import Counter, defaultdict

import numpy as np
import pyarrow as pa
from PIL import Image
from tqdm import tqdm

from core.config import MineConfig
from core.data.images import from_png, to_png
from core.models.scorer import Scorer
from core.toy import world as toyworld


def _class_of(captions: list[str]) -> str:
    words = Counter(w for c in captions for w in c.lower().replace(",", " ").split() if w in toyworld.CLASSES)
    return words.most_common(1)[0][0] if words else "thing"


def select_cluster(image_emb: np.ndarray, text_emb: np.ndarray, cfg: MineConfig) -> tuple[list[int], str, int]:
    """The similarity filters on one URL group's unit embeddings (images (N, E), their captions (N, E)).

    Returns (the members kept, in order, at most `max_demos`; "" or the reason the group is dropped: too_small,
    incoherent, off_caption; how many images were outliers). Images whose mean similarity to the rest of the group is
    under `min_image_image` are outliers; the cluster is kept when enough images remain and their mean image-caption
    similarity passes `min_image_text`. Shared by the in-process `mine` and the Ray Data one
    (`actors/mining_pool.py`)."""
    if len(image_emb) < cfg.min_cluster_size:
        return [], "too_small", 0
    sim = image_emb @ image_emb.T
    mean_other = (sim.sum(1) - 1.0) / (len(image_emb) - 1)
    keep = [i for i in range(len(image_emb)) if mean_other[i] >= cfg.min_image_image]
    outliers = len(image_emb) - len(keep)
    if len(keep) < cfg.min_cluster_size:
        return keep, "incoherent", outliers
    keep = keep[: cfg.max_demos]
    if float((image_emb[keep] * text_emb[keep]).sum(-1).mean()) < cfg.min_image_text:
        return keep, "off_caption", outliers
    return keep, "", outliers


DROP_COUNTERS = {
    "too_small": "dropped_too_small",
    "incoherent": "dropped_incoherent",
    "off_caption": "dropped_off_caption",
}


def cluster_row(
    url: str,
    images: list[bytes],
    captions: list[str],
    truths: set,
    cfg: MineConfig,
    rng: np.random.Generator,
    resolution: int,
    version: int = 1,
) -> dict:
    """A D_S row for a kept cluster (PNG demos with their captions) with unseen prompts written from templates."""
    class_name = _class_of(captions)
    subject_id = "s" + hashlib.sha256(url.encode()).hexdigest()[:12]
    prompts = toyworld.prompts_for(
        class_name, cfg.prompts_per_subject, rng, resolution, key=subject_id, version=version
    )
    truth = next(iter(truths)) if len(truths) == 1 and None not in truths else None
    return {
        "subject_id": subject_id,
        "class_name": class_name,
        "demo_images": list(images),
        "demo_captions": list(captions),
        "prompt_ids": [p.prompt_id for p, _ in prompts],
        "prompts": [p.text for p, _ in prompts],
        "prompt_skills": [p.skill for p, _ in prompts],
        "source_url": url,
        "subject_truth": json.dumps({"subject_id": truth}) if truth else None,
        "prompt_truths": [json.dumps(p.truth) for p, _ in prompts],
    }


def purity(all_truths: list[set], kept_truths: list[set], kept: list[bool]) -> dict:
    """Known only in the toy world: how pure the kept clusters are against the corpus as it came, and how many of the
    pure groups mining keeps.

    `all_truths` holds, for each URL group with at least one decodable image, the subjects of its decodable images,
    and `kept` whether that group became a cluster; `corpus_pure_share` is the share of those groups that hold one
    subject, `kept_pure_share` the same over the kept clusters (precision), `pure_groups_kept_share` the share of
    the pure groups kept (recall). Both mining engines report these through this function."""
    if not any(None not in t for t in all_truths):
        return {}
    pure = [len(t) == 1 for t in all_truths]
    return {
        "corpus_pure_share": float(np.mean(pure)),
        "kept_pure_share": float(np.mean([len(t) == 1 for t in kept_truths])) if kept_truths else float("nan"),
        "pure_groups_kept_share": float(np.mean([k for k, p in zip(kept, pure, strict=True) if p]))
        if any(pure)
        else float("nan"),
    }


def mine(
    corpus: pa.Table,
    scorer: Scorer,
    cfg: MineConfig,
    resolution: int = 32,
    progress: bool = True,
    version: int = 1,
) -> tuple[list[dict], dict]:
    """corpus: a CORPUS_SCHEMA table. Returns (D_S rows, summary counts); the prompts' scenes are of world
    `version`."""
    groups: dict[str, list[tuple[np.ndarray, str, str | None]]] = defaultdict(list)
    corrupt = 0
    resized = 0
    for url, image, caption, truth in zip(
        *(corpus.column(c).to_pylist() for c in ("url", "image", "caption", "truth_subject_id"))
    ):
        try:
            img = from_png(image)
        except ValueError:
            corrupt += 1
            continue
        if img.shape[:2] != (resolution, resolution):
            img = np.asarray(Image.fromarray(img).resize((resolution, resolution), Image.BICUBIC))
            resized += 1
        groups[url].append((img, caption or "", truth))
    summary = Counter(
        groups=len(groups), images=corpus.num_rows, corrupt_images_skipped=corrupt, images_resized=resized
    )
    rng = np.random.default_rng(cfg.seed)
    rows = []
    kept_truths: list[set] = []
    kept_urls: set[str] = set()
    for url in tqdm(sorted(groups), desc="mine", disable=not progress, mininterval=2):
        members = groups[url]
        if len(members) < cfg.min_cluster_size:
            summary["dropped_too_small"] += 1
            continue
        images = [m[0] for m in members]
        image_emb = scorer.encode_images(images).numpy()
        text_emb = scorer.encode_texts([m[1] for m in members]).numpy()
        keep, dropped, outliers = select_cluster(image_emb, text_emb, cfg)
        summary["images_dropped_as_outliers"] += outliers
        if dropped:
            summary[DROP_COUNTERS[dropped]] += 1
            continue
        kept_truths.append({members[i][2] for i in keep})
        kept_urls.add(url)
        rows.append(
            cluster_row(
                url,
                [to_png(images[i]) for i in keep],
                [members[i][1] for i in keep],
                kept_truths[-1],
                cfg,
                rng,
                resolution,
                version,
            )
        )
    summary["kept"] = len(rows)
    summary.update(purity([{m[2] for m in groups[u]} for u in groups], kept_truths, [u in kept_urls for u in groups]))
    return rows, dict(summary)
