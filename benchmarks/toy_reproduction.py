"""The paper's claims on the toy world, measured exactly on test subjects no training stage has seen.

    python -m benchmarks.toy_reproduction            # every stage, in order, from the shipped artifacts/toy
    python -m benchmarks.toy_reproduction --quick    # a smoke check (minutes on 2 cores): tiny G, short training

Starts from the one-time artifacts of `python -m apps.toy_pretrain` (base model, toy CLIP scorer, attribute readers;
shipped under `artifacts/toy/`). Stages (each also runs alone with `--stage`, and the long ones split into shards
for parallel processes on one accelerator, `--shard i --num-shards n`; results pass through files under `--work`):

- `g`: experts (the DreamBooth analogue: base fine-tuned on a subject's demos) over train subjects, each rendering
  the subject for unseen prompts from the toy templates, scored by delta-CLIP; rows are written as G parquet shards
  (`G_SCHEMA`), one per subject, so a re-run skips finished subjects.
- `experts`: per-subject experts on the evaluation's test subjects, sampled at several fine-tune step counts
  (`--expert-checkpoints`) to find the fewest steps that reach the expert's plateau fidelity.
- `encoder --encoder-steps N`: the demo encoder's warm start (`pretrain_demo_encoder`) alone, saved under `--work`
  for the `train` processes to load; `train` makes it itself when it is missing.
- `train --variant V`: an apprentice from the base (or, with `--init-apprentice FOLDER`, on from a saved one): `suti`
  (G filtered at `--lam`), `raw` (the Re-Imagen analogue: the same train subjects' raw clusters, another image of the
  subject as target, no experts), `sweep-<lam>` (G at each threshold of the sweep, trained shorter: `--sweep-steps`).
- `eval`: rows oracle / base / expert / raw apprentice / SuTI apprentice / oracle-G apprentice (trained on true renders
  of every prompt: what perfect experts would give; an upper bound for the apprentice itself) with bootstrap 95%
  intervals over test subjects; the apprentice with 0/1/3/5 demos; the threshold sweep; the mine stage's precision and
  recall against the corpus's known truth; markdown, JSON and PNG grids under `--out`.

Metrics: subject fidelity (share of the subject's visible identity attributes the readers find), text fidelity
(share of the prompt's attributes found), toy CLIP-I (image-image cosine to the demos) and CLIP-T (image-prompt),
and DINO-like (cosine of the attribute readers' penultimate features to the demos: a second, independently trained
image network, in DINO's role). Seconds per new subject: the expert's fine-tune to its plateau step count plus its
samples, against the apprentice's samples; same device, sampler, steps and number of images.
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from core.data.images import from_png, to_png
from core.models import sampling
from core.toy import readers as rd
from core.toy import world as tw

ROWS = ("oracle", "base", "expert", "raw apprentice", "SuTI apprentice", "oracle-G apprentice")
# The study rows beyond the paper's: an apprentice trained on what perfect experts would draw (true renders of each
# prompt), an upper bound that separates what the apprentice can learn from what the experts give it.
VARIANTS = (("raw apprentice", "raw"), ("SuTI apprentice", "suti"), ("oracle-G apprentice", "oracle"))


@dataclass
class Settings:
    eval_subjects: int
    prompts: int
    demos: int  # demos shown to expert and apprentice in the main rows
    g_subjects: int
    g_prompts: int
    expert_steps: int  # fine-tune steps of the G experts
    expert_checkpoints: tuple[int, ...]
    apprentice_steps: int
    sweep_steps: int
    batch_size: int
    steps: int  # sampler steps
    guidance: float


FULL = Settings(64, 8, 3, 2000, 8, 150, (25, 50, 100, 200, 400), 6000, 2500, 64, 25, 3.0)
QUICK = Settings(2, 4, 3, 2, 4, 4, (2, 4), 4, 2, 4, 8, 3.0)
SWEEP = (None, 0.0, 0.01, 0.02, 0.03)


def lam_name(lam: float | None) -> str:
    return "none" if lam is None else f"{lam:g}"


# ---------------------------------------------------------------- shared inputs


def load_artifacts(folder: str, device):
    from core.models.backbone import load_backbone
    from core.models.scorer import load_scorer

    for part in ("base", "scorer", "readers"):
        if not os.path.isdir(os.path.join(folder, part)):
            raise FileNotFoundError(
                f"{folder}/{part} is missing: make it with `python -m apps.toy_pretrain --out {folder}`"
            )
    base = load_backbone(os.path.join(folder, "base")).to(device)
    return (
        base,
        load_scorer(os.path.join(folder, "scorer")),
        rd.load_readers(os.path.join(folder, "readers")).to(device),
    )


def subject_record(
    subject: tw.Subject, n_demos: int, n_prompts: int, rng: np.random.Generator, with_oracle: bool
) -> dict:
    demos = tw.demonstrations(subject, n_demos, rng)
    prompts = tw.prompts_for(
        subject.class_name, n_prompts, rng, keep_colours=(subject.body, subject.pattern_colour), key=subject.subject_id
    )
    record = {
        "subject_id": subject.subject_id,
        "class_name": subject.class_name,
        "demo_images": [to_png(img) for img, _ in demos],
        "demo_captions": [cap for _, cap in demos],
        "prompt_ids": [p.prompt_id for p, _ in prompts],
        "prompts": [p.text for p, _ in prompts],
        "prompt_skills": [p.skill for p, _ in prompts],
        "prompt_truths": [p.truth for p, _ in prompts],
        "subject": subject,
    }
    if with_oracle:
        record["oracle"] = np.stack([tw.render(subject, scene, 32, rng) for _, scene in prompts])
    return record


def eval_records(s: Settings, seed: int = 0) -> list[dict]:
    """Test subjects (never trained on), each with 5 demos, prompts and oracle renders; the same in every process."""
    from apps.toy_pretrain import split

    _, test = split()
    rng = np.random.default_rng(seed + 11)
    picks = rng.choice(len(test), size=min(s.eval_subjects, len(test)), replace=False)
    return [subject_record(test[int(i)], 5, s.prompts, rng, True) for i in picks]


def g_subjects(s: Settings, seed: int = 0) -> list[tw.Subject]:
    from apps.toy_pretrain import split

    train, _ = split()
    order = np.random.default_rng(seed + 22).permutation(len(train))
    return [train[int(i)] for i in order[: s.g_subjects]]


def expert_config(s: Settings, steps: int, seed: int = 0):
    from core.config import ExpertConfig

    return ExpertConfig(
        steps=steps, batch_size=16, lr=5e-4, num_inference_steps=s.steps, guidance_scale=s.guidance, seed=seed
    )


# ---------------------------------------------------------------- stage g: the expert farm over train subjects


def stage_g(args, s: Settings, device) -> dict:
    from core.data import schema, storage
    from core.method.expert import Expert, seed_for
    from core.method.expert_batch import ExpertBatch

    base, scorer, _ = load_artifacts(args.artifacts, device)
    folder = os.path.join(args.work, "g")
    os.makedirs(folder, exist_ok=True)
    cfg = expert_config(s, s.expert_steps)
    provenance = {
        "base_checkpoint_hash": "toy",
        "expert_config_hash": f"steps{cfg.steps}",
        "scorer_hash": scorer.digest,
    }
    subjects = [
        x
        for x in g_subjects(s)[args.shard :: args.num_shards]
        if not os.path.exists(os.path.join(folder, f"{x.subject_id}.parquet"))
    ]
    deadline = time.monotonic() + args.budget_s if args.budget_s else None
    # --expert-batch N fine-tunes N subjects at once as one vmapped model (core.method.expert_batch): on a GPU these
    # tiny models are bound by kernel launches, so N experts cost about one. On a CPU one at a time is faster.
    group = max(1, args.expert_batch)
    # One or the other: an Expert keeps a copy of the base state it restores before every subject.
    expert = ExpertBatch(base, scorer, cfg, provenance) if group > 1 else Expert(base, scorer, cfg, provenance)
    done = 0
    bar = tqdm(total=len(subjects), desc=f"g {args.shard}/{args.num_shards}", mininterval=10)
    for first in range(0, len(subjects), group):
        records = [
            subject_record(x, 5, s.g_prompts, np.random.default_rng(seed_for("g", x.subject_id)), False)
            for x in subjects[first : first + group]
        ]
        results = expert.run_subjects(records) if group > 1 else [expert.run_subject(records[0])]
        for record, (rows, _) in zip(records, results):
            storage.write_shard(
                schema.table_from_rows(rows, schema.G_SCHEMA), folder, schema.G_SCHEMA, name=record["subject_id"]
            )
        done += len(records)
        bar.update(len(records))
        if deadline is not None and time.monotonic() > deadline:
            break
    return {"subjects_done": done}


# ---------------------------------------------------------------- stage experts: expert rows on test subjects


def stage_experts(args, s: Settings, device) -> dict:
    """Test-subject experts, sampled at every `expert_checkpoints` step count; `--expert-batch` N at a time."""
    from core.method.expert import Expert, seed_for
    from core.method.expert_batch import ExpertBatch

    base, scorer, _ = load_artifacts(args.artifacts, device)
    folder = os.path.join(args.work, "experts")
    os.makedirs(folder, exist_ok=True)
    records = [
        r
        for r in eval_records(s)[args.shard :: args.num_shards]
        if not os.path.exists(os.path.join(folder, f"{r['subject_id']}.npz"))
    ]
    cfg = expert_config(s, max(s.expert_checkpoints))
    group = max(1, args.expert_batch)
    expert = Expert(base, scorer, cfg, {}) if group == 1 else ExpertBatch(base, scorer, cfg, {})
    deadline = time.monotonic() + args.budget_s if args.budget_s else None
    bar = tqdm(total=len(records), desc=f"experts {args.shard}/{args.num_shards}", mininterval=10)
    for first in range(0, len(records), group):
        chunk = records[first : first + group]
        jobs = [
            (
                [from_png(b) for b in r["demo_images"][: s.demos]],
                r["demo_captions"][: s.demos],
                seed_for(0, r["subject_id"]),
            )
            for r in chunk
        ]
        images, tune_s, sample_s = {}, {}, {}
        clock = {"start": 0.0, "paused": 0.0}

        def on_step(step: int, chunk=chunk, images=images, tune_s=tune_s, sample_s=sample_s, clock=clock) -> None:
            if step not in s.expert_checkpoints:
                return
            sync(device)
            tune_s[step] = time.perf_counter() - clock["start"] - clock["paused"]
            t0 = time.perf_counter()
            seeds = [seed_for(1, r["subject_id"]) for r in chunk]
            if group == 1:
                images[step] = [
                    sampling.sample(
                        base,
                        chunk[0]["prompts"],
                        num_inference_steps=s.steps,
                        guidance_scale=s.guidance,
                        seed=seeds[0],
                    )
                ]
            else:
                images[step] = expert.sample([r["prompts"] for r in chunk], seeds)
            sync(device)
            sample_s[step] = time.perf_counter() - t0
            clock["paused"] += sample_s[step]

        clock["start"] = time.perf_counter()
        if group == 1:
            expert.fine_tune(*jobs[0], on_step=on_step)
        else:
            expert.fine_tune(jobs, on_step=on_step)
        steps = sorted(images)
        for i, record in enumerate(chunk):
            # A batch's times are shared: each subject is charged its part (the timed row is time_experts, alone).
            np.savez(
                os.path.join(folder, f"{record['subject_id']}.npz"),
                steps=np.array(steps),
                images=np.stack([images[k][i] for k in steps]),
                tune_s=np.array([tune_s[k] / len(chunk) for k in steps]),
                sample_s=np.array([sample_s[k] / len(chunk) for k in steps]),
            )
        bar.update(len(chunk))
        if deadline is not None and time.monotonic() > deadline:
            break
    return {"subjects": len(records)}


def sync(device) -> None:
    if getattr(device, "type", "cpu") == "cuda":
        torch.cuda.synchronize()


# ---------------------------------------------------------------- stage train: apprentice variants


def g_examples(work: str, lam: float | None) -> list[dict]:
    """G rows kept at threshold `lam` (None keeps every row), decoded: image, prompt, demos."""
    import pyarrow.parquet as pq

    out = []
    for path in sorted(glob.glob(os.path.join(work, "g", "*.parquet"))):
        table = pq.read_table(path, columns=["image", "prompt", "demo_images", "demo_captions", "delta"])
        for row in table.to_pylist():
            if lam is None or row["delta"] > lam:
                out.append(
                    {
                        "image": from_png(row["image"]),
                        "prompt": row["prompt"],
                        "demos": [from_png(b) for b in row["demo_images"]],
                        "captions": row["demo_captions"],
                    }
                )
    return out


def raw_examples(work: str, s: Settings, subjects: str = "g") -> list[dict]:
    """The raw-cluster data of the same train subjects G holds (the Re-Imagen analogue): target another image of
    the subject from its cluster, with that image's own (class-only) caption; no expert, no edits, no styles.
    `subjects="all"` takes every G subject of the settings instead, G built or not (the oracle variant's subjects:
    a raw apprentice to set beside the oracle-G one where no G could be built, as on a CPU)."""
    from core.method.expert import seed_for

    ids = {os.path.basename(p)[: -len(".parquet")] for p in glob.glob(os.path.join(work, "g", "*.parquet"))}
    out = []
    for subject in g_subjects(s):
        if subjects != "all" and subject.subject_id not in ids:
            continue
        rng = np.random.default_rng(seed_for("raw", subject.subject_id))
        cluster = tw.demonstrations(subject, 5 + s.g_prompts, rng)
        demos, targets = cluster[:5], cluster[5:]
        for img, caption in targets:
            out.append(
                {"image": img, "prompt": caption, "demos": [d for d, _ in demos], "captions": [c for _, c in demos]}
            )
    return out


class Examples:
    """Training examples decoded and tokenized once, as arrays a step only indexes: images uint8 (M, H, W, 3),
    prompt ids (M, L), demos uint8 (M, D, H, W, 3) and their caption ids (M, D, L). Decoding and tokenizing every
    row at every step in Python would bound a GPU's apprentice training by the CPU."""

    def __init__(self, examples: list[dict], tokenizer):
        from core.models.tokenizer import tokenize

        most = max(len(r["demos"]) for r in examples)
        self.counts = np.array([len(r["demos"]) for r in examples])
        self.image = np.stack([r["image"] for r in examples])
        self.ids = tokenize(tokenizer, [r["prompt"] for r in examples])
        self.demos = np.stack([np.stack(r["demos"] + r["demos"][:1] * (most - len(r["demos"]))) for r in examples])
        captions = [c for r in examples for c in r["captions"] + r["captions"][:1] * (most - len(r["captions"]))]
        self.demo_ids = tokenize(tokenizer, captions).reshape(len(examples), most, -1)

    def __len__(self) -> int:
        return len(self.image)


