"""The diffusion backbone: a diffusers UNet2DConditionModel plus a text encoder, made by one factory.

`create_backbone("tiny")` builds a random pixel-space model from a named preset; `load_backbone(path)` reads one
saved by `save_backbone` or a real diffusers pipeline folder (unet/, text_encoder/, tokenizer/, scheduler/, and vae/
for a latent model): Stable Diffusion 1.x/2.x (latent, CLIP text encoder, VAE scaled by `vae.config.scaling_factor`)
and DeepFloyd IF stage I (pixel 64x64, T5 encoder, learned variance). The toy tokenizer is a transformers
`CLIPTokenizer` built from the BPE vocabulary that open_clip ships, so nothing is downloaded. Also here: the
denoising loss and a DDPM/DDIM sampler with classifier-free guidance, both in the model's space (pixels or latents).
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np
import torch
from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
from safetensors.torch import load_file, save_file
from transformers import AutoConfig, AutoTokenizer, CLIPTextConfig, CLIPTextModel, CLIPTokenizer, T5EncoderModel

from core.models.tokenizer import create_tokenizer, create_word_tokenizer, tokenize

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
    # 32x32 pixel space, about 1.8 M UNet parameters, cross-attention at 16x16 and 8x8 (small enough to train on a
    # few CPU cores): a toy-world base, pretrained by apps.pretrain.
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
# The toy preset, wider (about 3.7 M UNet parameters): for a GPU, where the small one is launch-bound anyway. Width
# 64 for text: CLIP's 49,408-token embedding table is most of the text encoder.
PRESETS["toy-wide"] = {
    **PRESETS["toy"],
    "unet": {**PRESETS["toy"]["unet"], "block_out_channels": (48, 96, 96), "norm_num_groups": 16},
    "text": {**PRESETS["toy"]["text"], "num_hidden_layers": 3},
}
# The toy preset with a word-level tokenizer over the toy world's vocabulary (core.models.tokenizer.TOY_WORDS): its
# text encoder has 0.1 M parameters instead of 3.3 M, nearly all of those CLIP's 49,408 BPE embedding rows.
PRESETS["toy-words"] = {**PRESETS["toy"], "tokenizer": "words"}
# The toy preset with a second path for the text, as DeepFloyd IF's UNet has: the caption's tokens, attention-pooled,
# are added to the timestep embedding, so every ResNet block (the 32x32 ones too, which have no cross-attention) is
# modulated by what the caption says about the whole image, such as its colours.
PRESETS["toy-pooled"] = {
    **PRESETS["toy"],
    "unet": {**PRESETS["toy"]["unet"], "addition_embed_type": "text", "addition_embed_type_num_heads": 4},
}


@dataclass
class Backbone:
    unet: UNet2DConditionModel
    text_encoder: CLIPTextModel
    tokenizer: CLIPTokenizer
    noise_scheduler: DDPMScheduler
    resolution: int  # of the images it draws (the UNet's sample size times the VAE's factor for a latent model)
    vae: AutoencoderKL | None = None  # a latent model's (frozen) autoencoder; None: the UNet works on pixels

    def modules(self) -> list[torch.nn.Module]:
        """The trainable modules (the VAE stays frozen)."""
        return [self.unet, self.text_encoder]

    def to(self, device: torch.device | str) -> Backbone:
        self.unet.to(device)
        self.text_encoder.to(device)
        if self.vae is not None:
            self.vae.to(device)
        return self

    @property
    def kind(self) -> str:
        return "latent" if self.vae is not None else "pixel"

    @property
    def device(self) -> torch.device:
        return self.unet.device


# Real, pretrained backbones (conf/model/*.yaml): loaded from `model.path` by `load_backbone`, never created here.
REAL_PRESETS = {"sd15": "Stable Diffusion 1.x", "sd21": "Stable Diffusion 2.x", "if_stage1": "DeepFloyd IF stage I"}


def create_backbone(preset: str = "tiny", seed: int = 0) -> Backbone:
    """A randomly initialised backbone from a named preset."""
    if preset in REAL_PRESETS:
        raise ValueError(
            f"{preset!r} ({REAL_PRESETS[preset]}) is a pretrained backbone: set model.path to its folder "
            "(or hf://org/name in the local Hugging Face cache) instead of pretraining it"
        )
    if preset not in PRESETS:
        raise ValueError(f"unknown model preset {preset!r}; known: {sorted(PRESETS)}")
    spec = PRESETS[preset]
    torch.manual_seed(seed)
    words = spec.get("tokenizer") == "words"
    tokenizer = (create_word_tokenizer if words else create_tokenizer)(spec["max_length"])
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


def save_backbone(backbone: Backbone, folder: str, half: bool = False) -> None:
    """Write a diffusers-style folder; `half` stores the weights in fp16 (`load_backbone` reads them back as fp32)."""
    backbone.unet.save_pretrained(os.path.join(folder, "unet"))
    backbone.text_encoder.save_pretrained(os.path.join(folder, "text_encoder"))
    backbone.tokenizer.save_pretrained(os.path.join(folder, "tokenizer"))
    backbone.noise_scheduler.save_pretrained(os.path.join(folder, "scheduler"))
    if backbone.vae is not None:
        backbone.vae.save_pretrained(os.path.join(folder, "vae"))
    if half:
        for name in weight_files(folder):
            tensors = {k: (v.half() if v.is_floating_point() else v).contiguous() for k, v in load_file(name).items()}
            save_file(tensors, name, metadata={"format": "pt"})


def resolve_model_dir(path_or_id: str, cache_dir: str | None = None) -> str:
    """A local folder as it is; otherwise a Hugging Face repo id (optionally written "hf://org/name") looked up in
    the local cache only, never the network: e.g. "hf://stable-diffusion-v1-5/stable-diffusion-v1-5" after a
    `huggingface-cli download` on a machine that may download. Returns the snapshot folder."""
    if os.path.isdir(path_or_id):
        return path_or_id
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import LocalEntryNotFoundError

    repo_id = path_or_id.removeprefix("hf://")
    try:
        return snapshot_download(repo_id, local_files_only=True, cache_dir=cache_dir)
    except (LocalEntryNotFoundError, ValueError) as err:
        raise FileNotFoundError(
            f"no local model at {path_or_id!r}: give a folder (unet/, text_encoder/, tokenizer/, scheduler/[, vae/]) "
            "or the id of a repo already in the Hugging Face cache (this code never downloads weights)"
        ) from err


def load_backbone(folder: str) -> Backbone:
    """Load a backbone from a folder saved by `save_backbone` or a diffusers pipeline folder (Stable Diffusion:
    with vae/, CLIP text encoder; DeepFloyd IF stage I: pixels, T5 encoder), or a cached repo id. No network.

    The scheduler folder sets the noise schedule only (SD ships a PNDM config; its betas are read into a
    `DDPMScheduler` for training, and samplers are made from it by `create_sampler`)."""
    folder = resolve_model_dir(folder)
    sub = lambda name: os.path.join(folder, name)
    unet = UNet2DConditionModel.from_pretrained(sub("unet"), local_files_only=True)
    text_class = (
        T5EncoderModel if AutoConfig.from_pretrained(sub("text_encoder")).model_type == "t5" else CLIPTextModel
    )
    text_encoder = text_class.from_pretrained(sub("text_encoder"), local_files_only=True)
    tokenizer = AutoTokenizer.from_pretrained(sub("tokenizer"), local_files_only=True)
    scheduler = DDPMScheduler.from_config(DDPMScheduler.load_config(sub("scheduler")))
    vae = (
        AutoencoderKL.from_pretrained(sub("vae"), local_files_only=True).eval().requires_grad_(False)
        if os.path.isdir(sub("vae"))
        else None
    )
    return Backbone(unet, text_encoder, tokenizer, scheduler, image_resolution(unet, vae), vae)


def image_resolution(unet: UNet2DConditionModel, vae: AutoencoderKL | None) -> int:
    """Pixels per side of the images a UNet draws: its sample size, times the VAE's factor for a latent model."""
    factor = 2 ** (len(vae.config.block_out_channels) - 1) if vae is not None else 1
    return int(unet.config.sample_size) * factor


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


