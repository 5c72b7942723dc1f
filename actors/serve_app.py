"""Ray Serve app: a FastAPI ingress deployment in front of an apprentice deployment.

    POST /v1/generate  prompt + 1-8 demonstrations (base64 PNG/JPEG + caption) -> base64 PNGs and timings
    GET  /healthz
    GET  /           a web page: upload demonstrations, type captions and a prompt, see the images
    GET  /docs       OpenAPI

The apprentice deployment batches concurrent requests (`@serve.batch`; requests that share a demo count, guidance
mode and step count go through the UNet together) and takes its checkpoint from `user_config`, so a new checkpoint
is swapped in by redeploying with another `user_config`: Serve reconfigures the running replicas in place, no
restart and no downtime.

Built by the typed builder `build_app(ServeArgs)`, so `serve run actors.serve_app:build_app apprentice=PATH` works
as well as `python -m apps.serve`. Client mistakes get a 4xx naming the field; the replica never dies of one.
"""

# No `from __future__ import annotations` here: FastAPI must see the request model types, not strings.
import asyncio
import base64
import binascii
import io
import time
from collections import defaultdict
from pathlib import Path

import numpy as np
from fastapi import FastAPI, HTTPException
from fastapi.responses import HTMLResponse, JSONResponse
from pydantic import BaseModel, ConfigDict, Field
from ray import serve
from ray.serve import Application
from ray.serve.handle import DeploymentHandle

from core.config import ApprenticeConfig, ServeConfig

MAX_DEMO_PIXELS = 4096 * 4096  # decoded size bound per demo image: refuses decompression bombs
WEB_PAGE = Path(__file__).with_name("web") / "index.html"

app = FastAPI(title="SuTI", description="Subject-driven text-to-image from a few demonstrations, no fine-tuning.")
_limits = {"max_body_bytes": ServeConfig.max_body_bytes}  # set per replica from ServeArgs


class Demo(BaseModel):
    model_config = ConfigDict(extra="forbid")
    image: str = Field(description="base64 PNG or JPEG (the body is bounded by `serve.max_body_bytes`)")
    caption: str = Field(description="at most `serve.max_prompt_chars` characters")


class GenerateRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    # Upper bounds are the server's `serve.*` limits (core.config.ServeConfig), checked by the ingress.
    prompt: str = Field(min_length=1, description="at most `serve.max_prompt_chars` characters")
    demos: list[Demo] = Field(min_length=1, description="at most `serve.max_demos`")
    steps: int = Field(ApprenticeConfig.num_inference_steps, ge=1, description="at most `serve.max_steps`")
    guidance_scale: float = Field(3.0, ge=0.0, le=50.0)
    demo_guidance_scale: float | None = Field(None, ge=0.0, le=50.0)
    num_images: int = Field(1, ge=1, description="at most `serve.max_images`")
    seed: int = Field(0, ge=0, le=2**31 - 1)


class GenerateResponse(BaseModel):
    images: list[str] = Field(description="base64 PNG")
    timings: dict[str, float]
    batch_size: int = Field(description="requests that went through the UNet together with this one")
    model: str = Field(description="digest of the apprentice checkpoint that drew the images")


class ServeArgs(BaseModel):
    """The app builder's arguments: the checkpoint, the apprentice's sampling settings, and `serve.*`
    (`core.config.ServeConfig`, the one source of the limits and their defaults)."""

    model_config = ConfigDict(extra="forbid")
    apprentice: str  # folder URI written by the train stage
    threads: int = ApprenticeConfig.threads
    sampler: str = ApprenticeConfig.sampler
    serve: ServeConfig = Field(default_factory=ServeConfig)


class BodyLimit:
    """ASGI middleware: a body over `max_body_bytes` is a 413, whether its Content-Length says so up front or a
    chunked body (no Content-Length) grows past the limit while it is read; nothing beyond the limit is buffered."""

    def __init__(self, asgi_app):
        self.app = asgi_app

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        limit = _limits["max_body_bytes"]
        too_large = {"detail": f"request body over {limit} bytes"}
        length = dict(scope["headers"]).get(b"content-length")
        if length is not None and (not length.isdigit() or int(length) > limit):
            return await JSONResponse(too_large, status_code=413)(scope, receive, send)
        received = 0

        async def limited_receive():
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    raise HTTPException(413, detail=too_large["detail"])  # FastAPI answers it while reading the body
            return message

        return await self.app(scope, limited_receive, send)


app.add_middleware(BodyLimit)


def decode_demo(data: str, field: str, resolution: int) -> np.ndarray:
    """base64 PNG/JPEG -> uint8 (resolution, resolution, 3); HTTPException(422) naming `field` when it is bad."""
    from PIL import Image

    try:
        raw = base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError):
        raise HTTPException(422, detail=f"{field}: not valid base64")
    try:
        with Image.open(io.BytesIO(raw)) as im:
            if im.format not in ("PNG", "JPEG"):
                raise HTTPException(422, detail=f"{field}: image must be PNG or JPEG, got {im.format}")
            if im.width * im.height > MAX_DEMO_PIXELS:
                raise HTTPException(422, detail=f"{field}: image of {im.width}x{im.height} pixels is too large")
            im.load()
            return np.asarray(im.convert("RGB").resize((resolution, resolution), Image.BICUBIC))
    except HTTPException:
        raise
    except Exception as err:  # noqa: BLE001  PIL raises many types for corrupt data, DecompressionBombError among them
        raise HTTPException(422, detail=f"{field}: not a decodable image ({type(err).__name__})")


