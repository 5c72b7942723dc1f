"""The real backbones' code path, with tiny random components of the same classes (no real weights can be
downloaded here): a Stable Diffusion-layout folder (latent, VAE, CLIP, PNDM config) and a DeepFloyd IF stage I
one (pixel, T5, learned variance), written by `save_pretrained`, loaded by `load_backbone`, and one subject run
through the expert farm's actors exactly as the tiny model's are."""

import dataclasses
import os
import shutil

import numpy as np
import pytest
import torch

from actors.expert_pool import run_pool
from apps.experts import provenance
from core.data import g as gc
from core.data import schema, storage
from core.data.images import from_png
from core.method.expert import Expert
from core.models import backbone as bb
from core.models import sampling
from core.models.scorer import load_scorer
from core.toy.tiny_backbones import save_tiny_deepfloyd_if, save_tiny_stable_diffusion

MAKERS = {"sd": save_tiny_stable_diffusion, "if": save_tiny_deepfloyd_if}


@pytest.fixture(scope="module", params=sorted(MAKERS))
def real_folder(request, tmp_path_factory):
    folder = str(tmp_path_factory.mktemp(f"tiny-{request.param}"))
    MAKERS[request.param](folder)
    return request.param, folder


def test_folders_load_as_the_model_they_stand_for(real_folder):
    kind, folder = real_folder
    assert os.path.exists(os.path.join(folder, "model_index.json"))  # a real diffusers pipeline layout
    backbone = bb.load_backbone(folder)
    assert backbone.resolution == 32
    if kind == "sd":
        assert backbone.kind == "latent" and backbone.unet.config.in_channels == 4
        assert type(backbone.text_encoder).__name__ == "CLIPTextModel"
        x = bb.images_to_tensor(np.zeros((2, 32, 32, 3), np.uint8))
        z = bb.to_model_space(backbone, x)
        assert z.shape == (2, 4, 16, 16)
        assert torch.allclose(z, backbone.vae.encode(x).latent_dist.mode() * backbone.vae.config.scaling_factor)
    else:
        assert backbone.kind == "pixel" and backbone.unet.config.out_channels == 6
        assert type(backbone.text_encoder).__name__ == "T5EncoderModel"
        assert sampling.learned_variance(sampling.create_sampler("ddpm", backbone.noise_scheduler))
        assert not sampling.learned_variance(sampling.create_sampler("ddim", backbone.noise_scheduler))
    for sampler in ("ddpm", "ddim"):
        images = sampling.sample(backbone, ["a red ball on grass", "a box"], sampler=sampler, num_inference_steps=2)
        assert images.shape == (2, 32, 32, 3) and images.dtype == np.uint8


def test_a_repo_in_the_local_hugging_face_cache_loads_without_network(real_folder, tmp_path):
    _kind, folder = real_folder
    snapshot = tmp_path / "models--tiny--model" / "snapshots" / "0123abcd"
    shutil.copytree(folder, snapshot)
    (tmp_path / "models--tiny--model" / "refs").mkdir()
    (tmp_path / "models--tiny--model" / "refs" / "main").write_text("0123abcd")
    assert bb.resolve_model_dir("hf://tiny/model", cache_dir=str(tmp_path)) == str(snapshot)
    with pytest.raises(FileNotFoundError, match="never downloads"):
        bb.resolve_model_dir("tiny/absent", cache_dir=str(tmp_path))


def test_expert_fine_tunes_the_unet_only_and_resets(real_folder, smoke):
    _kind, folder = real_folder
    config, _ = smoke
    backbone = bb.load_backbone(folder)
    scorer = load_scorer(config.paths.scorer)
    # Renders of another size (IF draws 64x64) are resized to the scorer's input.
    assert (
        scorer.encode_images(np.zeros((1, 64, 64, 3), np.uint8)).shape
        == scorer.encode_images(np.zeros((1, 32, 32, 3), np.uint8)).shape
    )
    cfg = dataclasses.replace(
        config.expert, steps=2, batch_size=2, num_inference_steps=2, optimizer="adafactor", lr=1e-3
    )
    expert = Expert(backbone, scorer, cfg, provenance(config))
    record = storage.read_table(config.paths.ds, schema.DS_SCHEMA, "paths.ds", "D_S").to_pylist()[0]
    unet_before = {k: v.clone() for k, v in backbone.unet.state_dict().items()}
    vae_before = {k: v.clone() for k, v in backbone.vae.state_dict().items()} if backbone.vae is not None else {}
    losses = expert.fine_tune([from_png(b) for b in record["demo_images"]], record["demo_captions"], seed=0)
    assert len(losses) == 2 and all(np.isfinite(losses))
    assert any(not torch.equal(unet_before[k], v) for k, v in backbone.unet.state_dict().items())
    if backbone.vae is not None:  # the autoencoder stays frozen
        assert all(torch.equal(vae_before[k], v) for k, v in backbone.vae.state_dict().items())
    expert.reset()
    assert all(torch.equal(unet_before[k], v) for k, v in backbone.unet.state_dict().items())


def test_one_subject_through_the_expert_farm(real_folder, smoke, tmp_path):
    _kind, folder = real_folder
    config, _ = smoke
    records = storage.read_table(config.paths.ds, schema.DS_SCHEMA, "paths.ds", "D_S").to_pylist()[:1]
    cfg = dataclasses.replace(
        config.expert, steps=2, batch_size=2, num_inference_steps=2, num_actors=1, optimizer="adafactor", lr=1e-3
    )
    results, summary = run_pool(
        records,
        folder,
        config.paths.scorer,
        cfg,
        provenance(config),
        str(tmp_path / "g"),
        config.filter,
        progress=False,
    )
    assert summary["done"] == 1 and summary.get("failed", 0) == 0, results
    g = gc.read_table(str(tmp_path / "g")).to_pylist()
    assert {(r["subject_id"], r["prompt_id"]) for r in g} == {
        (records[0]["subject_id"], p) for p in records[0]["prompt_ids"]
    }
    assert all(from_png(r["image"]).shape == (32, 32, 3) and np.isfinite(r["delta"]) for r in g)
