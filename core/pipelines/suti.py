"""`SuTIPipeline`: the trained apprentice as a diffusers `DiffusionPipeline`, usable without Ray.

    from core.pipelines.suti import SuTIPipeline
    pipe = SuTIPipeline.from_pretrained("outputs/demo/apprentice")
    images = pipe("a cat on a beach", demos=[(img, "a cat"), ...], num_inference_steps=25,
                  guidance_scale=3.0, demo_guidance_scale=None, generator=torch.Generator().manual_seed(0)).images

The folder is what `save_pretrained` writes: `model_index.json`, and one folder per component: `unet/` (a plain
diffusers UNet2DConditionModel: the apprentice's new layers are not in it), `text_encoder/`, `tokenizer/`,
`scheduler/` (the sampler; swap it as with any diffusers pipeline: `pipe.scheduler =
DDPMScheduler.from_config(pipe.scheduler.config)`), `demo_adapter/` (`core.method.apprentice.DemoAdapter`: demo encoder
and gated demo-attention branches) and, for a latent base (Stable Diffusion), `vae/`. The apprentice's stages write
this folder (`core.pipelines.suti.save_apprentice`), so a trained run's `paths.apprentice` is the export.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence

import numpy as np
import torch
from diffusers import DiffusionPipeline, ImagePipelineOutput
from PIL import Image

from core.method.apprentice import Apprentice, DemoAdapter, SampleRequest, noise_schedule_of, sample_batch
from core.models.backbone import Backbone, image_resolution
from core.models.sampling import create_sampler


class SuTIPipeline(DiffusionPipeline):
    model_cpu_offload_seq = "text_encoder->demo_adapter->unet->vae"
    _optional_components = ["vae"]  # noqa: RUF012  (diffusers declares it so)

    def __init__(self, unet, text_encoder, tokenizer, scheduler, demo_adapter: DemoAdapter, vae=None):
        super().__init__()
        self.register_modules(
            unet=unet,
            text_encoder=text_encoder,
            tokenizer=tokenizer,
            scheduler=scheduler,
            demo_adapter=demo_adapter,
            vae=vae,
        )
        if vae is not None:
            vae.requires_grad_(False)
        backbone = Backbone(
            unet, text_encoder, tokenizer, noise_schedule_of(scheduler), image_resolution(unet, vae), vae
        )
        # A view over the same modules (no copies): the apprentice the training and serving code use.
        self.apprentice = Apprentice(backbone, adapter=demo_adapter)

    @classmethod
    def from_apprentice(cls, apprentice: Apprentice, sampler: str = "ddim") -> SuTIPipeline:
        """Wrap a trained apprentice; `sampler` ("ddim" or "ddpm") becomes the pipeline's scheduler."""
        return cls(
            unet=apprentice.unet,
            text_encoder=apprentice.text_encoder,
            tokenizer=apprentice.tokenizer,
            scheduler=create_sampler(sampler, apprentice.noise_scheduler),
            demo_adapter=apprentice.adapter,
            vae=apprentice.vae,
        )

    @staticmethod
    def _as_array(image) -> np.ndarray:
        if isinstance(image, Image.Image):
            return np.asarray(image.convert("RGB"))
        arr = np.asarray(image)
        if arr.ndim != 3 or arr.shape[-1] != 3 or arr.dtype != np.uint8:
            raise ValueError(
                f"a demo image must be a PIL image or a uint8 (H, W, 3) array; got {arr.dtype} {arr.shape}"
            )
        return arr

    @torch.no_grad()
    def __call__(
        self,
        prompt: str | list[str],
        demos: Sequence[tuple] = (),
        num_inference_steps: int = 25,
        guidance_scale: float = 3.0,
        demo_guidance_scale: float | None = None,
        num_images_per_prompt: int = 1,
        generator: torch.Generator | list[torch.Generator] | None = None,
        output_type: str = "pil",
        return_dict: bool = True,
    ):
        """Draw the demonstrated subject for each prompt. `demos`: (image, caption) pairs, PIL or uint8 arrays, any
        size (resized to the model's). One guidance scale guides text and demos together (two UNet evaluations per
        step); `demo_guidance_scale` guides the demos on their own (three). `generator`: one, or one per prompt;
        the same generator gives the same images as `core.method.apprentice.sample` with that seed."""
        prompts = [prompt] if isinstance(prompt, str) else list(prompt)
        images = [self._as_array(img) for img, _ in demos]
        captions = [str(c) for _, c in demos]
        if generator is None:
            generator = torch.Generator().manual_seed(int(torch.randint(0, 2**31 - 1, ()).item()))
        generators = generator if isinstance(generator, list) else [generator] * len(prompts)
        if len(generators) != len(prompts):
            raise ValueError(f"{len(generators)} generators for {len(prompts)} prompts")
        requests = [
            SampleRequest(p, images, captions, num_images_per_prompt, 0, guidance_scale, demo_guidance_scale, g)
            for p, g in zip(prompts, generators)
        ]
        drawn = np.concatenate(
            sample_batch(self.apprentice, requests, sampler=self.scheduler, num_inference_steps=num_inference_steps)
        )
        out = [Image.fromarray(a) for a in drawn] if output_type == "pil" else drawn
        return ImagePipelineOutput(images=out) if return_dict else (out,)


def save_apprentice(
    apprentice: Apprentice, folder: str, extra_config: dict | None = None, sampler: str = "ddim"
) -> None:
    """Write the apprentice as a diffusers pipeline folder (`SuTIPipeline`: model_index.json, one folder per
    component, safetensors), plus `apprentice_config.json` with `extra_config` (provenance, training settings)."""
    SuTIPipeline.from_apprentice(apprentice, sampler).save_pretrained(folder)
    with open(os.path.join(folder, "apprentice_config.json"), "w") as f:
        json.dump({"demo_grid": apprentice.demo_grid, **(extra_config or {})}, f, indent=1, default=str)


def load_apprentice(folder: str) -> Apprentice:
    """Load a folder written by `save_apprentice` (safetensors; no network)."""
    return SuTIPipeline.from_pretrained(folder).apprentice.eval()