@serve.deployment
class ApprenticeDeployment:
    """One apprentice per replica. `user_config={"apprentice": URI}` names the checkpoint (reloaded on change)."""

    def __init__(self, threads: int, sampler: str, max_batch_size: int, batch_wait_timeout_s: float):
        import torch

        torch.set_num_threads(threads)
        self.sampler = sampler
        self.model, self.model_digest, self.uri = None, "", None
        self.generate_batch.set_max_batch_size(max_batch_size)
        self.generate_batch.set_batch_wait_timeout_s(batch_wait_timeout_s)

    def reconfigure(self, user_config: dict) -> None:
        from core.data import storage
        from core.models.backbone import weight_files
        from core.models.device import pick_device
        from core.pipelines.suti import load_apprentice

        uri = user_config["apprentice"]
        if uri == self.uri:
            return
        folder = storage.local_dir(uri)
        model = load_apprentice(folder).to(pick_device())
        self.model, self.model_digest, self.uri = model, storage.sha256_files(weight_files(folder))[:12], uri

    def resolution(self) -> int:
        return self.model.resolution

    async def generate(self, request: dict) -> dict:
        return await self.generate_batch(request)

    @serve.batch(max_batch_size=4, batch_wait_timeout_s=0.05)  # both set from config in __init__
    async def generate_batch(self, requests: list[dict]) -> list[dict]:
        """Requests that can share a reverse process (demo count, guidance mode, steps) are drawn as one batch."""
        from core.method.apprentice import SampleRequest

        groups = defaultdict(list)
        for i, r in enumerate(requests):
            req = SampleRequest(
                r["prompt"],
                r["demo_images"],
                r["captions"],
                r["num_images"],
                r["seed"],
                r["guidance_scale"],
                r["demo_guidance_scale"],
            )
            groups[(req.batch_key(), r["steps"])].append((i, req))
        results: list[dict] = [{}] * len(requests)
        model, digest = self.model, self.model_digest  # a swap mid-batch does not mix checkpoints
        for (_, steps), members in groups.items():
            images = await asyncio.to_thread(self._draw, model, [req for _, req in members], steps)
            for (i, _), imgs in zip(members, images):
                results[i] = {"images": imgs, "batch_size": len(members), "model": digest}
        return results

    def _draw(self, model, requests: list, steps: int) -> list[list[bytes]]:
        from core.data.images import to_png
        from core.method.apprentice import sample_batch

        drawn = sample_batch(model, requests, sampler=self.sampler, num_inference_steps=steps)
        return [[to_png(img) for img in imgs] for imgs in drawn]


@serve.deployment
@serve.ingress(app)
class SuTIIngress:
    def __init__(self, generator: DeploymentHandle, limits: dict):
        # Only the limits, not the checkpoint: a redeploy with a new checkpoint leaves this deployment as it is and
        # reconfigures the apprentice replicas in place.
        self.generator = generator
        self.limits = limits
        _limits["max_body_bytes"] = limits.max_body_bytes
        self._resolution = None

    def _check_limits(self, req: GenerateRequest) -> None:
        limits: ServeConfig = self.limits
        checks = [
            ("prompt", len(req.prompt), limits.max_prompt_chars),
            ("demos", len(req.demos), limits.max_demos),
            ("steps", req.steps, limits.max_steps),
            ("num_images", req.num_images, limits.max_images),
        ]
        checks += [(f"demos[{i}].caption", len(d.caption), limits.max_prompt_chars) for i, d in enumerate(req.demos)]
        for field, value, limit in checks:
            if value > limit:
                raise HTTPException(422, detail=f"{field}: {value} is over this server's limit of {limit}")

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    async def page(self) -> HTMLResponse:
        return HTMLResponse(WEB_PAGE.read_text())

    @app.get("/healthz")
    async def healthz(self) -> dict:
        return {"status": "ok"}

    @app.post("/v1/generate", response_model=GenerateResponse)
    async def generate(self, req: GenerateRequest) -> GenerateResponse:
        start = time.perf_counter()
        self._check_limits(req)
        if self._resolution is None:
            self._resolution = await self.generator.resolution.remote()
        demos = [decode_demo(d.image, f"demos[{i}].image", self._resolution) for i, d in enumerate(req.demos)]
        decoded = time.perf_counter()
        drawn = await self.generator.generate.remote(
            {
                "prompt": req.prompt,
                "demo_images": demos,
                "captions": [d.caption for d in req.demos],
                "steps": req.steps,
                "guidance_scale": req.guidance_scale,
                "demo_guidance_scale": req.demo_guidance_scale,
                "num_images": req.num_images,
                "seed": req.seed,
            }
        )
        done = time.perf_counter()
        return GenerateResponse(
            images=[base64.b64encode(p).decode() for p in drawn["images"]],
            timings={"decode_s": decoded - start, "generate_s": done - decoded, "total_s": done - start},
            batch_size=drawn["batch_size"],
            model=drawn["model"],
        )


def build_app(args: ServeArgs) -> Application:
    """The typed app builder (`serve run actors.serve_app:build_app apprentice=...`, or a `serve deploy` file)."""
    if isinstance(args, dict):  # `serve run ... key=value` and deploy files hand the builder plain arguments
        args = ServeArgs(**args)
    s = args.serve
    scaling = {"autoscaling_config": dict(s.autoscaling)} if s.autoscaling else {"num_replicas": s.num_replicas}
    model = ApprenticeDeployment.options(
        **scaling,
        max_ongoing_requests=s.max_ongoing_requests,
        ray_actor_options={"num_cpus": s.num_cpus, "num_gpus": s.num_gpus},
        user_config={"apprentice": args.apprentice},
    ).bind(args.threads, args.sampler, s.max_batch_size, s.batch_wait_timeout_s)
    return SuTIIngress.options(ray_actor_options={"num_cpus": 0}).bind(model, s)
