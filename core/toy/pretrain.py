"""Base model pretraining on the toy world: train subjects only, captions that spell identity out.

Captions come in the forms the base must know: identity spelled out (with and without the background), the
class-and-scene form of the unseen prompts, and empty (for classifier-free guidance). Batches are rendered by
DataLoader workers (`workers`) so an accelerator is not starved; `deadline` (a `time.monotonic()` value) ends
training early, so a time-boxed run still saves its weights.
"""

from __future__ import annotations

import copy
import json
import tempfile
import time
from collections.abc import Iterator

import numpy as np
import torch
from tqdm import tqdm

from core.config import PretrainConfig
from core.data import storage
from core.models import backbone as bb
from core.models import sampling
from core.models.device import autocast as device_autocast
from core.models.device import step_done
from core.models.schedules import warmup_cosine
from core.models.tokenizer import tokenize
from core.toy import render as toyrender
from core.toy import world as toyworld


def random_caption(subject: toyworld.Subject, scene: toyworld.Scene, rng: np.random.Generator) -> str:
    r = rng.random()
    if r < 0.45:
        return toyworld.full_caption(subject, scene)
    if r < 0.6:
        return toyworld.full_caption(subject, scene, with_background=False)
    if r < 0.75:
        return toyworld.prompt_text(subject.class_name, scene)
    if r < 0.9:
        return toyworld.prompt_text(subject.class_name, scene, with_background=False)
    return ""


def toy_scenes(
    subjects: list[toyworld.Subject],
    batch_size: int,
    rng: np.random.Generator,
    size: int,
    version: int = 1,
    plain: bool = False,
) -> tuple[list[toyworld.Subject], list[toyworld.Scene], list[str]]:
    """A batch's subjects, scenes (of world `version`; `plain`: no style and no property edit) and captions
    (nothing drawn yet)."""
    picked, scenes, captions = [], [], []
    for i in rng.choice(len(subjects), size=batch_size):
        subject = subjects[int(i)]
        style = rng.choice([None, None, None, None, None, *toyworld.STYLES])
        accessory = rng.choice([None, None, None, None, *toyworld.ACCESSORIES])
        body = rng.choice([None] * 16 + list(toyworld.PALETTE))
        if plain:
            style = body = None
        scene = toyworld.random_scene(rng, size, version, style=style, accessory=accessory, body=body)
        picked.append(subject)
        scenes.append(scene)
        captions.append(random_caption(subject, scene, rng))
    return picked, scenes, captions


class CaptionStream(torch.utils.data.IterableDataset):
    """Endless (scenes packed by `toyrender.pack_scenes`, input ids (B, L)) batches; each worker draws from its
    own seed; the first `plain_batches` batches have plain scenes (a curriculum). The images are drawn from the
    scenes on the training device (`toyrender.render_batch`): drawn here, one at a time in numpy, they would bound a
    GPU's pretraining by the CPU workers. The captions are tokenized here: in the training process the BPE tokenizer
    costs about as long as a GPU step."""

    def __init__(
        self,
        subjects: list[toyworld.Subject],
        batch_size: int,
        seed: int,
        size: int,
        tokenizer,
        version: int = 1,
        plain_batches: int = 0,
    ):
        self.subjects, self.batch_size, self.seed, self.size = subjects, batch_size, seed, size
        self.tokenizer, self.version, self.plain_batches = tokenizer, version, plain_batches

    def __iter__(self) -> Iterator[tuple[dict[str, np.ndarray], torch.Tensor]]:
        info = torch.utils.data.get_worker_info()
        workers = info.num_workers if info else 1
        rng = np.random.default_rng([self.seed, info.id if info else 0])
        made = 0
        while True:
            plain = made * workers < self.plain_batches
            picked, scenes, captions = toy_scenes(self.subjects, self.batch_size, rng, self.size, self.version, plain)
            made += 1
            yield toyrender.pack_scenes(picked, scenes), tokenize(self.tokenizer, captions)


def deadline_clock(deadline: float | None):
    """Share of the time to `deadline` used so far (None without one): lets the lr schedule end on time."""
    if deadline is None:
        return None
    start = time.monotonic()
    return lambda: (time.monotonic() - start) / max(1e-9, deadline - start)


@torch.no_grad()
def ema_update(ema: torch.nn.Module, model: torch.nn.Module, decay: float) -> None:
    # One fused call rather than a kernel per tensor: tiny models on a GPU are bound by kernel launches.
    torch._foreach_lerp_(list(ema.parameters()), [p.detach() for p in model.parameters()], 1.0 - decay)


