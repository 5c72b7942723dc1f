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
