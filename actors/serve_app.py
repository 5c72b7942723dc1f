"""Ray Serve app: a FastAPI ingress deployment in front of an apprentice deployment.

    POST /v1/generate  prompt + 1-8 demonstrations (base64 PNG/JPEG + caption) -> base64 PNGs and timings
    GET  /healthz    200 while the app runs; deployed as an application of its own (`build_health_app`) so that
                     neither generation nor stalled clients make it wait
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
import time
from collections import defaultdict
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Annotated

import numpy as np
from fastapi import FastAPI, HTTPException, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse
from pydantic import AfterValidator, BaseModel, ConfigDict, Field
from ray import serve
from ray.serve import Application
from ray.serve.config import BackpressureConfig
from ray.serve.exceptions import BackPressureError
from ray.serve.handle import DeploymentHandle

from core.config import ApprenticeConfig, ServeConfig
from core.data.images import MAX_IMAGE_PIXELS, ImageTooLarge, open_image, to_png

MAX_DEMO_PIXELS = MAX_IMAGE_PIXELS  # size bound per demo image as its header states it: refuses decompression bombs
# Memory per request in an ingress replica: the body read whole, its parsed JSON, the validated strings and the
# decoded base64 are about 4 copies of the body; a demo being decoded holds its pixels twice (PIL stores RGB in
# 4 bytes a pixel, and the RGB conversion copies it) until it is resized, one demo at a time per decode thread.
BODY_COPIES = 4
DECODE_BYTES_PER_PIXEL = 8
WEB_PAGE = Path(__file__).with_name("web") / "index.html"
HEALTH_APP_SUFFIX = "-health"  # the health application beside an app `name` is `name-health`, at /healthz

app = FastAPI(title="SuTI", description="Subject-driven text-to-image from a few demonstrations, no fine-tuning.")
_limits = {"serve": ServeConfig()}  # set per ingress replica from ServeArgs


def _utf8(text: str) -> str:
    """Refuse strings that are not Unicode text (JSON's \\ud800 escapes decode to lone surrogates)."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError("not valid Unicode text (a lone surrogate)") from None
    return text


Text = Annotated[str, AfterValidator(_utf8)]


class Demo(BaseModel):
    # Strict: a number is not a string here, nor a bool or a string a number.
    model_config = ConfigDict(extra="forbid", strict=True)
    image: str = Field(description="base64 PNG or JPEG (the body is bounded by `serve.max_body_bytes`)")
    caption: Text = Field(description="at most `serve.max_prompt_chars` characters")


class GenerateRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)
    # Upper bounds are the server's `serve.*` limits (core.config.ServeConfig), checked by the ingress.
    prompt: Text = Field(min_length=1, description="at most `serve.max_prompt_chars` characters")
    demos: list[Demo] = Field(
        min_length=1,
        description="at most `serve.max_demos`, decoding to at most `serve.max_request_megapixels` in all",
    )
    steps: int = Field(ApprenticeConfig.num_inference_steps, ge=1, description="at most `serve.max_steps`")
    guidance_scale: float = Field(3.0, ge=0.0, le=50.0, allow_inf_nan=False)
    demo_guidance_scale: float | None = Field(None, ge=0.0, le=50.0, allow_inf_nan=False)
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
    """ASGI middleware: a body over `serve.max_body_bytes` is a 413, whether its Content-Length says so up front or a
    chunked body (no Content-Length) grows past the limit while it is read; nothing beyond the limit is buffered. A
    client that sends no part of its body for `serve.body_read_timeout_s` seconds gets a 408, so a stalled client
    holds an ingress slot for at most that long."""

    def __init__(self, asgi_app):
        self.app = asgi_app

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        limits: ServeConfig = _limits["serve"]
        limit = limits.max_body_bytes
        too_large = {"detail": f"request body over {limit} bytes"}
        length = dict(scope["headers"]).get(b"content-length")
        if length is not None and (not length.isdigit() or int(length) > limit):
            return await JSONResponse(too_large, status_code=413)(scope, receive, send)
        received, complete = 0, False

        async def limited_receive():
            nonlocal received, complete
            if complete:  # after the body, only a disconnect can come: no timeout on that wait
                return await receive()
            try:
                message = await asyncio.wait_for(receive(), timeout=limits.body_read_timeout_s)
            except TimeoutError:
                # FastAPI answers an HTTPException raised while it reads the body.
                raise HTTPException(408, detail=f"request body not received within {limits.body_read_timeout_s} s")
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                complete = not message.get("more_body", False)
                if received > limit:
                    raise HTTPException(413, detail=too_large["detail"])
            return message

        return await self.app(scope, limited_receive, send)


app.add_middleware(BodyLimit)


def _field(loc) -> str:
    """('body', 'demos', 0, 'image') -> 'demos[0].image'; names that are not Unicode text are escaped."""
    parts = list(loc[1:] if loc and loc[0] == "body" else loc) or ["body"]
    name = ""
    for part in parts:
        name += f"[{part}]" if isinstance(part, int) else (f".{part}" if name else str(part))
    return name.encode("utf-8", "backslashreplace").decode("utf-8")