def oracle_examples(s: Settings) -> list[dict]:
    """What perfect experts would put in G for the same train subjects: each prompt's true render (every skill:
    re-contextualization, property edit, accessory, style), with the subject's 5 demos and their class-only
    captions."""
    from core.method.expert import seed_for

    out = []
    for subject in g_subjects(s):
        record = subject_record(
            subject, 5, s.g_prompts, np.random.default_rng(seed_for("g", subject.subject_id)), True
        )
        demos = [from_png(b) for b in record["demo_images"]]
        for prompt, image in zip(record["prompts"], record["oracle"]):
            out.append({"image": image, "prompt": prompt, "demos": demos, "captions": record["demo_captions"]})
    return out


def make_batch(examples: Examples, batch_size: int, k: int, rng: np.random.Generator, device) -> dict:
    """A random batch with k demos per row (distinct, from the row's own), half the targets mirrored."""
    from core.models.backbone import images_to_tensor

    idx = rng.choice(len(examples), size=batch_size)
    # k distinct demos per row: the first k of a random order of the row's own demos.
    keys = rng.random((batch_size, examples.demos.shape[1])) + (
        np.arange(examples.demos.shape[1]) >= examples.counts[idx][:, None]
    )
    picks = np.argsort(keys, axis=1)[:, :k]
    flip = rng.random(batch_size) < 0.5
    image = examples.image[idx]
    image = np.where(flip[:, None, None, None], image[:, :, ::-1], image)
    demos = examples.demos[idx[:, None], picks]  # (B, k, H, W, 3)
    return {
        "image": images_to_tensor(image).to(device),
        "input_ids": examples.ids[idx].to(device),
        "demo_images": images_to_tensor(demos.reshape(-1, *demos.shape[2:]))
        .reshape(batch_size, k, 3, *demos.shape[2:4])
        .to(device),
        "demo_ids": examples.demo_ids[torch.from_numpy(idx[:, None]), torch.from_numpy(picks)].to(device),
    }


