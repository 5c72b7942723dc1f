"""The apprentice: the base UNet plus new attention layers over demonstrations, gated to start as the base.

Architecture (written out, with its parameter overhead, in docs/apprentice.md):
- Demo encoder (`DemoEncoder`): each demonstration image, in the UNet's own space (pixels for the toy models and
  DeepFloyd IF, VAE latents for Stable Diffusion), goes through a small conv net to a `demo_grid x demo_grid` grid
  of tokens of the UNet's cross-attention width; its caption goes through the base text encoder (CLIP: the EOS
  state; T5: the mean over its tokens) and a projection to one more token. K demos give K * (demo_grid**2 + 1)
  tokens.
- Every cross-attention layer of the UNet (attn2 of a transformer block; the added-KV attention of IF's simple
  cross-attention blocks) gets a second, new attention branch (`DemoBranch`): the layer's own query attends to the
  demo tokens through new key, value and output projections. The branch output is multiplied by a
  zero-initialised scalar gate and added to the layer's output, so at initialisation the apprentice computes
  exactly the base model (a test checks), and a batch element without demos does too.
- `attention="joint"` (an option; the default is the branch above): no new attention at all. The demo tokens join
  the text tokens in each cross-attention layer's own keys, values and softmax. The layer's trained key and value
  projections already turn text states into what the UNet reads, so the demo encoder only has to learn to speak
  that language. On the toy world it did not make the apprentice use its demos, and the demos took softmax mass from
  the text (docs/toy_study.md); what made the apprentice use its demos there was a warm-started demo encoder. A
  batch element without demos still computes exactly the base (its demo tokens are masked out), but one with demos
  does not at initialisation: they take a share of the softmax from the start. Standard cross-attention only
  (Stable Diffusion, the toy models), not IF's added-KV layers.
- `text_tokens` > 0 (an option): the demo encoder also maps each demo to that many tokens in the text encoder's
  output space (averaged over the demos); they join every cross-attention layer's own text tokens, so the demos can
  speak to the UNet through the key and value projections its prompts use. Rows without demos mask them out.
- The new layers live in one diffusers model, `DemoAdapter` (ModelMixin + ConfigMixin), and reach the UNet through
  attention processors (as IP-Adapter's do) that hold no weights of their own: the UNet class and its state dict
  are untouched, so a saved apprentice is a diffusers pipeline folder whose `unet/` any diffusers UNet loader reads
  (`core.pipelines.suti.SuTIPipeline`).
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from diffusers import DDPMScheduler
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.attention_processor import Attention
from diffusers.models.modeling_utils import ModelMixin
from safetensors.torch import load_file, save_file
from torch import nn
from transformers import T5EncoderModel

from core.models.backbone import (
    Backbone,
    encode_text,
    fit_images,
    from_model_space,
    images_to_tensor,
    model_shape,
    tensor_to_images,
    to_model_space,
)
from core.models.sampling import create_sampler, denoising_target, learned_variance, sample_loop
from core.models.tokenizer import tokenize

DEMO_KWARGS = ("demo_tokens", "demo_mask")


class PassthroughProcessor:
    """A layer's stock processor, accepting (and ignoring) the demo arguments so diffusers does not warn each call."""

    def __init__(self, base):
        self.base = base
        self.takes_temb = "temb" in inspect.signature(base.__call__).parameters  # added-KV processors take none

    def _base(self, attn, hidden_states, encoder_hidden_states, attention_mask, temb):
        if self.takes_temb:
            return self.base(attn, hidden_states, encoder_hidden_states, attention_mask, temb=temb)
        return self.base(attn, hidden_states, encoder_hidden_states, attention_mask)

    def __call__(
        self,
        attn,
        hidden_states,
        encoder_hidden_states=None,
        attention_mask=None,
        temb=None,
        demo_tokens=None,
        demo_mask=None,
    ):
        return self._base(attn, hidden_states, encoder_hidden_states, attention_mask, temb)


