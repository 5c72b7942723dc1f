"""Does a toy base model listen to each word of identity? For each identity attribute, images of train subjects are
noised and denoised once under their true full caption and under the same caption with that attribute's value
swapped; a model that uses the word predicts worse under the wrong one. Also, per attribute, how far apart two samples
drawn from the same seed are under the true and the swapped caption (a word the model ignores draws the same image).

    python -m benchmarks.caption_sensitivity --base shipped=artifacts/toy-v2/base
    python -m benchmarks.caption_sensitivity --base before=OLD_FOLDER --base after=artifacts/toy-v2/base

Swaps: stripes and bars (the line patterns' orientation), dots and checks, the body colour and the pattern colour
(each to another colour of the palette, never the subject's other colour). Writes
`benchmarks/results/caption_sensitivity.json`.
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from core.models import backbone as bb
from core.models.sampling import denoising_target, sample
from core.toy import world as tw

RESULTS = Path(__file__).resolve().parent / "results"
SWAPS = {
    "stripes/bars": ("pattern", {"stripes": "bars", "bars": "stripes"}),
    "dots/checks": ("pattern", {"dots": "checks", "checks": "dots"}),
    "body": ("body", None),
    "pattern_colour": ("pattern_colour", None),
}


def swapped(subject: tw.Subject, attribute: str, mapping: dict | None, rng: np.random.Generator) -> tw.Subject:
    if mapping is not None:
        return replace(subject, **{attribute: mapping[getattr(subject, attribute)]})
    taken = {subject.body, subject.pattern_colour}
    others = [c for c in tw.PALETTE if c not in taken]
    return replace(subject, **{attribute: others[int(rng.integers(len(others)))]})


@torch.no_grad()
def measure(backbone: bb.Backbone, n: int, timesteps: list[int], version: int, guidance: float, seed: int) -> dict:
    train, _ = tw.split_subjects(0, 0.2)
    out = {}
    for name, (attribute, mapping) in SWAPS.items():
        rng = np.random.default_rng(seed)
        pool = [s for s in train if mapping is None or getattr(s, attribute) in mapping]
        subjects = [pool[int(i)] for i in rng.choice(len(pool), size=n)]
        scenes = [tw.random_scene(rng, 32, version) for _ in subjects]
        true = [tw.full_caption(s, sc) for s, sc in zip(subjects, scenes, strict=True)]
        wrong = [
            tw.full_caption(swapped(s, attribute, mapping, rng), sc) for s, sc in zip(subjects, scenes, strict=True)
        ]
        x0 = bb.images_to_tensor(np.stack([tw.render(s, sc, 32, rng) for s, sc in zip(subjects, scenes, strict=True)]))
        states = {k: bb.encode_text(backbone, c) for k, c in (("true", true), ("swapped", wrong))}
        losses = {}
        for t in timesteps:
            noise = torch.randn(x0.shape, generator=torch.Generator().manual_seed(seed + t))
            tt = torch.full((n,), t)
            xt = backbone.noise_scheduler.add_noise(x0, noise, tt)
            target = denoising_target(backbone.noise_scheduler, x0, noise, tt)
            per = {k: float(((backbone.unet(xt, tt, encoder_hidden_states=h).sample - target) ** 2).mean())
                   for k, h in states.items()}  # fmt: skip
            losses[str(t)] = {**per, "gap": round((per["swapped"] - per["true"]) / per["true"], 4)}
        k = min(n, 64)
        a = sample(backbone, true[:k], guidance_scale=guidance, seed=seed).astype(np.float32)
        b = sample(backbone, wrong[:k], guidance_scale=guidance, seed=seed).astype(np.float32)
        out[name] = {
            "loss_by_timestep": losses,
            "mean_gap": round(float(np.mean([v["gap"] for v in losses.values()])), 4),
            "same_seed_mean_abs_pixel_difference": round(float(np.abs(a - b).mean()), 2),
        }
        print(json.dumps({name: out[name]}), flush=True)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--base", action="append", required=True, help="NAME=FOLDER of a base model (repeatable)")
    parser.add_argument("--world-version", type=int, default=2)
    parser.add_argument("--n", type=int, default=256)
    parser.add_argument("--timesteps", default="100,300,500,700,900")
    parser.add_argument("--guidance", type=float, default=1.5)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    torch.set_num_threads(2)
    report = {
        "date": time.strftime("%Y-%m-%d"),
        "machine": f"{platform.machine()} CPU",
        "command": "python -m benchmarks.caption_sensitivity " + " ".join(f"--base {b}" for b in args.base),
        "samples": args.n,
        "world_version": args.world_version,
        "guidance": args.guidance,
        "bases": {},
    }
    for spec in args.base:
        name, folder = spec.split("=", 1)
        backbone = bb.load_backbone(folder)
        backbone.unet.float()
        backbone.text_encoder.float()
        timesteps = [int(t) for t in args.timesteps.split(",")]
        found = measure(backbone, args.n, timesteps, args.world_version, args.guidance, args.seed)
        report["bases"][name] = {"folder": folder, **found}
    RESULTS.mkdir(exist_ok=True)
    path = RESULTS / "caption_sensitivity.json"
    path.write_text(json.dumps(report, indent=1) + "\n")
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
