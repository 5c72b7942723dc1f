"""The toy scorer: a tiny open_clip model (custom config, no pretrained weights) trained contrastively on toy
image-caption pairs. It plays CLIP's roles in the method: the mining filters, delta-CLIP, CLIP-I and CLIP-T.

Real CLIP weights cannot be downloaded here; on a cluster with weights, `load_scorer` is the seam to replace.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile

import numpy as np
import open_clip
import torch
from safetensors.torch import load_file, save_file
from tqdm import tqdm

from core import toyworld
from core.schedules import warmup_cosine
from core.config import ScorerConfig
from core.storage import sha256_files


def model_config(cfg: ScorerConfig, resolution: int = 32) -> dict:
    return {
        "embed_dim": cfg.embed_dim,
        "vision_cfg": {"image_size": resolution, "layers": cfg.layers, "width": cfg.width, "patch_size": 4, "head_width": 16},
        "text_cfg": {"context_length": 24, "vocab_size": 49408, "width": cfg.width, "heads": 4, "layers": cfg.layers},
    }


def _register(config: dict) -> str:
    """Register a model config with open_clip under a name derived from its content; returns the name."""
    name = "suti-toy-clip-" + hashlib.sha256(json.dumps(config, sort_keys=True).encode()).hexdigest()[:12]
    if name not in open_clip.list_models():
        folder = tempfile.mkdtemp(prefix="suti-clip-cfg-")
        with open(os.path.join(folder, f"{name}.json"), "w") as f:
            json.dump(config, f)
        open_clip.add_model_config(folder)
    return name


class Scorer:
    """Embeds images and texts into one space; similarities are cosines in [-1, 1]."""

    def __init__(self, model: torch.nn.Module, name: str, config: dict, digest: str = "untrained"):
        self.model = model.eval()
        self.name = name
        self.config = config
        self.tokenizer = open_clip.get_tokenizer(name)
        self.digest = digest

    @torch.no_grad()
    def encode_images(self, images: np.ndarray | list[np.ndarray]) -> torch.Tensor:
        """uint8 (B, H, W, 3) -> unit vectors (B, E)."""
        x = _to_input(np.stack(images) if isinstance(images, list) else images)
        size = self.model.visual.image_size
        size = tuple(size) if isinstance(size, (tuple, list)) else (size, size)
        if tuple(x.shape[-2:]) != size:  # renders of a backbone of another resolution (e.g. IF's 64x64)
            x = torch.nn.functional.interpolate(x, size=size, mode="bilinear", antialias=True, align_corners=False)
        return torch.nn.functional.normalize(self.model.encode_image(x), dim=-1)

    @torch.no_grad()
    def encode_texts(self, texts: list[str]) -> torch.Tensor:
        """(B,) strings -> unit vectors (B, E)."""
        return torch.nn.functional.normalize(self.model.encode_text(self.tokenizer(texts)), dim=-1)

    def clip_scores(self, images: np.ndarray | list[np.ndarray], texts: list[str]) -> np.ndarray:
        """Pairwise-aligned CLIP score: cos(image_i, text_i), shape (B,)."""
        return (self.encode_images(images) * self.encode_texts(texts)).sum(-1).numpy()


def _to_input(images: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(images).permute(0, 3, 1, 2).float().div(127.5).sub(1.0)


def create_scorer(cfg: ScorerConfig, resolution: int = 32) -> Scorer:
    config = model_config(cfg, resolution)
    name = _register(config)
    torch.manual_seed(cfg.seed)
    model = open_clip.create_model(name, pretrained=None, output_dict=True)
    return Scorer(model, name, config)


def save_scorer(scorer: Scorer, folder: str) -> None:
    os.makedirs(folder, exist_ok=True)
    save_file({k: v.contiguous() for k, v in scorer.model.state_dict().items()}, os.path.join(folder, "model.safetensors"))
    with open(os.path.join(folder, "open_clip_config.json"), "w") as f:
        json.dump(scorer.config, f, indent=1)


def load_scorer(folder: str) -> Scorer:
    """Load a scorer saved by `save_scorer` (safetensors; no network)."""
    with open(os.path.join(folder, "open_clip_config.json")) as f:
        config = json.load(f)
    name = _register(config)
    model = open_clip.create_model(name, pretrained=None, output_dict=True)
    model.load_state_dict(load_file(os.path.join(folder, "model.safetensors")))
    digest = sha256_files([os.path.join(folder, "model.safetensors"), os.path.join(folder, "open_clip_config.json")])
    return Scorer(model, name, config, digest)


def _augment(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    # Generated images are noisy and colour-cast; a scorer trained only on clean renders misreads them.
    noise = torch.randn(x.shape, generator=generator) * 0.08
    cast = (torch.rand((x.shape[0], 3, 1, 1), generator=generator) - 0.5) * 0.1
    return (x + noise + cast).clamp(-1, 1)


def train_scorer(
    cfg: ScorerConfig, subjects: list[toyworld.Subject], resolution: int = 32, progress: bool = True, device: str | torch.device = "cpu", deadline: float | None = None
) -> tuple[Scorer, list[float]]:
    """Contrastive training on renders of `subjects` with identity-spelling captions. Returns (scorer, losses).
    `deadline` (a `time.monotonic()` value) ends training early; the scorer comes back on the CPU."""
    import time

    torch.set_num_threads(cfg.threads)
    scorer = create_scorer(cfg, resolution)
    model = scorer.model.to(device).train()
    rng = np.random.default_rng(cfg.seed)
    generator = torch.Generator().manual_seed(cfg.seed)
    loss_fn = open_clip.ClipLoss()
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=0.05)
    sched = warmup_cosine(opt, cfg.steps)
    losses = []
    for _ in tqdm(range(cfg.steps), desc="scorer", disable=not progress, mininterval=2):
        images, views, captions = [], [], []
        for i in rng.choice(len(subjects), size=cfg.batch_size, replace=False):
            subject = subjects[int(i)]
            style = rng.choice([None, None, None, *toyworld.STYLES])
            accessory = rng.choice([None, None, *toyworld.ACCESSORIES])
            body = rng.choice([None, None, None, *toyworld.PALETTE])
            scene = toyworld.random_scene(rng, resolution, style=style, accessory=accessory, body=body)
            images.append(toyworld.render(subject, scene, resolution, rng))
            # Mostly identity spelled out; some captions in the prompts' form (class word only), which is what
            # CLIP-T and delta-CLIP later score against.
            with_background = bool(rng.random() < 0.7)
            if rng.random() < 0.75:
                captions.append(toyworld.full_caption(subject, scene, with_background))
            else:
                captions.append(toyworld.prompt_text(subject.class_name, scene, with_background))
            views.append(toyworld.render(subject, toyworld.random_scene(rng, resolution), resolution, rng))
        x = _augment(_to_input(np.stack(images + views)), generator).to(device)
        out = model(x, scorer.tokenizer(captions).to(device))
        image_features, view_features = out["image_features"].chunk(2)
        # Image-caption pairs, plus two views of one subject in different scenes: without the second term the
        # image tower encodes mostly the scene (most of the pixels), and mining cannot tell subjects apart.
        loss = loss_fn(image_features, out["text_features"], out["logit_scale"])
        loss = loss + loss_fn(image_features, view_features, out["logit_scale"])
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
        losses.append(float(loss.detach()))
        if deadline is not None and time.monotonic() > deadline:
            break
    scorer.model.to("cpu").eval()
    return scorer, losses
