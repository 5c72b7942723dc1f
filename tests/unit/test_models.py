"""Backbone, apprentice, scorer and expert on tiny random models (real weights cannot be downloaded here)."""

import dataclasses

import numpy as np
import pytest
import torch

from core.config import ExpertConfig, ScorerConfig
from core.data.images import to_png
from core.method import apprentice as ap
from core.method.expert import Expert, delta_clip
from core.models import backbone as bb
from core.models import sampling
from core.models.scorer import create_scorer, load_scorer, save_scorer
from core.models.tokenizer import tokenize
from core.pipelines.suti import load_apprentice, save_apprentice
from core.toy import world as tw

torch.set_num_threads(2)


@pytest.fixture(scope="module")
def backbone():
    return bb.create_backbone("tiny", seed=0)


@pytest.fixture(scope="module")
def demos():
    rng = np.random.default_rng(0)
    return tw.demonstrations(tw.Subject("ball", "red", "dots", "blue"), 3, rng)


def test_tokenizer_is_clip_bpe_and_round_trips(tmp_path, backbone):
    ids = tokenize(backbone.tokenizer, ["a red ball"])
    assert ids.shape == (1, 24)
    assert ids[0, :5].tolist() == [49406, 320, 736, 1069, 49407]  # CLIP's own ids: no download, same vocabulary
    backbone.tokenizer.save_pretrained(tmp_path)
    again = type(backbone.tokenizer).from_pretrained(tmp_path, local_files_only=True)
    assert torch.equal(tokenize(again, ["a red ball"]), ids)


def test_unknown_preset_is_a_clear_error():
    with pytest.raises(ValueError, match="unknown model preset 'huge'"):
        bb.create_backbone("huge")


def test_save_load_round_trip_samples_identically(tmp_path, backbone):
    bb.save_backbone(backbone, str(tmp_path))
    loaded = bb.load_backbone(str(tmp_path))
    a = sampling.sample(backbone, ["a ball on sand"], num_inference_steps=3, seed=7)
    b = sampling.sample(loaded, ["a ball on sand"], num_inference_steps=3, seed=7)
    assert np.array_equal(a, b)
    assert bb.weight_files(str(tmp_path))


def test_sampler_is_seeded_and_both_schedulers_run(backbone):
    a = sampling.sample(backbone, ["a ball"], num_inference_steps=3, seed=1)
    assert a.shape == (1, 32, 32, 3) and a.dtype == np.uint8
    assert np.array_equal(a, sampling.sample(backbone, ["a ball"], num_inference_steps=3, seed=1))
    assert not np.array_equal(a, sampling.sample(backbone, ["a ball"], num_inference_steps=3, seed=2))
    assert sampling.sample(backbone, ["a ball"], sampler="ddpm", num_inference_steps=3, seed=1).shape == (1, 32, 32, 3)
    with pytest.raises(ValueError, match="unknown sampler"):
        sampling.create_sampler("euler", backbone.noise_scheduler)


def test_denoising_loss_falls_when_overfitting_one_image(demos):
    model = bb.create_backbone("tiny", seed=1)
    x0 = bb.images_to_tensor([demos[0][0]]).repeat(8, 1, 1, 1)
    states = bb.encode_text(model, ["a ball"] * 8).detach()
    opt = torch.optim.AdamW(model.unet.parameters(), lr=2e-3)
    gen = torch.Generator().manual_seed(0)
    losses = []
    for _ in range(30):
        loss = sampling.denoising_loss(model.unet, model.noise_scheduler, x0, states, gen)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    assert np.mean(losses[-5:]) < 0.6 * np.mean(losses[:5])


def test_apprentice_starts_exactly_as_the_base_model(demos):
    apprentice = ap.Apprentice(bb.create_backbone("tiny", seed=0))
    base = bb.create_backbone("tiny", seed=0)
    images, captions = [d[0] for d in demos], [d[1] for d in demos]
    with_demos = ap.sample(apprentice, "a ball on sand", images, captions, num_images=2, num_inference_steps=4, seed=3)
    plain = sampling.sample(base, ["a ball on sand"] * 2, num_inference_steps=4, seed=3)
    assert np.array_equal(with_demos, plain)
    assert torch.count_nonzero(apprentice.gates()) == 0
    extra = sum(p.numel() for p in apprentice.new_parameters().values())
    assert 0 < extra < 0.25 * sum(p.numel() for p in base.unet.parameters())
    with torch.no_grad():
        for branch in apprentice.adapter.branches.values():
            branch.gate.fill_(1.0)
    opened = ap.sample(apprentice, "a ball on sand", images, captions, num_images=2, num_inference_steps=4, seed=3)
    assert not np.array_equal(opened, plain)  # once the gates open, the demos change the image
    dual = ap.sample(
        apprentice,
        "a ball on sand",
        images,
        captions,
        num_images=1,
        num_inference_steps=2,
        seed=3,
        demo_guidance_scale=2.0,
    )
    assert dual.shape == (1, 32, 32, 3)


