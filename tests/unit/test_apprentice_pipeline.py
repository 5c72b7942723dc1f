"""The apprentice on every backbone kind, and its export as a diffusers pipeline used without Ray.

Stable Diffusion and DeepFloyd IF are tiny random components of the real classes saved with `save_pretrained`
(no real weights can be downloaded here); the toy model is the tiny preset."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from core.method import apprentice as ap
from core.models import backbone as bb
from core.models.tokenizer import tokenize
from core.pipelines.suti import SuTIPipeline, save_apprentice
from core.toy import world as tw
from core.toy.tiny_backbones import save_tiny_deepfloyd_if, save_tiny_stable_diffusion

MAKERS = {"sd": save_tiny_stable_diffusion, "if": save_tiny_deepfloyd_if}


@pytest.fixture(scope="module")
def demos():
    return tw.demonstrations(tw.Subject("ball", "red", "dots", "blue"), 3, np.random.default_rng(0))


def one_batch(apprentice, demos, b=2):
    images = bb.images_to_tensor([d[0] for d in demos])
    ids = tokenize(apprentice.tokenizer, [d[1] for d in demos])
    return {
        "image": images[:b],
        "input_ids": tokenize(apprentice.tokenizer, ["a ball on sand"] * b),
        "demo_images": images.unsqueeze(0).repeat(b, 1, 1, 1, 1),
        "demo_ids": ids.unsqueeze(0).repeat(b, 1, 1),
    }


@pytest.mark.parametrize("kind", sorted(MAKERS))
def test_apprentice_trains_samples_and_exports_on_real_backbone_layouts(kind, tmp_path, demos):
    folder = str(tmp_path / "base")
    MAKERS[kind](folder)
    apprentice = ap.Apprentice(bb.load_backbone(folder))
    assert apprentice.gates().abs().sum() == 0
    overhead = apprentice.overhead()
    assert 0 < overhead["new"] and overhead["of_unet"] < 1.0
    if kind == "sd":
        assert apprentice.vae is not None and not any(p.requires_grad for p in apprentice.vae.parameters())
        assert all(not n.startswith("vae.") for n, _ in apprentice.named_parameters() if _.requires_grad)
    # One training step through the same code path as the tiny model (latents for SD, the noise half for IF).
    opt = torch.optim.AdamW(apprentice.trainable_parameters(), lr=1e-2)
    loss = ap.training_loss(apprentice, one_batch(apprentice, demos), 0.0, 0.0, torch.Generator().manual_seed(0))
    loss.backward()
    opt.step()
    assert torch.isfinite(loss) and apprentice.gates().abs().sum() > 0
    apprentice.eval()
    args = ("a ball on sand", [d[0] for d in demos], [d[1] for d in demos])
    one = ap.sample(apprentice, *args, num_inference_steps=3, seed=4)
    assert one.shape == (1, 32, 32, 3)
    dual = ap.sample(apprentice, *args, num_inference_steps=3, seed=4, demo_guidance_scale=2.0, sampler="ddpm")
    assert dual.shape == (1, 32, 32, 3)
    # Export and reload: same image at the same seed; the unet folder is a stock diffusers UNet.
    out = str(tmp_path / "export")
    save_apprentice(apprentice, out)
    index = json.loads(Path(os.path.join(out, "model_index.json")).read_text())
    assert index["_class_name"] == "SuTIPipeline" and index["demo_adapter"] == [
        "core.method.apprentice",
        "DemoAdapter",
    ]
    assert (index["vae"][1] == "AutoencoderKL") == (kind == "sd")
    pipe = SuTIPipeline.from_pretrained(out)
    again = pipe(
        args[0],
        demos=list(zip(args[1], args[2])),
        num_inference_steps=3,
        generator=torch.Generator().manual_seed(4),
        output_type="np",
    ).images
    assert np.array_equal(again, one)


def test_exported_pipeline_draws_the_same_image_without_ray(tmp_path, demos):
    """Train a little, save, then load and draw in a fresh interpreter that never imports Ray: the same image at
    the same seed as the training-side sampler, and a swapped scheduler changes it."""
    apprentice = ap.Apprentice(bb.create_backbone("tiny", seed=0))
    opt = torch.optim.AdamW(apprentice.trainable_parameters(), lr=1e-2)
    for _ in range(2):
        loss = ap.training_loss(apprentice, one_batch(apprentice, demos), 0.1, 0.1, torch.Generator().manual_seed(1))
        opt.zero_grad()
        loss.backward()
        opt.step()
    apprentice.eval()
    folder = str(tmp_path / "apprentice")
    save_apprentice(apprentice, folder)
    np.savez(tmp_path / "demos.npz", images=np.stack([d[0] for d in demos]), captions=np.array([d[1] for d in demos]))
    script = f"""
import sys, numpy as np, torch
from PIL import Image
from diffusers import DDPMScheduler
from core.pipelines.suti import SuTIPipeline
d = np.load({str(tmp_path / "demos.npz")!r})
demos = [(Image.fromarray(i), str(c)) for i, c in zip(d["images"], d["captions"])]
pipe = SuTIPipeline.from_pretrained({folder!r})
kw = dict(demos=demos, num_inference_steps=4, guidance_scale=3.0, demo_guidance_scale=2.0)
a = pipe("a ball on sand", generator=torch.Generator().manual_seed(7), **kw).images
pipe.scheduler = DDPMScheduler.from_config(pipe.scheduler.config)
b = pipe("a ball on sand", generator=torch.Generator().manual_seed(7), **kw).images
assert "ray" not in sys.modules, "the exported pipeline imported ray"
np.savez({str(tmp_path / "out.npz")!r}, a=np.stack([np.asarray(x) for x in a]), b=np.stack([np.asarray(x) for x in b]))
"""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": os.getcwd()}
    subprocess.run([sys.executable, "-c", script], check=True, env=env, timeout=300)
    out = np.load(tmp_path / "out.npz")
    expected = ap.sample(
        apprentice,
        "a ball on sand",
        [d[0] for d in demos],
        [d[1] for d in demos],
        num_inference_steps=4,
        guidance_scale=3.0,
        demo_guidance_scale=2.0,
        seed=7,
    )
    assert np.array_equal(out["a"], expected)
    assert not np.array_equal(out["b"], out["a"])