class DemoBranch(nn.Module):
    """The new attention of one cross-attention layer: the layer's query over the demo tokens, gated (gate = 0 at
    initialisation). Its weights live in `DemoAdapter`; the processor only points at it."""

    def __init__(self, inner_dim: int, cross_dim: int, out_dim: int, heads: int, zero_init: str = "gate"):
        super().__init__()
        self.heads = heads
        self.to_k = nn.Linear(cross_dim, inner_dim, bias=False)
        self.to_v = nn.Linear(cross_dim, inner_dim, bias=False)
        self.to_out = nn.Linear(inner_dim, out_dim)
        # Either way the branch adds nothing at initialisation. "gate": the gate starts at 0, so nothing behind it
        # gets a gradient until the gate has moved, and the gate's own gradient is noise until they have (on the toy
        # world the gates stayed near 0 for hundreds of steps: docs/toy_study.md). "out": the output projection starts
        # at 0 and the gate at 1, as ControlNet's zero convolutions and LoRA's B do, so the projection learns from
        # step one.
        if zero_init not in ("gate", "out"):
            raise ValueError(f"zero_init must be 'gate' or 'out', not {zero_init!r}")
        self.gate = nn.Parameter(torch.zeros(()) if zero_init == "gate" else torch.ones(()))
        if zero_init == "out":
            nn.init.zeros_(self.to_out.weight)
            nn.init.zeros_(self.to_out.bias)

    def forward(
        self, attn: Attention, hidden_states: torch.Tensor, demo_tokens: torch.Tensor, demo_mask=None
    ) -> torch.Tensor:
        spatial = hidden_states.ndim == 4  # IF's added-KV layers take (B, C, H, W) and norm inside the processor
        h = hidden_states.flatten(2).transpose(1, 2) if spatial else hidden_states
        if spatial and attn.group_norm is not None:
            h = attn.group_norm(h.transpose(1, 2)).transpose(1, 2)
        b, n, _ = h.shape
        q = attn.to_q(h).view(b, n, self.heads, -1).transpose(1, 2)
        k = self.to_k(demo_tokens).view(b, demo_tokens.shape[1], self.heads, -1).transpose(1, 2)
        v = self.to_v(demo_tokens).view(b, demo_tokens.shape[1], self.heads, -1).transpose(1, 2)
        out = F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(b, n, -1)
        out = self.to_out(out) * self.gate
        if demo_mask is not None:
            out = out * demo_mask.view(b, 1, 1).to(out.dtype)
        return out.transpose(1, 2).reshape(hidden_states.shape) if spatial else out


def _joint_call(
    processor: PassthroughProcessor,
    attn,
    hidden_states,
    encoder_hidden_states,
    attention_mask,
    temb,
    extra_tokens,
    demo_mask,
):
    """The layer's stock processor over its text tokens and `extra_tokens` together, the extra tokens of rows whose
    `demo_mask` is 0 masked out (those rows attend to their text alone, as the base does)."""
    b, text_len, n_extra = hidden_states.shape[0], encoder_hidden_states.shape[1], extra_tokens.shape[1]
    keep = torch.ones(b, 1, text_len + n_extra, dtype=torch.bool, device=hidden_states.device)
    if attention_mask is not None:  # the UNet's text mask arrives as an additive bias (0 keeps a token)
        keep[:, :, :text_len] = attention_mask.view(b, 1, text_len) > -1
    if demo_mask is not None:
        keep[:, :, text_len:] = (demo_mask > 0).view(b, 1, 1)
    states = torch.cat([encoder_hidden_states, extra_tokens.to(encoder_hidden_states.dtype)], dim=1)
    return processor._base(attn, hidden_states, states, keep, temb)


class DemoAttnProcessor(PassthroughProcessor):
    """The layer's stock processor plus its demo branch (a reference: the processor is not a module, so the UNet's
    state dict stays the base UNet's). With `text_tokens` > 0 the last that many demo tokens are the demos' text
    tokens (`DemoEncoder`): they join the layer's own text tokens, the rest go to the branch."""

    def __init__(self, base, branch: DemoBranch, text_tokens: int = 0):
        super().__init__(base)
        self.branch = branch
        self.text_tokens = text_tokens

    def __call__(
        self,
        attn,
        hidden_states,
        encoder_hidden_states=None,
        attention_mask=None,
        temb=None,
        demo_tokens=None,
        demo_mask=None,
    ):
        if demo_tokens is None:
            return self._base(attn, hidden_states, encoder_hidden_states, attention_mask, temb)
        if self.text_tokens:
            demo_tokens, text = demo_tokens[:, : -self.text_tokens], demo_tokens[:, -self.text_tokens :]
            out = _joint_call(self, attn, hidden_states, encoder_hidden_states, attention_mask, temb, text, demo_mask)
        else:
            out = self._base(attn, hidden_states, encoder_hidden_states, attention_mask, temb)
        return out + self.branch(attn, hidden_states, demo_tokens, demo_mask)


