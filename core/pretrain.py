"""Base model pretraining on the toy world: train subjects only, captions that spell identity out.

A share of captions name only class and scene (the form of the unseen prompts) and a share are empty, so the
base model knows both and can be sampled with classifier-free guidance.
"""

from __future__ import annotations

import numpy as np
import torch
from tqdm import tqdm

from core import backbone as bb
from core import toyworld
from core.schedules import warmup_cosine
from core.config import PretrainConfig


def toy_batch(subjects: list[toyworld.Subject], batch_size: int, rng: np.random.Generator, size: int) -> tuple[list[np.ndarray], list[str]]:
    images, captions = [], []
    for i in rng.choice(len(subjects), size=batch_size):
        subject = subjects[int(i)]
        scene = toyworld.random_scene(
            rng,
            size,
            style=rng.choice([None, None, None, None, *toyworld.STYLES]),
            accessory=rng.choice([None, None, None, *toyworld.ACCESSORIES]),
            body=rng.choice([None] * 12 + list(toyworld.PALETTE)),
        )
        images.append(toyworld.render(subject, scene, size, rng))
        r = rng.random()
        if r < 0.6:
            captions.append(toyworld.full_caption(subject, scene))
        elif r < 0.9:
            captions.append(toyworld.prompt_text(subject.class_name, scene))
        else:
            captions.append("")
    return images, captions


def pretrain(backbone: bb.Backbone, subjects: list[toyworld.Subject], cfg: PretrainConfig, progress: bool = True) -> list[float]:
    """Train `backbone` in place on renders of `subjects`. Returns the loss per step."""
    torch.set_num_threads(cfg.threads)
    rng = np.random.default_rng(cfg.seed)
    generator = torch.Generator().manual_seed(cfg.seed)
    params = list(backbone.unet.parameters()) + list(backbone.text_encoder.parameters())
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=0.0)
    sched = warmup_cosine(opt, cfg.steps)
    backbone.unet.train()
    backbone.text_encoder.train()
    losses = []
    for _ in tqdm(range(cfg.steps), desc="pretrain", disable=not progress, mininterval=5):
        images, captions = toy_batch(subjects, cfg.batch_size, rng, backbone.resolution)
        x0 = bb.images_to_tensor(images).to(backbone.device)
        loss = bb.denoising_loss(backbone.unet, backbone.noise_scheduler, x0, bb.encode_text(backbone, captions), generator)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        sched.step()
        losses.append(float(loss.detach()))
    backbone.unet.eval()
    backbone.text_encoder.eval()
    return losses