IDENTITY_HEADS = {
    k: rd.HEADS[k] for k in ("class_name", "body", "pattern", "pattern_colour")
}  # the readers' vocabularies


def pretrain_demo_encoder(encoder, steps: int, device, batch_size: int = 128, seed: int = 0) -> dict:
    """Warm-start the apprentice's demo encoder as a recogniser of identity (class, body colour, pattern, pattern
    colour: a linear head each over its token grid) on demos of train subjects, whose identity is known.

    The toy world's stand-in for the pretrained image encoder (CLIP, DINO) a real apprentice's demo encoder would start
    from, as IP-Adapter's does: from scratch, the encoder has to find the subject and its colours through the weak
    signal identity gives the denoising loss (`benchmarks/demo_use.py`). Test subjects are seen only by the final
    accuracy check. The heads are thrown away; the encoder's convolutions keep what they learned."""
    from apps.toy_pretrain import split
    from core.models.backbone import images_to_tensor

    train, test = split()
    rng = np.random.default_rng(seed + 33)
    g = encoder.grid
    dim = encoder.conv[-1].out_channels
    heads = torch.nn.ModuleDict({k: torch.nn.Linear(g * g * dim, len(v)) for k, v in IDENTITY_HEADS.items()}).to(
        device
    )
    opt = torch.optim.AdamW([*encoder.conv.parameters(), *heads.parameters()], lr=2e-3, weight_decay=0.0)

    def batch(subjects):
        picks = [subjects[int(i)] for i in rng.integers(len(subjects), size=batch_size)]
        x = images_to_tensor(np.stack([tw.demonstrations(p, 1, rng)[0][0] for p in picks])).to(device)
        y = {
            k: torch.tensor([v.index(getattr(p, k)) for p in picks], device=device) for k, v in IDENTITY_HEADS.items()
        }
        return x, y

    def logits(x):
        feats = torch.nn.functional.adaptive_avg_pool2d(encoder.conv(x), g).flatten(1)
        return {k: h(feats) for k, h in heads.items()}

    start, losses = time.monotonic(), []
    for _ in tqdm(range(steps), desc="demo encoder", mininterval=10):
        x, y = batch(train)
        out = logits(x)
        loss = sum(torch.nn.functional.cross_entropy(out[k], y[k]) for k in heads)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    with torch.no_grad():
        x, y = batch(test)
        out = logits(x)
        accuracy = {k: float((out[k].argmax(1) == y[k]).float().mean()) for k in heads}
    return {
        "steps": steps,
        "seconds": round(time.monotonic() - start, 1),
        "last_loss": float(np.mean(losses[-20:])),
        "test_accuracy": accuracy,
    }


