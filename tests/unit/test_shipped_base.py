"""The toy world's shipped base (artifacts/toy-v2, made by `python -m apps.pretrain experiment=toy_base`): its
report's identity is re-measured here on the same captions and seeds as the report's quick check."""

import json
from pathlib import Path

import numpy as np

from core.models.backbone import load_backbone
from core.toy import readers as rd
from core.toy import world as tw
from core.toy.evaluation import base_identity

ROOT = Path(__file__).resolve().parents[2]
ARTIFACTS = ROOT / "artifacts" / "toy-v2"


def test_the_shipped_base_draws_test_subjects_at_the_identity_its_report_records():
    report = json.loads((ARTIFACTS / "base" / "report.json").read_text())
    last = report["runs"][-1]
    assert report["step"] == last["to_step"] and report["recipe"]["world_version"] == 2
    assert last["command"].startswith("python -m apps.pretrain experiment=toy_base")
    measured = last["test_identity"]
    assert measured["samples"] >= 256
    backbone = load_backbone(str(ARTIFACTS / "base"))
    reader = rd.load_readers(str(ARTIFACTS / "readers"))
    _, test = tw.split_subjects(0, 0.2)
    check = measured["check"]
    got, _ = base_identity(
        backbone,
        reader,
        test,
        check["samples"],
        np.random.default_rng(measured["seed"] + 3),
        measured["seed"] + 2000,
        measured["guidance"],
        version=2,
    )
    # The same images up to float rounding: at most one sample read differently per attribute.
    assert abs(got["identity"] - check["identity"]) <= 1 / check["samples"] + 1e-6
    # The quick check is a sample of the full measurement, not another number.
    assert abs(check["identity"] - measured["identity"]) < 0.25