def test_apprentice_training_moves_the_gates_and_round_trips(tmp_path, demos):
    apprentice = ap.Apprentice(bb.create_backbone("tiny", seed=0))
    images = bb.images_to_tensor([d[0] for d in demos])
    ids = tokenize(apprentice.tokenizer, [d[1] for d in demos])
    batch = {
        "image": images,
        "input_ids": tokenize(apprentice.tokenizer, ["a ball on sand"] * 3),
        "demo_images": images.unsqueeze(0).repeat(3, 1, 1, 1, 1),
        "demo_ids": ids.unsqueeze(0).repeat(3, 1, 1),
    }
    opt = torch.optim.AdamW(apprentice.parameters(), lr=1e-3)
    gen = torch.Generator().manual_seed(0)
    for _ in range(3):
        loss = ap.training_loss(apprentice, batch, 0.1, 0.1, gen)
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert torch.count_nonzero(apprentice.gates()) > 0
    save_apprentice(apprentice.eval(), str(tmp_path), {"note": "test"})
    loaded = load_apprentice(str(tmp_path))
    args = ("a ball on sand", [d[0] for d in demos], [d[1] for d in demos])
    assert np.array_equal(
        ap.sample(apprentice, *args, num_inference_steps=3, seed=5),
        ap.sample(loaded, *args, num_inference_steps=3, seed=5),
    )


def test_scorer_scores_identical_images_at_the_maximum_and_round_trips(tmp_path, demos):
    scorer = create_scorer(ScorerConfig())
    images = np.stack([d[0] for d in demos])
    emb = scorer.encode_images(images)
    assert torch.allclose((emb * scorer.encode_images(images)).sum(-1), torch.ones(3), atol=1e-5)  # CLIP-I maximum
    save_scorer(scorer, str(tmp_path))
    loaded = load_scorer(str(tmp_path))
    assert torch.allclose(loaded.encode_texts(["a ball"]), scorer.encode_texts(["a ball"]), atol=1e-6)
    assert len(loaded.digest) == 16


def test_expert_fine_tunes_then_resets_to_the_base(backbone, demos):
    scorer = create_scorer(ScorerConfig())
    cfg = ExpertConfig(steps=2, batch_size=4, num_inference_steps=2, samples_per_prompt=2)
    expert = Expert(
        backbone, scorer, cfg, {"base_checkpoint_hash": "b", "expert_config_hash": "e", "scorer_hash": "s"}
    )
    before = {k: v.clone() for k, v in backbone.unet.state_dict().items()}
    record = {
        "subject_id": "s1",
        "demo_images": [to_png(d[0]) for d in demos],
        "demo_captions": [d[1] for d in demos],
        "prompt_ids": ["p0", "p1"],
        "prompts": ["a ball on sand", "a ball on grass, grayscale style"],
        "prompt_skills": ["recontextualization", "style"],
    }
    rows, _stats = expert.run_subject(record)
    assert len(rows) == 4 and {(r["prompt_id"], r["sample_index"]) for r in rows} == {
        ("p0", 0),
        ("p0", 1),
        ("p1", 0),
        ("p1", 1),
    }
    for r in rows:
        assert "kept" not in r  # G stores scores; the threshold is applied when G is read
        assert abs(r["delta"] - (r["clip_score"] - r["ref_clip_score"])) < 1e-5
    changed = any(not torch.equal(before[k], v) for k, v in backbone.unet.state_dict().items())
    assert changed
    expert.reset()
    assert all(torch.equal(before[k], v) for k, v in backbone.unet.state_dict().items())
    bad = dict(record, demo_images=[b"not an image"])
    with pytest.raises(ValueError, match="not a decodable image"):
        expert.run_subject(bad)


def test_delta_clip_is_zero_when_the_render_is_a_demo(demos):
    scorer = create_scorer(ScorerConfig())
    images = [d[0] for d in demos]
    clip, ref, delta = delta_clip(scorer, [images[0]], ["a ball on sand"], images)
    assert delta[0] <= 1e-6 and abs(delta[0] - (clip[0] - ref[0])) < 1e-6