def warm_encoder(encoder, steps: int, work: str, device) -> dict:
    """`pretrain_demo_encoder`, done once per work folder: the warm-started convolutions are saved under
    `work/demo_encoder/` (safetensors, written under a temporary name and renamed) and later calls with the same grid,
    width and steps load them instead of training again, so the apprentice variants share one warm start."""
    from safetensors.torch import load_file, save_file

    dim, grid = encoder.conv[-1].out_channels, encoder.grid
    stem = os.path.join(work, "demo_encoder", f"grid{grid}_dim{dim}_steps{steps}")
    if os.path.exists(stem + ".safetensors"):
        encoder.conv.load_state_dict(load_file(stem + ".safetensors", device=str(device)))
        with open(stem + ".json") as f:
            return {**json.load(f), "loaded_from": stem + ".safetensors"}
    result = pretrain_demo_encoder(encoder, steps, device)
    os.makedirs(os.path.dirname(stem), exist_ok=True)
    with open(stem + ".json.tmp", "w") as f:
        json.dump(result, f, indent=1)
    save_file(
        {k: v.detach().cpu().contiguous() for k, v in encoder.conv.state_dict().items()}, stem + ".safetensors.tmp"
    )
    os.replace(stem + ".json.tmp", stem + ".json")
    os.replace(stem + ".safetensors.tmp", stem + ".safetensors")  # last: its presence means the warm start is whole
    return result


def stage_encoder(args, s: Settings, device) -> dict:
    """The demo encoder's warm start alone (`warm_encoder`), so that parallel `train` processes load one copy."""
    from core.method.apprentice import Apprentice

    if not args.encoder_steps:
        raise ValueError("--stage encoder needs --encoder-steps N")
    base, _, _ = load_artifacts(args.artifacts, device)
    torch.manual_seed(0)
    apprentice = Apprentice(base, args.demo_grid, zero_init=args.zero_init, attention=args.attention).to(device)
    return warm_encoder(apprentice.adapter.encoder, args.encoder_steps, args.work, device)


def stage_train(args, s: Settings, device) -> dict:
    from core.method.apprentice import Apprentice, training_loss
    from core.models.schedules import warmup_cosine
    from core.pipelines.suti import load_apprentice, save_apprentice
    from core.toy.pretrain import deadline_clock

    variant = args.variant
    if variant == "suti":
        examples, steps = g_examples(args.work, args.lam), s.apprentice_steps
    elif variant == "raw":
        examples, steps = raw_examples(args.work, s, args.raw_subjects), s.apprentice_steps
    elif variant == "oracle":
        examples, steps = oracle_examples(s), s.apprentice_steps
    elif variant.startswith("sweep-"):
        tag = variant[len("sweep-") :]
        examples, steps = g_examples(args.work, None if tag == "none" else float(tag)), s.sweep_steps
    else:
        raise ValueError(f"unknown variant {variant!r}: suti, raw, oracle or sweep-<none|lam>")
    if not examples:
        print(
            f"[toy_reproduction] variant {variant}: no training examples under {args.work}/g at this threshold; "
            "not trained"
        )
        return {"variant": variant, "examples": 0, "skipped": True}
    torch.manual_seed(0)
    continued_from = encoder_warm_start = None
    if args.init_apprentice:
        # Continue a saved apprentice (its own grid, attention and demo encoder); the schedule starts again.
        if args.encoder_steps:
            raise ValueError(
                "--init-apprentice continues a trained apprentice: its demo encoder is not warm-started again "
                "(drop --encoder-steps)"
            )
        apprentice = load_apprentice(args.init_apprentice).to(device).train()
        with open(os.path.join(args.init_apprentice, "apprentice_config.json")) as f:
            continued_from = {"folder": args.init_apprentice, **json.load(f)}
        encoder_warm_start = continued_from.get("encoder_warm_start")
    else:
        base, _, _ = load_artifacts(args.artifacts, device)
        apprentice = (
            Apprentice(base, args.demo_grid, zero_init=args.zero_init, attention=args.attention).to(device).train()
        )
    if args.encoder_steps:
        encoder_warm_start = warm_encoder(apprentice.adapter.encoder, args.encoder_steps, args.work, device)
        print(f"[toy_reproduction] demo encoder warm start: {encoder_warm_start}", flush=True)
    examples = Examples(examples, apprentice.tokenizer)
    new = set(apprentice.new_parameters())
    groups = [
        {"params": [p for n, p in apprentice.named_parameters() if n in new], "lr": 1e-3},
        {"params": [p for n, p in apprentice.named_parameters() if n not in new], "lr": 1e-4},
    ]
    opt = torch.optim.AdamW(groups, weight_decay=0.0)
    deadline = time.monotonic() + args.budget_s if args.budget_s else None
    sched = warmup_cosine(opt, steps, clock=deadline_clock(deadline))
    ema = [p.detach().clone() for p in apprentice.parameters()]
    rng = np.random.default_rng(0)
    generator = torch.Generator().manual_seed(0)
    autocast = torch.autocast("cuda", dtype=torch.bfloat16, enabled=getattr(device, "type", "cpu") == "cuda")
    losses = []
    for step in tqdm(range(steps), desc=f"train {variant}", mininterval=10):
        k = int(rng.integers(1, 6))
        batch = make_batch(examples, s.batch_size, k, rng, device)
        with autocast:
            loss = training_loss(apprentice, batch, 0.1, 0.1, generator)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(apprentice.parameters(), 1.0)
        opt.step()
        sched.step()
        # EMA with warm-up (as in diffusers' EMAModel): a fixed 0.999 over a run the deadline cuts short would keep
        # most of the initial weights.
        decay = min(0.999 if steps > 2000 else 0.9, (1 + len(losses)) / (10 + len(losses)))
        torch._foreach_lerp_(ema, [p.detach() for p in apprentice.parameters()], 1 - decay)
        losses.append(loss.detach())  # read back at the end: a read per step would stall a GPU
        if deadline is not None and time.monotonic() > deadline:
            break
    with torch.no_grad():
        for e, p in zip(ema, apprentice.parameters()):
            p.copy_(e)
    cfg = apprentice.adapter.config  # the settings of the apprentice itself (a continued one keeps its own)
    settings = {
        "attention": cfg.attention,
        "demo_grid": apprentice.demo_grid,
        "zero_init": cfg.zero_init,
        "encoder_warm_start": encoder_warm_start,
    }
    if variant == "raw":
        settings["raw_subjects"] = args.raw_subjects
    if continued_from:
        settings["continued_from"] = continued_from
        settings["total_steps"] = int(continued_from.get("total_steps", continued_from.get("steps", 0))) + len(losses)
    save_apprentice(
        apprentice.eval().to("cpu"),
        os.path.join(args.work, "apprentices", variant),
        {"examples": len(examples), "steps": len(losses), **settings},
    )
    losses = torch.stack(losses).float().tolist()
    return {
        "variant": variant,
        "examples": len(examples),
        "steps": len(losses),
        "last_loss": float(np.mean(losses[-50:])),
        **settings,
    }