def training_state(modules: torch.nn.Module, ema: torch.nn.Module | None, opt, step: int) -> dict:
    state = {"model": modules.state_dict(), "optimizer": opt.state_dict(), "step": torch.tensor(step)}
    if ema is not None:
        state["ema"] = ema.state_dict()
    return state


def pretrain(
    backbone: bb.Backbone,
    subjects: list[toyworld.Subject],
    cfg: PretrainConfig,
    progress: bool = True,
    workers: int = 0,
    deadline: float | None = None,
    ema_decay: float | None = None,
    resume: dict | None = None,
    save_state=None,
    save_every: int = 500,
    world_version: int = 1,
    marks_s: tuple[float, ...] = (),
    on_mark=None,
) -> list[float]:
    """Train `backbone` in place on renders of `subjects` (with EMA weights copied in at the end when
    `ema_decay`, or else `cfg.ema_decay`, is set). Returns the loss per step of this call.

    The recipe is `cfg`'s: prediction type (set on the backbone's noise schedule here, so its samplers follow),
    Min-SNR weighting, schedule, EMA, and `cfg.budget_s` seconds of training. `on_mark(seconds, step, modules)`
    is called once training time passes each of `marks_s` (once per step, with the last mark it passed), with the
    EMA weights when there are some; its own time does not count as training time. `save_state(state)` is called
    every `save_every` steps, and once more at the end, with a dict of tensors (weights, EMA, optimizer, step);
    passing such a dict back as `resume` continues from it (the data stream moves on to new batches). `resume` may
    hold only "step" (a shipped checkpoint, `load_checkpoint`: the backbone then holds its EMA weights, which
    training and EMA both continue from, and the schedule goes on from "step")."""
    if backbone.device.type == "cpu":
        torch.set_num_threads(cfg.threads)
    if backbone.noise_scheduler.config.get("prediction_type") != cfg.prediction_type:
        scheduler = backbone.noise_scheduler
        backbone.noise_scheduler = type(scheduler).from_config(scheduler.config, prediction_type=cfg.prediction_type)
    ema_decay = ema_decay if ema_decay is not None else cfg.ema_decay
    generator = torch.Generator(backbone.device if backbone.device.type == "cuda" else "cpu").manual_seed(cfg.seed)
    modules = torch.nn.ModuleList([backbone.unet, backbone.text_encoder])
    ema = copy.deepcopy(modules).eval() if ema_decay else None
    opt = torch.optim.AdamW(modules.parameters(), lr=cfg.lr, weight_decay=0.0, fused=backbone.device.type == "cuda")
    trained = {"s": 0.0}  # training seconds so far (callbacks excluded)
    if cfg.budget_s is not None and cfg.budget_schedule:
        clock = lambda: trained["s"] / cfg.budget_s
    else:
        clock = deadline_clock(deadline)
    autocast = device_autocast(backbone.device)
    start = 0
    if resume is not None:
        if "model" in resume:
            modules.load_state_dict({k: v.float() for k, v in resume["model"].items()})
        if ema is not None and "ema" in resume:
            ema.load_state_dict(resume["ema"])
        if "optimizer" in resume:
            opt.load_state_dict(resume["optimizer"])
        start = int(resume["step"])
    # A resumed run whose optimizer state was not kept (a shipped checkpoint holds weights only) ramps its first
    # 100 steps while Adam's moments fill again; the schedule itself goes on from `start`.
    ramp = 100 if resume is not None and "optimizer" not in resume else 0
    sched = warmup_cosine(
        opt, cfg.steps, clock=clock, constant=cfg.schedule == "constant", start_step=start, ramp_steps=ramp
    )
    loader = torch.utils.data.DataLoader(
        CaptionStream(
            subjects,
            cfg.batch_size,
            cfg.seed + 7919 * start,
            backbone.resolution,
            backbone.tokenizer,
            world_version,
            plain_batches=max(0, cfg.plain_steps - start),
        ),
        batch_size=None,
        num_workers=workers,
    )
    modules.train()
    losses, pending = [], []
    # The background noise of the drawn images comes from its own stream, on the device.
    render_generator = torch.Generator(backbone.device if backbone.device.type == "cuda" else "cpu").manual_seed(
        cfg.seed + 7919 * start + 1
    )
    marks = sorted(marks_s)
    step_start = time.perf_counter()
    for step, (scenes, ids) in zip(
        tqdm(range(start, cfg.steps), desc="pretrain", disable=not progress, mininterval=10), loader
    ):
        images = toyrender.render_batch(
            scenes, backbone.resolution, backbone.device if backbone.device.type == "cuda" else "cpu", render_generator
        )
        x0 = images.to(backbone.device).div(127.5).sub(1.0)
        with autocast:
            loss = sampling.denoising_loss(
                backbone.unet,
                backbone.noise_scheduler,
                x0,
                bb.encode_text(backbone, ids),
                generator,
                snr_gamma=cfg.snr_gamma,
            )
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(modules.parameters(), 1.0)
        opt.step()
        sched.step()
        if ema is not None:
            # Warm-up (as in diffusers' EMAModel): a fixed 0.999 over a short run would keep the random init.
            ema_update(ema, modules, min(ema_decay, (1 + step) / (10 + step)))
        step_done(backbone.device)
        # Kept on the device and read back in groups: a read-back every step would stall the GPU's queue.
        pending.append(loss.detach())
        if len(pending) == 50:
            losses.extend(torch.stack(pending).tolist())
            pending = []
        if save_state is not None and (step + 1) % save_every == 0:
            save_state(training_state(modules, ema, opt, step + 1))
        trained["s"] += time.perf_counter() - step_start
        passed = [m for m in marks if trained["s"] >= m]
        if passed and on_mark is not None:  # one measurement, however many marks this step passed
            marks = marks[len(passed) :]
            on_mark(passed[-1], step + 1, ema if ema is not None else modules)
            modules.train()
        step_start = time.perf_counter()
        if deadline is not None and time.monotonic() > deadline:
            break
        if cfg.budget_s is not None and trained["s"] >= cfg.budget_s:
            break
    losses.extend(torch.stack(pending).tolist() if pending else [])
    if save_state is not None and losses and (start + len(losses)) % save_every:
        save_state(training_state(modules, ema, opt, start + len(losses)))
    if ema is not None:
        modules.load_state_dict(ema.state_dict())
    modules.eval()
    return losses


