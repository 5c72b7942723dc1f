"""The toy scorer: a tiny open_clip model (custom config, no pretrained weights) trained contrastively on toy
image-caption pairs. It plays CLIP's roles in the method: the mining filters, delta-CLIP, CLIP-I and CLIP-T.

The code never downloads real CLIP weights; on a cluster with weights, `load_scorer` is the seam to replace.
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

from core.config import ScorerConfig
from core.data.storage import sha256_files


def model_config(cfg: ScorerConfig, resolution: int = 32) -> dict:
    return {
        "embed_dim": cfg.embed_dim,
        "vision_cfg": {
            "image_size": resolution,
            "layers": cfg.layers,
            "width": cfg.width,
            "patch_size": 4,
            "head_width": 16,
        },
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
    save_file(
        {k: v.contiguous() for k, v in scorer.model.state_dict().items()}, os.path.join(folder, "model.safetensors")
    )
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
