"""A warm start for the apprentice's demo encoder in the toy world: its image layers (`DemoEncoder.conv`) trained
to recognise identity (class, body colour, pattern, pattern colour: a linear head each over its token grid) on
demos of train subjects, whose identity is known.

The toy world's stand-in for the pretrained image encoder (CLIP, DINO) that a real apprentice's demo encoder would
start from, as IP-Adapter's does: from scratch, the encoder has to find the subject and its colours through the weak
signal that identity gives the denoising loss. The heads are thrown away; the convolutions keep what they learned,
and `apprentice.demo_encoder_init` loads them into a new apprentice. For a real backbone, a pretrained encoder plugs in
the same way: a state dict of `DemoEncoder.conv` (`core.method.apprentice.save_demo_encoder`), or a replacement of
`conv` by the encoder's feature layers, which must map (N, C, H, W) model-space images to (N, cross_attention_dim,
h, w) features.
"""

from __future__ import annotations

import time

import numpy as np
import torch
from tqdm import tqdm

from core.models import backbone as bb
from core.toy import readers as rd
from core.toy import world as toyworld

HEADS = {k: rd.HEADS[k] for k in ("class_name", "body", "pattern", "pattern_colour")}  # the readers' vocabularies


def _batch(subjects, rng, n: int, backbone, size: int, version: int):
    picks = [subjects[int(i)] for i in rng.integers(len(subjects), size=n)]
    images = np.stack([toyworld.demonstrations(p, 1, rng, size, version)[0][0] for p in picks])
    x = bb.to_model_space(backbone, bb.images_to_tensor(images).to(backbone.device))
    y = {k: torch.tensor([v.index(getattr(p, k)) for p in picks], device=backbone.device) for k, v in HEADS.items()}
    return x, y


def pretrain(
    apprentice,
    train: list,
    test: list,
    steps: int,
    batch_size: int = 128,
    lr: float = 2e-3,
    seed: int = 0,
    version: int = 1,
    deadline: float | None = None,
    eval_n: int = 512,
) -> dict:
    """Train `apprentice`'s demo encoder convolutions in place on demos of `train` subjects for `steps` steps (or
    until `deadline`, a `time.monotonic()` value). Returns steps, seconds, the last loss and each head's accuracy on
    `eval_n` demos of `test` subjects."""
    encoder, backbone = apprentice.adapter.encoder, apprentice.backbone
    grid, dim = encoder.grid, encoder.conv[-1].out_channels
    torch.manual_seed(seed)
    heads = torch.nn.ModuleDict({k: torch.nn.Linear(grid * grid * dim, len(v)) for k, v in HEADS.items()})
    heads.to(backbone.device)
    opt = torch.optim.AdamW([*encoder.conv.parameters(), *heads.parameters()], lr=lr, weight_decay=0.0)
    rng = np.random.default_rng(seed)

    def logits(x: torch.Tensor) -> dict:
        feats = torch.nn.functional.adaptive_avg_pool2d(encoder.conv(x), grid).flatten(1)
        return {k: h(feats) for k, h in heads.items()}

    start, losses = time.perf_counter(), []
    for _ in tqdm(range(steps), desc="demo encoder", mininterval=10):
        x, y = _batch(train, rng, batch_size, backbone, apprentice.resolution, version)
        out = logits(x)
        loss = sum(torch.nn.functional.cross_entropy(out[k], y[k]) for k in heads)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
        if deadline is not None and time.monotonic() > deadline:
            break
    with torch.no_grad():
        x, y = _batch(test, np.random.default_rng(seed + 1), eval_n, backbone, apprentice.resolution, version)
        out = logits(x)
        accuracy = {k: round(float((out[k].argmax(1) == y[k]).float().mean()), 4) for k in heads}
    return {
        "steps": len(losses),
        "seconds": round(time.perf_counter() - start, 1),
        "last_loss": round(float(np.mean(losses[-20:])), 4) if losses else None,
        "test_accuracy": accuracy,
    }