# ---------------------------------------------------------------- stage eval


def reader_features(reader: rd.AttributeReader, images: np.ndarray) -> torch.Tensor:
    device = next(reader.parameters()).device
    with torch.no_grad():
        return torch.nn.functional.normalize(reader.trunk(reader.features(rd.to_input(images, device))), dim=-1).cpu()


IDENTITY_METRICS = {attr: f"identity_{attr}" for attr in ("body", "pattern", "pattern_colour")}


def score_images(records, images_per_record: list[np.ndarray], k_demos: int, scorer, reader) -> dict[str, np.ndarray]:
    """Per-subject means of each metric. images_per_record[i]: uint8 (P, H, W, 3), one image per prompt."""
    per_subject = {
        m: [] for m in ("subject_fidelity", "text_fidelity", "clip_i", "clip_t", "dino", *IDENTITY_METRICS.values())
    }
    for record, images in zip(records, images_per_record):
        demos = np.stack([from_png(b) for b in record["demo_images"][: max(1, k_demos)]])
        reads = rd.read(reader, images)
        subj = [tw.subject_fidelity(r, record["subject"], t) for r, t in zip(reads, record["prompt_truths"])]
        # Subject fidelity split by attribute: the share of images, among those whose prompt leaves it visible, that
        # show it.
        wanted = [tw.identity_wanted(record["subject"], t) for t in record["prompt_truths"]]
        for attr, metric in IDENTITY_METRICS.items():
            hits = [r.get(attr) == w[attr] for r, w in zip(reads, wanted) if attr in w]
            per_subject[metric].append(float(np.mean(hits)) if hits else np.nan)
        text = [tw.text_fidelity(r, t) for r, t in zip(reads, record["prompt_truths"])]
        emb, demo_emb = scorer.encode_images(images), scorer.encode_images(demos)
        feats, demo_feats = reader_features(reader, images), reader_features(reader, demos)
        per_subject["subject_fidelity"].append(np.nanmean(subj) if not np.all(np.isnan(subj)) else np.nan)
        per_subject["text_fidelity"].append(np.mean(text))
        per_subject["clip_i"].append(float((emb @ demo_emb.T).mean()))
        per_subject["clip_t"].append(float(scorer.clip_scores(images, record["prompts"]).mean()))
        per_subject["dino"].append(float((feats @ demo_feats.T).mean()))
    return {m: np.asarray(v, dtype=np.float64) for m, v in per_subject.items()}


def bootstrap(values: np.ndarray, n: int = 2000, seed: int = 0) -> tuple[float, float, float]:
    """Mean and 95% percentile interval over subjects (resampled with replacement)."""
    v = values[~np.isnan(values)]
    if len(v) == 0:
        return float("nan"), float("nan"), float("nan")
    rng = np.random.default_rng(seed)
    means = v[rng.integers(0, len(v), size=(n, len(v)))].mean(1)
    return float(v.mean()), float(np.percentile(means, 2.5)), float(np.percentile(means, 97.5))


