"""Evaluation on toy subjects never seen in training: exact subject and text fidelity from the trained attribute
readers (core/toy/readers.py), toy-CLIP CLIP-I and CLIP-T, a table and a PNG grid.

Methods compared: real renders of each prompt (the oracle row), the base model without demonstrations, the
per-subject expert (fine-tuned on the demos) and the apprentice (demos in context, no fine-tuning).
"""

from __future__ import annotations

import json
import math

import numpy as np
from PIL import Image, ImageDraw

from core.config import EvaluateConfig, WorldConfig
from core.data.g import passes
from core.data.images import from_png, to_png
from core.models.sampling import renoise, sample
from core.models.scorer import Scorer
from core.toy import readers as rd
from core.toy import world as toyworld

IDENTITY = ("body", "pattern", "pattern_colour")  # the subject's attributes that its class word does not say


def base_identity(
    backbone,
    reader,
    subjects: list,
    n: int,
    rng: np.random.Generator,
    seed: int,
    guidance: float,
    batch: int = 256,
    version: int = 1,
    num_inference_steps: int = 25,
) -> tuple[dict, np.ndarray]:
    """The base model drawing `n` full captions of `subjects` (scenes of world `version`, accessories but no style
    or edit) at `guidance`: the readers' accuracy per attribute, and `identity`, the mean over `IDENTITY`.
    Returns (accuracies, the first 64 images)."""
    pairs = identity_pairs(subjects, n, rng, version)
    captions = [toyworld.full_caption(s, sc) for s, sc in pairs]
    images = np.concatenate(
        [
            sample(
                backbone,
                captions[i : i + batch],
                guidance_scale=guidance,
                num_inference_steps=num_inference_steps,
                seed=seed + i,
            )
            for i in range(0, n, batch)
        ]
    )
    return read_identity(reader, images, pairs), images[:64]


def identity_pairs(subjects: list, n: int, rng: np.random.Generator, version: int) -> list[tuple]:
    """`n` (subject, scene) pairs for measuring identity: scenes of world `version`, accessories, no style or edit."""
    pairs = []
    for i in rng.choice(len(subjects), size=n):
        scene = toyworld.random_scene(rng, 32, version, accessory=rng.choice([None, None, *toyworld.ACCESSORIES]))
        pairs.append((subjects[int(i)], scene))
    return pairs


def read_identity(reader, images: np.ndarray, pairs: list[tuple]) -> dict:
    """The readers' accuracy per attribute on images of `pairs`, `identity` (the mean over `IDENTITY`), and
    `by_value`: for each identity attribute, the accuracy on the images whose subject has each value."""
    labels = np.asarray([rd.label_row(s, sc) for s, sc in pairs])
    pred = rd.predict(reader, images)
    acc = rd.accuracy_of(pred, labels)
    acc["identity"] = float(np.mean([acc[k] for k in IDENTITY]))
    out = {k: round(v, 4) for k, v in acc.items()}
    out["by_value"] = {}
    for head in IDENTITY:
        i = list(rd.HEADS).index(head)
        hits = pred[:, i] == labels[:, i]
        out["by_value"][head] = {
            value: round(float(hits[labels[:, i] == v].mean()), 4)
            for v, value in enumerate(rd.HEADS[head])
            if (labels[:, i] == v).any()
        }
    return out


CHECK_SAMPLES = 32  # the quick re-measurement recorded beside a base's identity


def measure_identity(
    backbone, reader, subjects: list, n: int, guidance: float, seed: int, version: int, check: bool = True
) -> dict:
    """`base_identity` on `n` samples, as a base's report records it, plus (with `check`) `check`: the same
    measurement on the first `CHECK_SAMPLES` of those captions and seeds, which anyone (a test) can repeat in
    seconds."""
    acc, _ = base_identity(
        backbone, reader, subjects, n, np.random.default_rng(seed + 3), seed + 2000, guidance, version=version
    )
    if not check:
        return {"guidance": guidance, "samples": n, "seed": seed, **acc}
    small = min(n, CHECK_SAMPLES)
    check, _ = base_identity(
        backbone, reader, subjects, small, np.random.default_rng(seed + 3), seed + 2000, guidance, version=version
    )
    return {"guidance": guidance, "samples": n, "seed": seed, **acc, "check": {"samples": small, **check}}