class JointDemoProcessor(PassthroughProcessor):
    """The layer's stock processor over its text tokens and the demo tokens together (`attention="joint"`); demo
    tokens of rows whose `demo_mask` is 0 are masked out, so those rows attend to their text alone."""

    def __call__(
        self,
        attn,
        hidden_states,
        encoder_hidden_states=None,
        attention_mask=None,
        temb=None,
        demo_tokens=None,
        demo_mask=None,
    ):
        if demo_tokens is None:
            return self._base(attn, hidden_states, encoder_hidden_states, attention_mask, temb)
        return _joint_call(
            self, attn, hidden_states, encoder_hidden_states, attention_mask, temb, demo_tokens, demo_mask
        )


TEXT_HEAD_GRID = 4  # the text head reads the image features pooled to this grid


class DemoEncoder(nn.Module):
    """Demo images in model space (B, K, C, H, W) and caption features (B, K, text_dim) -> tokens
    (B, K * (grid**2 + 1) + text_tokens, dim).

    With `text_tokens` > 0 a text head (`text_head`) also maps each demo image to that many tokens in the text
    encoder's output space, averaged over the K demos and appended last: the subject as words would say it, for the
    cross-attention layers' own keys and values (`DemoAttnProcessor`). Left unnormalised, since they stand for text
    states."""

    def __init__(self, in_channels: int, text_dim: int, dim: int, grid: int, text_tokens: int = 0):
        super().__init__()
        self.grid = grid
        self.text_tokens = text_tokens
        self.conv = nn.Sequential(
            nn.Conv2d(in_channels, 32, 3, padding=1),
            nn.SiLU(),
            nn.Conv2d(32, 64, 4, stride=2, padding=1),
            nn.SiLU(),
            nn.Conv2d(64, dim, 4, stride=2, padding=1),
        )
        self.pos = nn.Parameter(torch.randn(grid * grid, dim) * 0.02)
        self.caption_proj = nn.Linear(text_dim, dim)
        self.norm = nn.LayerNorm(dim)
        if text_tokens:
            self.text_head = nn.Sequential(
                nn.Linear(dim * TEXT_HEAD_GRID**2, 4 * dim), nn.SiLU(), nn.Linear(4 * dim, text_tokens * dim)
            )

    def text_tokens_of(self, feats: torch.Tensor) -> torch.Tensor:
        """`conv` features (N, D, h, w) -> each image's text tokens (N, text_tokens, D)."""
        pooled = F.adaptive_avg_pool2d(feats, TEXT_HEAD_GRID).flatten(1)
        return self.text_head(pooled).view(feats.shape[0], self.text_tokens, -1)

    def forward(self, demo_images: torch.Tensor, caption_features: torch.Tensor) -> torch.Tensor:
        b, k = demo_images.shape[:2]
        conv = self.conv(demo_images.flatten(0, 1))
        feats = F.adaptive_avg_pool2d(conv, self.grid).flatten(2).transpose(1, 2) + self.pos  # (B*K, g*g, D)
        caption = self.caption_proj(caption_features.flatten(0, 1)).unsqueeze(1)  # (B*K, 1, D)
        tokens = self.norm(torch.cat([feats, caption], dim=1).view(b, k * (self.grid * self.grid + 1), -1))
        if not self.text_tokens:
            return tokens
        text = self.text_tokens_of(conv).view(b, k, self.text_tokens, -1).mean(1)  # (B, text_tokens, D)
        return torch.cat([tokens, text], dim=1)


def _branch_key(processor_name: str) -> str:
    # "down_blocks.1.attentions.0.transformer_blocks.0.attn2.processor" -> a ModuleDict key (no dots allowed).
    return processor_name.removesuffix(".processor").replace(".", "__")