def apprentice_images(
    apprentice, records, k: int, s: Settings, seed: int = 0, timed: int = 4
) -> tuple[list[np.ndarray], float]:
    """One image per prompt per subject with `k` demos, every subject's requests drawn in large batches; returns
    (images per record, seconds per subject). The seconds are timed apart: `timed` subjects sampled one at a time
    (all of a subject's prompts in one batch, as a user's request would be), median taken."""
    from core.method.apprentice import SampleRequest, sample_batch
    from core.method.expert import seed_for

    device = next(apprentice.parameters()).device
    requests = []
    for record in records:
        demos = [from_png(b) for b in record["demo_images"][:k]]
        requests.append(
            [
                SampleRequest(
                    p, demos, record["demo_captions"][:k], 1, seed_for(1, record["subject_id"], i), s.guidance
                )
                for i, p in enumerate(record["prompts"])
            ]
        )
    flat = [r for per in requests for r in per]
    images = []
    for i in range(0, len(flat), 512):
        images.extend(sample_batch(apprentice, flat[i : i + 512], num_inference_steps=s.steps))
    out, pos = [], 0
    for per in requests:
        out.append(np.concatenate(images[pos : pos + len(per)]))
        pos += len(per)
    seconds = []
    for per in requests[:timed]:
        sync(device)
        t0 = time.perf_counter()
        sample_batch(apprentice, per, num_inference_steps=s.steps)
        sync(device)
        seconds.append(time.perf_counter() - t0)
    return out, float(np.median(seconds)) if seconds else float("nan")


def time_experts(base, scorer, records, steps: int, s: Settings, device) -> float:
    """Seconds for a new subject by the expert route, timed here alone (the expert stage ran beside other work):
    fine-tune `steps` steps on the demos, then sample every prompt in one batch. Median over `records`."""
    from core.method.expert import Expert, seed_for

    expert = Expert(base, scorer, expert_config(s, steps), {})
    seconds = []
    for record in records:
        demos = [from_png(b) for b in record["demo_images"][: s.demos]]
        sync(device)
        t0 = time.perf_counter()
        expert.fine_tune(demos, record["demo_captions"][: s.demos], seed_for(0, record["subject_id"]))
        sampling.sample(
            base,
            record["prompts"],
            num_inference_steps=s.steps,
            guidance_scale=s.guidance,
            seed=seed_for(1, record["subject_id"]),
        )
        sync(device)
        seconds.append(time.perf_counter() - t0)
    expert.reset()
    return float(np.median(seconds))


def plateau_step(curves: dict[int, float], tolerance: float = 0.02) -> int:
    """The fewest fine-tune steps whose fidelity is within `tolerance` of the best checkpoint's."""
    best = max(curves.values())
    return min(k for k, v in curves.items() if v >= best - tolerance)


def mine_report(scorer, seed: int = 0) -> dict:
    """The mine stage on a fresh toy corpus: precision (kept clusters holding one subject) and recall (clean URL
    groups kept), against the corpus's known truth."""
    from apps.toy_pretrain import split
    from core.config import MineConfig, WorldConfig
    from core.data import schema
    from core.method.mining import mine

    train, _ = split()
    rows = tw.corpus_rows(train, WorldConfig(corpus_groups=200), np.random.default_rng(seed))
    ds, summary = mine(schema.table_from_rows(rows, schema.CORPUS_SCHEMA), scorer, MineConfig(), progress=False)
    truth_by_image = {r["image"]: r["truth_subject_id"] for r in rows}
    groups: dict[str, set] = {}
    for r in rows:
        if r["truth_subject_id"] is not None:
            groups.setdefault(r["url"], set()).add(r["truth_subject_id"])
    clean = {u for u, t in groups.items() if len(t) == 1}
    kept_urls = {d["source_url"] for d in ds}
    pure = [len({truth_by_image[b] for b in d["demo_images"]}) == 1 for d in ds]
    return {
        "groups": len(groups),
        "clean_groups": len(clean),
        "kept": len(ds),
        "precision": float(np.mean(pure)) if pure else float("nan"),
        "recall": len(kept_urls & clean) / max(1, len(clean)),
        "corrupt_images_skipped": summary.get("corrupt_images_skipped", 0),
    }


def grid_png(records, columns: dict[str, list[np.ndarray]], path: str, n_subjects: int = 6, scale: int = 3) -> None:
    """Rows: (subject, prompt); columns: 3 demos, then each method's image. Upscaled for viewing."""
    from PIL import Image, ImageDraw

    names = ["demo 1", "demo 2", "demo 3", *columns]
    rows = [(ri, pi) for ri in range(min(n_subjects, len(records))) for pi in range(len(records[ri]["prompts"]))]
    cell, label_h, text_w = 32 * scale, 14, 250
    canvas = Image.new("RGB", (text_w + len(names) * (cell + 2), label_h + len(rows) * (cell + 2)), "white")
    draw = ImageDraw.Draw(canvas)
    for c, name in enumerate(names):
        draw.text((text_w + c * (cell + 2), 1), name[:15], fill="black")
    for row, (ri, pi) in enumerate(rows):
        y = label_h + row * (cell + 2)
        record = records[ri]
        draw.text((2, y + 2), record["subject"].describe()[:40], fill="black")
        draw.text((2, y + 18), record["prompts"][pi][:40], fill="black")
        tiles = [from_png(b) for b in record["demo_images"][:3]] + [columns[m][ri][pi] for m in columns]
        for c, img in enumerate(tiles):
            canvas.paste(Image.fromarray(img).resize((cell, cell), Image.NEAREST), (text_w + c * (cell + 2), y))
    canvas.save(path)


def fmt(mean: float, lo: float, hi: float) -> str:
    return "n/a" if np.isnan(mean) else f"{mean:.3f} [{lo:.3f}, {hi:.3f}]"


