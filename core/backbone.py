"""The diffusion backbone: a diffusers UNet2DConditionModel plus a CLIP text encoder, made by one factory.

`create_backbone("tiny")` builds a random pixel-space model from a named preset; `load_backbone(path)` reads one
saved by `save_backbone` (diffusers/transformers `save_pretrained` folders: unet/, text_encoder/, tokenizer/,
scheduler/). The tokenizer is a transformers `CLIPTokenizer` built from the BPE vocabulary that open_clip ships,
so nothing is downloaded. Also here: the denoising loss and a DDPM/DDIM sampler with classifier-free guidance.
"""

from __future__ import annotations

import functools
import gzip
import os
from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F
from diffusers import DDIMScheduler, DDPMScheduler, UNet2DConditionModel
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

PRESETS: dict[str, dict] = {
    # 32x32 pixel space, about 1 M UNet parameters: the CPU preset used by tests and the toy world.
    "tiny": {
        "resolution": 32,
        "unet": {
            "sample_size": 32,
            "in_channels": 3,
            "out_channels": 3,
            "block_out_channels": (32, 64),
            "layers_per_block": 1,
            "down_block_types": ("DownBlock2D", "CrossAttnDownBlock2D"),
            "up_block_types": ("CrossAttnUpBlock2D", "UpBlock2D"),
            "cross_attention_dim": 64,
            "attention_head_dim": 8,
            "norm_num_groups": 8,
        },
        "text": {"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 4},
        "max_length": 24,
    },
    # 32x32 pixel space, about 1.8 M UNet parameters, cross-attention at 16x16 and 8x8 (the size the pre-code probe in
    # ../shared/FINDINGS.md trained on 2 CPU cores): the toy world's shipped base, pretrained by apps.toy_pretrain.
    "toy": {
        "resolution": 32,
        "unet": {
            "sample_size": 32,
            "in_channels": 3,
            "out_channels": 3,
            "block_out_channels": (32, 64, 64),
            "layers_per_block": 1,
            "down_block_types": ("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
            "up_block_types": ("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
            "cross_attention_dim": 64,
            "attention_head_dim": 8,
            "norm_num_groups": 8,
        },
        "text": {"hidden_size": 64, "intermediate_size": 256, "num_hidden_layers": 2, "num_attention_heads": 4},
        "max_length": 24,
    },
}
# The toy preset, wider (about 3.7 M UNet parameters; the base shipped in artifacts/toy): for a GPU, where the small
# one is launch-bound anyway. Width 64 for text: CLIP's 49,408-token embedding table is most of the text encoder.
PRESETS["toy-wide"] = {
    **PRESETS["toy"],
    "unet": {**PRESETS["toy"]["unet"], "block_out_channels": (48, 96, 96), "norm_num_groups": 16},
    "text": {**PRESETS["toy"]["text"], "num_hidden_layers": 3},
}


@dataclass
class Backbone:
    unet: UNet2DConditionModel
    text_encoder: CLIPTextModel
    tokenizer: CLIPTokenizer
    noise_scheduler: DDPMScheduler
    resolution: int

    def modules(self) -> list[torch.nn.Module]:
        return [self.unet, self.text_encoder]

    def to(self, device: torch.device | str) -> "Backbone":
        self.unet.to(device)
        self.text_encoder.to(device)
        return self

    @property
    def device(self) -> torch.device:
        return self.unet.device


@functools.lru_cache(maxsize=1)
def _clip_bpe() -> tuple[dict[str, int], list[tuple[str, str]]]:
    """CLIP's BPE vocabulary and merges, read from the copy that open_clip ships (no download)."""
    import open_clip

    bpe_path = os.path.join(os.path.dirname(open_clip.__file__), "bpe_simple_vocab_16e6.txt.gz")
    lines = gzip.open(bpe_path).read().decode("utf-8").split("\n")[1 : 49152 - 256 - 2 + 1]
    merges = [tuple(line.split()) for line in lines]
    byte_chars = list(_bytes_to_unicode().values())
    vocab = byte_chars + [c + "</w>" for c in byte_chars] + ["".join(m) for m in merges]
    vocab += ["<|startoftext|>", "<|endoftext|>"]
    return {tok: i for i, tok in enumerate(vocab)}, merges


def _bytes_to_unicode() -> dict[int, str]:
    # The byte-to-character table of GPT-2/CLIP BPE (as in open_clip.tokenizer.bytes_to_unicode).
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, map(chr, cs)))


def create_tokenizer(max_length: int) -> CLIPTokenizer:
    vocab, merges = _clip_bpe()
    return CLIPTokenizer(
        vocab=dict(vocab),
        merges=list(merges),
        model_max_length=max_length,
        pad_token="<|endoftext|>",
    )


def create_backbone(preset: str = "tiny", seed: int = 0) -> Backbone:
    """A randomly initialised backbone from a named preset."""
    if preset not in PRESETS:
        raise ValueError(f"unknown model preset {preset!r}; known: {sorted(PRESETS)}")
    spec = PRESETS[preset]
    torch.manual_seed(seed)
    tokenizer = create_tokenizer(spec["max_length"])
    text_cfg = CLIPTextConfig(
        vocab_size=len(tokenizer),
        max_position_embeddings=spec["max_length"],
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        **spec["text"],
    )
    unet = UNet2DConditionModel(**spec["unet"])
    text_encoder = CLIPTextModel(text_cfg)
    scheduler = DDPMScheduler(num_train_timesteps=1000, beta_schedule="squaredcos_cap_v2", clip_sample=True)
    return Backbone(unet, text_encoder, tokenizer, scheduler, spec["resolution"])


def save_backbone(backbone: Backbone, folder: str) -> None:
    backbone.unet.save_pretrained(os.path.join(folder, "unet"))
    backbone.text_encoder.save_pretrained(os.path.join(folder, "text_encoder"))
    backbone.tokenizer.save_pretrained(os.path.join(folder, "tokenizer"))
    backbone.noise_scheduler.save_pretrained(os.path.join(folder, "scheduler"))


def load_backbone(folder: str) -> Backbone:
    """Load a backbone saved by `save_backbone` (safetensors weights; no network)."""
    unet = UNet2DConditionModel.from_pretrained(os.path.join(folder, "unet"), local_files_only=True)
    text_encoder = CLIPTextModel.from_pretrained(os.path.join(folder, "text_encoder"), local_files_only=True)
    tokenizer = CLIPTokenizer.from_pretrained(os.path.join(folder, "tokenizer"), local_files_only=True)
    scheduler = DDPMScheduler.from_pretrained(os.path.join(folder, "scheduler"), local_files_only=True)
    return Backbone(unet, text_encoder, tokenizer, scheduler, int(unet.config.sample_size))


def weight_files(folder: str) -> list[str]:
    return [
        os.path.join(root, name)
        for root, _, names in os.walk(folder)
        for name in names
        if name.endswith(".safetensors")
    ]


# ---------------------------------------------------------------- tensors


def images_to_tensor(images: list[np.ndarray] | np.ndarray) -> torch.Tensor:
    """uint8 (B, H, W, 3) -> float (B, 3, H, W) in [-1, 1]."""
    arr = np.stack(images) if isinstance(images, list) else images
    return torch.from_numpy(arr).permute(0, 3, 1, 2).float().div(127.5).sub(1.0)


def tensor_to_images(x: torch.Tensor) -> np.ndarray:
    """float (B, 3, H, W) in [-1, 1] -> uint8 (B, H, W, 3)."""
    x = ((x.detach().float().clamp(-1, 1) + 1) * 127.5).round().byte()
    return x.permute(0, 2, 3, 1).cpu().numpy()


def tokenize(tokenizer: CLIPTokenizer, prompts: list[str]) -> torch.Tensor:
    """(B,) strings -> input ids (B, L)."""
    return tokenizer(
        prompts, padding="max_length", truncation=True, max_length=tokenizer.model_max_length, return_tensors="pt"
    ).input_ids


def encode_text(backbone: Backbone, prompts: list[str] | torch.Tensor) -> torch.Tensor:
    """Prompts or input ids (B, L) -> hidden states (B, L, D)."""
    ids = tokenize(backbone.tokenizer, prompts) if isinstance(prompts, list) else prompts
    return backbone.text_encoder(ids.to(backbone.device)).last_hidden_state


def denoising_loss(
    unet: Callable[..., torch.Tensor],
    scheduler: DDPMScheduler,
    x0: torch.Tensor,
    text_states: torch.Tensor,
    generator: torch.Generator | None = None,
    **unet_kwargs,
) -> torch.Tensor:
    """The plain epsilon-prediction loss. x0: (B, C, H, W) in [-1, 1]; text_states: (B, L, D)."""
    # Drawn where the generator lives, then moved: a CPU generator cannot draw on CUDA or XLA (a CUDA generator
    # spares a large batch the CPU draw and copy).
    where = generator.device if generator is not None else torch.device("cpu")
    noise = torch.randn(x0.shape, generator=generator, device=where).to(x0.device)
    t = torch.randint(0, scheduler.config.num_train_timesteps, (x0.shape[0],), generator=generator, device=where).to(x0.device)
    noisy = scheduler.add_noise(x0, noise, t)
    pred = unet(noisy, t, encoder_hidden_states=text_states, **unet_kwargs).sample
    return F.mse_loss(pred, noise)


def create_sampler(name: str, noise_scheduler: DDPMScheduler):
    """A fresh inference scheduler sharing the training noise schedule (swappable, as in diffusers)."""
    if name == "ddim":
        return DDIMScheduler.from_config(noise_scheduler.config)
    if name == "ddpm":
        return DDPMScheduler.from_config(noise_scheduler.config)
    raise ValueError(f"unknown sampler {name!r}; known: ddim, ddpm")


@torch.no_grad()
def sample_loop(
    predict_noise: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    sampler,
    shape: tuple[int, ...],
    num_inference_steps: int,
    generator: torch.Generator | list[torch.Generator],
    device: torch.device | str = "cpu",
) -> torch.Tensor:
    """Run the reverse process. `predict_noise(x_t (B, C, H, W), t) -> guided eps`; returns x0 (B, C, H, W).

    `generator` may be a list with one (CPU) generator per batch element, as diffusers' schedulers accept: batch
    element i then draws all of its noise from generator i.
    """
    sampler.set_timesteps(num_inference_steps)
    if isinstance(generator, list):
        x = torch.cat([torch.randn((1, *shape[1:]), generator=g) for g in generator]).to(device)
    else:
        x = torch.randn(shape, generator=generator).to(device)
    for t in sampler.timesteps:
        eps = predict_noise(x, t)
        x = sampler.step(eps, t, x, generator=generator).prev_sample
    return x


@torch.no_grad()
def sample(
    backbone: Backbone,
    prompts: list[str],
    *,
    sampler: str = "ddim",
    num_inference_steps: int = 25,
    guidance_scale: float = 3.0,
    seed: int = 0,
) -> np.ndarray:
    """Text-to-image with classifier-free guidance. Returns uint8 (B, H, W, 3)."""
    device = backbone.device
    cond = encode_text(backbone, prompts)
    uncond = encode_text(backbone, [""] * len(prompts))
    states = torch.cat([uncond, cond])

    def predict_noise(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        eps_u, eps_c = backbone.unet(torch.cat([x, x]), t, encoder_hidden_states=states).sample.chunk(2)
        return eps_u + guidance_scale * (eps_c - eps_u)

    generator = torch.Generator().manual_seed(seed)
    shape = (len(prompts), backbone.unet.config.in_channels, backbone.resolution, backbone.resolution)
    x0 = sample_loop(predict_noise, create_sampler(sampler, backbone.noise_scheduler), shape, num_inference_steps, generator, device)
    return tensor_to_images(x0)


@torch.no_grad()
def renoise(
    backbone: Backbone,
    images: np.ndarray,
    prompts: list[str],
    *,
    strength: float,
    num_inference_steps: int = 25,
    guidance_scale: float = 3.0,
    seed: int = 0,
) -> np.ndarray:
    """Noise uint8 `images` part-way (`strength` of the DDIM schedule, 0..1) and denoise them with the model,
    conditioned on `prompts` (SDEdit, Meng et al. 2022). Returns uint8 (B, H, W, 3)."""
    device = backbone.device
    states = torch.cat([encode_text(backbone, [""] * len(prompts)), encode_text(backbone, prompts)])
    sampler = create_sampler("ddim", backbone.noise_scheduler)
    sampler.set_timesteps(num_inference_steps)
    timesteps = sampler.timesteps[num_inference_steps - max(1, int(round(num_inference_steps * strength))) :]
    generator = torch.Generator().manual_seed(seed)
    x0 = images_to_tensor(images).to(device)
    x = sampler.add_noise(x0, torch.randn(x0.shape, generator=generator).to(device), timesteps[:1].repeat(len(x0)).to(device))
    for t in timesteps:
        eps_u, eps_c = backbone.unet(torch.cat([x, x]), t, encoder_hidden_states=states).sample.chunk(2)
        x = sampler.step(eps_u + guidance_scale * (eps_c - eps_u), t, x, generator=generator).prev_sample
    return tensor_to_images(x)
