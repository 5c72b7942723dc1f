"""The cost of Ray itself in the expert stage: subjects per hour of the Ray actor pool against plain processes doing
the same work with the same threads.

    python -m benchmarks.expert_throughput            # 3 repeats, 8 subjects, 30 fine-tune steps (about 15 minutes)
    python -m benchmarks.expert_throughput --quick    # 1 repeat, 4 subjects, 8 steps (a smoke check, about 2 minutes)

Both sides run `actors.expert_pool.run_subject` (fine-tune, render, score, write the G shard) on the tiny model, one
torch thread per worker: the Ray side through `actors.expert_pool.run_pool` (actors, bounded tasks in flight,
retries), the plain side through a `multiprocessing` pool (spawned processes, each loading the base once, subjects
handed out one at a time). Both include their workers' start-up (process, imports, loading the base). Runs are
interleaved (ray-1, procs-1, ray-2, procs-2, then the next repeat in reverse order) so drift in the machine hits both
sides alike; the median and range over repeats are reported, with the peak resident memory of each worker. Writes
`benchmarks/results/expert_throughput[_quick].json`. Target: ratio (Ray / plain) at least 0.95.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import multiprocessing as mp
import os
import platform
import statistics
import sys
import tempfile
import time

import numpy as np

from actors.expert_pool import run_pool, run_subject
from core.config import ClusterConfig, ExpertConfig, FilterConfig, ScorerConfig
from core.data.images import to_png
from core.toy import world as tw

RESULTS = os.path.join(os.path.dirname(__file__), "results")
PROVENANCE = {
    "base_checkpoint_hash": "bench-base",
    "expert_config_hash": "bench-expert",
    "scorer_hash": "bench-scorer",
}

_EXPERT = None  # the plain worker's Expert, loaded once per process


def _init_plain(base_dir: str, scorer_dir: str, cfg: ExpertConfig) -> None:
    import torch

    from core.method.expert import Expert
    from core.models.backbone import load_backbone
    from core.models.scorer import load_scorer

    torch.set_num_threads(cfg.threads)
    global _EXPERT
    _EXPERT = Expert(load_backbone(base_dir), load_scorer(scorer_dir), cfg, PROVENANCE)


def _run_plain(job: tuple[dict, str, float | None]) -> dict:
    return run_subject(_EXPERT, *job)


def records(n: int, seed: int = 0) -> list[dict]:
    """n D_S-like records of toy subjects: 4 demos and 4 prompts each."""
    rng = np.random.default_rng(seed)
    subjects = tw.all_subjects()
    out = []
    for i in rng.choice(len(subjects), size=n, replace=False):
        subject = subjects[int(i)]
        demos = tw.demonstrations(subject, 4, rng)
        prompts = tw.prompts_for(subject.class_name, 4, rng, key=f"bench-{i}")
        out.append(
            {
                "subject_id": f"bench-{int(i)}",
                "demo_images": [to_png(img) for img, _ in demos],
                "demo_captions": [caption for _, caption in demos],
                "prompt_ids": [p.prompt_id for p, _ in prompts],
                "prompts": [p.text for p, _ in prompts],
                "prompt_skills": [p.skill for p, _ in prompts],
            }
        )
    return out


def run_ray(
    work: list[dict], base_dir: str, scorer_dir: str, cfg: ExpertConfig, workers: int, g_uri: str
) -> tuple[float, list[dict]]:
    start = time.perf_counter()
    results, summary = run_pool(
        work,
        base_dir,
        scorer_dir,
        dataclasses.replace(cfg, num_actors=workers),
        PROVENANCE,
        g_uri,
        FilterConfig(),
        progress=False,
    )
    seconds = time.perf_counter() - start
    assert summary.get("done") == len(work), summary
    return seconds, results


def run_plain(
    work: list[dict], base_dir: str, scorer_dir: str, cfg: ExpertConfig, workers: int, g_uri: str
) -> tuple[float, list[dict]]:
    start = time.perf_counter()
    with mp.get_context("spawn").Pool(workers, initializer=_init_plain, initargs=(base_dir, scorer_dir, cfg)) as pool:
        results = list(pool.imap_unordered(_run_plain, [(r, g_uri, 0.0) for r in work], chunksize=1))
    seconds = time.perf_counter() - start
    assert all(r["status"] == "done" for r in results), results
    return seconds, results


def peak_per_worker(results: list[dict]) -> list[float]:
    peaks: dict[int, float] = {}
    for r in results:
        peaks[r["pid"]] = max(peaks.get(r["pid"], 0.0), r["peak_rss_mb"])
    return sorted(peaks.values())


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true")
    p.add_argument("--repeats", type=int, default=None)
    p.add_argument("--subjects", type=int, default=None)
    p.add_argument("--steps", type=int, default=None)
    p.add_argument("--out", default=RESULTS)
    args = p.parse_args(argv)
    repeats = args.repeats or (1 if args.quick else 3)
    n = args.subjects or (4 if args.quick else 8)
    steps = args.steps or (8 if args.quick else 30)

    import ray
    import torch

    from actors.cluster import start_local_cluster
    from core.models.backbone import create_backbone, save_backbone
    from core.models.scorer import create_scorer, save_scorer

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    tmp = tempfile.mkdtemp(prefix="expert-throughput-")
    base_dir, scorer_dir = os.path.join(tmp, "base"), os.path.join(tmp, "scorer")
    save_backbone(create_backbone("tiny", seed=0), base_dir)
    save_scorer(create_scorer(ScorerConfig()), scorer_dir)
    cfg = ExpertConfig(
        steps=steps, batch_size=8, threads=1, num_cpus=1, max_tasks_in_flight=1, num_inference_steps=10, max_retries=0
    )
    work = records(n)
    start_local_cluster(ClusterConfig(num_cpus=os.cpu_count()), log_to_driver=False)

    runs: list[dict] = []
    order = [("ray", 1), ("plain", 1), ("ray", 2), ("plain", 2)]
    for rep in range(repeats):
        for side, workers in order if rep % 2 == 0 else order[::-1]:
            g_uri = os.path.join(tmp, f"g-{side}-{workers}-{rep}")
            seconds, results = (run_ray if side == "ray" else run_plain)(
                work, base_dir, scorer_dir, cfg, workers, g_uri
            )
            runs.append(
                {
                    "side": side,
                    "workers": workers,
                    "repeat": rep,
                    "seconds": round(seconds, 2),
                    "subjects_per_hour": round(len(work) / seconds * 3600, 1),
                    "peak_rss_mb_per_worker": peak_per_worker(results),
                }
            )
            print(
                f"[expert_throughput] repeat {rep} {side} x{workers}: {seconds:.1f} s, "
                f"{runs[-1]['subjects_per_hour']:.0f} subjects/h",
                flush=True,
            )
    ray.shutdown()

    summary = {}
    for workers in (1, 2):
        row = {}
        for side in ("ray", "plain"):
            rates = [r["subjects_per_hour"] for r in runs if r["side"] == side and r["workers"] == workers]
            peaks = [
                m for r in runs if r["side"] == side and r["workers"] == workers for m in r["peak_rss_mb_per_worker"]
            ]
            row[side] = {
                "median_subjects_per_hour": statistics.median(rates),
                "min": min(rates),
                "max": max(rates),
                "peak_rss_mb_max": max(peaks),
            }
        ratios = [
            ray_run["subjects_per_hour"] / plain_run["subjects_per_hour"]
            for ray_run, plain_run in zip(
                [r for r in runs if r["side"] == "ray" and r["workers"] == workers],
                [r for r in runs if r["side"] == "plain" and r["workers"] == workers],
            )
        ]
        row["ratio_median"] = round(statistics.median(ratios), 3)
        row["ratio_range"] = [round(min(ratios), 3), round(max(ratios), 3)]
        summary[f"{workers}_worker{'s' if workers > 1 else ''}"] = row
    report = {
        "benchmark": "expert_throughput",
        "quick": args.quick,
        "command": " ".join(["python -m benchmarks.expert_throughput", *(argv if argv is not None else sys.argv[1:])]),
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "machine": (
            f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPU cores, "
            f"torch {torch.__version__}, ray {ray.__version__}"
        ),
        "work": {
            "subjects": n,
            "fine_tune_steps": steps,
            "batch_size": cfg.batch_size,
            "prompts_per_subject": 4,
            "sampler_steps": cfg.num_inference_steps,
            "threads_per_worker": cfg.threads,
            "model": "tiny",
        },
        "repeats": repeats,
        "target": "ratio (Ray / plain) at least 0.95",
        "summary": summary,
        "runs": runs,
    }
    os.makedirs(args.out, exist_ok=True)
    path = os.path.join(args.out, "expert_throughput" + ("_quick" if args.quick else "") + ".json")
    with open(path, "w") as f:
        json.dump(report, f, indent=1)
    print(json.dumps(summary, indent=1))
    print(f"[expert_throughput] wrote {path}")
    return report


if __name__ == "__main__":
    main()
