"""What one expert and the apprentice cost at a real backbone's shape: FLOPs per training step and per sample of
Stable Diffusion 1.5's UNet (its published configuration, random weights: nothing is downloaded), counted by
`torch.utils.flop_counter` on the meta device, and seconds per training step measured on this machine's CPU (on a
GPU too, when run on one). `docs/scale.md` turns them into accelerator-hours for the paper's run.

    python -m benchmarks.backbone_cost            # FLOPs, then 3 timed training steps at batch 1 on this machine
    python -m benchmarks.backbone_cost --flops    # FLOPs only (seconds; no weights allocated)

Counted: one expert training step (UNet forward and backward, batch 1, 64x64 latents, 77 text tokens; the paper's
experts fine-tune for 500 steps) and one sampling step (two UNet forwards: classifier-free guidance); the
apprentice's step is the same UNet step plus its demonstration branches (`core.method.apprentice.DemoAdapter`,
counted with 3 demos of 16 tokens each). The text encoder and VAE are left out of both (a frozen text encoder's
forward is under 1% of a UNet step; the paper's Imagen is a pixel model with no VAE). Writes
`benchmarks/results/backbone_cost[_<device>].json`.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

from benchmarks.apprentice_speed import SD15_TEXT, SD15_UNET, overhead_full_size

RESULTS = Path(__file__).resolve().parent / "results"


def build(device: str):
    from diffusers import UNet2DConditionModel

    with torch.device(device):
        return UNet2DConditionModel(**SD15_UNET)


def inputs(batch: int, device: str, dtype=torch.float32) -> tuple:
    size = SD15_UNET["sample_size"]
    x = torch.randn(batch, SD15_UNET["in_channels"], size, size, device=device, dtype=dtype)
    t = torch.randint(0, 1000, (batch,), device=device)
    text = torch.randn(batch, 77, SD15_UNET["cross_attention_dim"], device=device, dtype=dtype)
    return x, t, text


def flops() -> dict:
    unet = build("meta")
    params = sum(p.numel() for p in unet.parameters())
    x, t, text = inputs(1, "meta")
    with FlopCounterMode(display=False) as counter:
        unet(x, t, text).sample.sum().backward()
    train = counter.get_total_flops()
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        unet(x, t, text)
    forward = counter.get_total_flops()
    return {"unet_parameters": params, "train_step_flops_batch1": train, "forward_flops_batch1": forward}


def adapter_overhead() -> dict:
    """The apprentice's demonstration branches at SD 1.5's size: their parameters against the UNet's."""
    return overhead_full_size(SD15_UNET, SD15_TEXT)


# Dense bf16 peak of each accelerator, from its vendor's data sheet: NVIDIA A100 (312 TFLOP/s), H100 SXM
# (989 TFLOP/s), Google TPU v4 (275 TFLOP/s per chip).
PEAK_TFLOPS = {"A100 80GB": 312.0, "H100 SXM": 989.0, "TPU v4 chip": 275.0}
UTILISATION = 0.4  # an assumed model FLOP utilisation for a UNet at batch 4 and up (not measured here)
# The paper's run (DESIGN.md, Chen et al. 2023), and the expert preset of conf/expert/paper.yaml.
SUBJECTS = 2_000_000
EXPERT_STEPS, EXPERT_BATCH = 500, 4
PROMPTS_PER_SUBJECT, SAMPLES_PER_PROMPT, SAMPLE_STEPS = 4, 4, 100
APPRENTICE_STEPS = 150_000
APPRENTICE_BATCHES = (256, 2048)  # the paper's apprentice batch is not stated there: two assumed sizes


def cost_model(train_flops: float, forward_flops: float, branch_share: float) -> dict:
    """Accelerator-hours for the paper's run at these FLOPs per image, and the time per new subject of an expert
    against the apprentice, both sampling the same images with classifier-free guidance (2 UNet forwards a step).
    Estimates: FLOPs over peak x `UTILISATION`."""
    sample = 2 * forward_flops * SAMPLE_STEPS  # one image
    images = PROMPTS_PER_SUBJECT * SAMPLES_PER_PROMPT
    expert_subject = EXPERT_STEPS * EXPERT_BATCH * train_flops + images * sample
    hours = lambda flops, peak: flops / (peak * 1e12 * UTILISATION) / 3600
    out = {
        "assumptions": {
            "utilisation": UTILISATION,
            "peak_tflops": PEAK_TFLOPS,
            "expert": f"{EXPERT_STEPS} steps at batch {EXPERT_BATCH}, then {images} images of {SAMPLE_STEPS} steps",
            "subjects": SUBJECTS,
            "apprentice_steps": APPRENTICE_STEPS,
        },
        "expert_flops_per_subject": expert_subject,
        "experts_hours": {k: round(hours(SUBJECTS * expert_subject, v)) for k, v in PEAK_TFLOPS.items()},
        "apprentice_hours": {
            f"batch {b}": {
                k: round(hours(APPRENTICE_STEPS * b * train_flops * (1 + branch_share), v))
                for k, v in PEAK_TFLOPS.items()
            }
            for b in APPRENTICE_BATCHES
        },
        "new_subject_expert_over_apprentice": {},
    }
    for n in (1, 4, 16):  # images drawn for the new subject, 100 steps each
        expert = EXPERT_STEPS * EXPERT_BATCH * train_flops + n * sample
        apprentice = n * sample * (1 + branch_share)
        out["new_subject_expert_over_apprentice"][f"{n} images"] = round(expert / apprentice, 1)
    return out


def timed_steps(device: str, steps: int, batch: int) -> dict:
    torch.manual_seed(0)
    unet = build(device).train()
    x, t, text = inputs(batch, device)
    times = []
    for _ in range(steps + 1):  # the first step warms up
        start = time.perf_counter()
        unet.zero_grad(set_to_none=True)
        unet(x, t, text).sample.float().pow(2).mean().backward()
        if device == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return {
        "device": device,
        "batch": batch,
        "steps": steps,
        "seconds_per_step": sorted(times[1:])[len(times[1:]) // 2],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--flops", action="store_true", help="count FLOPs only")
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    report = {
        "date": time.strftime("%Y-%m-%d"),
        "machine": torch.cuda.get_device_name()
        if device == "cuda"
        else f"{platform.machine()} CPU, {args.threads} threads",
        "command": "python -m benchmarks.backbone_cost" + (" --flops" if args.flops else ""),
        "backbone": "Stable Diffusion 1.5 UNet (published configuration, random weights)",
        **flops(),
        "apprentice_branches": adapter_overhead(),
    }
    report["cost_model"] = cost_model(
        report["train_step_flops_batch1"],
        report["forward_flops_batch1"],
        report["apprentice_branches"]["of_unet"],
    )
    if not args.flops:
        report["measured"] = timed_steps(device, args.steps, 1)
        achieved = report["train_step_flops_batch1"] / report["measured"]["seconds_per_step"]
        report["measured"]["achieved_tflops"] = round(achieved / 1e12, 3)
    RESULTS.mkdir(exist_ok=True)
    path = RESULTS / f"backbone_cost{'' if device == 'cpu' else '_' + device}.json"
    path.write_text(json.dumps(report, indent=1) + "\n")
    print(json.dumps(report, indent=1))
    print(f"wrote {path}")


if __name__ == "__main__":
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    main()