def encode_text(backbone: Backbone, prompts: list[str] | torch.Tensor) -> torch.Tensor:
    """Prompts or input ids (B, L) -> hidden states (B, L, D). T5 (IF) reads with the padding masked out, as the IF
    pipeline does; CLIP (SD and the toy presets) without a mask, as SD does."""
    ids = (tokenize(backbone.tokenizer, prompts) if isinstance(prompts, list) else prompts).to(backbone.device)
    if isinstance(backbone.text_encoder, T5EncoderModel):
        return backbone.text_encoder(
            ids, attention_mask=(ids != backbone.tokenizer.pad_token_id).long()
        ).last_hidden_state
    return backbone.text_encoder(ids).last_hidden_state


def fit_images(images: np.ndarray | list[np.ndarray], size: int) -> np.ndarray:
    """uint8 (B, H, W, 3) resized (bicubic) to `size` x `size` where they differ: demos for a model of another size."""
    from PIL import Image

    arr = np.stack(images) if isinstance(images, list) else images
    if arr.shape[1:3] == (size, size):
        return arr
    return np.stack([np.asarray(Image.fromarray(a).resize((size, size), Image.BICUBIC)) for a in arr])


def to_model_space(backbone: Backbone, x: torch.Tensor) -> torch.Tensor:
    """Pixels in [-1, 1] (B, 3, H, W) -> what the UNet denoises: the same pixels, or the VAE's scaled latents (the
    posterior's mode; the VAE is frozen)."""
    if backbone.vae is None:
        return x
    with torch.no_grad():
        return backbone.vae.encode(x.to(backbone.vae.dtype)).latent_dist.mode() * backbone.vae.config.scaling_factor


def from_model_space(backbone: Backbone, z: torch.Tensor) -> torch.Tensor:
    """The inverse of `to_model_space`: pixels in about [-1, 1]."""
    if backbone.vae is None:
        return z
    with torch.no_grad():
        return backbone.vae.decode(z.to(backbone.vae.dtype) / backbone.vae.config.scaling_factor).sample


def model_shape(backbone: Backbone, n: int) -> tuple[int, int, int, int]:
    size = int(backbone.unet.config.sample_size)
    return (n, int(backbone.unet.config.in_channels), size, size)
