"""Base pretraining: a saved state resumes where it stopped, and the EMA warms up (a fixed decay over a short run
would keep the random initialisation, as it did in the first GPU run)."""

from core.config import PretrainConfig
from core.models.backbone import create_backbone
from core.toy import world as tw
from core.toy.pretrain import pretrain


def test_a_saved_state_resumes_at_its_step_with_its_weights():
    train, _ = tw.split_subjects(0, 0.2)
    cfg = PretrainConfig(steps=4, batch_size=4, lr=1e-3)
    states = []
    backbone = create_backbone("tiny", seed=0)
    losses = pretrain(
        backbone, train, cfg, progress=False, ema_decay=0.999, save_state=lambda s: states.append(s), save_every=2
    )
    assert len(losses) == 4 and [int(s["step"]) for s in states] == [2, 4]
    resumed = create_backbone("tiny", seed=1)
    more = pretrain(resumed, train, cfg, progress=False, ema_decay=0.999, resume=states[0])
    assert len(more) == 2  # steps 3 and 4 only


def test_ema_warms_up_so_a_short_run_moves_the_weights():
    train, _ = tw.split_subjects(0, 0.2)
    backbone = create_backbone("tiny", seed=0)
    before = [p.detach().clone() for p in backbone.unet.parameters()]
    pretrain(backbone, train, PretrainConfig(steps=5, batch_size=4, lr=1e-3), progress=False, ema_decay=0.999)
    moved = sum(float((p.detach() - b).abs().sum()) for p, b in zip(backbone.unet.parameters(), before))
    raw = create_backbone("tiny", seed=0)
    pretrain(raw, train, PretrainConfig(steps=5, batch_size=4, lr=1e-3), progress=False)
    moved_raw = sum(float((p.detach() - b).abs().sum()) for p, b in zip(raw.unet.parameters(), before))
    assert moved > 0.5 * moved_raw  # a fixed 0.999 would move them by about 0.5% of that


def test_v_prediction_and_min_snr_weighting_define_the_loss():
    import torch
    from diffusers import DDPMScheduler

    from core.models import sampling

    x0, noise = torch.randn(6, 3, 8, 8), torch.randn(6, 3, 8, 8)
    t = torch.tensor([0, 10, 100, 500, 900, 999])
    eps = DDPMScheduler(num_train_timesteps=1000, beta_schedule="squaredcos_cap_v2")
    v = DDPMScheduler.from_config(eps.config, prediction_type="v_prediction")
    assert torch.equal(sampling.denoising_target(eps, x0, noise, t), noise)
    assert torch.allclose(sampling.denoising_target(v, x0, noise, t), v.get_velocity(x0, noise, t))
    assert sampling.snr_weights(eps, t, None) is None
    w_eps, w_v = sampling.snr_weights(eps, t, 5.0), sampling.snr_weights(v, t, 5.0)
    alpha_bar = eps.alphas_cumprod[t]
    snr = alpha_bar / (1 - alpha_bar)
    # Clean timesteps (SNR above gamma) are down-weighted; noisy ones keep weight 1 (epsilon) or SNR / (SNR + 1) (v).
    assert torch.all(w_eps[snr > 5] < 1) and torch.allclose(w_eps[snr <= 5], torch.ones(int((snr <= 5).sum())))
    assert torch.allclose(w_v, snr.clamp(max=5) / (snr + 1))


def test_the_recipe_reaches_the_model_and_a_budget_ends_training_with_marks_on_time():
    import numpy as np

    from core.models.sampling import sample

    train, _ = tw.split_subjects(0, 0.2)
    backbone = create_backbone("tiny", seed=0)
    marks = []
    cfg = PretrainConfig(
        steps=10**6, batch_size=4, prediction_type="v_prediction", snr_gamma=5.0, schedule="constant", budget_s=3.0
    )
    losses = pretrain(
        backbone,
        train,
        cfg,
        progress=False,
        world_version=2,
        marks_s=(1.0, 2.0),
        on_mark=lambda s, step, modules: marks.append((s, step, len(modules))),
    )
    assert backbone.noise_scheduler.config.prediction_type == "v_prediction"  # its samplers follow
    assert 2 <= len(losses) < 10**6 and all(np.isfinite(losses))  # the 3-second budget ended it, not the steps
    assert [m[0] for m in marks] == [1.0, 2.0] and marks[0][1] <= marks[1][1] <= len(losses) and marks[0][2] == 2
    assert sample(backbone, ["a red ball with blue dots on sand"], num_inference_steps=2).shape == (1, 32, 32, 3)


def test_a_resumed_schedule_continues_at_its_step_after_a_short_ramp():
    import torch

    from core.models.schedules import warmup_cosine

    def lrs(n: int, **kwargs) -> list[float]:
        opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
        sched = warmup_cosine(opt, 100, **kwargs)
        out = []
        for _ in range(n):
            out.append(opt.param_groups[0]["lr"])
            opt.step()
            sched.step()
        return out

    whole = lrs(100)
    assert lrs(60, start_step=40) == whole[40:]  # not a second warm-up and decay
    ramped = lrs(60, start_step=40, ramp_steps=10)
    assert ramped[0] < 0.2 * whole[40] and abs(ramped[9] - whole[49]) < 1e-12 and ramped[20:] == whole[60:]


def test_a_checkpoint_ships_fp16_ema_weights_and_a_later_run_continues_from_its_step(tmp_path):
    import json

    import pytest
    import torch

    from core.toy.pretrain import checkpoint_recipe, load_checkpoint, save_checkpoint

    train, _ = tw.split_subjects(0, 0.2)
    cfg = PretrainConfig(steps=6, batch_size=4, lr=1e-3, ema_decay=0.99)
    recipe = checkpoint_recipe("tiny", cfg, 2)
    folder = str(tmp_path / "base")
    assert load_checkpoint(folder, recipe) is None
    backbone = create_backbone("tiny", seed=0)
    report = {"recipe": recipe, "runs": [{"command": "first"}]}
    pretrain(
        backbone,
        train,
        PretrainConfig(steps=4, batch_size=4, lr=1e-3, ema_decay=0.99),
        progress=False,
        world_version=2,
        save_state=lambda s: save_checkpoint(backbone, s, folder, report),
        save_every=3,
    )
    saved = json.loads((tmp_path / "base" / "report.json").read_text())
    assert saved["step"] == 4 and saved["runs"] == [{"command": "first"}] and not (tmp_path / "base.old").exists()
    loaded, resume, _ = load_checkpoint(folder, recipe)
    assert int(resume["step"]) == 4 and next(loaded.unet.parameters()).dtype == torch.float32
    for got, want in zip(loaded.unet.parameters(), backbone.unet.parameters()):  # the EMA weights, in fp16
        assert torch.allclose(got, want, atol=2e-3, rtol=2e-3)
    more = pretrain(loaded, train, cfg, progress=False, world_version=2, resume=resume)
    assert len(more) == 2  # steps 5 and 6 only
    with pytest.raises(ValueError, match="another recipe.*prediction_type"):
        load_checkpoint(folder, {**recipe, "prediction_type": "v_prediction"})
    # A crash between replace_dir's two renames leaves the previous checkpoint as base.old: it is still found.
    (tmp_path / "base").rename(tmp_path / "base.old")
    assert int(load_checkpoint(folder, recipe)[1]["step"]) == 4