def choose_guidance(backbone, reader, subjects: list, scales: list[float], n: int, seed: int, version: int) -> dict:
    """The classifier-free guidance scale at which the base draws `subjects` best: `base_identity` on `n` full
    captions at each of `scales`, the same captions and seeds for each; a tie goes to the lower scale. Pass train
    subjects: the scale is a choice, and the test subjects are only ever measured at the scale chosen."""
    by_scale = {}
    for g in scales:
        acc, _ = base_identity(
            backbone, reader, subjects, n, np.random.default_rng(seed + 11), seed + 3000, g, version=version
        )
        by_scale[str(float(g))] = acc["identity"]
    chosen = max((float(g) for g in scales), key=lambda g: (by_scale[str(g)], -g))
    return {"subjects": "train", "samples": n, "seed": seed, "identity_by_guidance": by_scale, "chosen": chosen}


def readers_on_renoised(
    backbone,
    reader,
    subjects: list,
    n: int,
    strength: float,
    seed: int,
    version: int,
    batch: int = 256,
) -> dict:
    """How well the readers read images the base has made: renders of `n` full captions of `subjects` (the scenes of
    `base_identity`) noised to `strength` and denoised by `backbone` (SDEdit), read back. Per attribute, and
    `identity`."""
    rng = np.random.default_rng(seed)
    pairs = identity_pairs(subjects, n, rng, version)
    images = np.stack([toyworld.render(s, sc, 32, rng) for s, sc in pairs])
    captions = [toyworld.full_caption(s, sc) for s, sc in pairs]
    out = np.concatenate(
        [
            renoise(backbone, images[i : i + batch], captions[i : i + batch], strength=strength, seed=seed + i)
            for i in range(0, n, batch)
        ]
    )
    return {"strength": strength, "samples": n, **read_identity(reader, out, pairs)}


def eval_set(world: WorldConfig, cfg: EvaluateConfig) -> list[dict]:
    """D_S-style records for test subjects (or, with `cfg.split`, validation subjects; scenes of world
    `world.version`), each with the subject and the oracle renders of its prompts."""
    train, test = toyworld.split_subjects(world.seed, world.test_fraction)
    if cfg.split == "test":
        pool = test
    elif cfg.split == "validation":
        pool = toyworld.split_validation(train, world.seed, world.validation_fraction)[1]
        if not pool:
            raise ValueError("evaluate.split=validation needs world.validation_fraction > 0 (subjects kept out of G)")
    else:
        raise ValueError(f"evaluate.split must be test or validation, not {cfg.split!r}")
    rng = np.random.default_rng(cfg.seed)
    picks = rng.choice(len(pool), size=min(cfg.num_subjects, len(pool)), replace=False)
    records = []
    for idx in picks:
        subject = pool[int(idx)]
        demos = toyworld.demonstrations(subject, cfg.num_demos, rng, world.resolution, world.version)
        prompts = toyworld.prompts_for(
            subject.class_name,
            cfg.prompts_per_subject,
            rng,
            world.resolution,
            keep_colours=(subject.body, subject.pattern_colour),
            key=subject.subject_id,
            version=world.version,
        )
        records.append(
            {
                "subject_id": subject.subject_id,
                "class_name": subject.class_name,
                "demo_images": [to_png(img) for img, _ in demos],
                "demo_captions": [cap for _, cap in demos],
                "prompt_ids": [p.prompt_id for p, _ in prompts],
                "prompts": [p.text for p, _ in prompts],
                "prompt_skills": [p.skill for p, _ in prompts],
                "source_url": None,
                "subject_truth": toyworld.subject_to_json(subject),
                "prompt_truths": [json.dumps(p.truth) for p, _ in prompts],
                "oracle": [
                    [toyworld.render(subject, scene, world.resolution, rng) for _ in range(cfg.samples_per_prompt)]
                    for _, scene in prompts
                ],
            }
        )
    return records


METRICS = ("subject_fidelity", "text_fidelity", "clip_i", "clip_t")


def bootstrap_interval(sums: np.ndarray, counts: np.ndarray, resamples: int, seed: int) -> list[float]:
    """95% interval of a mean over images whose subjects are the units: subjects resampled with replacement,
    each bringing all of its images (`sums`, `counts`: per subject). [nan, nan] when nothing was counted."""
    if resamples <= 0 or counts.sum() == 0:
        return [float("nan"), float("nan")]
    idx = np.random.default_rng(seed).integers(0, len(sums), size=(resamples, len(sums)))
    with np.errstate(invalid="ignore", divide="ignore"):
        means = sums[idx].sum(1) / counts[idx].sum(1)
    lo, hi = np.nanpercentile(means, [2.5, 97.5])
    return [float(lo), float(hi)]


