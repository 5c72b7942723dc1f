"""Training options of the apprentice stage that shape its optimizer."""

from actors.apprentice_trainer import named_trainable, param_groups
from core.config import ApprenticeConfig
from core.method.apprentice import Apprentice
from core.models.backbone import create_backbone


def test_new_layers_get_their_own_learning_rate():
    apprentice = Apprentice(create_backbone("tiny"), 2)
    params = named_trainable(apprentice)
    one = param_groups(params, ApprenticeConfig(lr=1e-4))
    assert len(one) == 1 and len(one[0]["params"]) == len(params) and one[0]["lr"] == 1e-4
    base, new = param_groups(params, ApprenticeConfig(lr=1e-4, lr_new=1e-3))
    assert (base["lr"], new["lr"]) == (1e-4, 1e-3)
    adapter = {id(p) for p in apprentice.new_parameters().values()}
    assert {id(p) for p in new["params"]} == adapter and not adapter & {id(p) for p in base["params"]}
    assert len(base["params"]) + len(new["params"]) == len(params)


def test_a_trained_apprentice_initialises_a_new_run_only_when_it_fits(tmp_path):
    import pytest
    import torch

    from actors.apprentice_trainer import load_init
    from core.pipelines.suti import save_apprentice

    torch.manual_seed(0)
    trained = Apprentice(create_backbone("tiny"), 2, zero_init="out")
    with torch.no_grad():
        for p in trained.new_parameters().values():
            p.add_(0.5)  # as training would move the new layers away from their initial values
    save_apprentice(trained, str(tmp_path / "trained"), {})
    fresh = Apprentice(create_backbone("tiny"), 2, zero_init="out")
    load_init(fresh, str(tmp_path / "trained"))
    for name, value in trained.state_dict().items():
        assert torch.allclose(fresh.state_dict()[name].float(), value.float(), atol=1e-3), name
    other_grid = Apprentice(create_backbone("tiny"), 4)
    with pytest.raises(ValueError, match="apprentice.init .* does not fit"):
        load_init(other_grid, str(tmp_path / "trained"))
