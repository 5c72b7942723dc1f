"""The apprentice: the base UNet plus new attention layers over demonstrations, gated to start as the base.

Architecture (v0):
- Demo encoder: each demonstration image goes through a small conv net to a `demo_grid x demo_grid` grid of
  tokens (width = the UNet's cross-attention width); its caption goes through the base text encoder and adds one
  token (the EOS state, projected). K demos give K * (demo_grid**2 + 1) tokens.
- Every cross-attention layer (attn2) of the UNet gets a second, new attention branch: the layer's own query
  attends to the demo tokens through new key, value and output projections. The branch output is multiplied by a
  zero-initialised scalar gate and added to the text cross-attention output, so at initialisation the apprentice
  computes exactly the base model (a test checks), and a batch element without demos does too.
The new layers live in diffusers attention processors (as IP-Adapter's do), so the UNet class is untouched.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from diffusers import DDPMScheduler, UNet2DConditionModel
from diffusers.models.attention_processor import Attention, AttnProcessor2_0
from safetensors.torch import load_file, save_file
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

from core.backbone import Backbone, create_sampler, encode_text, images_to_tensor, sample_loop, tensor_to_images, tokenize


class TextOnlyProcessor(AttnProcessor2_0):
    """The stock processor, accepting (and ignoring) the demo arguments so diffusers does not warn each call."""

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, temb=None, demo_tokens=None, demo_mask=None):
        return super().__call__(attn, hidden_states, encoder_hidden_states, attention_mask, temb)


class DemoAttnProcessor(nn.Module):
    """Text cross-attention plus a gated attention branch over demo tokens.

    hidden_states: (B, N, C); demo_tokens: (B, T, D); demo_mask: (B,) with 1 where the demos count.
    """

    def __init__(self, inner_dim: int, cross_dim: int, out_dim: int, heads: int):
        super().__init__()
        self.heads = heads
        self.to_k = nn.Linear(cross_dim, inner_dim, bias=False)
        self.to_v = nn.Linear(cross_dim, inner_dim, bias=False)
        self.to_out = nn.Linear(inner_dim, out_dim)
        self.gate = nn.Parameter(torch.zeros(()))
        self.text = TextOnlyProcessor()

    def __call__(self, attn: Attention, hidden_states, encoder_hidden_states=None, attention_mask=None, temb=None, demo_tokens=None, demo_mask=None):
        out = self.text(attn, hidden_states, encoder_hidden_states, attention_mask, temb)
        if demo_tokens is None:
            return out
        b, n, _ = hidden_states.shape
        q = attn.to_q(hidden_states).view(b, n, self.heads, -1).transpose(1, 2)
        k = self.to_k(demo_tokens).view(b, demo_tokens.shape[1], self.heads, -1).transpose(1, 2)
        v = self.to_v(demo_tokens).view(b, demo_tokens.shape[1], self.heads, -1).transpose(1, 2)
        demo = F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(b, n, -1)
        demo = self.to_out(demo) * self.gate
        if demo_mask is not None:
            demo = demo * demo_mask.view(b, 1, 1).to(demo.dtype)
        return out + demo


class DemoEncoder(nn.Module):
    """Demo images (B, K, 3, H, W) and caption states (B, K, D) -> tokens (B, K * (grid**2 + 1), D)."""

    def __init__(self, dim: int, grid: int):
        super().__init__()
        self.grid = grid
        self.conv = nn.Sequential(
            nn.Conv2d(3, 32, 3, padding=1),
            nn.SiLU(),
            nn.Conv2d(32, 64, 4, stride=2, padding=1),
            nn.SiLU(),
            nn.Conv2d(64, dim, 4, stride=2, padding=1),
        )
        self.pos = nn.Parameter(torch.randn(grid * grid, dim) * 0.02)
        self.caption_proj = nn.Linear(dim, dim)
        self.norm = nn.LayerNorm(dim)

    def forward(self, demo_images: torch.Tensor, caption_states: torch.Tensor) -> torch.Tensor:
        b, k = demo_images.shape[:2]
        feats = self.conv(demo_images.flatten(0, 1))
        feats = F.adaptive_avg_pool2d(feats, self.grid).flatten(2).transpose(1, 2) + self.pos  # (B*K, g*g, D)
        caption = self.caption_proj(caption_states.flatten(0, 1)).unsqueeze(1)  # (B*K, 1, D)
        tokens = torch.cat([feats, caption], dim=1).view(b, k * (self.grid * self.grid + 1), -1)
        return self.norm(tokens)


class Apprentice(nn.Module):
    def __init__(self, backbone: Backbone, demo_grid: int = 4):
        super().__init__()
        self.unet = backbone.unet
        self.text_encoder = backbone.text_encoder
        self.tokenizer = backbone.tokenizer
        self.noise_scheduler = backbone.noise_scheduler
        self.resolution = backbone.resolution
        self.demo_grid = demo_grid
        dim = self.unet.config.cross_attention_dim
        self.demo_encoder = DemoEncoder(dim, demo_grid)
        processors = {}
        for name in self.unet.attn_processors:
            attn = self.unet.get_submodule(name.rsplit(".processor", 1)[0])
            if name.endswith("attn2.processor"):
                processors[name] = DemoAttnProcessor(attn.inner_dim, dim, attn.to_out[0].out_features, attn.heads)
            else:
                processors[name] = TextOnlyProcessor()
        self.unet.set_attn_processor(processors)

    @property
    def backbone(self) -> Backbone:
        return Backbone(self.unet, self.text_encoder, self.tokenizer, self.noise_scheduler, self.resolution)

    def new_parameters(self) -> dict[str, torch.Tensor]:
        """The layers the apprentice adds to the base (demo encoder, demo attention branches, gates)."""
        return {n: p for n, p in self.named_parameters() if n.startswith("demo_encoder.") or ".processor." in n}

    def gates(self) -> torch.Tensor:
        return torch.stack([p for n, p in self.named_parameters() if n.endswith("processor.gate")])

    def encode_demos(self, demo_images: torch.Tensor, demo_ids: torch.Tensor) -> torch.Tensor:
        """demo_images: (B, K, 3, H, W) in [-1, 1]; demo_ids: (B, K, L) -> demo tokens (B, T, D)."""
        b, k, length = demo_ids.shape
        caption = self.text_encoder(demo_ids.reshape(b * k, length)).pooler_output.view(b, k, -1)
        return self.demo_encoder(demo_images, caption)

    def forward(self, noisy: torch.Tensor, t: torch.Tensor, encoder_hidden_states: torch.Tensor, demo_tokens=None, demo_mask=None):
        kwargs = {"demo_tokens": demo_tokens, "demo_mask": demo_mask} if demo_tokens is not None else None
        return self.unet(noisy, t, encoder_hidden_states=encoder_hidden_states, cross_attention_kwargs=kwargs)


def training_loss(apprentice: Apprentice, batch: dict, text_dropout: float, demo_dropout: float, generator: torch.Generator) -> torch.Tensor:
    """Denoising loss on one G batch.

    batch: image (B, 3, H, W) in [-1, 1]; input_ids (B, L); demo_images (B, K, 3, H, W); demo_ids (B, K, L).
    Text and demonstrations are dropped independently, so sampling can guide over each.
    """
    x0 = batch["image"]
    b = x0.shape[0]
    device = x0.device
    ids = batch["input_ids"].clone()
    drop_text = torch.rand(b, generator=generator) < text_dropout
    if drop_text.any():
        ids[drop_text] = tokenize(apprentice.tokenizer, [""]).to(ids.device)
    text_states = apprentice.text_encoder(ids.to(device)).last_hidden_state
    demo_tokens = apprentice.encode_demos(batch["demo_images"], batch["demo_ids"])
    demo_mask = (torch.rand(b, generator=generator) >= demo_dropout).float().to(device)
    noise = torch.randn(x0.shape, generator=generator).to(device)
    t = torch.randint(0, apprentice.noise_scheduler.config.num_train_timesteps, (b,), generator=generator).to(device)
    noisy = apprentice.noise_scheduler.add_noise(x0, noise, t)
    pred = apprentice(noisy, t, text_states, demo_tokens, demo_mask).sample
    return F.mse_loss(pred, noise)


@dataclass
class SampleRequest:
    """One request to the apprentice: a prompt, K demonstrations (uint8 (H, W, 3) arrays and captions) and its
    own seed and guidance scales. Requests that share a demo count, a guidance mode (one scale, or separate text and
    demo scales), a sampler and a step count can be drawn in one batch (`sample_batch`)."""

    prompt: str
    demo_images: list = field(default_factory=list)
    demo_captions: list = field(default_factory=list)
    num_images: int = 1
    seed: int = 0
    guidance_scale: float = 3.0
    demo_guidance_scale: float | None = None

    def batch_key(self) -> tuple[int, bool]:
        return len(self.demo_images), bool(self.demo_images) and self.demo_guidance_scale is not None


@torch.no_grad()
def sample_batch(apprentice: Apprentice, requests: list[SampleRequest], *, sampler: str = "ddim", num_inference_steps: int = 25) -> list[np.ndarray]:
    """Draw every request in one batched reverse process. Returns one uint8 (N_i, H, W, 3) array per request.

    Each request draws its noise from its own generator, so its images are the same whether it is sampled alone or
    beside others (up to float rounding). Demo tokens are encoded once per request and reused at every step.
    One guidance scale: eps_u + s * (eps_text+demos - eps_u), two UNet evaluations per step. With a separate
    demo scale s_d: eps_u + s_d * (eps_demos - eps_u) + s * (eps_text+demos - eps_demos), three evaluations per step.
    """
    keys = {r.batch_key() for r in requests}
    if len(keys) != 1:
        raise ValueError(f"one batch needs one demo count and one guidance mode; got (demos, dual) {sorted(keys)}")
    (k, dual), = keys
    device = next(apprentice.parameters()).device
    counts = [r.num_images for r in requests]
    n = sum(counts)
    per_image = lambda values: torch.tensor([v for v, c in zip(values, counts) for _ in range(c)], dtype=torch.float32, device=device).view(n, 1, 1, 1)
    text_scale = per_image([r.guidance_scale for r in requests])
    cond = encode_text(apprentice.backbone, [r.prompt for r, c in zip(requests, counts) for _ in range(c)])
    uncond = encode_text(apprentice.backbone, [""] * n)
    copies = 3 if dual else 2
    states = torch.cat([uncond, uncond, cond] if dual else [uncond, cond])
    tokens, mask = None, None
    if k:
        imgs = torch.stack([images_to_tensor(list(r.demo_images)) for r in requests]).to(device)  # (R, K, 3, H, W)
        ids = torch.stack([tokenize(apprentice.tokenizer, list(r.demo_captions)) for r in requests]).to(device)
        per_request = apprentice.encode_demos(imgs, ids)  # (R, T, D)
        tokens = per_request.repeat_interleave(torch.tensor(counts, device=device), dim=0).repeat(copies, 1, 1)
        mask = torch.cat([torch.zeros(n), torch.ones((copies - 1) * n)]).to(device)
    demo_scale = per_image([r.demo_guidance_scale for r in requests]) if dual else None

    def predict_noise(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        eps = apprentice(torch.cat([x] * copies), t, states, tokens, mask).sample.chunk(copies)
        if dual:
            eps_u, eps_d, eps_full = eps
            return eps_u + demo_scale * (eps_d - eps_u) + text_scale * (eps_full - eps_d)
        eps_u, eps_full = eps
        return eps_u + text_scale * (eps_full - eps_u)

    generators = [g for r in requests for g in [torch.Generator().manual_seed(r.seed)] * r.num_images]
    shape = (n, apprentice.unet.config.in_channels, apprentice.resolution, apprentice.resolution)
    x0 = sample_loop(predict_noise, create_sampler(sampler, apprentice.noise_scheduler), shape, num_inference_steps, generators, device)
    images = tensor_to_images(x0)
    return np.split(images, np.cumsum(counts)[:-1])


def sample(
    apprentice: Apprentice,
    prompt: str,
    demo_images: list[np.ndarray],
    demo_captions: list[str],
    *,
    num_images: int = 1,
    sampler: str = "ddim",
    num_inference_steps: int = 25,
    guidance_scale: float = 3.0,
    demo_guidance_scale: float | None = None,
    seed: int = 0,
) -> np.ndarray:
    """Draw `num_images` of the demonstrated subject for `prompt` (K demos, K may be 0: the base model).
    Returns uint8 (N, H, W, 3); `sample_batch` with one request."""
    request = SampleRequest(prompt, list(demo_images), list(demo_captions), num_images, seed, guidance_scale, demo_guidance_scale)
    return sample_batch(apprentice, [request], sampler=sampler, num_inference_steps=num_inference_steps)[0]


def save_apprentice(apprentice: Apprentice, folder: str, extra_config: dict | None = None) -> None:
    """One safetensors file with every weight, and the component configs beside it."""
    os.makedirs(folder, exist_ok=True)
    state = {k: v.detach().cpu().contiguous() for k, v in apprentice.state_dict().items()}
    save_file(state, os.path.join(folder, "apprentice.safetensors"))
    apprentice.unet.save_config(os.path.join(folder, "unet"))
    apprentice.text_encoder.config.save_pretrained(os.path.join(folder, "text_encoder"))
    apprentice.tokenizer.save_pretrained(os.path.join(folder, "tokenizer"))
    apprentice.noise_scheduler.save_config(os.path.join(folder, "scheduler"))
    with open(os.path.join(folder, "apprentice_config.json"), "w") as f:
        json.dump({"demo_grid": apprentice.demo_grid, **(extra_config or {})}, f, indent=1, default=str)


def load_apprentice(folder: str) -> Apprentice:
    """Load a folder written by `save_apprentice` (safetensors; no network)."""
    with open(os.path.join(folder, "apprentice_config.json")) as f:
        meta = json.load(f)
    unet = UNet2DConditionModel.from_config(UNet2DConditionModel.load_config(os.path.join(folder, "unet")))
    text_encoder = CLIPTextModel(CLIPTextConfig.from_pretrained(os.path.join(folder, "text_encoder")))
    tokenizer = CLIPTokenizer.from_pretrained(os.path.join(folder, "tokenizer"), local_files_only=True)
    scheduler = DDPMScheduler.from_config(DDPMScheduler.load_config(os.path.join(folder, "scheduler")))
    backbone = Backbone(unet, text_encoder, tokenizer, scheduler, int(unet.config.sample_size))
    apprentice = Apprentice(backbone, demo_grid=meta["demo_grid"])
    apprentice.load_state_dict(load_file(os.path.join(folder, "apprentice.safetensors")))
    return apprentice.eval()
