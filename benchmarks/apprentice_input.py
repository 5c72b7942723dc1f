"""Does reading G through Ray Data slow the apprentice's training steps? Step time with batches streamed from G's
parquet shards by Ray Data (`actors.g_dataset.read_g`: read, filter by delta, decode PNGs, pick demos, tokenize)
against the very same batches held in memory, and with Ray Data's scheduling loop left to spin (without
`actors.g_dataset.PauseBetweenSchedulingSteps`).

    python -m benchmarks.apprentice_input            # 5 interleaved repeats of 24 steps (about 6 minutes)
    python -m benchmarks.apprentice_input --quick    # 2 repeats of 8 steps (about 1.5 minutes)

G is written by the benchmark: toy-world renders in the G schema (32 shards of 32 rows, 4 demos each), so no
expert stage is needed. Both sides run the same loop as a training worker (apprentice loss, backward, AdamW step,
tiny preset, 2 torch threads) on batches of 16 with 3 demos; the Ray Data side iterates `iter_torch_batches`
as a worker does, each row 32 times in one read as a worker's epoch does (`passes`), so the pipeline outruns the
steps and waits on them; it is started before the timed steps (Ray Data's start-up, once per epoch, is reported
apart). Runs are interleaved (ray, memory, spinning, spinning, memory, ray, ...); the median and range of the
per-run ratio (Ray Data step time / in-memory step time) are reported for both Ray Data sides. Target: at most
1.05 with the pause. Writes
`benchmarks/results/apprentice_input[_quick].json`.
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

from core.data.images import to_png

RESULTS = os.path.join(os.path.dirname(__file__), "results")
PROVENANCE = {
    "base_checkpoint_hash": "bench-base",
    "expert_config_hash": "bench-expert",
    "scorer_hash": "bench-scorer",
}


def write_g(folder: str, shards: int, rows_per_shard: int, size: int = 32) -> None:
    from core.data import g
    from core.toy import world as tw

    rng = np.random.default_rng(0)
    subjects = tw.all_subjects()
    for s in range(shards):
        subject = subjects[int(rng.integers(len(subjects)))]
        demos = tw.demonstrations(subject, 4, rng, size)
        rows = []
        for i in range(rows_per_shard):
            scene = tw.random_scene(rng, size)
            rows.append(
                {
                    "subject_id": f"s{s}",
                    "prompt_id": f"p{i}",
                    "sample_index": 0,
                    "prompt": tw.prompt_text(subject.class_name, scene),
                    "prompt_skill": "recontextualization",
                    "image": to_png(tw.render(subject, scene, size, rng)),
                    "demo_images": [to_png(d) for d, _ in demos],
                    "demo_captions": [c for _, c in demos],
                    "clip_score": 0.3,
                    "ref_clip_score": 0.25,
                    "delta": 0.05,
                    **PROVENANCE,
                }
            )
        g.write_subject(rows, folder, f"s{s}")


def spread(values: list[float]) -> dict:
    return {"median": statistics.median(values), "min": min(values), "max": max(values), "n": len(values)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    import ray

    from actors.cluster import start_local_cluster
    from actors.g_dataset import PauseBetweenSchedulingSteps, read_g
    from core.config import ClusterConfig
    from core.method import apprentice as ap
    from core.models import backbone as bb

    torch.set_num_threads(args.threads)
    repeats, steps, batch_size, warmup = (2, 8, 16, 2) if args.quick else (5, 24, 16, 3)
    work = tempfile.mkdtemp(prefix="apprentice-input-")
    g, tok = os.path.join(work, "g"), os.path.join(work, "tokenizer")
    write_g(g, 32, 32)  # 1,024 rows read 32 times: decoded, about 1.6 GB, more than the object store holds
    base = bb.create_backbone("tiny", seed=0)
    base.tokenizer.save_pretrained(tok)
    apprentice = ap.Apprentice(base).train()
    opt = torch.optim.AdamW(apprentice.trainable_parameters(), lr=1e-4)
    generator = torch.Generator().manual_seed(0)

    def train_step(batch: dict) -> None:
        loss = ap.training_loss(apprentice, batch, 0.1, 0.1, generator)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    start_local_cluster(ClusterConfig(num_cpus=4), log_to_driver=False)
    try:

        def dataset(seed: int, pause: bool = True):
            ds = read_g(g, 0.0, tok, num_demos=3, seed=seed, passes=32)
            if not pause:  # the dataset's own copy of the context: later reads keep the pause
                callbacks = ds.context.custom_execution_callback_classes
                ds.context.custom_execution_callback_classes = [
                    c for c in callbacks if c is not PauseBetweenSchedulingSteps
                ]
            return ds.iter_torch_batches(batch_size=batch_size, drop_last=True)

        # The in-memory side's batches: one Ray Data pass, kept.
        first_read = iter(dataset(0))
        memory = [b for _, b in zip(range(steps + warmup), first_read)]
        first_read.close()
        timings = {"ray_data": [], "memory": [], "ray_data_spinning": [], "ray_data_first_batch_s": []}
        order = ("ray_data", "memory", "ray_data_spinning")
        for r in range(repeats):
            for side in order if r % 2 == 0 else order[::-1]:
                if side == "memory":
                    batches = iter(memory)
                else:
                    start = time.perf_counter()
                    batches = iter(dataset(r + 1, pause=side == "ray_data"))
                    first = next(batches)
                    timings["ray_data_first_batch_s"].append(time.perf_counter() - start)
                    batches = _chain(first, batches)
                for _ in range(warmup):
                    train_step(next(batches))
                start = time.perf_counter()
                for _ in range(steps):
                    train_step(next(batches))
                timings[side].append((time.perf_counter() - start) / steps)
                if side != "memory":
                    batches.close()  # stop this epoch's pipeline before the next run
    finally:
        ray.shutdown()
    ratios = [a / b for a, b in zip(timings["ray_data"], timings["memory"])]
    spinning = [a / b for a, b in zip(timings["ray_data_spinning"], timings["memory"])]
    result = {
        "command": "python -m benchmarks.apprentice_input" + (" --quick" if args.quick else ""),
        "date": time.strftime("%Y-%m-%d"),
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, torch {torch.__version__}, {args.threads} threads",
        "setup": {
            "model": "tiny preset",
            "batch_size": batch_size,
            "num_demos": 3,
            "timed_steps": steps,
            "warmup_steps": warmup,
            "repeats": repeats,
            "g": "32 shards x 32 rows",
            "passes": 32,
        },
        "step_s": {k: spread(v) for k, v in timings.items()},
        "ratio_ray_data_over_memory": spread(ratios),
        "ratio_spinning_ray_data_over_memory": spread(spinning),
        "target": "at most 1.05",
    }
    os.makedirs(RESULTS, exist_ok=True)
    path = os.path.join(RESULTS, "apprentice_input_quick.json" if args.quick else "apprentice_input.json")
    with open(path, "w") as f:
        json.dump(result, f, indent=1)
    print(json.dumps(result, indent=1))
    print(f"wrote {path}")


def _chain(first, rest):
    yield first
    yield from rest


if __name__ == "__main__":
    main()