def cross_attention_layers(unet) -> dict[str, dict]:
    """The UNet's cross-attention layers by processor name, with the shapes of their demo branches."""
    layers = {}
    for name in unet.attn_processors:
        attn = unet.get_submodule(name.removesuffix(".processor"))
        if attn.is_cross_attention:
            layers[name] = {"inner_dim": attn.inner_dim, "out_dim": attn.to_out[0].out_features, "heads": attn.heads}
    return layers


class DemoAdapter(ModelMixin, ConfigMixin):
    """Everything the apprentice adds to the base model: the demo encoder and (`attention="separate"`) one gated
    branch per cross-attention layer; with `attention="joint"` the encoder alone. A diffusers model, so it saves and
    loads as a pipeline component."""

    config_name = "config.json"

    @register_to_config
    def __init__(
        self,
        in_channels: int,
        text_dim: int,
        cross_attention_dim: int,
        demo_grid: int,
        layers: dict,
        zero_init: str = "gate",
        attention: str = "separate",
        text_tokens: int = 0,
    ):
        super().__init__()
        if attention not in ("separate", "joint"):
            raise ValueError(f"attention must be 'separate' or 'joint', not {attention!r}")
        self.encoder = DemoEncoder(in_channels, text_dim, cross_attention_dim, demo_grid, text_tokens)
        branches = layers if attention == "separate" else {}
        self.branches = nn.ModuleDict(
            {
                _branch_key(n): DemoBranch(s["inner_dim"], cross_attention_dim, s["out_dim"], s["heads"], zero_init)
                for n, s in branches.items()
            }
        )

    @classmethod
    def for_unet(
        cls,
        unet,
        text_encoder,
        demo_grid: int = 4,
        zero_init: str = "gate",
        attention: str = "separate",
        text_tokens: int = 0,
    ) -> DemoAdapter:
        return cls(
            in_channels=int(unet.config.in_channels),
            text_dim=int(text_encoder.config.hidden_size),
            cross_attention_dim=int(unet.config.cross_attention_dim),
            demo_grid=demo_grid,
            layers=cross_attention_layers(unet),
            zero_init=zero_init,
            attention=attention,
            text_tokens=text_tokens,
        )

    def install(self, unet) -> None:
        """Point the UNet's attention processors at this adapter's branches (the stock processors do the rest)."""
        joint = self.config.attention == "joint"
        text_tokens = int(self.config.get("text_tokens", 0))
        layers = cross_attention_layers(unet) if joint or text_tokens else {}
        processors = {}
        for name, proc in unet.attn_processors.items():
            base = getattr(proc, "base", proc)  # re-installing wraps the stock processor, not a wrapper
            key = _branch_key(name)
            if (
                name in layers
                and getattr(unet.get_submodule(name.removesuffix(".processor")), "add_k_proj", None) is not None
            ):
                raise ValueError(
                    f"attention='joint' and text_tokens need standard cross-attention; {name} is an added-KV layer "
                    "(IF): use attention='separate' and text_tokens=0"
                )
            if joint and name in layers:
                processors[name] = JointDemoProcessor(base)
            elif key in self.branches:
                processors[name] = DemoAttnProcessor(base, self.branches[key], text_tokens)
            else:
                processors[name] = PassthroughProcessor(base)
        unet.set_attn_processor(processors)


