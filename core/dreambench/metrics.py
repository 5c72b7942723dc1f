"""DreamBench metrics, as DreamBooth defines them and SuTI reports them (Table 1):

- DINO: cosine of the DINO ViT-S/16 CLS embeddings of a generated image and each real image of its subject, averaged;
  it tells subjects apart better than CLIP-I, which DreamBooth argues is why it is the subject-fidelity metric;
- CLIP-I: the same with CLIP image embeddings;
- CLIP-T: cosine of the CLIP embeddings of a generated image and its prompt (the class word, no identifier).
The oracle row scores each real image against the subject's other real images (DINO, CLIP-I); CLIP-T is not
defined for it (the paper prints N/A).

Encoders come only from local paths: a transformers `ViTModel` folder (facebook/dino-vits16 is one) and an open_clip
model (a built-in name with a weights file, or `local-dir:<folder>`). Nothing is ever downloaded; a path that is not
there fails at once, naming the config key.
"""

from __future__ import annotations

import os

import numpy as np
import torch
from PIL import Image

from core.config import LOCAL_DIR, DreamBenchConfig
from core.data import storage
from core.data.storage import MissingInputError


def check_encoders(cfg: DreamBenchConfig) -> None:
    """Fail before any generation when an encoder path is unset or absent."""
    if not cfg.dino:
        raise MissingInputError(
            "DINO encoder not configured: set `dreambench.dino` to a local folder holding a transformers ViTModel "
            "(e.g. facebook/dino-vits16 saved with save_pretrained)"
        )
    storage.require(storage.join(cfg.dino, "config.json"), "dreambench.dino", "DINO ViTModel config.json")
    if cfg.clip_model.startswith(LOCAL_DIR):
        folder = cfg.clip_model[len(LOCAL_DIR) :]
        storage.require(
            os.path.join(folder, "open_clip_config.json"),
            "dreambench.clip_model",
            "open_clip_config.json of the CLIP folder",
        )
        if not any(name.endswith((".safetensors", ".bin", ".pth", ".pt")) for name in os.listdir(folder)):
            raise MissingInputError(f"no CLIP weights file in '{folder}' (set by config key `dreambench.clip_model`)")
        return
    if not cfg.clip_pretrained:
        raise MissingInputError(
            "CLIP weights not configured: set `dreambench.clip_pretrained` to a local weights file for open_clip "
            f"model {cfg.clip_model!r} (`dreambench.clip_model`), or set `dreambench.clip_model=local-dir:<folder>`"
        )
    storage.require(cfg.clip_pretrained, "dreambench.clip_pretrained", f"CLIP weights for {cfg.clip_model}")


class DinoEncoder:
    """CLS token of the last layer of a transformers ViTModel; its image processor resizes and normalises."""

    def __init__(self, folder: str, device: torch.device, batch_size: int = 64):
        from transformers import AutoImageProcessor, ViTImageProcessor, ViTModel

        folder = storage.local_dir(folder)
        self.model = ViTModel.from_pretrained(folder, local_files_only=True, add_pooling_layer=False).to(device).eval()
        if os.path.exists(os.path.join(folder, "preprocessor_config.json")):
            self.processor = AutoImageProcessor.from_pretrained(folder, local_files_only=True)
        else:  # ImageNet mean/std at the model's own size: what dino-vits16's processor holds
            size = self.model.config.image_size
            self.processor = ViTImageProcessor(size={"height": size, "width": size})
        self.device, self.batch_size = device, batch_size

    @torch.no_grad()
    def embed(self, images: list[np.ndarray]) -> torch.Tensor:
        """uint8 (H, W, 3) images of any size -> unit vectors (N, D)."""
        out = []
        for i in range(0, len(images), self.batch_size):
            pixels = self.processor(images=list(images[i : i + self.batch_size]), return_tensors="pt")["pixel_values"]
            out.append(self.model(pixel_values=pixels.to(self.device)).last_hidden_state[:, 0].float().cpu())
        return torch.nn.functional.normalize(torch.cat(out), dim=-1)


class ClipEncoder:
    """An open_clip model from a local file or folder, with its own preprocessing and tokenizer."""

    def __init__(self, model_name: str, pretrained: str | None, device: torch.device, batch_size: int = 64):
        import open_clip

        if model_name.startswith(LOCAL_DIR):
            pretrained = None  # the folder holds the weights
        self.model, _, self.preprocess = open_clip.create_model_and_transforms(
            model_name, pretrained=pretrained, device=device
        )
        self.model.eval()
        self.tokenizer = open_clip.get_tokenizer(model_name)
        self.device, self.batch_size = device, batch_size

    @torch.no_grad()
    def embed_images(self, images: list[np.ndarray]) -> torch.Tensor:
        """uint8 (H, W, 3) images of any size -> unit vectors (N, E)."""
        out = []
        for i in range(0, len(images), self.batch_size):
            x = torch.stack([self.preprocess(Image.fromarray(img)) for img in images[i : i + self.batch_size]])
            out.append(self.model.encode_image(x.to(self.device)).float().cpu())
        return torch.nn.functional.normalize(torch.cat(out), dim=-1)

    @torch.no_grad()
    def embed_texts(self, texts: list[str]) -> torch.Tensor:
        """(N,) strings -> unit vectors (N, E)."""
        out = [
            self.model.encode_text(self.tokenizer(texts[i : i + self.batch_size]).to(self.device)).float().cpu()
            for i in range(0, len(texts), self.batch_size)
        ]
        return torch.nn.functional.normalize(torch.cat(out), dim=-1)


def load_encoders(cfg: DreamBenchConfig, device: torch.device) -> tuple[DinoEncoder, ClipEncoder]:
    check_encoders(cfg)
    return DinoEncoder(cfg.dino, device, cfg.score_batch_size), ClipEncoder(
        cfg.clip_model, cfg.clip_pretrained, device, cfg.score_batch_size
    )


def real_embeddings(
    dino: DinoEncoder, clip: ClipEncoder, real_images: list[np.ndarray]
) -> tuple[torch.Tensor, torch.Tensor]:
    return dino.embed(real_images), clip.embed_images(real_images)


def oracle(real_dino: torch.Tensor, real_clip: torch.Tensor) -> dict[str, float]:
    """Each real image against the subject's other real images: mean cosine over ordered pairs i != j."""
    n = real_dino.shape[0]
    if n < 2:
        return {"dino": float("nan"), "clip_i": float("nan")}
    off = ~torch.eye(n, dtype=torch.bool)
    return {
        "dino": float((real_dino @ real_dino.T)[off].mean()),
        "clip_i": float((real_clip @ real_clip.T)[off].mean()),
    }


def score_images(
    dino: DinoEncoder,
    clip: ClipEncoder,
    real_dino: torch.Tensor,
    real_clip: torch.Tensor,
    images: list[np.ndarray],
    eval_prompts: list[str],
) -> dict[str, np.ndarray]:
    """Per generated image: DINO and CLIP-I (mean over the real images) and CLIP-T (against its own prompt)."""
    gen_dino, gen_clip = dino.embed(images), clip.embed_images(images)
    unique = sorted(set(eval_prompts))
    text = clip.embed_texts(unique)[[unique.index(p) for p in eval_prompts]]
    return {
        "dino": (gen_dino @ real_dino.T).mean(1).numpy(),
        "clip_i": (gen_clip @ real_clip.T).mean(1).numpy(),
        "clip_t": (gen_clip * text).sum(-1).numpy(),
    }
