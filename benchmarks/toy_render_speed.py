"""Base pretraining's data path: drawing a batch of 1,024 toy images one at a time in numpy (`toyworld.render`, as a
loader worker would) against all at once in torch (`toyrender.render_batch`, what the training device does), and
what a loader worker still does per batch (scenes, captions, tokens).

    python -m benchmarks.toy_render_speed            # on the CPU; with a GPU, render_batch is also timed there
"""

from __future__ import annotations

import json
import os
import time

import numpy as np
import torch

from core.models.tokenizer import create_tokenizer, tokenize
from core.toy import render as toyrender
from core.toy import world as toyworld
from core.toy.pretrain import toy_scenes


def median_s(fn, repeats: int = 5) -> float:
    fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return float(np.median(times))


def main() -> dict:
    torch.set_num_threads(1)  # as one loader worker has
    subjects = toyworld.all_subjects()
    rng = np.random.default_rng(0)
    picked, scenes, _captions = toy_scenes(subjects, 1024, rng, 32)
    arrays = toyrender.pack_scenes(picked, scenes)
    tokenizer = create_tokenizer(24)
    out = {
        "numpy_one_at_a_time_s": median_s(lambda: [toyworld.render(s, sc, 32, rng) for s, sc in zip(picked, scenes)]),
        "torch_batch_cpu_s": median_s(lambda: toyrender.render_batch(arrays)),
        "worker_scenes_captions_tokens_s": median_s(
            lambda: tokenize(tokenizer, toy_scenes(subjects, 1024, rng, 32)[2])
        ),
    }
    if torch.cuda.is_available():

        def on_gpu():
            toyrender.render_batch(arrays, device="cuda")
            torch.cuda.synchronize()

        out["torch_batch_cuda_s"] = median_s(on_gpu)
    out["speedup_cpu"] = out["numpy_one_at_a_time_s"] / out["torch_batch_cpu_s"]
    for k, v in out.items():
        print(f"[toy_render_speed] {k}: {v:.4f}")
    os.makedirs("benchmarks/results", exist_ok=True)
    with open("benchmarks/results/toy_render_speed.json", "w") as f:
        json.dump({k: round(v, 4) for k, v in out.items()}, f, indent=1)
    return out


if __name__ == "__main__":
    main()