class Apprentice(nn.Module):
    """Base UNet + text encoder (+ the frozen VAE of a latent model) + `DemoAdapter`."""

    def __init__(
        self,
        backbone: Backbone,
        demo_grid: int = 4,
        adapter: DemoAdapter | None = None,
        zero_init: str = "gate",
        attention: str = "separate",
        text_tokens: int = 0,
    ):
        super().__init__()
        self.unet = backbone.unet
        self.text_encoder = backbone.text_encoder
        self.vae = backbone.vae  # registered so .to() moves it; frozen (requires_grad False), left out of training
        self.tokenizer = backbone.tokenizer
        self.noise_scheduler = backbone.noise_scheduler
        self.resolution = backbone.resolution
        self.adapter = (
            adapter
            if adapter is not None
            else DemoAdapter.for_unet(self.unet, self.text_encoder, demo_grid, zero_init, attention, text_tokens)
        )
        self.adapter.install(self.unet)

    @property
    def demo_grid(self) -> int:
        return int(self.adapter.config.demo_grid)

    @property
    def backbone(self) -> Backbone:
        return Backbone(self.unet, self.text_encoder, self.tokenizer, self.noise_scheduler, self.resolution, self.vae)

    def trainable_parameters(self) -> list[nn.Parameter]:
        return [p for p in self.parameters() if p.requires_grad]

    def new_parameters(self) -> dict[str, torch.Tensor]:
        """The layers the apprentice adds to the base (demo encoder, demo attention branches, gates)."""
        return {n: p for n, p in self.named_parameters() if n.startswith("adapter.")}

    def overhead(self) -> dict[str, int | float]:
        """Parameters the apprentice adds, against the base's UNet and text encoder (the paper: +400M on 2.1B)."""
        base = sum(p.numel() for m in (self.unet, self.text_encoder) for p in m.parameters())
        unet = sum(p.numel() for p in self.unet.parameters())
        new = sum(p.numel() for p in self.adapter.parameters())
        return {"new": new, "unet": unet, "base": base, "of_unet": new / unet, "of_base": new / base}

    def gates(self) -> torch.Tensor:
        """The demo branches' gates in their names' order, for a built and a loaded apprentice alike (empty with
        `attention="joint"`, which has no branches)."""
        gates = [self.adapter.branches[name].gate for name in sorted(self.adapter.branches)]
        return torch.stack(gates) if gates else torch.zeros(0, device=self.unet.device)

    def caption_features(self, ids: torch.Tensor) -> torch.Tensor:
        """Input ids (N, L) -> one feature per caption: CLIP's EOS state, or T5's mean over its (unpadded) tokens."""
        if isinstance(self.text_encoder, T5EncoderModel):
            mask = (ids != self.tokenizer.pad_token_id).unsqueeze(-1).to(self.text_encoder.dtype)
            states = self.text_encoder(ids, attention_mask=mask.squeeze(-1).long()).last_hidden_state
            return (states * mask).sum(1) / mask.sum(1).clamp(min=1)
        return self.text_encoder(ids).pooler_output

    def encode_demos(self, demo_images: torch.Tensor, demo_ids: torch.Tensor) -> torch.Tensor:
        """demo_images: (B, K, 3, H, W) pixels in [-1, 1] at the model's resolution; demo_ids: (B, K, L) -> demo
        tokens (B, T, D). Computed once per request and reused at every denoising step (`sample_batch`)."""
        b, k, length = demo_ids.shape
        caption = self.caption_features(demo_ids.reshape(b * k, length).to(self.unet.device)).view(b, k, -1)
        z = to_model_space(self.backbone, demo_images.flatten(0, 1).to(self.unet.device))
        return self.adapter.encoder(z.view(b, k, *z.shape[1:]).to(caption.dtype), caption)

    def forward(
        self,
        noisy: torch.Tensor,
        t: torch.Tensor,
        encoder_hidden_states: torch.Tensor,
        demo_tokens=None,
        demo_mask=None,
    ):
        kwargs = {"demo_tokens": demo_tokens, "demo_mask": demo_mask} if demo_tokens is not None else None
        return self.unet(noisy, t, encoder_hidden_states=encoder_hidden_states, cross_attention_kwargs=kwargs)


def training_loss(
    apprentice: Apprentice, batch: dict, text_dropout: float, demo_dropout: float, generator: torch.Generator
) -> torch.Tensor:
    """Denoising loss on one G batch, in the model's space (VAE latents for a latent model).

    batch: image (B, 3, H, W) in [-1, 1]; input_ids (B, L); demo_images (B, K, 3, H, W); demo_ids (B, K, L).
    Text and demonstrations are dropped independently (rates `text_dropout`, `demo_dropout`), so sampling can guide
    over each. A UNet with learned variance (IF) is trained on its noise half.
    """
    device = apprentice.unet.device
    x0 = to_model_space(apprentice.backbone, batch["image"].to(device))
    b = x0.shape[0]
    ids = batch["input_ids"].clone()
    drop_text = torch.rand(b, generator=generator) < text_dropout
    if drop_text.any():
        ids[drop_text] = tokenize(apprentice.tokenizer, [""]).to(ids.device)
    text_states = encode_text(apprentice.backbone, ids.to(device))
    demo_tokens = apprentice.encode_demos(batch["demo_images"], batch["demo_ids"])
    demo_mask = (torch.rand(b, generator=generator) >= demo_dropout).float().to(device)
    noise = torch.randn(x0.shape, generator=generator).to(device)
    t = torch.randint(0, apprentice.noise_scheduler.config.num_train_timesteps, (b,), generator=generator).to(device)
    noisy = apprentice.noise_scheduler.add_noise(x0, noise, t)
    pred = apprentice(noisy, t, text_states, demo_tokens, demo_mask).sample
    target = denoising_target(apprentice.noise_scheduler, x0, noise, t)
    return F.mse_loss(pred[:, : x0.shape[1]].float(), target.float())


