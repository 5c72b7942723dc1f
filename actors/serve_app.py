"""Ray Serve app: a FastAPI ingress deployment in front of an apprentice deployment.

    POST /v1/generate  prompt + 1-8 demonstrations (base64 PNG/JPEG + caption) -> base64 PNGs and timings
    GET  /healthz

Built by the typed builder `build_app(ServeArgs)`, so `serve run actors.serve_app:build_app apprentice=PATH` works
as well as `python -m apps.serve`. Client mistakes get a 4xx naming the field; the replica never dies of one.
"""


# No `from __future__ import annotations` here: FastAPI must see the request model types, not strings.
import base64
import binascii
import io
import time

import numpy as np
from fastapi import FastAPI, HTTPException, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field
from ray import serve
from ray.serve import Application
from ray.serve.handle import DeploymentHandle

MAX_DEMO_PIXELS = 4096 * 4096  # decoded size bound per demo image: refuses decompression bombs

app = FastAPI(title="SuTI", description="Subject-driven text-to-image from a few demonstrations, no fine-tuning.")
_limits = {"max_body_bytes": 20 * 1024 * 1024}  # set per replica from ServeArgs


class Demo(BaseModel):
    model_config = ConfigDict(extra="forbid")
    image: str = Field(description="base64 PNG or JPEG", max_length=20 * 1024 * 1024)
    caption: str = Field(max_length=300)


class GenerateRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    prompt: str = Field(min_length=1, max_length=300)
    demos: list[Demo] = Field(min_length=1, max_length=8)
    steps: int = Field(25, ge=1, le=200)
    guidance_scale: float = Field(3.0, ge=0.0, le=50.0)
    demo_guidance_scale: float | None = Field(None, ge=0.0, le=50.0)
    num_images: int = Field(1, ge=1, le=4)
    seed: int = Field(0, ge=0, le=2**31 - 1)


class GenerateResponse(BaseModel):
    images: list[str]  # base64 PNG
    timings: dict[str, float]


class ServeArgs(BaseModel):
    apprentice: str  # folder URI written by the train stage
    host: str = "127.0.0.1"
    num_replicas: int = 1
    num_cpus: float = 1.0
    num_gpus: float = 0.0
    threads: int = 2
    sampler: str = "ddim"
    max_body_bytes: int = 20 * 1024 * 1024
    max_prompt_chars: int = 300
    max_demos: int = 8
    max_steps: int = 200
    max_images: int = 4


@app.middleware("http")
async def limit_body(request: Request, call_next):
    length = request.headers.get("content-length")
    if length is not None and (not length.isdigit() or int(length) > _limits["max_body_bytes"]):
        return JSONResponse({"detail": f"request body over {_limits['max_body_bytes']} bytes"}, status_code=413)
    return await call_next(request)


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
    except Exception as err:  # PIL raises many types for corrupt data, DecompressionBombError among them
        raise HTTPException(422, detail=f"{field}: not a decodable image ({type(err).__name__})")


@serve.deployment
class ApprenticeDeployment:
    def __init__(self, apprentice_uri: str, threads: int, sampler: str):
        import torch

        from core import storage
        from core.apprentice import load_apprentice
        from core.device import pick_device

        torch.set_num_threads(threads)
        self.model = load_apprentice(storage.local_dir(apprentice_uri)).to(pick_device())
        self.sampler = sampler

    def resolution(self) -> int:
        return self.model.resolution

    def generate(self, prompt: str, demo_images: list, captions: list[str], steps: int, guidance_scale: float, demo_guidance_scale, num_images: int, seed: int) -> list[bytes]:
        from core.apprentice import sample
        from core.toyworld import to_png

        images = sample(
            self.model, prompt, demo_images, captions, num_images=num_images, sampler=self.sampler,
            num_inference_steps=steps, guidance_scale=guidance_scale, demo_guidance_scale=demo_guidance_scale, seed=seed,
        )
        return [to_png(img) for img in images]


@serve.deployment
@serve.ingress(app)
class SuTIIngress:
    def __init__(self, generator: DeploymentHandle, args: ServeArgs):
        self.generator = generator
        self.args = args
        _limits["max_body_bytes"] = args.max_body_bytes
        self._resolution = None

    def _check_limits(self, req: GenerateRequest) -> None:
        for field, value, limit in (
            ("prompt", len(req.prompt), self.args.max_prompt_chars),
            ("demos", len(req.demos), self.args.max_demos),
            ("steps", req.steps, self.args.max_steps),
            ("num_images", req.num_images, self.args.max_images),
        ):
            if value > limit:
                raise HTTPException(422, detail=f"{field}: {value} is over this server's limit of {limit}")

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
        pngs = await self.generator.generate.remote(
            req.prompt, demos, [d.caption for d in req.demos], req.steps, req.guidance_scale,
            req.demo_guidance_scale, req.num_images, req.seed,
        )
        done = time.perf_counter()
        return GenerateResponse(
            images=[base64.b64encode(p).decode() for p in pngs],
            timings={"decode_s": decoded - start, "generate_s": done - decoded, "total_s": done - start},
        )


def build_app(args: ServeArgs) -> Application:
    """The typed app builder (`serve run actors.serve_app:build_app apprentice=...`)."""
    model = ApprenticeDeployment.options(
        num_replicas=args.num_replicas, ray_actor_options={"num_cpus": args.num_cpus, "num_gpus": args.num_gpus}
    ).bind(args.apprentice, args.threads, args.sampler)
    return SuTIIngress.options(ray_actor_options={"num_cpus": 0}).bind(model, args)
