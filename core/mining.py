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

from core import toyworld
from core.config import MineConfig
from core.scorer import Scorer


def _class_of(captions: list[str]) -> str:
    words = Counter(w for c in captions for w in c.lower().replace(",", " ").split() if w in toyworld.CLASSES)
    return words.most_common(1)[0][0] if words else "thing"


def mine(corpus: pa.Table, scorer: Scorer, cfg: MineConfig, resolution: int = 32, progress: bool = True) -> tuple[list[dict], dict]:
    """corpus: a CORPUS_SCHEMA table. Returns (D_S rows, summary counts)."""
    groups: dict[str, list[tuple[np.ndarray, str, str | None]]] = defaultdict(list)
    corrupt = 0
    resized = 0
    for url, image, caption, truth in zip(*(corpus.column(c).to_pylist() for c in ("url", "image", "caption", "truth_subject_id"))):
        try:
            img = toyworld.from_png(image)
        except ValueError:
            corrupt += 1
            continue
        if img.shape[:2] != (resolution, resolution):
            img = np.asarray(Image.fromarray(img).resize((resolution, resolution), Image.BICUBIC))
            resized += 1
        groups[url].append((img, caption or "", truth))
    summary = Counter(groups=len(groups), images=corpus.num_rows, corrupt_images_skipped=corrupt, images_resized=resized)
    rng = np.random.default_rng(cfg.seed)
    rows = []
    kept_truths: list[set] = []
    for url in tqdm(sorted(groups), desc="mine", disable=not progress, mininterval=2):
        members = groups[url]
        if len(members) < cfg.min_cluster_size:
            summary["dropped_too_small"] += 1
            continue
        images = [m[0] for m in members]
        emb = scorer.encode_images(images)
        sim = (emb @ emb.T).numpy()
        mean_other = (sim.sum(1) - 1.0) / (len(images) - 1)
        keep = [i for i in range(len(images)) if mean_other[i] >= cfg.min_image_image]
        summary["images_dropped_as_outliers"] += len(images) - len(keep)
        if len(keep) < cfg.min_cluster_size:
            summary["dropped_incoherent"] += 1
            continue
        keep = keep[: cfg.max_demos]
        captions = [members[i][1] for i in keep]
        image_text = float(scorer.clip_scores([images[i] for i in keep], captions).mean())
        if image_text < cfg.min_image_text:
            summary["dropped_off_caption"] += 1
            continue
        truths = {members[i][2] for i in keep}
        kept_truths.append(truths)
        class_name = _class_of(captions)
        subject_id = "s" + hashlib.sha256(url.encode()).hexdigest()[:12]
        prompts = toyworld.prompts_for(class_name, cfg.prompts_per_subject, rng, resolution, key=subject_id)
        truth = next(iter(truths)) if len(truths) == 1 and None not in truths else None
        rows.append(
            {
                "subject_id": subject_id,
                "class_name": class_name,
                "demo_images": [toyworld.to_png(images[i]) for i in keep],
                "demo_captions": captions,
                "prompt_ids": [p.prompt_id for p, _ in prompts],
                "prompts": [p.text for p, _ in prompts],
                "prompt_skills": [p.skill for p, _ in prompts],
                "source_url": url,
                "subject_truth": json.dumps({"subject_id": truth}) if truth else None,
                "prompt_truths": [json.dumps(p.truth) for p, _ in prompts],
            }
        )
    summary["kept"] = len(rows)
    all_truths = [{m[2] for m in groups[u]} for u in groups]
    if any(None not in t for t in all_truths):
        # Known only in the toy world: how pure the kept clusters are against the corpus as it came.
        summary["corpus_pure_share"] = float(np.mean([len(t) == 1 for t in all_truths]))
        summary["kept_pure_share"] = float(np.mean([len(t) == 1 for t in kept_truths])) if kept_truths else float("nan")
    return rows, dict(summary)
