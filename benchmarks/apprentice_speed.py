"""What demonstrations cost at sampling time, and what the apprentice adds in parameters.

    python -m benchmarks.apprentice_speed            # the shipped toy base, 5 interleaved repeats (about 4 minutes)
    python -m benchmarks.apprentice_speed --quick    # the tiny preset, 2 repeats (under a minute)

Measured in one run, on one machine, interleaved (A, B, A, B, ...) so drift hits both sides alike; medians and
ranges over repeats:
- UNet evaluation: the apprentice with 4 demos (demo tokens already encoded) against the base UNet alone, at the
  same batch (target: at most 1.15x).
- Whole samples of one image, 25 DDIM steps: the base model (text guidance: 2 UNet evaluations per step); the
  apprentice with one guidance scale over text and demos (2 per step); with separate text and demo scales (dual
  guidance: 3 per step, so it costs about 1.5x: not hidden); each with the demo encodings cached (encoded once per
  request, the default) and recomputed at every step.
- Parameter overhead: new parameters against the base UNet and text encoder, for the toy presets, the tiny SD and
  IF stand-ins, and Stable Diffusion 1.5 and 2.1 at full size (their published UNet and text-encoder
  configurations, built on the meta device: no weights needed). The paper adds about 400M to 2.1B (19%).
Writes `benchmarks/results/apprentice_speed[_quick].json`.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import tempfile
import time

import numpy as np
import torch

from core.models.tokenizer import tokenize

RESULTS = os.path.join(os.path.dirname(__file__), "results")

# Full-size configurations (the values of the model repos' unet/config.json and text_encoder/config.json).
SD15_UNET = {
    "sample_size": 64,
    "in_channels": 4,
    "out_channels": 4,
    "layers_per_block": 2,
    "block_out_channels": (320, 640, 1280, 1280),
    "down_block_types": ("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
    "up_block_types": ("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
    "cross_attention_dim": 768,
    "attention_head_dim": 8,
}
SD15_TEXT = {
    "hidden_size": 768,
    "intermediate_size": 3072,
    "num_hidden_layers": 12,
    "num_attention_heads": 12,
    "max_position_embeddings": 77,
    "vocab_size": 49408,
}
SD21_UNET = {
    **SD15_UNET,
    "sample_size": 96,
    "cross_attention_dim": 1024,
    "attention_head_dim": (5, 10, 20, 20),
    "use_linear_projection": True,
}
SD21_TEXT = {
    "hidden_size": 1024,
    "intermediate_size": 4096,
    "num_hidden_layers": 23,
    "num_attention_heads": 16,
    "max_position_embeddings": 77,
    "vocab_size": 49408,
    "hidden_act": "gelu",
}


def overhead_full_size(unet_cfg: dict, text_cfg: dict) -> dict:
    from diffusers import UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    from core.method.apprentice import DemoAdapter

    with torch.device("meta"):
        unet = UNet2DConditionModel(**unet_cfg)
        text = CLIPTextModel(CLIPTextConfig(**text_cfg))
        adapter = DemoAdapter.for_unet(unet, text, demo_grid=4)
    n = lambda m: sum(p.numel() for p in m.parameters())
    new, u, t = n(adapter), n(unet), n(text)
    return {
        "new": new,
        "unet": u,
        "base": u + t,
        "of_unet": new / u,
        "of_base": new / (u + t),
        "layers": len(adapter.branches),
    }


def overheads() -> dict:
    from core.method import apprentice as ap
    from core.models import backbone as bb
    from core.toy.tiny_backbones import save_tiny_deepfloyd_if, save_tiny_stable_diffusion

    out = {}
    for preset in ("tiny", "toy", "toy-wide"):
        out[preset] = ap.Apprentice(bb.create_backbone(preset)).overhead()
    for name, maker in (("tiny-sd", save_tiny_stable_diffusion), ("tiny-if", save_tiny_deepfloyd_if)):
        with tempfile.TemporaryDirectory() as folder:
            maker(folder)
            out[name] = ap.Apprentice(bb.load_backbone(folder)).overhead()
    out["sd15 (full size)"] = overhead_full_size(SD15_UNET, SD15_TEXT)
    out["sd21 (full size)"] = overhead_full_size(SD21_UNET, SD21_TEXT)
    return out


def spread(values: list[float]) -> dict:
    return {"median": statistics.median(values), "min": min(values), "max": max(values), "n": len(values)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument(
        "--base", default="artifacts/toy-v2/base", help="base model folder (default: the shipped toy base)"
    )
    parser.add_argument("--repeats", type=int, default=None)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    from core.method import apprentice as ap
    from core.models import backbone as bb
    from core.toy import world as tw

    torch.set_num_threads(args.threads)
    repeats = args.repeats or (2 if args.quick else 5)
    base = bb.create_backbone("tiny", seed=0) if args.quick else bb.load_backbone(args.base)
    apprentice = ap.Apprentice(base).eval()
    with torch.no_grad():  # open the gates: a trained apprentice's demo branches are live
        for branch in apprentice.adapter.branches.values():
            branch.gate.fill_(0.5)
    rng = np.random.default_rng(0)
    demos = tw.demonstrations(tw.Subject("ball", "red", "dots", "blue"), 4, rng, size=apprentice.resolution)
    images, captions = [d[0] for d in demos], [d[1] for d in demos]
    prompt = "a ball on sand"

    # UNet evaluation, batch 2 (one guided image): base UNet (text only) vs apprentice with 4 demos' tokens.
    x = torch.randn(bb.model_shape(base, 2))
    t = torch.tensor([500, 500])
    states = bb.encode_text(base, [prompt, ""])
    with torch.no_grad():
        tokens = apprentice.encode_demos(
            bb.images_to_tensor(images).unsqueeze(0).repeat(2, 1, 1, 1, 1),
            tokenize(base.tokenizer, captions).unsqueeze(0).repeat(2, 1, 1),
        )
    mask = torch.ones(2)
    evals = 10 if args.quick else 40

    @torch.no_grad()
    def time_unet(with_demos: bool) -> float:
        start = time.perf_counter()
        for _ in range(evals):
            if with_demos:
                apprentice(x, t, states, tokens, mask)
            else:
                apprentice(x, t, states)  # no demo kwargs: the stock attention alone (the base model)
        return (time.perf_counter() - start) / evals

    time_unet(True), time_unet(False)  # warm-up
    unet = {"base": [], "apprentice_4_demos": []}
    for r in range(repeats):
        order = ("base", "apprentice_4_demos") if r % 2 == 0 else ("apprentice_4_demos", "base")
        for name in order:
            unet[name].append(time_unet(name != "base"))
    ratios = [a / b for a, b in zip(unet["apprentice_4_demos"], unet["base"])]

    # Whole samples: one image, 25 DDIM steps.
    steps = 10 if args.quick else 25
    modes = {
        "base (text guidance, 2 evals/step)": lambda: ap.sample(
            apprentice, prompt, [], [], num_inference_steps=steps, seed=1
        ),
        "apprentice, one scale (2 evals/step), cached": lambda: ap.sample(
            apprentice, prompt, images, captions, num_inference_steps=steps, seed=1
        ),
        "apprentice, dual guidance (3 evals/step), cached": lambda: ap.sample(
            apprentice, prompt, images, captions, num_inference_steps=steps, seed=1, demo_guidance_scale=2.0
        ),
        "apprentice, one scale, recomputed every step": lambda: ap.sample_batch(
            apprentice,
            [ap.SampleRequest(prompt, images, captions, seed=1)],
            num_inference_steps=steps,
            cache_demos=False,
        ),
        "apprentice, dual guidance, recomputed every step": lambda: ap.sample_batch(
            apprentice,
            [ap.SampleRequest(prompt, images, captions, seed=1, demo_guidance_scale=2.0)],
            num_inference_steps=steps,
            cache_demos=False,
        ),
    }
    whole = {name: [] for name in modes}
    for fn in modes.values():
        fn()  # warm-up
    for r in range(repeats):
        for name in list(modes) if r % 2 == 0 else list(reversed(modes)):
            start = time.perf_counter()
            modes[name]()
            whole[name].append(time.perf_counter() - start)
    cache_speedup = {
        "one scale": [
            b / a
            for a, b in zip(
                whole["apprentice, one scale (2 evals/step), cached"],
                whole["apprentice, one scale, recomputed every step"],
            )
        ],
        "dual": [
            b / a
            for a, b in zip(
                whole["apprentice, dual guidance (3 evals/step), cached"],
                whole["apprentice, dual guidance, recomputed every step"],
            )
        ],
    }
    result = {
        "command": "python -m benchmarks.apprentice_speed" + (" --quick" if args.quick else ""),
        "date": time.strftime("%Y-%m-%d"),
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, torch {torch.__version__}, {args.threads} threads",
        "model": "tiny preset (random)"
        if args.quick
        else f"{args.base} ({apprentice.resolution}x{apprentice.resolution} pixels)",
        "demos": 4,
        "unet_eval_s": {k: spread(v) for k, v in unet.items()},
        "unet_eval_ratio_apprentice_over_base": spread(ratios),
        "unet_eval_target": "at most 1.15",
        "sample_steps": steps,
        "whole_sample_s": {k: spread(v) for k, v in whole.items()},
        "demo_cache_speedup": {k: spread(v) for k, v in cache_speedup.items()},
        "parameter_overhead": overheads(),
    }
    os.makedirs(RESULTS, exist_ok=True)
    path = os.path.join(RESULTS, "apprentice_speed_quick.json" if args.quick else "apprentice_speed.json")
    with open(path, "w") as f:
        json.dump(result, f, indent=1)
    print(json.dumps({k: result[k] for k in ("unet_eval_ratio_apprentice_over_base", "demo_cache_speedup")}, indent=1))
    for name, s in result["whole_sample_s"].items():
        print(f"{name:55s} {s['median']:.3f} s  [{s['min']:.3f}, {s['max']:.3f}]")
    for name, o in result["parameter_overhead"].items():
        print(
            f"overhead {name:18s} {o['new'] / 1e6:8.2f} M new on {o['base'] / 1e6:8.1f} M "
            f"({100 * o['of_base']:.1f}% of UNet + text encoder, {100 * o['of_unet']:.1f}% of the UNet)"
        )
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