def stage_eval(args, s: Settings, device) -> dict:
    from core.pipelines.suti import load_apprentice

    base, scorer, reader = load_artifacts(args.artifacts, device)
    records = eval_records(s)
    k = s.demos
    images: dict[str, list[np.ndarray]] = {"oracle": [r["oracle"] for r in records]}
    seconds: dict[str, float] = {}
    # Base without demos: the prompt alone.

    prompts = [p for r in records for p in r["prompts"]]
    flat = np.concatenate(
        [
            sampling.sample(base, prompts[i : i + 512], num_inference_steps=s.steps, guidance_scale=s.guidance, seed=i)
            for i in range(0, len(prompts), 512)
        ]
    )
    images["base"] = np.split(flat, np.cumsum([len(r["prompts"]) for r in records])[:-1])
    # Experts: the checkpoint curve, the plateau, then the row at the plateau.
    expert_runs = {}
    for r in records:
        path = os.path.join(args.work, "experts", f"{r['subject_id']}.npz")
        if os.path.exists(path):
            expert_runs[r["subject_id"]] = dict(np.load(path))
    result: dict = {"settings": s.__dict__, "device": str(device), "rows": {}, "demos": {}, "sweep": {}}
    expert_records = [r for r in records if r["subject_id"] in expert_runs]
    if expert_records:
        steps_list = [int(v) for v in expert_runs[expert_records[0]["subject_id"]]["steps"]]
        curve, text_curve = {}, {}
        for j, st in enumerate(steps_list):
            per = score_images(
                expert_records, [expert_runs[r["subject_id"]]["images"][j] for r in expert_records], k, scorer, reader
            )
            curve[st] = float(np.nanmean(per["subject_fidelity"]))
            text_curve[st] = float(
                np.mean(per["text_fidelity"])
            )  # a fine-tune forgets the prompt as it learns the subject
        plateau = plateau_step(curve)
        j = steps_list.index(plateau)
        result["expert_curve"] = {
            "subject_fidelity_by_steps": curve,
            "text_fidelity_by_steps": text_curve,
            "plateau_steps": plateau,
            "subjects": len(expert_records),
        }
        images["expert"] = [
            expert_runs[r["subject_id"]]["images"][j] if r["subject_id"] in expert_runs else None for r in records
        ]
        seconds["expert"] = time_experts(base, scorer, expert_records[:2], plateau, s, device)
    apprentices = {}
    for name, variant in VARIANTS:
        folder = os.path.join(args.work, "apprentices", variant)
        if os.path.isdir(folder):
            apprentices[variant] = load_apprentice(folder).to(device)
            images[name], seconds[name] = apprentice_images(apprentices[variant], records, k, s)
            result.setdefault("training", {})[variant] = json.loads(
                Path(os.path.join(folder, "apprentice_config.json")).read_text()
            )
    for name in ROWS:
        if name not in images:
            continue
        keep = [i for i, im in enumerate(images[name]) if im is not None]
        per = score_images([records[i] for i in keep], [images[name][i] for i in keep], k, scorer, reader)
        result["rows"][name] = {m: bootstrap(v) for m, v in per.items()} | {
            "seconds_per_subject": seconds.get(name),
            "subjects": len(keep),
        }
    for variant, key in (("suti", "demos"), ("raw", "demos_raw"), ("oracle", "demos_oracle_g")):
        if variant not in apprentices:
            continue
        result.setdefault(key, {})
        for kd in (0, 1, 3, 5):
            ims, _ = apprentice_images(apprentices[variant], records, kd, s, timed=0)
            per = score_images(records, ims, max(kd, 3), scorer, reader)
            result[key][kd] = {m: bootstrap(v) for m, v in per.items()}
    for lam in SWEEP:
        folder = os.path.join(args.work, "apprentices", f"sweep-{lam_name(lam)}")
        if os.path.isdir(folder):
            app = load_apprentice(folder).to(device)
            ims, _ = apprentice_images(app, records, k, s, timed=0)
            per = score_images(records, ims, k, scorer, reader)
            meta = json.loads(Path(os.path.join(folder, "apprentice_config.json")).read_text())
            result["sweep"][lam_name(lam)] = {m: bootstrap(v) for m, v in per.items()} | {
                "examples": meta.get("examples"),
                "steps": meta.get("steps"),
            }
    result["mine"] = mine_report(scorer)
    os.makedirs(args.out, exist_ok=True)
    tag = "toy_reproduction_quick" if args.quick else "toy_reproduction"
    with open(os.path.join(args.out, f"{tag}.json"), "w") as f:
        json.dump(result, f, indent=1, default=str)
    md = markdown(result)
    with open(os.path.join(args.out, f"{tag}.md"), "w") as f:
        f.write(md)
    grid_png(
        records,
        {m: images[m] for m in ROWS if m in images and all(x is not None for x in images[m][:6])},
        os.path.join(args.out, f"{tag}_grid.png"),
    )
    print(md)
    return {"out": args.out}


