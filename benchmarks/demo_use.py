"""Does an apprentice use its demonstrations? A fast, paired check that needs no sampling.

For test subjects (never trained on; `core.toy.evaluation.eval_set`, 8 prompts each) the target is the true render
of each prompt. The apprentice's denoising loss
on it is taken twice with the same noise and timesteps: once with 3 of the subject's own demos, once with 3 demos of
another subject (its captions kept). The gap (other minus own) is above 0 exactly when the demos' content helps the
prediction; an apprentice that ignores its demos gives 0. Reported per apprentice folder with a bootstrap 95%
interval over batches.

    python -m benchmarks.demo_use FOLDER [FOLDER ...] [--subjects 32] [--batches 16]
        [--world-version 2] [--text-reference artifacts/toy-v2/base] [--out demo_use.json]

The scale to read a gap against (`--text-reference BASE`): the same paired loss for a base model told the identity in
words. Each row is a test subject in a random scene, captioned once with its own identity spelled out and once with
the identity of another subject of the same class (only the colour and pattern words differ). A base that reads
identity from text at accuracy a has a gap of roughly what identity is worth to the denoising loss at that accuracy.
"""

from __future__ import annotations

import argparse
import json

import numpy as np
import torch

from core.config import EvaluateConfig, WorldConfig
from core.data.images import from_png
from core.toy import world as tw
from core.toy.evaluation import eval_set


def paired_gap(own: list[float], other: list[float]) -> dict:
    """Mean losses and their paired gap (other minus own), with a bootstrap 95% interval over batches."""
    gaps = np.array(other) - np.array(own)
    boot = np.random.default_rng(0).choice(gaps, size=(2000, len(gaps))).mean(1)
    return {
        "loss_own": float(np.mean(own)),
        "loss_other": float(np.mean(other)),
        "gap": float(gaps.mean()),
        "gap_95": [float(np.percentile(boot, 2.5)), float(np.percentile(boot, 97.5))],
        "batches": len(gaps),
    }


def demo_gap(apprentice, records: list[dict], batches: int, batch_size: int = 32, k: int = 3, seed: int = 0) -> dict:
    from core.method.apprentice import training_loss
    from core.models.backbone import images_to_tensor
    from core.models.tokenizer import tokenize

    rows = [(i, j) for i, r in enumerate(records) for j in range(len(r["prompts"]))]
    rng = np.random.default_rng(seed)
    demos = [images_to_tensor([from_png(b) for b in r["demo_images"][:k]]) for r in records]
    demo_ids = [tokenize(apprentice.tokenizer, r["demo_captions"][:k]) for r in records]
    own, other = [], []
    with torch.no_grad():
        for b in range(batches):
            pick = [rows[int(x)] for x in rng.choice(len(rows), size=batch_size)]
            # Another subject's demos for each row: a fixed offset, never the row's own subject.
            shift = [(i + 1 + int(rng.integers(len(records) - 1))) % len(records) for i, _ in pick]
            base = {
                "image": images_to_tensor(np.stack([records[i]["oracle"][j][0] for i, j in pick])),
                "input_ids": tokenize(apprentice.tokenizer, [records[i]["prompts"][j] for i, j in pick]),
                "demo_ids": torch.stack([demo_ids[i] for i, _ in pick]),
            }
            for out, sources in ((own, [i for i, _ in pick]), (other, shift)):
                batch = {**base, "demo_images": torch.stack([demos[s] for s in sources])}
                out.append(float(training_loss(apprentice, batch, 0.0, 0.0, torch.Generator().manual_seed(seed + b))))
    return paired_gap(own, other)


def text_gap(backbone, subjects: list, batches: int, batch_size: int = 32, seed: int = 0, version: int = 2) -> dict:
    """The base model's denoising loss on renders of `subjects` captioned with their own identity vs another same-class
    subject's, same scene, same noise (module docstring)."""
    from core.models.backbone import encode_text, images_to_tensor
    from core.models.sampling import denoising_loss

    rng = np.random.default_rng(seed)
    own, other = [], []
    with torch.no_grad():
        for b in range(batches):
            picks = [subjects[int(i)] for i in rng.choice(len(subjects), size=batch_size)]
            scenes = [tw.random_scene(rng, 32, version) for _ in picks]
            x0 = images_to_tensor(np.stack([tw.render(s, sc, 32, rng) for s, sc in zip(picks, scenes)]))
            swaps = []
            for s in picks:
                same = [
                    o
                    for o in subjects
                    if o.class_name == s.class_name
                    and (o.body, o.pattern, o.pattern_colour) != (s.body, s.pattern, s.pattern_colour)
                ]
                swaps.append(same[int(rng.integers(len(same)))])
            for out, who in ((own, picks), (other, swaps)):
                states = encode_text(backbone, [tw.full_caption(w, sc) for w, sc in zip(who, scenes)])
                out.append(
                    float(
                        denoising_loss(
                            backbone.unet,
                            backbone.noise_scheduler,
                            x0,
                            states,
                            torch.Generator().manual_seed(seed + b),
                        )
                    )
                )
    return paired_gap(own, other)


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("folders", nargs="*")
    p.add_argument("--subjects", type=int, default=32)
    p.add_argument("--batches", type=int, default=16)
    p.add_argument("--world-version", type=int, default=2)
    p.add_argument("--out", default=None, help="write the results here as JSON")
    p.add_argument(
        "--text-reference",
        default=None,
        metavar="BASE",
        help="a base model folder: the gap identity in words gives it (the scale)",
    )
    args = p.parse_args(argv)
    from core.pipelines.suti import load_apprentice

    torch.set_num_threads(2)
    world = WorldConfig(version=args.world_version)
    records = eval_set(world, EvaluateConfig(num_subjects=args.subjects, prompts_per_subject=8, num_demos=3))
    result = {}
    for folder in args.folders:
        apprentice = load_apprentice(folder).eval()
        gates = apprentice.gates()  # empty with attention="joint"
        result[folder] = demo_gap(apprentice, records, args.batches) | {
            "attention": apprentice.adapter.config.attention,
            "max_abs_gate": float(gates.abs().max()) if gates.numel() else None,
        }
        r = result[folder]
        print(
            f"[demo_use] {folder}: loss own demos {r['loss_own']:.5f}, other's {r['loss_other']:.5f}, "
            f"gap {r['gap']:.3g} [{r['gap_95'][0]:.3g}, {r['gap_95'][1]:.3g}]; "
            f"attention {r['attention']}, max |gate| {r['max_abs_gate']}",
            flush=True,
        )
    if args.text_reference:
        from core.models.backbone import load_backbone

        test = tw.split_subjects(world.seed, world.test_fraction)[1]
        r = text_gap(load_backbone(args.text_reference), test, args.batches, version=world.version)
        result[f"text reference: {args.text_reference}"] = r
        print(
            f"[demo_use] text reference {args.text_reference}: loss own identity {r['loss_own']:.5f}, "
            f"other's {r['loss_other']:.5f}, gap {r['gap']:.3g} [{r['gap_95'][0]:.3g}, {r['gap_95'][1]:.3g}]",
            flush=True,
        )
    if args.out:
        with open(args.out, "w") as f:
            json.dump(result, f, indent=1)
    return result


if __name__ == "__main__":
    main()
