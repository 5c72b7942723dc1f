"""ExpertBatch fine-tunes and samples N subjects as one vmapped model: the same experts as N `Expert` runs."""

import numpy as np
import pytest
import torch

from core.config import ExpertConfig
from core.method.expert import Expert
from core.method.expert_batch import ExpertBatch
from core.models import backbone as bb
from core.models import sampling
from core.toy import world as tw


def _jobs():
    rng = np.random.default_rng(0)
    subjects = [
        tw.Subject("ball", "red", "dots", "blue"),
        tw.Subject("box", "green", "bars", "white"),
        tw.Subject("kite", "black", "checks", "yellow"),
    ]
    jobs = []
    for i, (subject, count) in enumerate(zip(subjects, (3, 5, 4))):  # uneven demo counts: padding must not matter
        demos = tw.demonstrations(subject, count, rng)
        jobs.append(([img for img, _ in demos], [cap for _, cap in demos], 100 + i))
    return jobs


def _same_weights(stacked: dict, module: torch.nn.Module, i: int, cfg: ExpertConfig) -> None:
    """Expert i's stacked weights equal the module's: float rounding apart, which AdamW magnifies only where a
    gradient is near zero (g / (|g| + eps)), in a few elements, and never past a small part of the distance the
    weights moved (at most lr per step)."""
    off = total = 0
    for name, p in module.named_parameters():
        d = (stacked[name][i] - p.detach()).abs()
        assert d.max() < 0.05 * cfg.lr * cfg.steps, f"expert {i}: {name} off by {d.max():.2e}"
        off, total = off + int((d > 1e-6).sum()), total + d.numel()
    assert off / total < 1e-3, f"expert {i}: {off} of {total} weights off"


@pytest.mark.parametrize("train_text_encoder", [True, False])
def test_batch_trains_the_same_experts_as_one_at_a_time(train_text_encoder):
    torch.manual_seed(0)
    cfg = ExpertConfig(
        steps=4,
        batch_size=4,
        lr=1e-3,
        num_inference_steps=4,
        guidance_scale=3.0,
        train_text_encoder=train_text_encoder,
    )
    backbone = bb.create_backbone("tiny", seed=0)
    before = {k: v.clone() for k, v in backbone.unet.state_dict().items()}
    jobs = _jobs()
    batch = ExpertBatch(backbone, None, cfg, {})
    checkpoints = []
    batch_losses = batch.fine_tune(jobs, on_step=lambda step: checkpoints.append(step))
    assert checkpoints == [1, 2, 3, 4] and len(batch_losses) == 3 and all(len(l) == 4 for l in batch_losses)
    # The base is untouched: the experts' weights live in the batch.
    assert all(torch.equal(before[k], v) for k, v in backbone.unet.state_dict().items())
    prompts = [
        ["a ball on grass", "a red ball, grayscale style"],
        ["a box wearing a hat", "a box on snow"],
        ["a kite", "a kite on sky"],
    ]
    seeds = [7, 8, 9]
    batch_images = batch.sample(prompts, seeds)

    expert = Expert(backbone, None, cfg, {})
    for i, (images, captions, seed) in enumerate(jobs):
        losses = expert.fine_tune(images, captions, seed)
        np.testing.assert_allclose(batch_losses[i], losses, rtol=1e-4, atol=1e-6)
        _same_weights(batch.params["unet"], backbone.unet, i, cfg)
        if train_text_encoder:
            _same_weights(batch.params["text"], backbone.text_encoder, i, cfg)
        # DDIM from the same seed draws the same images (uint8; a rounding step apart at most).
        alone = sampling.sample(
            backbone, prompts[i], sampler="ddim", num_inference_steps=4, guidance_scale=3.0, seed=seeds[i]
        )
        assert batch_images[i].shape == alone.shape
        assert np.abs(batch_images[i].astype(int) - alone.astype(int)).max() <= 1
    # And the experts did learn something different from each other.
    unet = batch.params["unet"]["conv_in.weight"]
    assert not torch.allclose(unet[0], unet[1])


def test_batch_refuses_what_stacking_would_change():
    backbone = bb.create_backbone("tiny", seed=0)
    with pytest.raises(ValueError, match="AdamW"):
        ExpertBatch(backbone, None, ExpertConfig(optimizer="adafactor"), {})
    with pytest.raises(ValueError, match="LoRA"):
        ExpertBatch(backbone, None, ExpertConfig(lora_rank=4), {})