def markdown(result: dict) -> str:
    cols = ("subject_fidelity", "text_fidelity", "clip_i", "clip_t", "dino")
    lines = [
        "| method | subject fidelity | text fidelity | CLIP-I | CLIP-T | DINO-like | s per new subject |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, row in result["rows"].items():
        secs = row.get("seconds_per_subject")
        lines.append(
            f"| {name} | " + " | ".join(fmt(*row[c]) for c in cols) + f" | {'' if secs is None else f'{secs:.2f}'} |"
        )
    if any(m in row for row in result["rows"].values() for m in IDENTITY_METRICS.values()):
        lines += [
            "",
            "| method | subject fidelity by attribute: body | pattern | pattern colour |",
            "|---|---|---|---|",
        ]
        for name, row in result["rows"].items():
            lines.append(
                f"| {name} | "
                + " | ".join(fmt(*row[m]) if m in row else "-" for m in IDENTITY_METRICS.values())
                + " |"
            )
    if result.get("expert_curve"):
        c = result["expert_curve"]
        lines += [
            "",
            f"Expert subject fidelity by fine-tune steps ({c['subjects']} subjects): "
            + ", ".join(f"{k}: {v:.3f}" for k, v in c["subject_fidelity_by_steps"].items())
            + f"; plateau at {c['plateau_steps']} steps.",
        ]
        if c.get("text_fidelity_by_steps"):
            lines += [
                "",
                "Expert text fidelity by fine-tune steps: "
                + ", ".join(f"{k}: {v:.3f}" for k, v in c["text_fidelity_by_steps"].items())
                + ".",
            ]
    for key, title in (
        ("demos", "SuTI apprentice"),
        ("demos_raw", "raw apprentice"),
        ("demos_oracle_g", "oracle-G apprentice"),
    ):
        if not result.get(key):
            continue
        lines += [
            "",
            (
                f"| {title}, demos | subject fidelity | text fidelity | CLIP-I | DINO-like "
                "| body / pattern / pattern colour |"
            ),
            "|---|---|---|---|---|---|",
        ]
        for kd, row in result[key].items():
            parts = " / ".join(f"{row[m][0]:.2f}" if m in row else "-" for m in IDENTITY_METRICS.values())
            lines.append(
                f"| {kd} | {fmt(*row['subject_fidelity'])} | {fmt(*row['text_fidelity'])} | "
                f"{fmt(*row['clip_i'])} | {fmt(*row['dino'])} | {parts} |"
            )
    if result["sweep"]:
        lines += [
            "",
            "| threshold (lambda) | G rows kept | steps | subject fidelity | text fidelity |",
            "|---|---|---|---|---|",
        ]
        for lam, row in result["sweep"].items():
            lines.append(
                f"| {lam} | {row['examples']} | {row['steps']} | "
                f"{fmt(*row['subject_fidelity'])} | {fmt(*row['text_fidelity'])} |"
            )
    m = result.get("mine")
    if m:
        lines += [
            "",
            (
                f"Mining on a fresh corpus of {m['groups']} URL groups ({m['clean_groups']} clean): kept {m['kept']}, "
                f"precision {m['precision']:.3f} (kept clusters holding one subject), "
                f"recall {m['recall']:.3f} (clean groups kept); "
                f"{m['corrupt_images_skipped']} corrupt images skipped."
            ),
        ]
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------- main

STAGES = ("g", "experts", "encoder", "train", "eval")
# Settings fields that a flag of the same name (dashes for underscores) overrides: the int ones, and the checkpoint
# list.
INT_SETTING_FLAGS = ("eval_subjects", "g_subjects", "apprentice_steps", "sweep_steps", "expert_steps")
SETTING_FLAGS = (*INT_SETTING_FLAGS, "expert_checkpoints")


def parse_args(argv: list[str] | None = None) -> tuple[argparse.Namespace, Settings]:
    """The flags, and the Settings they pick (`--quick` or the full ones) with SETTING_FLAGS overrides applied."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true")
    p.add_argument("--stage", choices=[*STAGES, "all"], default="all")
    p.add_argument("--variant", default="suti")
    p.add_argument("--lam", type=float, default=0.0, help="the delta-CLIP threshold of the SuTI apprentice's G")
    p.add_argument("--artifacts", default="artifacts/toy")
    p.add_argument(
        "--work", default=None, help="G, expert runs and apprentices (default outputs/toy_reproduction[_quick])"
    )
    p.add_argument("--out", default="benchmarks/results")
    p.add_argument("--shard", type=int, default=0)
    p.add_argument("--num-shards", type=int, default=1)
    p.add_argument("--budget-s", type=float, default=None)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument(
        "--zero-init",
        default="gate",
        choices=("gate", "out"),
        help="what starts at 0 in each demo branch (core.method.apprentice.DemoBranch)",
    )
    p.add_argument(
        "--attention",
        default="separate",
        choices=("separate", "joint"),
        help="demo tokens in a new gated branch, or in each layer's own cross-attention (core.method.apprentice)",
    )
    p.add_argument("--demo-grid", type=int, default=4, help="demo tokens per image: grid x grid (+ 1 for the caption)")
    p.add_argument(
        "--encoder-steps",
        type=int,
        default=0,
        help=(
            "warm-start the demo encoder as an identity recogniser on train subjects for this many steps "
            "(pretrain_demo_encoder)"
        ),
    )
    p.add_argument(
        "--init-apprentice",
        default=None,
        help="train on from this saved apprentice folder (stage train; its own grid, attention and demo encoder)",
    )
    p.add_argument(
        "--raw-subjects",
        default="g",
        choices=("g", "all"),
        help=(
            "the raw variant's train subjects: those with a G shard under --work (the paper's comparison), "
            "or every G subject of the settings, G built or not (raw_examples)"
        ),
    )
    p.add_argument(
        "--expert-batch",
        type=int,
        default=1,
        help="experts fine-tuned at once as one vmapped model (a GPU: 16-64; a CPU: 1)",
    )
    for field in INT_SETTING_FLAGS:
        p.add_argument("--" + field.replace("_", "-"), type=int, default=None, help=f"override Settings.{field}")
    p.add_argument(
        "--expert-checkpoints",
        type=lambda v: tuple(sorted({int(x) for x in v.split(",")})),
        default=None,
        help=(
            "fine-tune step counts at which the test-subject experts are sampled, e.g. 25,50,100,150 "
            "(the last is their length)"
        ),
    )
    args = p.parse_args(argv)
    s = QUICK if args.quick else FULL
    s = Settings(**{**s.__dict__, **{k: getattr(args, k) for k in SETTING_FLAGS if getattr(args, k) is not None}})
    args.work = args.work or os.path.join("outputs", "toy_reproduction_quick" if args.quick else "toy_reproduction")
    return args, s


def main(argv: list[str] | None = None) -> None:
    args, s = parse_args(argv)
    from core.models.device import pick_device

    device = pick_device()
    if device.type == "cpu":
        torch.set_num_threads(args.threads)
    start = time.time()
    if args.stage != "all":
        out = {
            "g": stage_g,
            "experts": stage_experts,
            "encoder": stage_encoder,
            "train": stage_train,
            "eval": stage_eval,
        }[args.stage](args, s, device)
        print(f"[toy_reproduction] {args.stage}: {out} in {time.time() - start:.0f} s", flush=True)
        return
    timings = {}
    for name, fn, variant in (
        ("g", stage_g, None),
        ("experts", stage_experts, None),
        ("train suti", stage_train, "suti"),
        ("train raw", stage_train, "raw"),
        ("train oracle", stage_train, "oracle"),
        *((f"train sweep-{lam_name(lam)}", stage_train, f"sweep-{lam_name(lam)}") for lam in SWEEP),
        ("eval", stage_eval, None),
    ):
        t0 = time.time()
        if variant:
            args.variant = variant
        out = fn(args, s, device)
        timings[name] = round(time.time() - t0, 1)
        print(f"[toy_reproduction] {name}: {out} in {timings[name]} s", flush=True)
    print(f"[toy_reproduction] stage seconds: {json.dumps(timings)}; total {time.time() - start:.0f} s")


if __name__ == "__main__":
    main()