def test_lora_expert_tunes_an_adapter_only_and_reset_removes_it(backbone, demos):
    scorer = create_scorer(ScorerConfig())
    cfg = ExpertConfig(steps=3, batch_size=4, lr=1e-2, lora_rank=4)
    expert = Expert(
        backbone, scorer, cfg, {"base_checkpoint_hash": "b", "expert_config_hash": "e", "scorer_hash": "s"}
    )
    base_unet = {k: v.clone() for k, v in backbone.unet.state_dict().items()}
    base_text = {k: v.clone() for k, v in backbone.text_encoder.state_dict().items()}
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    states = bb.encode_text(backbone, ["a ball"] * 2).detach()
    with torch.no_grad():
        before = backbone.unet(x, torch.tensor([500, 500]), encoder_hidden_states=states).sample
    expert.fine_tune([d[0] for d in demos], [d[1] for d in demos], seed=0)
    tuned = backbone.unet.state_dict()
    lora_keys = [k for k in tuned if "lora_" in k]
    assert lora_keys and all(k.replace(".base_layer", "") in base_unet for k in tuned if "lora_" not in k)
    # The base weights are untouched (peft keeps them as base_layer), the text encoder too; the output moved.
    assert all(torch.equal(base_unet[k.replace(".base_layer", "")], v) for k, v in tuned.items() if "lora_" not in k)
    assert all(torch.equal(base_text[k], v) for k, v in backbone.text_encoder.state_dict().items())
    with torch.no_grad():
        after = backbone.unet(x, torch.tensor([500, 500]), encoder_hidden_states=states).sample
    assert not torch.allclose(before, after)
    expert.reset()
    assert set(backbone.unet.state_dict()) == set(base_unet)
    with torch.no_grad():
        assert torch.equal(backbone.unet(x, torch.tensor([500, 500]), encoder_hidden_states=states).sample, before)
    # A full fine-tune after a LoRA subject starts from the plain base again.
    expert.cfg = ExpertConfig(steps=1, batch_size=4)
    expert.fine_tune([d[0] for d in demos], [d[1] for d in demos], seed=0)
    assert not any("lora_" in k for k in backbone.unet.state_dict())
    expert.reset()


def test_apprentice_with_zero_output_projections_starts_as_the_base_and_learns_from_step_one(tmp_path, demos):
    apprentice = ap.Apprentice(bb.create_backbone("tiny", seed=0), zero_init="out")
    base = bb.create_backbone("tiny", seed=0)
    images, captions = [d[0] for d in demos], [d[1] for d in demos]
    with_demos = ap.sample(apprentice, "a ball on sand", images, captions, num_images=2, num_inference_steps=4, seed=3)
    assert np.array_equal(with_demos, sampling.sample(base, ["a ball on sand"] * 2, num_inference_steps=4, seed=3))
    assert torch.equal(apprentice.gates(), torch.ones_like(apprentice.gates()))
    pixels = bb.images_to_tensor(images)
    batch = {
        "image": pixels,
        "input_ids": tokenize(apprentice.tokenizer, ["a ball on sand"] * 3),
        "demo_images": pixels.unsqueeze(0).repeat(3, 1, 1, 1, 1),
        "demo_ids": tokenize(apprentice.tokenizer, captions).unsqueeze(0).repeat(3, 1, 1),
    }
    loss = ap.training_loss(apprentice, batch, 0.0, 0.0, torch.Generator().manual_seed(0))
    loss.backward()
    # The output projections get a gradient at once (with a zero gate they would get none until the gate moved).
    assert all(b.to_out.weight.grad.abs().sum() > 0 for b in apprentice.adapter.branches.values())
    save_apprentice(apprentice.eval(), str(tmp_path), {"note": "test"})
    assert load_apprentice(str(tmp_path)).adapter.config.zero_init == "out"
    with pytest.raises(ValueError, match="zero_init"):
        ap.Apprentice(bb.create_backbone("tiny", seed=0), zero_init="both")


def backward_on_demos(apprentice, pixels: torch.Tensor, ids: torch.Tensor) -> None:
    """One training loss on the demos themselves as targets, each given all the demos; its gradients kept."""
    batch = {
        "image": pixels,
        "input_ids": tokenize(apprentice.tokenizer, ["a ball on sand"] * len(pixels)),
        "demo_images": pixels.unsqueeze(0).repeat(len(pixels), 1, 1, 1, 1),
        "demo_ids": ids.unsqueeze(0).repeat(len(pixels), 1, 1),
    }
    ap.training_loss(apprentice, batch, 0.0, 0.0, torch.Generator().manual_seed(0)).backward()


