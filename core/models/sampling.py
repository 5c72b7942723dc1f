"""The denoising loss and samplers (DDPM/DDIM with classifier-free guidance, SDEdit re-noising), in the model's
space (pixels or latents)."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
import torch.nn.functional as F
from diffusers import DDIMScheduler, DDPMScheduler

from core.models.backbone import (
    Backbone,
    encode_text,
    from_model_space,
    images_to_tensor,
    model_shape,
    tensor_to_images,
)
from core.models.device import step_done


def learned_variance(sampler) -> bool:
    """Whether `sampler.step` expects the UNet's variance channels too (IF's DDPM, variance_type learned_range)."""
    # Only DDPM's step reads them; a DDIM made from IF's config carries the key but predicts from the noise alone.
    return isinstance(sampler, DDPMScheduler) and sampler.config.get("variance_type") in ("learned", "learned_range")


def denoising_target(scheduler: DDPMScheduler, x0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """What the UNet learns to predict, by the schedule's `prediction_type`: the noise, or v (Salimans & Ho 2022)."""
    kind = scheduler.config.get("prediction_type", "epsilon")
    if kind == "epsilon":
        return noise
    if kind == "v_prediction":
        return scheduler.get_velocity(x0, noise, t)
    raise ValueError(f"unsupported prediction_type {kind!r}; known: epsilon, v_prediction")


def snr_weights(scheduler: DDPMScheduler, t: torch.Tensor, gamma: float | None) -> torch.Tensor | None:
    """Min-SNR-gamma loss weights per timestep (Hang et al. 2023): min(SNR, gamma) / SNR for epsilon prediction,
    min(SNR, gamma) / (SNR + 1) for v prediction. None when `gamma` is None (unweighted)."""
    if gamma is None:
        return None
    alpha_bar = scheduler.alphas_cumprod.to(t.device)[t].float()
    snr = alpha_bar / (1 - alpha_bar)
    clipped = snr.clamp(max=gamma)
    if scheduler.config.get("prediction_type", "epsilon") == "v_prediction":
        return clipped / (snr + 1)
    return clipped / snr


def denoising_loss(
    unet: Callable[..., torch.Tensor],
    scheduler: DDPMScheduler,
    x0: torch.Tensor,
    text_states: torch.Tensor,
    generator: torch.Generator | None = None,
    snr_gamma: float | None = None,
    **unet_kwargs,
) -> torch.Tensor:
    """The denoising loss: mean squared error against `denoising_target`, optionally Min-SNR weighted.
    x0: (B, C, H, W) in [-1, 1]; text_states: (B, L, D)."""
    # Drawn where the generator lives, then moved: a CPU generator cannot draw on CUDA or XLA (a CUDA generator
    # spares a large batch the CPU draw and copy).
    where = generator.device if generator is not None else torch.device("cpu")
    noise = torch.randn(x0.shape, generator=generator, device=where).to(x0.device)
    t = torch.randint(0, scheduler.config.num_train_timesteps, (x0.shape[0],), generator=generator, device=where).to(
        x0.device
    )
    noisy = scheduler.add_noise(x0, noise, t)
    pred = unet(noisy, t, encoder_hidden_states=text_states, **unet_kwargs).sample
    # A UNet with learned variance (IF: 2C output channels) is fine-tuned on its noise half only, as diffusers'
    # DreamBooth script does for IF.
    target = denoising_target(scheduler, x0, noise, t)
    per_image = F.mse_loss(pred[:, : x0.shape[1]].float(), target.float(), reduction="none").flatten(1).mean(1)
    weights = snr_weights(scheduler, t, snr_gamma)
    return per_image.mean() if weights is None else (per_image * weights).mean()


def create_sampler(name, noise_scheduler: DDPMScheduler):
    """A fresh inference scheduler sharing the training noise schedule (swappable, as in diffusers). `name`: "ddim",
    "ddpm", or a diffusers scheduler instance, which is copied from its config (its own state is never stepped)."""
    if not isinstance(name, str):
        return type(name).from_config(name.config)
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
        step_done(x.device)
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
    scheduler = create_sampler(sampler, backbone.noise_scheduler)
    shape = model_shape(backbone, len(prompts))

    def predict_noise(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        out = backbone.unet(torch.cat([x, x]), t, encoder_hidden_states=states).sample
        eps_u, eps_c = out[:, : shape[1]].chunk(2)
        eps = eps_u + guidance_scale * (eps_c - eps_u)
        if out.shape[1] > shape[1] and learned_variance(scheduler):  # IF: guided noise, the conditional variance
            return torch.cat([eps, out[len(prompts) :, shape[1] :]], dim=1)
        return eps

    generator = torch.Generator().manual_seed(seed)
    x0 = sample_loop(predict_noise, scheduler, shape, num_inference_steps, generator, device)
    return tensor_to_images(from_model_space(backbone, x0))


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
    x = sampler.add_noise(
        x0, torch.randn(x0.shape, generator=generator).to(device), timesteps[:1].repeat(len(x0)).to(device)
    )
    for t in timesteps:
        eps_u, eps_c = backbone.unet(torch.cat([x, x]), t, encoder_hidden_states=states).sample.chunk(2)
        x = sampler.step(eps_u + guidance_scale * (eps_c - eps_u), t, x, generator=generator).prev_sample
    return tensor_to_images(x)
