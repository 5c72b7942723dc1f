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

With text tokens (`apprentice.text_tokens`), the warm start also trains the encoder's text head to say the subject
as the base's text encoder says it: its tokens regress the text encoder's output states of the identity spelled out
("a red ball with blue dots", after the start token), so that from the first apprentice step the demos reach the
UNet through the same keys and values its prompts do. That is the toy world's stand-in for an image encoder aligned
with text (CLIP's image tower; BLIP-Diffusion pretrains its subject encoder to produce text-aligned subject
embeddings for the same reason: Li et al. 2023, arXiv:2305.14720).
"""

from __future__ import annotations

import time

import numpy as np
import torch
from tqdm import tqdm

from core.models import backbone as bb
from core.models.tokenizer import tokenize
from core.toy import readers as rd
from core.toy import world as toyworld

HEADS = {k: rd.HEADS[k] for k in ("class_name", "body", "pattern", "pattern_colour")}  # the readers' vocabularies


def identity_phrase(subject) -> str:
    """The subject's identity spelled out as the base's captions spell it (`toyworld.full_caption`)."""
    return f"a {subject.describe()}"


@torch.no_grad()
def text_targets(backbone, subjects: list, count: int) -> torch.Tensor:
    """The base text encoder's output states of each subject's identity phrase, the `count` positions after the
    start token: (N, count, D). A clear error when the phrase is shorter than `count` tokens."""
    phrases = [identity_phrase(s) for s in subjects]
    ids = tokenize(backbone.tokenizer, phrases)
    shortest = int((ids != backbone.tokenizer.pad_token_id).sum(1).min()) - 2  # less the start and end tokens
    if shortest < count:
        raise ValueError(
            f"apprentice.text_tokens={count} but an identity phrase ({phrases[0]!r}) has {shortest} tokens: "
            f"use at most {shortest}"
        )
    return bb.encode_text(backbone, ids)[:, 1 : 1 + count]


def _batch(subjects, rng, n: int, backbone, size: int, version: int):
    picks = [subjects[int(i)] for i in rng.integers(len(subjects), size=n)]
    images = np.stack([toyworld.demonstrations(p, 1, rng, size, version)[0][0] for p in picks])
    x = bb.to_model_space(backbone, bb.images_to_tensor(images).to(backbone.device))
    y = {k: torch.tensor([v.index(getattr(p, k)) for p in picks], device=backbone.device) for k, v in HEADS.items()}
    return x, y, picks


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
    `eval_n` demos of `test` subjects. With text tokens, the text head is trained too (mean squared error against
    `text_targets`), and the result adds its error on test subjects against the error of predicting the mean
    target (`text_mse`, `text_mse_of_mean`)."""
    encoder, backbone = apprentice.adapter.encoder, apprentice.backbone
    grid, dim = encoder.grid, encoder.conv[-1].out_channels
    torch.manual_seed(seed)
    heads = torch.nn.ModuleDict({k: torch.nn.Linear(grid * grid * dim, len(v)) for k, v in HEADS.items()})
    heads.to(backbone.device)
    trained = [*encoder.conv.parameters(), *heads.parameters()]
    trained += list(encoder.text_head.parameters()) if encoder.text_tokens else []
    opt = torch.optim.AdamW(trained, lr=lr, weight_decay=0.0)
    rng = np.random.default_rng(seed)

    def outputs(x: torch.Tensor) -> tuple[dict, torch.Tensor | None]:
        conv = encoder.conv(x)
        feats = torch.nn.functional.adaptive_avg_pool2d(conv, grid).flatten(1)
        text = encoder.text_tokens_of(conv) if encoder.text_tokens else None
        return {k: h(feats) for k, h in heads.items()}, text

    if encoder.text_tokens:  # the text encoder stays as it is here: each subject's target is computed once
        targets = text_targets(backbone, train, encoder.text_tokens)
        row = {subject: i for i, subject in enumerate(train)}
    start, losses = time.perf_counter(), []
    for _ in tqdm(range(steps), desc="demo encoder", mininterval=10):
        x, y, picks = _batch(train, rng, batch_size, backbone, apprentice.resolution, version)
        out, text = outputs(x)
        loss = sum(torch.nn.functional.cross_entropy(out[k], y[k]) for k in heads)
        if text is not None:
            loss = loss + torch.nn.functional.mse_loss(text, targets[[row[p] for p in picks]])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
        if deadline is not None and time.monotonic() > deadline:
            break
    with torch.no_grad():
        x, y, picks = _batch(test, np.random.default_rng(seed + 1), eval_n, backbone, apprentice.resolution, version)
        out, text = outputs(x)
        accuracy = {k: round(float((out[k].argmax(1) == y[k]).float().mean()), 4) for k in heads}
        result = {
            "steps": len(losses),
            "seconds": round(time.perf_counter() - start, 1),
            "last_loss": round(float(np.mean(losses[-20:])), 4) if losses else None,
            "test_accuracy": accuracy,
        }
        if text is not None:
            target = text_targets(backbone, picks, encoder.text_tokens)
            result["text_mse"] = round(float(torch.nn.functional.mse_loss(text, target)), 5)
            result["text_mse_of_mean"] = round(float(((target - target.mean(0)) ** 2).mean()), 5)
    return result