@app.exception_handler(RequestValidationError)
async def validation_error(request: Request, err: RequestValidationError) -> JSONResponse:
    """422 naming each field and its problem, and never the input: FastAPI's default handler echoes the request
    back, whole base64 images included, and fails on what it cannot serialise (NaN, lone surrogates)."""
    problems = []
    for e in err.errors():
        problem = e.get("msg", "invalid")
        if e.get("type") == "json_invalid":
            problem = f"not valid JSON ({e.get('ctx', {}).get('error', 'decode error')})"
        problems.append({"field": _field(e.get("loc", ())), "problem": problem.encode("utf-8", "replace").decode()})
    detail = "; ".join(f"{p['field']}: {p['problem']}" for p in problems)
    return JSONResponse({"detail": detail, "errors": problems}, status_code=422)


def open_demo(data: str, field: str, resolution: int):
    """base64 PNG/JPEG -> an opened PIL image, nothing decoded yet; a JPEG is set to decode at the smallest DCT
    scale (1/2, 1/4 or 1/8) that still covers `resolution`, and its `size` is then what it will decode to.
    HTTPException(422) naming `field` when it is bad."""
    try:
        raw = base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError):
        raise HTTPException(422, detail=f"{field}: not valid base64")
    try:
        im = open_image(raw, MAX_DEMO_PIXELS)
    except ValueError as err:  # corrupt bytes, or a header stating a decompression bomb
        reason = str(err) if isinstance(err, ImageTooLarge) else "not a decodable image"
        raise HTTPException(422, detail=f"{field}: {reason}")
    if im.format not in ("PNG", "JPEG"):
        im.close()
        raise HTTPException(422, detail=f"{field}: image must be PNG or JPEG, got {im.format}")
    if im.format == "JPEG":
        im.draft("RGB", (resolution, resolution))
    return im


def decode_demos(images: list[str], resolution: int, max_megapixels: float) -> list[np.ndarray]:
    """The demos' base64 PNG/JPEG -> uint8 (resolution, resolution, 3) each, one at a time, after checking that all
    of them together decode to at most `max_megapixels` million pixels (from their headers, before any is decoded).
    HTTPException(422) naming the field when one is bad or the request is over the budget."""
    from PIL import Image

    opened = []
    try:
        for i, data in enumerate(images):
            opened.append(open_demo(data, f"demos[{i}].image", resolution))
        total = sum(im.width * im.height for im in opened) / 1e6
        if total > max_megapixels:
            raise HTTPException(
                422,
                detail=f"demos: {total:.1f} megapixels decoded in all is over this server's limit of {max_megapixels}",
            )
        decoded = []
        for i, im in enumerate(opened):
            try:
                im.load()
                decoded.append(np.asarray(im.convert("RGB").resize((resolution, resolution), Image.BICUBIC)))
            except Exception as err:  # noqa: BLE001  a truncated or corrupt image body
                raise HTTPException(422, detail=f"demos[{i}].image: not a decodable image ({type(err).__name__})")
            im.close()
        return decoded
    finally:
        for im in opened:
            im.close()


def _reason(err: BaseException) -> str:
    """The first line of what went wrong, without Ray's traceback around it."""
    cause = getattr(err, "cause", None) or err
    lines = str(cause).strip().splitlines() or [""]
    return f"{type(cause).__name__}: {lines[0][:300]}".encode("utf-8", "replace").decode()


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
        from core.method.apprentice import sample_batch

        drawn = sample_batch(model, requests, sampler=self.sampler, num_inference_steps=steps)
        return [[to_png(img) for img in imgs] for imgs in drawn]


