"""Training the toy scorer: contrastive image-caption and two-view training on renders of train subjects."""

from __future__ import annotations

import time

import numpy as np
import open_clip
import torch
from tqdm import tqdm

from core.config import ScorerConfig
from core.models.schedules import warmup_cosine
from core.models.scorer import Scorer, _to_input, create_scorer
from core.toy import world as toyworld


def _augment(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    # Generated images are noisy and colour-cast; a scorer trained only on clean renders misreads them.
    noise = torch.randn(x.shape, generator=generator) * 0.08
    cast = (torch.rand((x.shape[0], 3, 1, 1), generator=generator) - 0.5) * 0.1
    return (x + noise + cast).clamp(-1, 1)


def train_scorer(
    cfg: ScorerConfig,
    subjects: list[toyworld.Subject],
    resolution: int = 32,
    progress: bool = True,
    device: str | torch.device = "cpu",
    deadline: float | None = None,
    version: int = 1,
) -> tuple[Scorer, list[float]]:
    """Contrastive training on renders of `subjects` with identity-spelling captions. Returns (scorer, losses).
    `deadline` (a `time.monotonic()` value) ends training early; the scorer comes back on the CPU."""

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
            scene = toyworld.random_scene(rng, resolution, version, style=style, accessory=accessory, body=body)
            images.append(toyworld.render(subject, scene, resolution, rng))
            # Mostly identity spelled out; some captions in the prompts' form (class word only), which is what
            # CLIP-T and delta-CLIP later score against.
            with_background = bool(rng.random() < 0.7)
            if rng.random() < 0.75:
                captions.append(toyworld.full_caption(subject, scene, with_background))
            else:
                captions.append(toyworld.prompt_text(subject.class_name, scene, with_background))
            views.append(toyworld.render(subject, toyworld.random_scene(rng, resolution, version), resolution, rng))
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


def retrieval_check(
    scorer: Scorer, subjects: list[toyworld.Subject], n: int, seed: int, resolution: int = 32, version: int = 1
) -> dict:
    """How well a toy scorer tells `n` renders of distinct `subjects` apart (chance: 1/n): `caption_top1`, the share
    of renders whose own full caption scores highest among the n captions; `view_top1`, the share whose other view
    (the same subject in another scene) is the closest of the n other views."""
    rng = np.random.default_rng(seed)
    picked = [subjects[int(i)] for i in rng.choice(len(subjects), size=min(n, len(subjects)), replace=False)]
    scenes = [toyworld.random_scene(rng, resolution, version) for _ in picked]
    images = np.stack([toyworld.render(s, sc, resolution, rng) for s, sc in zip(picked, scenes)])
    views = np.stack(
        [toyworld.render(s, toyworld.random_scene(rng, resolution, version), resolution, rng) for s in picked]
    )
    emb = scorer.encode_images(images)
    text = scorer.encode_texts([toyworld.full_caption(s, sc) for s, sc in zip(picked, scenes)])
    own = torch.arange(len(picked))
    return {
        "renders": len(picked),
        "caption_top1": float(((emb @ text.T).argmax(1) == own).float().mean()),
        "view_top1": float(((emb @ scorer.encode_images(views).T).argmax(1) == own).float().mean()),
    }
