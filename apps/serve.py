"""Stage `serve`: start the Ray Serve app on `serve.host:serve.port` (127.0.0.1 unless configured), ask it once for
a toy test subject, save the answer to `paths.eval/serve_sample.png`, and shut down (`serve.keep_serving=true`
keeps it up until Ctrl-C).

    python -m apps.serve experiment=smoke serve.keep_serving=true
"""

from __future__ import annotations

import base64
import signal
import threading
import time

import requests
from ray import serve

from actors.cluster import ray_cluster
from actors.serve_app import HEALTH_APP_SUFFIX, ServeArgs, build_app, build_health_app
from apps.config import stage_main
from core.config import PipelineConfig
from core.data import storage
from core.toy import evaluation

APP_NAME = "suti"


def serve_args(config: PipelineConfig) -> ServeArgs:
    """The Serve app's arguments from the Hydra config (the source of truth for `apps.serve` and
    `apps.serve_config`)."""
    acfg = config.apprentice
    return ServeArgs(
        apprentice=config.paths.apprentice, threads=acfg.threads, sampler=acfg.sampler, serve=config.serve
    )


def start(config: PipelineConfig) -> str:
    """Deploy the app (or redeploy it: with only `paths.apprentice` changed, the running replicas swap checkpoints in
    place through `user_config`, without downtime); returns its base URL."""
    storage.require(config.paths.apprentice, "paths.apprentice", "trained apprentice")
    serve.start(http_options=http_options(config))
    serve.run(build_app(serve_args(config)), name=APP_NAME, route_prefix="/", blocking=False)
    serve.run(build_health_app({"app_name": APP_NAME}), name=APP_NAME + HEALTH_APP_SUFFIX, route_prefix="/healthz")
    return f"http://{config.serve.host}:{config.serve.port}"


def http_options(config: PipelineConfig) -> dict:
    """Serve's HTTP proxy: where it listens, and the end-to-end time limit of a request (answered with 408)."""
    s = config.serve
    return {"host": s.host, "port": s.port, "request_timeout_s": s.request_timeout_s}


def example_request(config: PipelineConfig) -> dict:
    record = evaluation.eval_set(config.world, config.evaluate)[0]
    return {
        "prompt": record["prompts"][0],
        "demos": [
            {"image": base64.b64encode(b).decode(), "caption": c}
            for b, c in zip(record["demo_images"], record["demo_captions"])
        ],
        "steps": config.apprentice.num_inference_steps,
        "guidance_scale": config.apprentice.guidance_scale,
        "num_images": 1,
        "seed": 0,
    }


def wait_for_stop(url: str) -> str:
    """Serve until SIGINT or SIGTERM, whichever comes first; its name. Both are handled here, so the cluster and the
    Serve app are shut down even for a server started in the background (which starts with SIGINT ignored) or
    stopped by a process manager's SIGTERM."""
    stop, received = threading.Event(), []

    def handler(signum, _frame) -> None:
        received.append(signal.Signals(signum).name)
        stop.set()

    previous = {sig: signal.signal(sig, handler) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        print(f"serving on {url} (POST /v1/generate, docs at {url}/docs); Ctrl-C or SIGTERM to stop", flush=True)
        while not stop.wait(1.0):  # a timed wait: the handler runs between waits
            pass
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)
    print(f"{received[0]} received: shutting down", flush=True)
    return received[0]


def run(config: PipelineConfig) -> dict:
    storage.require(config.paths.apprentice, "paths.apprentice", "trained apprentice")
    with ray_cluster(config.cluster):
        url = start(config)
        try:
            body = example_request(config)
            start_t = time.perf_counter()
            reply = requests.post(f"{url}/v1/generate", json=body, timeout=300)
            if reply.status_code != 200:
                raise RuntimeError(f"the endpoint answered {reply.status_code}: {reply.text[:500]}")
            latency = time.perf_counter() - start_t
            storage.write_bytes(
                storage.join(config.paths.eval, "serve_sample.png"), base64.b64decode(reply.json()["images"][0])
            )
            stopped_by = wait_for_stop(url) if config.serve.keep_serving else None
        finally:
            serve.shutdown()
    return {
        "stage": "serve",
        "stopped_by": stopped_by,
        "url": url,
        "prompt": body["prompt"],
        "latency_s": round(latency, 3),
        "out": storage.join(config.paths.eval, "serve_sample.png"),
    }


main = stage_main(run)

if __name__ == "__main__":
    main()