@serve.deployment
@serve.ingress(app)
class SuTIIngress:
    def __init__(self, generator: DeploymentHandle, limits: ServeConfig):
        # Only the limits, not the checkpoint: a redeploy with a new checkpoint leaves this deployment as it is and
        # reconfigures the apprentice replicas in place.
        self.generator = generator
        self.limits = limits
        _limits["serve"] = limits
        self._resolution = None
        # Decoding runs here, off the event loop, at most `decode_threads` requests at a time: the decoded pixels
        # in memory at once are bounded by decode_threads x max_request_megapixels.
        self._decoder = ThreadPoolExecutor(max_workers=limits.decode_threads, thread_name_prefix="decode")

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
        """The ingress answers (served by the health application instead where one is deployed beside it)."""
        return {"status": "ok"}

    def _unavailable(self, detail: str) -> HTTPException:
        return HTTPException(503, detail=detail, headers={"Retry-After": str(self.limits.retry_after_s)})

    @app.post(
        "/v1/generate",
        response_model=GenerateResponse,
        responses={
            408: {"description": "the body did not arrive within `serve.body_read_timeout_s`"},
            413: {"description": "the body is over `serve.max_body_bytes`"},
            503: {"description": "the queue is full or the model failed; retry after the Retry-After header"},
        },
    )
    async def generate(self, req: GenerateRequest) -> GenerateResponse:
        start = time.perf_counter()
        self._check_limits(req)
        try:
            if self._resolution is None:
                self._resolution = await self.generator.resolution.remote()
        except Exception as err:  # noqa: BLE001  the apprentice is not up (yet)
            raise self._unavailable(f"the model is not available: {_reason(err)}")
        demos = await asyncio.get_running_loop().run_in_executor(
            self._decoder,
            decode_demos,
            [d.image for d in req.demos],
            self._resolution,
            self.limits.max_request_megapixels,
        )
        decoded = time.perf_counter()
        try:
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
        except BackPressureError:
            raise self._unavailable("every apprentice replica is busy and its queue is full; retry later")
        except Exception as err:  # noqa: BLE001  a failure inside the model: the server's, not the client's
            raise self._unavailable(f"the model failed to draw this request: {_reason(err)}")
        done = time.perf_counter()
        return GenerateResponse(
            images=[base64.b64encode(p).decode() for p in drawn["images"]],
            timings={"decode_s": decoded - start, "generate_s": done - decoded, "total_s": done - start},
            batch_size=drawn["batch_size"],
            model=drawn["model"],
        )


@serve.deployment(max_ongoing_requests=1000, ray_actor_options={"num_cpus": 0})
class Health:
    """`GET /healthz` as an application of its own, so that it never waits behind generation or behind clients that
    hold the ingress's slots: 200 while the app `app_name` is running (or rolling out a new checkpoint), else 503.
    It asks Serve's controller, at most once a second."""

    def __init__(self, app_name: str):
        self.app_name, self._seen, self._at = app_name, "UNKNOWN", 0.0

    async def __call__(self, request: Request) -> JSONResponse:
        if time.monotonic() - self._at > 1.0:
            try:
                status = await asyncio.to_thread(serve.status)
                app_status = status.applications.get(self.app_name)
                self._seen = str(app_status.status) if app_status else "NOT_STARTED"
            except Exception as err:  # noqa: BLE001
                self._seen = f"UNKNOWN ({_reason(err)})"
            self._at = time.monotonic()
        ok = self._seen.rsplit(".", 1)[-1] in ("RUNNING", "DEPLOYING")
        body = {"status": "ok" if ok else "unavailable", "app": self._seen}
        return JSONResponse(body, status_code=200 if ok else 503)


def build_health_app(args: dict) -> Application:
    """The health application (`serve run` / deploy files: `app_name=NAME`), deployed at route prefix /healthz."""
    return Health.bind(args["app_name"])


def ingress_memory_bound_mb(limits: ServeConfig) -> float:
    """The most an ingress replica can grow by under `limits`: every ongoing request holding a body of the maximum
    size, and every decode thread decoding the largest demo a request may carry."""
    largest_demo = min(limits.max_request_megapixels * 1e6, MAX_DEMO_PIXELS)
    bodies = limits.ingress_max_ongoing_requests * limits.max_body_bytes * BODY_COPIES
    return (bodies + limits.decode_threads * largest_demo * DECODE_BYTES_PER_PIXEL) / 2**20


def build_app(args: ServeArgs) -> Application:
    """The typed app builder (`serve run actors.serve_app:build_app apprentice=...`, or a `serve deploy` file)."""
    if isinstance(args, dict):  # `serve run ... key=value` and deploy files hand the builder plain arguments
        args = ServeArgs(**args)
    s = args.serve
    bound = ingress_memory_bound_mb(s)
    if bound > s.ingress_memory_budget_mb:
        raise ValueError(
            f"serve limits allow an ingress replica to grow by {bound:.0f} MB, over serve.ingress_memory_budget_mb="
            f"{s.ingress_memory_budget_mb}: lower serve.ingress_max_ongoing_requests, serve.max_body_bytes or "
            "serve.decode_threads, or raise the budget"
        )
    scaling = {"autoscaling_config": dict(s.autoscaling)} if s.autoscaling else {"num_replicas": s.num_replicas}
    backpressure = BackpressureConfig(status_code=503, retry_after_s=s.retry_after_s)
    model = ApprenticeDeployment.options(
        **scaling,
        max_ongoing_requests=s.max_ongoing_requests,
        max_queued_requests=s.max_queued_requests,
        backpressure_config=backpressure,
        ray_actor_options={"num_cpus": s.num_cpus, "num_gpus": s.num_gpus},
        user_config={"apprentice": args.apprentice},
    ).bind(args.threads, args.sampler, s.max_batch_size, s.batch_wait_timeout_s)
    return SuTIIngress.options(
        max_ongoing_requests=s.ingress_max_ongoing_requests,
        max_queued_requests=s.ingress_max_queued_requests,
        backpressure_config=backpressure,
        ray_actor_options={"num_cpus": 0},
    ).bind(model, s)
