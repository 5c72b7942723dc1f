"""One command for the toy world's one-time artifacts: attribute readers, toy CLIP scorer and base model, trained
on train subjects only, saved in fp16 safetensors (they ship in the repo under `artifacts/toy/`).

    python -m apps.toy_pretrain --out artifacts/toy             # every stage, in order; finished stages are skipped
    python -m apps.toy_pretrain --out artifacts/toy --stage base --budget-s 300

Stages: `readers` and `scorer` (independent), `base` (the toy preset), then `finish`: renders the base model has
noised and denoised part-way (SDEdit, labels still known) fine-tune the readers; the report (`report.json`) gives
reader accuracy on clean and on renoised renders of *test* subjects, and the base model's own identity accuracy on
its captions. A stage whose output folder exists is skipped (delete it to redo it), so an interrupted run resumes
at the stage it was in (the base stage also resumes inside itself, from a state saved every 200 steps). `identity`
(not part of `all`) only measures the base's identity accuracy with the current readers. Steps are upper bounds;
`--budget-s` ends a stage on time (its lr schedule follows the clock), which is how a run fits a fixed time slot on
an accelerator. The device is picked by `core.models.device` (CUDA when there).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from core.config import PretrainConfig, ScorerConfig
from core.models.backbone import create_backbone, load_backbone, save_backbone
from core.models.device import pick_device
from core.models.sampling import renoise
from core.toy import readers as rd
from core.toy import world as tw
from core.toy.evaluation import base_identity

WORLD_SEED, TEST_FRACTION = 0, 0.2  # the split every stage and the benchmark use (WorldConfig's defaults)


def split() -> tuple[list[tw.Subject], list[tw.Subject]]:
    return tw.split_subjects(WORLD_SEED, TEST_FRACTION)


def _save_fp16(folder: str) -> None:
    """Store every safetensors file under `folder` in fp16 (loading upcasts; see
    core.models.backbone.load_backbone)."""
    from safetensors.torch import load_file, save_file

    for root, _, names in os.walk(folder):
        for name in names:
            if name.endswith(".safetensors"):
                path = os.path.join(root, name)
                tensors = {
                    k: (v.half() if v.is_floating_point() else v).contiguous() for k, v in load_file(path).items()
                }
                save_file(tensors, path, metadata={"format": "pt"})


def _publish(tmp: str, final: str) -> None:
    if os.path.exists(final):
        shutil.rmtree(final)
    os.replace(tmp, final)


def stage_readers(args, device) -> dict:
    train, _ = split()
    deadline = time.monotonic() + args.budget_s if args.budget_s else None
    reader, losses = rd.train_readers(
        train,
        args.reader_steps,
        args.reader_batch,
        device=device,
        workers=args.workers,
        deadline=deadline,
        seed=args.seed,
    )
    tmp = os.path.join(args.out, "readers.tmp")
    rd.save_readers(reader, tmp, dtype=torch.float32)
    _publish(tmp, os.path.join(args.out, "readers"))
    return {"steps": len(losses), "last_loss": float(np.mean(losses[-20:]))}


def stage_scorer(args, device) -> dict:
    from core.models.scorer import save_scorer
    from core.toy.scorer_training import train_scorer

    train, _ = split()
    cfg = ScorerConfig(steps=args.scorer_steps, batch_size=args.scorer_batch, seed=args.seed, threads=args.threads)
    deadline = time.monotonic() + args.budget_s if args.budget_s else None
    scorer, losses = train_scorer(cfg, train, 32, device=device, deadline=deadline)
    tmp = os.path.join(args.out, "scorer.tmp")
    save_scorer(scorer, tmp)
    _save_fp16(tmp)
    _publish(tmp, os.path.join(args.out, "scorer"))
    return {"steps": len(losses), "last_loss": float(np.mean(losses[-20:]))}


def stage_base(args, device) -> dict:
    from core.toy.pretrain import pretrain

    train, _ = split()
    # --init continues from a saved base (e.g. one pretrained on a GPU, then trained on here).
    backbone = (load_backbone(args.init) if args.init else create_backbone(args.preset, seed=args.seed)).to(device)
    cfg = PretrainConfig(
        steps=args.base_steps, batch_size=args.base_batch, lr=args.base_lr, seed=args.seed, threads=args.threads
    )
    deadline = time.monotonic() + args.budget_s if args.budget_s else None
    # A killed run resumes from its last state (weights, EMA, optimizer, step), saved atomically every 200 steps.
    state_path = os.path.join(args.out, "base.state.pt")
    resume = torch.load(state_path, map_location=device, weights_only=True) if os.path.exists(state_path) else None
    if resume is not None:
        print(f"[toy_pretrain] base: resuming from step {int(resume['step'])} ({state_path})", flush=True)

    def save_state(state: dict) -> None:
        torch.save(state, state_path + ".tmp")
        os.replace(state_path + ".tmp", state_path)

    losses = pretrain(
        backbone,
        train,
        cfg,
        workers=args.workers,
        deadline=deadline,
        ema_decay=0.999 if args.base_steps > 2000 else None,
        resume=resume,
        save_state=save_state,
        save_every=200,
    )
    tmp = os.path.join(args.out, "base.tmp")
    save_backbone(backbone.to("cpu"), tmp)
    _save_fp16(tmp)
    _publish(tmp, os.path.join(args.out, "base"))
    if os.path.exists(state_path):
        os.remove(state_path)
    return {
        "steps": len(losses) + (int(resume["step"]) if resume is not None else 0),
        "preset": f"from {args.init}" if args.init else args.preset,
        "batch_size": cfg.batch_size,
        "first_loss": losses[0],
        "last_loss": float(np.mean(losses[-50:])),
    }


def labelled_scenes(subjects: list[tw.Subject], n: int, rng: np.random.Generator, styled: bool = True):
    """n (subject, scene) pairs with reader-style scene variety (no styles when `styled` is False)."""
    pairs = []
    for i in rng.choice(len(subjects), size=n):
        scene = rd.random_scene_for_readers(rng, 32)
        if not styled:
            scene = replace(scene, style=None)
        pairs.append((subjects[int(i)], scene))
    return pairs


def renoised_set(backbone, pairs, strength: float, rng: np.random.Generator, seed: int, batch: int = 256):
    """Renders of `pairs` noised and denoised part-way by `backbone` (conditioned on their full captions)."""
    images = np.stack([tw.render(s, sc, 32, rng) for s, sc in pairs])
    captions = [tw.full_caption(s, sc) for s, sc in pairs]
    out = [
        renoise(backbone, images[i : i + batch], captions[i : i + batch], strength=strength, seed=seed + i)
        for i in range(0, len(images), batch)
    ]
    labels = np.asarray([rd.label_row(s, sc) for s, sc in pairs], dtype=np.int64)
    return np.concatenate(out), labels, images


def stage_finish(args, device) -> dict:
    train, test = split()
    base = load_backbone(os.path.join(args.out, "base"))
    base.to(device)
    reader = rd.load_readers(os.path.join(args.out, "readers")).to(device)
    rng = np.random.default_rng(args.seed + 7)
    report: dict = {}
    clean_imgs, clean_labels = rd.labelled_batch(test, args.eval_n, rng)
    report["readers_before"] = {"clean_test": rd.accuracy(reader, clean_imgs, clean_labels)}
    # Fine-tune data: train subjects renoised at several strengths.
    extra_imgs, extra_labels = [], []
    for k, strength in enumerate((0.2, 0.35, 0.5)):
        imgs, labels, _ = renoised_set(
            base, labelled_scenes(train, args.renoise_n, rng), strength, rng, args.seed + 100 * k
        )
        extra_imgs.append(imgs)
        extra_labels.append(labels)
    extra = (np.concatenate(extra_imgs), np.concatenate(extra_labels))
    deadline = time.monotonic() + args.budget_s if args.budget_s else None
    reader, losses = rd.train_readers(
        train,
        args.reader_finetune_steps,
        args.reader_batch,
        lr=5e-4,
        device=device,
        workers=args.workers,
        reader=reader,
        extra=extra,
        deadline=deadline,
        seed=args.seed + 1,
    )
    report["readers_finetune_steps"] = len(losses)
    # Report on test subjects only: clean renders, and renders renoised at two strengths.
    after = {"clean_test": rd.accuracy(reader, clean_imgs, clean_labels)}
    for k, strength in enumerate((0.25, 0.5)):
        imgs, labels, _ = renoised_set(
            base, labelled_scenes(test, args.eval_n, rng), strength, rng, args.seed + 1000 + k
        )
        after[f"renoised_{strength}_test"] = rd.accuracy(reader, imgs, labels)
    report["readers"] = {k: {h: round(v, 4) for h, v in acc.items()} for k, acc in after.items()}
    for guidance in (3.0, 5.0):
        for name, subjects in (("train", train), ("test", test)):
            acc, images = base_identity(base, reader, subjects, args.eval_n, rng, args.seed + 2000, guidance)
            report[f"base_own_captions_{name}_g{guidance:g}"] = acc
            if name == "test" and guidance == 3.0:
                from PIL import Image

                grid = np.concatenate(
                    [np.concatenate(list(images[r * 8 : (r + 1) * 8]), 1) for r in range(len(images) // 8)], 0
                )
                Image.fromarray(grid).resize((grid.shape[1] * 3, grid.shape[0] * 3), Image.NEAREST).save(
                    os.path.join(args.out, "base_samples.png")
                )
    tmp = os.path.join(args.out, "readers.tmp")
    rd.save_readers(reader.to("cpu"), tmp)
    _publish(tmp, os.path.join(args.out, "readers"))
    return report


def stage_identity(args, device) -> dict:
    """Measure only: the base drawing its own full captions of test subjects, read by the current readers (no
    reader fine-tune; use after retraining the base alone). Also writes base_samples.png."""
    from PIL import Image

    _, test = split()
    base = load_backbone(os.path.join(args.out, "base")).to(device)
    reader = rd.load_readers(os.path.join(args.out, "readers")).to(device)
    report = {}
    for guidance in (3.0, 5.0):
        acc, images = base_identity(
            base, reader, test, args.eval_n, np.random.default_rng(args.seed + 3), args.seed + 2000, guidance
        )
        report[f"base_own_captions_test_g{guidance:g}"] = acc
        if guidance == 3.0:
            grid = np.concatenate(
                [np.concatenate(list(images[r * 8 : (r + 1) * 8]), 1) for r in range(len(images) // 8)], 0
            )
            Image.fromarray(grid).resize((grid.shape[1] * 3, grid.shape[0] * 3), Image.NEAREST).save(
                os.path.join(args.out, "base_samples.png")
            )
    report["images_per_row"] = args.eval_n
    return report


STAGES = {
    "readers": stage_readers,
    "scorer": stage_scorer,
    "base": stage_base,
    "finish": stage_finish,
    "identity": stage_identity,
}


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="artifacts/toy")
    p.add_argument("--stage", choices=[*STAGES, "all"], default="all")
    p.add_argument("--force", action="store_true", help="redo the stage even if its output exists")
    p.add_argument("--budget-s", type=float, default=None, help="wall-clock budget of each stage run")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--workers", type=int, default=1, help="DataLoader workers rendering batches")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--reader-steps", type=int, default=3000)
    p.add_argument("--reader-batch", type=int, default=256)
    p.add_argument("--reader-finetune-steps", type=int, default=1000)
    p.add_argument("--scorer-steps", type=int, default=3000)
    p.add_argument("--scorer-batch", type=int, default=128)
    p.add_argument("--base-steps", type=int, default=20000)
    p.add_argument("--base-batch", type=int, default=256)
    p.add_argument("--base-lr", type=float, default=1e-3)
    p.add_argument("--preset", default="toy", help="base stage: the backbone preset (core/models/backbone.py PRESETS)")
    p.add_argument("--init", default=None, help="base stage: start from this saved base instead of random weights")
    p.add_argument("--renoise-n", type=int, default=2048)
    p.add_argument("--eval-n", type=int, default=1024)
    args = p.parse_args(argv)
    os.makedirs(args.out, exist_ok=True)
    device = pick_device()
    if device.type == "cpu":
        torch.set_num_threads(args.threads)
    report_path = os.path.join(args.out, "report.json")
    report = json.loads(Path(report_path).read_text()) if os.path.exists(report_path) else {}
    done_marker = {
        "readers": "readers/readers.json",
        "scorer": "scorer/open_clip_config.json",
        "base": "base/unet/config.json",
        "finish": "base_samples.png",
        "identity": "-",
    }
    for name in [n for n in STAGES if n != "identity"] if args.stage == "all" else [args.stage]:
        if not args.force and os.path.exists(os.path.join(args.out, done_marker[name])) and name in report:
            print(f"[toy_pretrain] {name}: done already, skipped")
            continue
        start = time.time()
        out = STAGES[name](args, device)
        report[name] = {
            **out,
            "seconds": round(time.time() - start, 1),
            "device": torch.cuda.get_device_name() if device.type == "cuda" else platform.processor() or device.type,
            "command": "python -m apps.toy_pretrain " + " ".join(argv if argv is not None else sys.argv[1:]),
            "seed": args.seed,
            "date": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()),
        }
        # Each stage writes only its own key, then the file is re-read and merged: stages run in parallel
        # processes (readers, scorer, base) do not overwrite each other.
        merged = json.loads(Path(report_path).read_text()) if os.path.exists(report_path) else {}
        merged[name] = report[name]
        with open(report_path + ".tmp", "w") as f:
            json.dump(merged, f, indent=1)
        os.replace(report_path + ".tmp", report_path)
        report = merged
        print(f"[toy_pretrain] {name}: {json.dumps(report[name])[:2000]}", flush=True)
    return report


if __name__ == "__main__":
    main()