@dataclass
class SampleRequest:
    """One request to the apprentice: a prompt, K demonstrations (uint8 (H, W, 3) arrays and captions) and its
    own seed (or a torch generator, which wins) and guidance scales. Requests that share a demo count and a guidance
    mode (one scale, or separate text and demo scales) can be drawn in one batch (`sample_batch`)."""

    prompt: str
    demo_images: list = field(default_factory=list)
    demo_captions: list = field(default_factory=list)
    num_images: int = 1
    seed: int = 0
    guidance_scale: float = 3.0
    demo_guidance_scale: float | None = None
    generator: torch.Generator | None = None

    def batch_key(self) -> tuple[int, bool]:
        return len(self.demo_images), bool(self.demo_images) and self.demo_guidance_scale is not None


@torch.no_grad()
def sample_batch(
    apprentice: Apprentice,
    requests: list[SampleRequest],
    *,
    sampler="ddim",
    num_inference_steps: int = 25,
    cache_demos: bool = True,
) -> list[np.ndarray]:
    """Draw every request in one batched reverse process. Returns one uint8 (N_i, H, W, 3) array per request.

    `sampler`: "ddim", "ddpm" or a diffusers scheduler (copied, so a shared one is never stepped twice).
    Each request draws its noise from its own generator, so its images are the same whether it is sampled alone or
    beside others (up to float rounding). Demo tokens are encoded once per request and reused at every step
    (`cache_demos=False` re-encodes them every step: for the benchmark that measures what the cache saves).
    One guidance scale: eps_u + s * (eps_text+demos - eps_u), two UNet evaluations per step. With a separate
    demo scale s_d: eps_u + s_d * (eps_demos - eps_u) + s * (eps_text+demos - eps_demos), three evaluations per step.
    """
    keys = {r.batch_key() for r in requests}
    if len(keys) != 1:
        raise ValueError(f"one batch needs one demo count and one guidance mode; got (demos, dual) {sorted(keys)}")
    ((k, dual),) = keys
    device = apprentice.unet.device
    counts = [r.num_images for r in requests]
    n = sum(counts)
    per_image = lambda values: torch.tensor(
        [v for v, c in zip(values, counts) for _ in range(c)], dtype=torch.float32, device=device
    ).view(n, 1, 1, 1)
    text_scale = per_image([r.guidance_scale for r in requests])
    backbone = apprentice.backbone
    cond = encode_text(backbone, [r.prompt for r, c in zip(requests, counts) for _ in range(c)])
    uncond = encode_text(backbone, [""] * n)
    copies = 3 if dual else 2
    states = torch.cat([uncond, uncond, cond] if dual else [uncond, cond])
    mask = None
    encode = lambda: None
    if k:
        size = apprentice.resolution
        imgs = torch.stack([images_to_tensor(fit_images(list(r.demo_images), size)) for r in requests]).to(
            device
        )  # (R, K, 3, H, W)
        ids = torch.stack([tokenize(apprentice.tokenizer, list(r.demo_captions)) for r in requests]).to(device)
        repeats = torch.tensor(counts, device=device)
        encode = lambda: apprentice.encode_demos(imgs, ids).repeat_interleave(repeats, dim=0).repeat(copies, 1, 1)
        mask = torch.cat([torch.zeros(n), torch.ones((copies - 1) * n)]).to(device)
    cached = encode() if cache_demos else None
    demo_scale = per_image([r.demo_guidance_scale for r in requests]) if dual else None
    scheduler = create_sampler(sampler, apprentice.noise_scheduler)
    shape = model_shape(backbone, n)
    channels = shape[1]

    def predict_noise(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        tokens = cached if cache_demos else encode()
        out = apprentice(torch.cat([x] * copies), t, states, tokens, mask).sample
        eps = out[:, :channels].chunk(copies)
        if dual:
            eps_u, eps_d, eps_full = eps
            guided = eps_u + demo_scale * (eps_d - eps_u) + text_scale * (eps_full - eps_d)
        else:
            eps_u, eps_full = eps
            guided = eps_u + text_scale * (eps_full - eps_u)
        if out.shape[1] > channels and learned_variance(scheduler):  # IF: guided noise, the full model's variance
            return torch.cat([guided, out[(copies - 1) * n :, channels:]], dim=1)
        return guided

    generators = [g for r in requests for g in [r.generator or torch.Generator().manual_seed(r.seed)] * r.num_images]
    x0 = sample_loop(predict_noise, scheduler, shape, num_inference_steps, generators, device)
    images = tensor_to_images(from_model_space(backbone, x0))
    return np.split(images, np.cumsum(counts)[:-1])


def sample(
    apprentice: Apprentice,
    prompt: str,
    demo_images: list[np.ndarray],
    demo_captions: list[str],
    *,
    num_images: int = 1,
    sampler="ddim",
    num_inference_steps: int = 25,
    guidance_scale: float = 3.0,
    demo_guidance_scale: float | None = None,
    seed: int = 0,
    generator: torch.Generator | None = None,
) -> np.ndarray:
    """Draw `num_images` of the demonstrated subject for `prompt` (K demos, K may be 0: the base model).
    Returns uint8 (N, H, W, 3); `sample_batch` with one request."""
    request = SampleRequest(
        prompt,
        list(demo_images),
        list(demo_captions),
        num_images,
        seed,
        guidance_scale,
        demo_guidance_scale,
        generator,
    )
    return sample_batch(apprentice, [request], sampler=sampler, num_inference_steps=num_inference_steps)[0]


def noise_schedule_of(scheduler) -> DDPMScheduler:
    """The training noise schedule behind any diffusers scheduler of the same betas."""
    return DDPMScheduler.from_config(scheduler.config)


DEMO_ENCODER_FILE = "demo_encoder.safetensors"  # a demo encoder's warm start in its folder


def _warm_start_state(encoder: DemoEncoder) -> dict[str, torch.Tensor]:
    """What a warm start holds: the image layers (`conv`, their keys unprefixed) and, with text tokens, the text
    head (`text_head.*`)."""
    state = dict(encoder.conv.state_dict())
    if encoder.text_tokens:
        state.update({f"text_head.{k}": v for k, v in encoder.text_head.state_dict().items()})
    return state


def save_demo_encoder(apprentice: Apprentice, path: str) -> None:
    """The demo encoder's image layers (and text head), as safetensors."""
    state = {k: v.detach().cpu().contiguous() for k, v in _warm_start_state(apprentice.adapter.encoder).items()}
    save_file(state, path)


def load_demo_encoder(apprentice: Apprentice, path: str) -> None:
    """Load a warm start written by `save_demo_encoder` into `apprentice`'s demo encoder; a clear error when its
    shapes differ (another demo grid, backbone, encoder width or number of text tokens)."""
    state = load_file(path)
    encoder = apprentice.adapter.encoder
    own = _warm_start_state(encoder)
    differ = {
        k: (tuple(v.shape), tuple(own[k].shape)) for k, v in state.items() if k in own and v.shape != own[k].shape
    }
    if set(state) != set(own) or differ:
        raise ValueError(
            f"the demo encoder warm start {path} does not fit this apprentice (keys {sorted(state)} against "
            f"{sorted(own)}; shapes (file, apprentice) {differ}): make it with the same base and apprentice settings"
        )
    state = {k: v.to(own[k].dtype) for k, v in state.items()}
    encoder.conv.load_state_dict({k: v for k, v in state.items() if not k.startswith("text_head.")})
    if encoder.text_tokens:
        encoder.text_head.load_state_dict(
            {k.removeprefix("text_head."): v for k, v in state.items() if k.startswith("text_head.")}
        )