# ---------------------------------------------------------------- checkpoints that ship

REPORT = "report.json"  # in a checkpoint folder: the step reached, the recipe, and one entry per run


def checkpoint_recipe(preset: str, cfg: PretrainConfig, world_version: int) -> dict:
    """What a run must share with the checkpoint it continues (`steps` may grow: the schedule then stretches)."""
    return {
        "preset": preset,
        "world_version": world_version,
        "prediction_type": cfg.prediction_type,
        "schedule": cfg.schedule,
    }


def load_checkpoint(folder: str, recipe: dict) -> tuple[bb.Backbone, dict, dict] | None:
    """(backbone holding the EMA weights, `resume` for `pretrain`, the report) from a checkpoint folder written by
    `save_checkpoint`; None when `folder` holds none. Fails when the checkpoint was made with another recipe."""
    folder = storage.readable_dir(folder)
    if folder is None or not storage.exists(storage.join(folder, REPORT)):
        return None
    report = json.loads(storage.read_bytes(storage.join(folder, REPORT)))
    differ = {k: (report["recipe"].get(k), v) for k, v in recipe.items() if report["recipe"].get(k) != v}
    if differ:
        raise ValueError(
            f"the checkpoint at {folder} was made with another recipe ((checkpoint, this run): {differ}); "
            "set pretrain.resume=false to start over, or point paths.base elsewhere"
        )
    backbone = bb.load_backbone(storage.local_dir(folder))
    return backbone, {"step": torch.tensor(report["step"])}, report


def save_checkpoint(backbone: bb.Backbone, state: dict, folder: str, report: dict) -> None:
    """Write the EMA weights of `state` (or its weights, without EMA) as a backbone in fp16 with `report`, replacing
    `folder` whole. The weights are what a later run continues from (the optimizer's moments are not kept: a
    checkpoint small enough to ship in a repository)."""
    view = copy.deepcopy(backbone).to("cpu")
    weights = state.get("ema", state["model"])
    torch.nn.ModuleList([view.unet, view.text_encoder]).load_state_dict({k: v.cpu() for k, v in weights.items()})
    with tempfile.TemporaryDirectory() as tmp:
        bb.save_backbone(view, tmp, half=True)
        write_report(tmp, report, int(state["step"]))
        storage.replace_dir(tmp, folder)


def write_report(folder: str, report: dict, step: int) -> None:
    """A checkpoint's `report.json` (written whole, under a temporary name first)."""
    storage.write_bytes(storage.join(folder, REPORT), json.dumps({**report, "step": step}, indent=1).encode())