def score(
    records: list[dict],
    outputs: dict[str, list[list[list[np.ndarray]]]],
    scorer: Scorer,
    reader,
    resamples: int = 1000,
    seed: int = 0,
) -> dict[str, dict]:
    """outputs[method][record][prompt][sample] = uint8 (H, W, 3); `reader`: trained attribute readers
    (core.toy.readers). Per method: each metric's mean over its images (subject fidelity over the images whose
    prompt leaves some identity visible) and `ci`, its bootstrap 95% interval over subjects (`resamples`);
    `identity`, each identity attribute's accuracy where the prompt leaves it visible; `text_by_skill`, text
    fidelity for each prompt skill."""
    table = {}
    for method, per_record in outputs.items():
        n = len(records)
        sums = {m: np.zeros(n) for m in METRICS}
        counts = {m: np.zeros(n) for m in METRICS}
        attr: dict[str, list[bool]] = {k: [] for k in IDENTITY}
        by_skill: dict[str, list[float]] = {}
        for r, (record, per_prompt) in enumerate(zip(records, per_record, strict=True)):
            subject = toyworld.subject_from_json(record["subject_truth"])
            demos = [from_png(b) for b in record["demo_images"]]
            demo_emb = scorer.encode_images(demos)
            skills = record.get("prompt_skills") or [""] * len(record["prompts"])
            for prompt, truth_json, skill, samples in zip(
                record["prompts"], record["prompt_truths"], skills, per_prompt, strict=True
            ):
                truth = json.loads(truth_json)
                emb = scorer.encode_images(samples)
                values = {
                    "clip_i": (emb @ demo_emb.T).mean(1).tolist(),
                    "clip_t": scorer.clip_scores(samples, [prompt] * len(samples)).tolist(),
                    "subject_fidelity": [],
                    "text_fidelity": [],
                }
                for read in rd.read(reader, list(samples)):
                    values["subject_fidelity"].append(toyworld.subject_fidelity(read, subject, truth))
                    values["text_fidelity"].append(toyworld.text_fidelity(read, truth))
                    for k, v in toyworld.identity_wanted(subject, truth).items():
                        attr[k].append(read.get(k) == v)
                by_skill.setdefault(skill, []).extend(values["text_fidelity"])
                for m, vals in values.items():
                    vals = [v for v in vals if not math.isnan(v)]
                    sums[m][r] += sum(vals)
                    counts[m][r] += len(vals)
        row = {}
        for m in METRICS:
            total = counts[m].sum()
            row[m] = float(sums[m].sum() / total) if total else float("nan")
        row["images"] = int(sum(len(samples) for per_prompt in per_record for samples in per_prompt))
        row["ci"] = {m: bootstrap_interval(sums[m], counts[m], resamples, seed) for m in METRICS}
        row["identity"] = {k: float(np.mean(v)) if v else float("nan") for k, v in attr.items()}
        row["text_by_skill"] = {k: float(np.mean(v)) for k, v in sorted(by_skill.items())}
        table[method] = row
    return table


def _with_ci(row: dict, metric: str) -> str:
    lo, hi = row.get("ci", {}).get(metric, [float("nan")] * 2)
    interval = "" if math.isnan(lo) else f" [{lo:.3f}, {hi:.3f}]"
    return f"{row[metric]:.3f}{interval}"


def markdown_table(table: dict[str, dict], seconds: dict[str, float] | None = None) -> str:
    """The table: each metric with its bootstrap 95% interval over subjects, then text fidelity by skill."""
    skills = sorted({k for row in table.values() for k in row.get("text_by_skill", {})})
    lines = [
        "| method | subject fidelity | text fidelity | CLIP-I | CLIP-T | s per new subject |"
        + "".join(f" text: {k} |" for k in skills),
        "|---|---|---|---|---|---|" + "---|" * len(skills),
    ]
    for method, row in table.items():
        secs = (seconds or {}).get(method)
        by_skill = row.get("text_by_skill", {})
        lines.append(
            f"| {method} | {_with_ci(row, 'subject_fidelity')} | {_with_ci(row, 'text_fidelity')} | "
            f"{_with_ci(row, 'clip_i')} | {_with_ci(row, 'clip_t')} | {'' if secs is None else f'{secs:.1f}'} |"
            + "".join(f" {by_skill[k]:.3f} |" if k in by_skill else " |" for k in skills)
        )
    return "\n".join(lines)