def test_joint_attention_apprentice_masks_demos_per_row_trains_its_encoder_and_round_trips(tmp_path, demos):
    """attention="joint": demo tokens join the text tokens in each layer's own cross-attention (no new branches)."""
    apprentice = ap.Apprentice(bb.create_backbone("tiny", seed=0), demo_grid=2, attention="joint")
    base = bb.create_backbone("tiny", seed=0)
    assert len(apprentice.adapter.branches) == 0 and apprentice.gates().numel() == 0
    assert all(
        isinstance(p, ap.JointDemoProcessor)
        for n, p in apprentice.unet.attn_processors.items()
        if n.endswith("attn2.processor")
    )
    images, captions = [d[0] for d in demos], [d[1] for d in demos]
    plain = sampling.sample(base, ["a ball on sand"] * 2, num_inference_steps=4, seed=3)
    assert np.array_equal(
        ap.sample(apprentice, "a ball on sand", [], [], num_images=2, num_inference_steps=4, seed=3), plain
    )
    # Unlike a zero-initialised branch, the demos take a share of each softmax from the start.
    assert not np.array_equal(
        ap.sample(apprentice, "a ball on sand", images, captions, num_images=2, num_inference_steps=4, seed=3), plain
    )
    # One forward pass, rows with and without demos: a masked row is the base's prediction, an unmasked one is not.
    pixels = bb.images_to_tensor(images)
    ids = tokenize(apprentice.tokenizer, captions)
    with torch.no_grad():
        tokens = apprentice.encode_demos(pixels.unsqueeze(0).repeat(2, 1, 1, 1, 1), ids.unsqueeze(0).repeat(2, 1, 1))
        assert tokens.shape == (2, 3 * (2 * 2 + 1), 64)
        states = bb.encode_text(apprentice.backbone, ["a ball on sand"] * 2)
        x, t = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0)), torch.tensor([500, 500])
        mixed = apprentice(x, t, states, tokens, torch.tensor([0.0, 1.0])).sample
        reference = base.unet(x, t, encoder_hidden_states=states).sample
    torch.testing.assert_close(mixed[0], reference[0], rtol=1e-5, atol=1e-5)
    assert (mixed[1] - reference[1]).abs().max() > 1e-4
    backward_on_demos(apprentice, pixels, ids)
    assert apprentice.adapter.encoder.conv[0].weight.grad.abs().sum() > 0
    save_apprentice(apprentice.eval(), str(tmp_path), {"note": "test"})
    loaded = load_apprentice(str(tmp_path))
    assert loaded.adapter.config.attention == "joint" and len(loaded.adapter.branches) == 0
    args = ("a ball on sand", images, captions)
    assert np.array_equal(
        ap.sample(apprentice, *args, num_inference_steps=3, seed=5),
        ap.sample(loaded, *args, num_inference_steps=3, seed=5),
    )
    with pytest.raises(ValueError, match="attention"):
        ap.Apprentice(bb.create_backbone("tiny", seed=0), attention="both")


def test_expert_checkpoints_render_what_a_shorter_fine_tune_renders(backbone, demos):
    """`expert.checkpoints`: renders after n steps of the one fine-tuning run equal those of a run of n steps, and
    the renders at `steps` are unchanged by rendering on the way."""
    scorer = create_scorer(ScorerConfig())
    provenance = {"base_checkpoint_hash": "b", "expert_config_hash": "e", "scorer_hash": "s"}
    record = {
        "subject_id": "s1",
        "demo_images": [to_png(d[0]) for d in demos],
        "demo_captions": [d[1] for d in demos],
        "prompt_ids": ["p0"],
        "prompts": ["a ball on sand"],
        "prompt_skills": ["recontextualization"],
    }
    cfg = ExpertConfig(steps=3, batch_size=2, num_inference_steps=2, lr=1e-2)
    expert = Expert(backbone, scorer, cfg, provenance)  # one expert: each run starts from its base weights

    def run(**changes):
        expert.cfg = dataclasses.replace(cfg, **changes)
        return expert.run_subject(record)

    rows, stats = run(checkpoints=[1, 3])
    assert set(stats["checkpoints"]) == {1, 3}
    assert stats["checkpoints"][3]["rows"] is rows and stats["checkpoints"][1]["fine_tune_s"] > 0
    short, _ = run(steps=1)
    plain, plain_stats = run()
    assert "checkpoints" not in plain_stats
    assert stats["checkpoints"][1]["rows"][0]["image"] == short[0]["image"]
    assert rows[0]["image"] == plain[0]["image"] != short[0]["image"]
    expert.reset()
    with pytest.raises(ValueError, match="expert.checkpoints"):
        Expert(backbone, scorer, dataclasses.replace(cfg, checkpoints=[4]), provenance)


