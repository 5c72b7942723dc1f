"""The attribute readers and the toy world's shipped artifacts (artifacts/toy-v2, for world version 2: the base made
by `python -m apps.pretrain experiment=toy_base`, the scorer by `python -m apps.scorer experiment=toy_base`, each
with the record of how)."""

import json
import os
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from core.toy import readers as rd
from core.toy import world as tw
from core.toy.evaluation import identity_pairs, read_identity

ARTIFACTS = os.path.join(os.path.dirname(__file__), "..", "..", "artifacts", "toy-v2")


def test_label_rows_ignore_what_a_style_hides():
    s = tw.Subject("egg", "green", "stripes", "white")
    row = rd.label_row(s, tw.Scene("sand", 16, 16, 9, style="grayscale"))
    heads = list(rd.HEADS)
    assert row[heads.index("body")] == rd.IGNORE and row[heads.index("pattern_colour")] == rd.IGNORE
    assert rd.HEADS["pattern"][row[heads.index("pattern")]] == "stripes"
    row = rd.label_row(s, tw.Scene("sand", 16, 16, 9, body="red", accessory="balloon"))
    assert (
        rd.HEADS["body"][row[heads.index("body")]] == "red"
        and rd.HEADS["accessory"][row[heads.index("accessory")]] == "balloon"
    )


def test_training_lowers_the_loss_and_a_saved_reader_reads_the_same(tmp_path):
    train, _ = tw.split_subjects(0, 0.2)
    images, labels = rd.labelled_batch(train, 64, np.random.default_rng(0))

    def held_out_loss(model):
        with torch.no_grad():
            return float(rd.loss_fn(model(rd.to_input(images)), torch.as_tensor(labels)))

    torch.manual_seed(0)
    before = held_out_loss(rd.AttributeReader().eval())
    reader, _ = rd.train_readers(train, 30, batch_size=32, lr=3e-3, progress=False)
    assert held_out_loss(reader) < before - 0.3
    rd.save_readers(reader, str(tmp_path), dtype=torch.float32)
    assert np.array_equal(rd.predict(rd.load_readers(str(tmp_path)), images), rd.predict(reader, images))


def test_shipped_readers_read_unseen_test_subjects():
    reader = rd.load_readers(os.path.join(ARTIFACTS, "readers"))
    _, test = tw.split_subjects(0, 0.2)
    images, labels = rd.labelled_batch(test, 400, np.random.default_rng(123), 32, 2)
    acc = rd.accuracy(reader, images, labels)
    assert acc["mean"] >= 0.98, acc
    assert min(acc.values()) >= 0.9, acc
    reads = rd.read(reader, images[:4])
    assert set(reads[0]) == set(rd.HEADS)


def test_shipped_artifacts_load_fit_the_budget_and_say_how_they_were_made():
    from core.models.backbone import load_backbone
    from core.models.sampling import sample
    from core.models.scorer import load_scorer

    base = load_backbone(os.path.join(ARTIFACTS, "base"))
    scorer = load_scorer(os.path.join(ARTIFACTS, "scorer"))
    images = sample(base, ["a red ball with blue dots on grass"], num_inference_steps=2, seed=0)
    assert images.shape == (1, 32, 32, 3)
    assert scorer.encode_images(images).shape[0] == 1
    root = os.path.join(ARTIFACTS, "..")
    size = sum(os.path.getsize(os.path.join(d, f)) for d, _, files in os.walk(root) for f in files)
    assert size <= 40 * 2**20, f"shipped artifacts are {size / 2**20:.1f} MiB"
    report = json.loads(Path(ARTIFACTS, "base", "report.json").read_text())
    assert all(run["command"].startswith("python -m apps.pretrain") for run in report["runs"])
    info = json.loads(Path(ARTIFACTS, "scorer", "info.json").read_text())
    assert info["command"].startswith("python -m apps.scorer") and info["world_version"] == 2
    # It tells test subjects apart by caption and by another view, far above chance (1/256).
    assert info["test_retrieval"]["caption_top1"] > 0.8 and info["test_retrieval"]["view_top1"] > 0.5, info
    assert {"steps", "seconds"} <= set(json.loads(Path(ARTIFACTS, "readers", "info.json").read_text()))


def test_identity_reports_each_pattern_on_its_own():
    """`read_identity` gives the accuracy per value of each identity attribute, so a value that is drawn wrong (one
    line orientation for the other, say) shows by name: here the labels call every striped subject barred."""
    reader = rd.load_readers(os.path.join(ARTIFACTS, "readers"))
    rng = np.random.default_rng(5)
    _, test = tw.split_subjects(0, 0.2)
    pairs = identity_pairs(test, 64, rng, 2)
    images = np.stack([tw.render(s, sc, rng=rng) for s, sc in pairs])
    clean = read_identity(reader, images, pairs)
    assert set(clean["by_value"]["pattern"]) == set(tw.PATTERNS)
    assert min(clean["by_value"]["pattern"].values()) >= 0.9

    mislabelled = [(replace(s, pattern="bars") if s.pattern == "stripes" else s, sc) for s, sc in pairs]
    wrong = read_identity(reader, images, mislabelled)
    assert "stripes" not in wrong["by_value"]["pattern"]
    assert wrong["by_value"]["pattern"]["bars"] < 0.7
    assert wrong["by_value"]["pattern"]["dots"] == clean["by_value"]["pattern"]["dots"]
    assert wrong["pattern"] < clean["pattern"]
