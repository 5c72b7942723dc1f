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
