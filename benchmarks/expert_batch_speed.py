"""Subjects per second of N experts fine-tuned and sampled as one vmapped model
(`core.method.expert_batch.ExpertBatch`) against one `Expert` at a time, on the shipped toy base and scorer
(artifacts/toy-v2), on whatever device `pick_device` finds.

    python -m benchmarks.expert_batch_speed            # N = 8, 32 against 1; writes
                                                       # benchmarks/results/expert_batch_speed[_<device>].json
    python -m benchmarks.expert_batch_speed --quick    # N = 4 against 1, few steps: a smoke check

Both sides do the same work per subject (fine-tune `--steps` steps at batch 16, then draw 8 prompts with 25 DDIM
steps and guidance), so the ratio is the batch's speed-up. On a CPU batching buys nothing (the arithmetic is the
same and vmap adds overhead); it is meant for a GPU, where these tiny models are bound by kernel launches.
"""

from __future__ import annotations

import argparse
import json
import os
import time

import numpy as np
import torch

from core.config import EvaluateConfig, ExpertConfig, WorldConfig
from core.models.device import pick_device
from core.toy.evaluation import eval_set


def sync(device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true")
    p.add_argument("--steps", type=int, default=None)
    p.add_argument("--sizes", default=None, help="comma-separated N (default 8,32; --quick 4)")
    p.add_argument("--base", default="artifacts/toy-v2/base")
    p.add_argument("--scorer", default="artifacts/toy-v2/scorer")
    p.add_argument("--world-version", type=int, default=2)
    p.add_argument("--out", default="benchmarks/results")
    args = p.parse_args(argv)
    from core.method.expert import Expert
    from core.method.expert_batch import ExpertBatch
    from core.models.backbone import load_backbone
    from core.models.scorer import load_scorer

    device = pick_device()
    if device.type == "cpu":
        torch.set_num_threads(2)
    steps = args.steps or (4 if args.quick else 50)
    sizes = [int(x) for x in (args.sizes or ("4" if args.quick else "8,32")).split(",")]
    base, scorer = load_backbone(args.base).to(device), load_scorer(args.scorer)
    cfg = ExpertConfig(steps=steps, batch_size=16, lr=5e-4, num_inference_steps=25, guidance_scale=1.5)
    world = WorldConfig(version=args.world_version)
    records = eval_set(world, EvaluateConfig(num_subjects=max(sizes), prompts_per_subject=8, num_demos=5))

    def timed(fn) -> float:
        sync(device)
        t0 = time.perf_counter()
        fn()
        sync(device)
        return time.perf_counter() - t0

    # One at a time: a warm-up subject, then the median of 3.
    expert = Expert(base, scorer, cfg, {})
    expert.run_subject(records[0])
    single = float(np.median([timed(lambda r=r: expert.run_subject(r)) for r in records[:3]]))
    expert.reset()
    result = {
        "device": str(torch.cuda.get_device_name() if device.type == "cuda" else device),
        "base": args.base,
        "steps": steps,
        "single_s_per_subject": round(single, 3),
        "batches": {},
    }
    print(f"[expert_batch_speed] one at a time: {single:.2f} s per subject on {result['device']}")
    for n in sizes:
        batch = ExpertBatch(base, scorer, cfg, {})
        batch.run_subjects(records[:n])  # warm-up
        seconds = timed(lambda batch=batch, n=n: batch.run_subjects(records[:n]))
        per = seconds / n
        peak = torch.cuda.max_memory_allocated() / 2**20 if device.type == "cuda" else None
        result["batches"][n] = {
            "s_per_subject": round(per, 3),
            "speedup": round(single / per, 2),
            "peak_mib": peak and round(peak),
        }
        print(
            f"[expert_batch_speed] N={n}: {per:.2f} s per subject, {single / per:.2f}x one at a time"
            + (f", peak {peak:.0f} MiB" if peak else "")
        )
    name = (
        "expert_batch_speed" + ("_quick" if args.quick else "") + ("" if device.type == "cpu" else f"_{device.type}")
    )
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, name + ".json"), "w") as f:
        json.dump(result, f, indent=1)
    return result


if __name__ == "__main__":
    main()
