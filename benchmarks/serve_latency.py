"""Serving latency and throughput of the Ray Serve app, and the time for a new subject against an expert.

    python -m benchmarks.serve_latency            # full: 32 requests per setting
    python -m benchmarks.serve_latency --quick    # 8 requests per setting, a smoke check

Measured over HTTP on 127.0.0.1 against the real deployments (FastAPI ingress + apprentice deployment) with the
tiny preset: p50/p95 latency and throughput at concurrency 1 and 4, with request batching off (max_batch_size 1)
and on. Then a new subject, like for like on the same backbone, same sampler, steps and number of images: one
request to the endpoint (demos in, images out) against a per-subject expert fine-tuned for `expert.steps` steps
(the tiny preset's value) and then sampling, in one process with the same torch threads as a replica.

The apprentice is random-initialised unless `--apprentice PATH` names a trained one: timing does not depend on the
weights. Writes benchmarks/results/serve_latency.json (or --out).
"""

from __future__ import annotations

import argparse
import base64
import concurrent.futures
import dataclasses
import json
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import requests

from core.data.images import from_png, to_png
from core.models import sampling

RESULTS = Path(__file__).resolve().parent / "results"


def _request_body(num_demos: int, steps: int, num_images: int, seed: int) -> dict:
    from core.toy import world as toyworld

    rng = np.random.default_rng(seed)
    _, test = toyworld.split_subjects(0, 0.2)
    subject = test[seed % len(test)]
    demos = toyworld.demonstrations(subject, num_demos, rng, 32)
    prompt, _ = toyworld.prompts_for(
        subject.class_name, 1, rng, 32, keep_colours=(subject.body, subject.pattern_colour), key=subject.subject_id
    )[0]
    return {
        "prompt": prompt.text,
        "demos": [{"image": base64.b64encode(to_png(img)).decode(), "caption": cap} for img, cap in demos],
        "steps": steps,
        "guidance_scale": 3.0,
        "num_images": num_images,
        "seed": seed,
    }


def _load(url: str, bodies: list[dict], concurrency: int) -> dict:
    def one(body):
        start = time.perf_counter()
        reply = requests.post(f"{url}/v1/generate", json=body, timeout=600)
        reply.raise_for_status()
        return time.perf_counter() - start, reply.json()["batch_size"]

    start = time.perf_counter()
    with concurrent.futures.ThreadPoolExecutor(concurrency) as pool:
        results = list(pool.map(one, bodies))
    wall = time.perf_counter() - start
    latencies = sorted(r[0] for r in results)
    return {
        "requests": len(bodies),
        "p50_s": round(float(np.percentile(latencies, 50)), 4),
        "p95_s": round(float(np.percentile(latencies, 95)), 4),
        "throughput_rps": round(len(bodies) / wall, 4),
        "mean_batch_size": round(statistics.mean(r[1] for r in results), 2),
    }


def _expert_seconds(backbone_dir: str, body: dict, steps: int, threads: int, cfg) -> float:
    """Fine-tune a fresh expert on the request's demos and draw the same images: one process, `threads` threads."""

    import torch

    from core.method.expert import Expert
    from core.models import backbone as bb

    torch.set_num_threads(threads)
    backbone = bb.load_backbone(backbone_dir)
    expert = Expert(backbone, scorer=None, cfg=dataclasses.replace(cfg, steps=steps), provenance={})
    demos = [from_png(base64.b64decode(d["image"])) for d in body["demos"]]
    start = time.perf_counter()
    expert.fine_tune(demos, [d["caption"] for d in body["demos"]], seed=0)
    sampling.sample(
        backbone,
        [body["prompt"]] * body["num_images"],
        sampler=cfg.sampler,
        num_inference_steps=body["steps"],
        guidance_scale=body["guidance_scale"],
        seed=0,
    )
    return time.perf_counter() - start


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="8 requests per setting instead of 32")
    parser.add_argument("--apprentice", help="a trained apprentice folder (default: random-initialised tiny)")
    parser.add_argument("--out", default=str(RESULTS / "serve_latency.json"))
    args = parser.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")

    import ray
    import torch
    from ray import serve

    from actors.cluster import start_local_cluster
    from actors.serve_app import ServeArgs, build_app
    from apps.config import compose
    from core.config import ClusterConfig
    from core.method.apprentice import Apprentice
    from core.models import backbone as bb
    from core.pipelines.suti import save_apprentice

    config = compose([])
    work = tempfile.mkdtemp(prefix="serve-bench-")
    torch.manual_seed(0)
    backbone = bb.create_backbone(config.model.preset)
    bb.save_backbone(backbone, os.path.join(work, "base"))
    apprentice_dir = args.apprentice or os.path.join(work, "apprentice")
    if not args.apprentice:
        save_apprentice(Apprentice(backbone), apprentice_dir)

    n = 8 if args.quick else 32
    steps, num_demos = config.apprentice.num_inference_steps, 3
    port = 8765
    report = {
        "benchmark": "serve_latency",
        "quick": args.quick,
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, no GPU",
        "model": config.model.preset,
        "steps": steps,
        "num_demos": num_demos,
        "threads_per_replica": config.apprentice.threads,
        "settings": [],
    }
    start_local_cluster(ClusterConfig(num_cpus=4), log_to_driver=False)
    try:
        serve.start(http_options={"host": "127.0.0.1", "port": port})
        url = f"http://127.0.0.1:{port}"
        for batching, max_batch in (("off", 1), ("on", 4)):
            limits = dataclasses.replace(config.serve, max_batch_size=max_batch)
            sargs = ServeArgs(apprentice=apprentice_dir, threads=config.apprentice.threads, serve=limits)
            serve.run(build_app(sargs), name="bench", route_prefix="/", blocking=False)
            _load(url, [_request_body(num_demos, steps, 1, 999)] * 2, 1)  # warm-up
            for concurrency in (1, 4):
                bodies = [_request_body(num_demos, steps, 1, i) for i in range(n)]
                row = {
                    "batching": batching,
                    "max_batch_size": max_batch,
                    "concurrency": concurrency,
                    **_load(url, bodies, concurrency),
                }
                report["settings"].append(row)
                print(json.dumps(row))
        # A new subject through the endpoint: one request, 4 images (batching on, alone on the server).
        body = _request_body(num_demos, steps, 4, 12345)
        endpoint = [_load(url, [body], 1)["p50_s"] for _ in range(3)]
        serve.shutdown()
    finally:
        ray.shutdown()
    expert_steps = config.expert.steps
    expert = [
        _expert_seconds(os.path.join(work, "base"), body, expert_steps, config.apprentice.threads, config.expert)
        for _ in range(1 if args.quick else 2)
    ]
    report["new_subject"] = {
        "images": body["num_images"],
        "sampler": config.expert.sampler,
        "steps": steps,
        "endpoint_s": round(statistics.median(endpoint), 3),
        "expert_steps": expert_steps,
        "expert_fine_tune_and_sample_s": round(statistics.median(expert), 3),
        "speedup": round(statistics.median(expert) / statistics.median(endpoint), 2),
    }
    print(json.dumps(report["new_subject"]))
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    with open(args.out, "w") as f:
        json.dump(report, f, indent=1)
    print(f"wrote {args.out}")
    return report


if __name__ == "__main__":
    main()