def grid(records: list[dict], outputs: dict[str, list], scale: int = 3) -> Image.Image:
    """Rows: (subject, prompt); columns: the demos, then one sample per method. Upscaled for viewing."""
    size = from_png(records[0]["demo_images"][0]).shape[0]
    n_demos = max(len(r["demo_images"]) for r in records)
    methods = list(outputs)
    cols = n_demos + len(methods)
    rows = [(ri, pi) for ri, r in enumerate(records) for pi in range(len(r["prompts"]))]
    cell, label_h, text_w = size * scale, 14, 260
    canvas = Image.new("RGB", (text_w + cols * (cell + 2), label_h + len(rows) * (cell + 2)), "white")
    draw = ImageDraw.Draw(canvas)
    for c, name in enumerate(["demo"] * n_demos + methods):
        draw.text((text_w + c * (cell + 2), 1), name, fill="black")
    for row, (ri, pi) in enumerate(rows):
        y = label_h + row * (cell + 2)
        record = records[ri]
        draw.text((2, y + 2), record["subject_id"], fill="black")
        draw.text((2, y + 16), record["prompts"][pi][:44], fill="black")
        images = [from_png(b) for b in record["demo_images"]] + [None] * (n_demos - len(record["demo_images"]))
        images += [outputs[m][ri][pi][0] for m in methods]
        for c, img in enumerate(images):
            if img is not None:
                tile = Image.fromarray(img).resize((cell, cell), Image.NEAREST)
                canvas.paste(tile, (text_w + c * (cell + 2), y))
    return canvas


def g_truth(g_rows: list[dict], records: list[dict], reader) -> list[dict]:
    """Each G row read by the attribute readers and checked against the truth its D_S record holds: per row its
    `delta`, `skill`, `subject_fidelity` and `text_fidelity` (nan where a measure has nothing to check: a raw row's
    caption asks for no scene). Rows of clusters with no known toy subject (impure ones) are left out.
    `g_rows`: subject_id, prompt_id, prompt_skill, image (PNG) and delta; `records`: D_S rows."""
    subjects, truths = {}, {}
    for record in records:
        if not record.get("subject_truth"):
            continue
        subjects[record["subject_id"]] = toyworld.truth_subject(record)
        for pid, truth in zip(record["prompt_ids"], record["prompt_truths"], strict=True):
            truths[(record["subject_id"], pid)] = json.loads(truth)
    known = [r for r in g_rows if r["subject_id"] in subjects]
    out = []
    for row, read in zip(known, rd.read(reader, [from_png(r["image"]) for r in known]), strict=True):
        truth = truths.get((row["subject_id"], row["prompt_id"]), {})
        out.append(
            {
                "delta": float(row["delta"]),
                "skill": row["prompt_skill"],
                "subject_fidelity": toyworld.subject_fidelity(read, subjects[row["subject_id"]], truth),
                "text_fidelity": toyworld.text_fidelity(read, truth) if truth else float("nan"),
            }
        )
    return out


def kept_truth(rows: list[dict], min_delta: float | None) -> dict:
    """`g_truth`'s rows that pass `min_delta` (None: all): how many, their mean subject and text fidelity, and
    text fidelity per prompt skill: what an apprentice trained at that threshold imitates."""
    kept = [r for r, ok in zip(rows, passes([r["delta"] for r in rows], min_delta), strict=True) if ok]

    def mean(values: list[float]) -> float | None:
        values = [v for v in values if not math.isnan(v)]
        return round(float(np.mean(values)), 4) if values else None

    skills = sorted({r["skill"] for r in kept})
    return {
        "rows": len(kept),
        "subject_fidelity": mean([r["subject_fidelity"] for r in kept]),
        "text_fidelity": mean([r["text_fidelity"] for r in kept]),
        "text_by_skill": {s: mean([r["text_fidelity"] for r in kept if r["skill"] == s]) for s in skills},
    }
