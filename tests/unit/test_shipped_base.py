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


def test_the_guidance_scale_is_chosen_on_train_subjects_by_identity():
    """`choose_guidance` measures identity at each scale on train subjects' captions (never the test subjects the
    base is then measured on) and picks the best: the shipped base collapses at guidance 8 and draws well at 2."""
    from core.toy.evaluation import choose_guidance

    backbone = load_backbone(str(ARTIFACTS / "base"))
    reader = rd.load_readers(str(ARTIFACTS / "readers"))
    train, _ = tw.split_subjects(0, 0.2)
    choice = choose_guidance(backbone, reader, train, [8.0, 2.0], n=32, seed=0, version=2)
    assert choice["subjects"] == "train" and choice["samples"] == 32
    assert set(choice["identity_by_guidance"]) == {"8.0", "2.0"}
    assert choice["chosen"] == 2.0
    assert choice["identity_by_guidance"]["2.0"] > choice["identity_by_guidance"]["8.0"] + 0.1