def test_a_loaded_apprentice_lists_its_gates_in_the_order_of_the_one_saved(tmp_path):
    """Gates are listed by branch name: an apprentice saved and loaded again gives the same vector, gate by gate."""
    from core.pipelines.suti import load_apprentice, save_apprentice

    apprentice = ap.Apprentice(bb.create_backbone("tiny", seed=0))
    with torch.no_grad():
        for i, name in enumerate(sorted(apprentice.adapter.branches)):
            apprentice.adapter.branches[name].gate.fill_(i + 1.0)
    folder = str(tmp_path / "saved")
    save_apprentice(apprentice, folder)
    assert torch.equal(load_apprentice(folder).gates(), apprentice.gates())


def test_text_tokens_join_the_text_per_row_train_their_head_warm_start_and_round_trip(tmp_path, demos):
    """apprentice.text_tokens: the demo encoder's text head adds tokens (averaged over the demos) that join each
    cross-attention layer's own text tokens; a row without demos is still the base, a row with them is not, even
    with the branches' output projections at zero; the toy warm start trains the head and saves it."""
    from core.toy import demo_encoder

    apprentice = ap.Apprentice(bb.create_backbone("tiny", seed=0), demo_grid=2, zero_init="out", text_tokens=2)
    base = bb.create_backbone("tiny", seed=0)
    images, captions = [d[0] for d in demos], [d[1] for d in demos]
    pixels, ids = bb.images_to_tensor(images), tokenize(apprentice.tokenizer, captions)
    with torch.no_grad():
        tokens = apprentice.encode_demos(pixels.unsqueeze(0).repeat(2, 1, 1, 1, 1), ids.unsqueeze(0).repeat(2, 1, 1))
        assert tokens.shape == (2, 3 * (2 * 2 + 1) + 2, 64)
        states = bb.encode_text(apprentice.backbone, ["a ball on sand"] * 2)
        x, t = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0)), torch.tensor([500, 500])
        mixed = apprentice(x, t, states, tokens, torch.tensor([0.0, 1.0])).sample
        reference = base.unet(x, t, encoder_hidden_states=states).sample
    torch.testing.assert_close(mixed[0], reference[0], rtol=1e-5, atol=1e-5)
    assert (mixed[1] - reference[1]).abs().max() > 1e-4  # the text tokens speak at once; the branches do not yet
    backward_on_demos(apprentice, pixels, ids)
    assert apprentice.adapter.encoder.text_head[0].weight.grad.abs().sum() > 0
    # The warm start: the head regresses the text states of the identity spelled out.
    train, test = tw.split_subjects(0, 0.2)
    info = demo_encoder.pretrain(apprentice, train, test, steps=2, batch_size=8, eval_n=8, version=2)
    assert info["steps"] == 2 and info["text_mse"] > 0 and info["text_mse_of_mean"] > 0
    with pytest.raises(ValueError, match="text_tokens=40"):
        demo_encoder.text_targets(apprentice.backbone, test[:2], 40)
    ap.save_demo_encoder(apprentice, str(tmp_path / "warm.safetensors"))
    fresh = ap.Apprentice(bb.create_backbone("tiny", seed=0), demo_grid=2, zero_init="out", text_tokens=2)
    ap.load_demo_encoder(fresh, str(tmp_path / "warm.safetensors"))
    for mine, theirs in zip(
        fresh.adapter.encoder.text_head.parameters(), apprentice.adapter.encoder.text_head.parameters()
    ):
        assert torch.equal(mine, theirs)
    with pytest.raises(ValueError, match="does not fit this apprentice"):
        ap.load_demo_encoder(
            ap.Apprentice(bb.create_backbone("tiny", seed=0), demo_grid=2), str(tmp_path / "warm.safetensors")
        )
    save_apprentice(apprentice.eval(), str(tmp_path / "saved"), {"note": "test"})
    loaded = load_apprentice(str(tmp_path / "saved"))
    assert loaded.adapter.config.text_tokens == 2
    args = ("a ball on sand", images, captions)
    assert np.array_equal(
        ap.sample(apprentice, *args, num_inference_steps=3, seed=5),
        ap.sample(loaded, *args, num_inference_steps=3, seed=5),
    )
