"""Peak memory of the Serve ingress replica at the maximum request size and concurrency, against its budget.

    python -m benchmarks.serve_memory            # 3 rounds of serve.ingress_max_ongoing_requests requests at once
    python -m benchmarks.serve_memory --quick    # 1 round

The largest request the server accepts: serve.max_demos PNG demos that together decode to
serve.max_request_megapixels million pixels (each within the per-image bound), its JSON padded with whitespace to
serve.max_body_bytes. serve.ingress_max_ongoing_requests of them are sent at once, over HTTP on 127.0.0.1, to the
real app (the ingress parses the bodies and decodes the demos; the apprentice is random-initialised, since the
weights do not change memory). The ingress replica is found by its process title; its peak resident memory is reset
before the load (/proc/PID/clear_refs) and read after it (VmHWM), and compared with serve.ingress_memory_budget_mb
and with the bound the app checks its limits against (actors.serve_app.ingress_memory_bound_mb). Writes
benchmarks/results/serve_memory.json (or --out).
"""

from __future__ import annotations

import argparse
import base64
import concurrent.futures
import dataclasses
import io
import json
import math
import os
import platform
import tempfile
import time
from pathlib import Path

import requests

from benchmarks.processes import processes_named

RESULTS = Path(__file__).resolve().parent / "results"


def _status_kb(pid: int, key: str) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1])
    raise KeyError(key)


def largest_body(limits, caption: str, prompt: str) -> bytes:
    """The largest request `limits` admit: max_demos flat PNGs decoding to max_request_megapixels in all, padded
    with JSON whitespace to max_body_bytes."""
    from PIL import Image

    from actors.serve_app import MAX_DEMO_PIXELS

    per_demo = min(limits.max_request_megapixels * 1e6 / limits.max_demos, MAX_DEMO_PIXELS)
    side = int(math.sqrt(per_demo))
    buf = io.BytesIO()
    Image.new("RGB", (side, side), (90, 140, 200)).save(buf, format="PNG")
    image = base64.b64encode(buf.getvalue()).decode()
    body = json.dumps(
        {
            "prompt": prompt,
            "demos": [{"image": image, "caption": caption}] * limits.max_demos,
            "steps": 1,
            "num_images": 1,
        }
    ).encode()
    return body[:-1] + b" " * (limits.max_body_bytes - len(body)) + b"}"


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="1 round instead of 3")
    parser.add_argument("--out", default=str(RESULTS / "serve_memory.json"))
    args = parser.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")

    import ray
    import torch
    from ray import serve

    from actors.cluster import start_local_cluster
    from actors.serve_app import ServeArgs, build_app, ingress_memory_bound_mb
    from apps.config import compose
    from core.config import ClusterConfig
    from core.method.apprentice import Apprentice
    from core.models import backbone as bb
    from core.pipelines.suti import save_apprentice

    config = compose(["experiment=smoke"])
    limits = dataclasses.replace(config.serve, port=8766)
    work = tempfile.mkdtemp(prefix="serve-memory-")
    torch.manual_seed(0)
    save_apprentice(Apprentice(bb.create_backbone(config.model.preset)), os.path.join(work, "apprentice"))
    body = largest_body(limits, "a ball on grass", "a ball in the snow")
    concurrency, rounds = limits.ingress_max_ongoing_requests, 1 if args.quick else 3
    start_local_cluster(ClusterConfig(num_cpus=4), log_to_driver=False)
    try:
        serve.start(http_options={"host": "127.0.0.1", "port": limits.port})
        sargs = ServeArgs(apprentice=os.path.join(work, "apprentice"), threads=config.apprentice.threads, serve=limits)
        serve.run(build_app(sargs), name="memory", route_prefix="/", blocking=False)
        url = f"http://127.0.0.1:{limits.port}/v1/generate"
        headers = {"content-type": "application/json"}
        post = lambda: requests.post(url, data=body, headers=headers, timeout=600)
        warm = post()
        assert warm.status_code == 200, warm.text[:300]
        (pid,) = processes_named(b"ray::ServeReplica:memory:SuTIIngress")
        baseline_kb = _status_kb(pid, "VmRSS")
        with open(f"/proc/{pid}/clear_refs", "w") as f:
            f.write("5")  # reset the peak (VmHWM) to the current resident size
        statuses, start = [], time.perf_counter()
        for _ in range(rounds):
            with concurrent.futures.ThreadPoolExecutor(concurrency) as pool:
                statuses += [r.status_code for r in pool.map(lambda _: post(), range(concurrency))]
        seconds = time.perf_counter() - start
        peak_kb = _status_kb(pid, "VmHWM")
        serve.shutdown()
    finally:
        ray.shutdown()
    growth_mb = (peak_kb - baseline_kb) / 1024
    report = {
        "benchmark": "serve_memory",
        "command": "python -m benchmarks.serve_memory" + (" --quick" if args.quick else ""),
        "date": time.strftime("%Y-%m-%d"),
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs",
        "request": {
            "body_bytes": len(body),
            "demos": limits.max_demos,
            "megapixels": limits.max_request_megapixels,
        },
        "concurrency": concurrency,
        "rounds": rounds,
        "statuses": {str(code): statuses.count(code) for code in sorted(set(statuses))},
        "seconds": round(seconds, 2),
        "decode_threads": limits.decode_threads,
        "ingress_rss_before_mb": round(baseline_kb / 1024, 1),
        "ingress_peak_mb": round(peak_kb / 1024, 1),
        "ingress_growth_mb": round(growth_mb, 1),
        "bound_mb": round(ingress_memory_bound_mb(limits), 1),
        "budget_mb": limits.ingress_memory_budget_mb,
        "within_budget": growth_mb <= limits.ingress_memory_budget_mb,
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=1) + "\n")
    print(json.dumps(report, indent=1))
    return report


if __name__ == "__main__":
    main()
