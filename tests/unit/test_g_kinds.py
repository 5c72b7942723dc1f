"""Kinds of G the expert pool writes besides the experts' renders (`expert.kind`): "oracle", the true render of each
prompt, and "raw", each demo the target of its own caption; one kind per G."""

import dataclasses
import json

import numpy as np
import pytest

from core.config import EvaluateConfig, ExpertConfig, ScorerConfig, WorldConfig
from core.data import g
from core.data.images import from_png
from core.method.expert import Expert
from core.models.backbone import create_backbone
from core.models.scorer import create_scorer
from core.toy import world as tw
from core.toy.evaluation import eval_set
from core.toy.world import truth_subject

PROVENANCE = {"base_checkpoint_hash": "b", "expert_config_hash": "e", "scorer_hash": "s"}


@pytest.fixture(scope="module")
def record():
    world = WorldConfig(version=2)
    rec = eval_set(world, EvaluateConfig(num_subjects=1, prompts_per_subject=4, num_demos=3))[0]
    return {k: v for k, v in rec.items() if k != "oracle"}


def expert(kind: str) -> Expert:
    cfg = ExpertConfig(kind=kind, samples_per_prompt=2)
    return Expert(create_backbone("tiny"), create_scorer(ScorerConfig()), cfg, PROVENANCE, world_version=2)


def test_oracle_rows_are_true_renders_of_what_each_prompt_asks(record):
    rows, stats = expert("oracle").run_subject(record)
    subject = truth_subject(record)
    assert len(rows) == 2 * len(record["prompts"]) and stats["fine_tune_s"] == 0.0
    for row in rows:
        truth = json.loads(record["prompt_truths"][record["prompt_ids"].index(row["prompt_id"])])
        image = from_png(row["image"]).astype(int)
        body = np.array(tw.PALETTE[truth.get("body", subject.body)])
        if truth.get("style") is None:  # the body's colour is drawn as asked (or as the subject's own)
            assert (np.abs(image - body).sum(-1) < 30).sum() >= 40, row["prompt"]
        if "background" in truth and truth.get("style") is None:
            corner = image[:3, :3].reshape(-1, 3).mean(0)
            assert np.abs(corner - np.array(tw.BACKGROUNDS[truth["background"]])).sum() < 30, row["prompt"]
    mined = {"subject_id": "s1", "subject_truth": json.dumps({"subject_id": subject.subject_id})}
    assert truth_subject(mined) == subject  # a pure mined cluster names its subject by id
    again, _ = expert("oracle").run_subject(record)  # seeded by subject and prompt
    assert [r["image"] for r in again] == [r["image"] for r in rows]
    assert {r["sample_index"] for r in rows} == {0, 1} and len({r["image"] for r in rows}) > len(record["prompts"])


def test_raw_rows_hold_each_demo_as_the_target_of_its_own_caption(record):
    rows, _ = expert("raw").run_subject(record)
    assert len(rows) == len(record["demo_images"]) == 3
    for j, row in enumerate(rows):
        assert np.array_equal(from_png(row["image"]), from_png(record["demo_images"][j]))
        assert row["prompt"] == record["demo_captions"][j] and row["prompt_skill"] == "raw"
        assert row["demo_images"] == [d for i, d in enumerate(record["demo_images"]) if i != j]
    lonely = {**record, "demo_images": record["demo_images"][:1], "demo_captions": record["demo_captions"][:1]}
    with pytest.raises(ValueError, match="at least 2 demos"):
        expert("raw").run_subject(lonely)


def test_a_g_holds_one_kind(tmp_path, record):
    root = str(tmp_path / "g")
    rows, _ = expert("oracle").run_subject(record)
    g.write_subject(rows, root, record["subject_id"], kind="oracle")
    assert g.resume_state(root, {**PROVENANCE, "kind": "oracle"}).done == {record["subject_id"]}
    with pytest.raises(ValueError, match="G mixes 2 provenances"):
        g.resume_state(root, {**PROVENANCE, "kind": "finetune"})
    with pytest.raises(ValueError, match="no known toy subject"):
        expert("oracle").run_subject({**record, "subject_truth": None})
    with pytest.raises(ValueError, match="unknown expert.kind"):
        Expert(create_backbone("tiny"), None, dataclasses.replace(ExpertConfig(), kind="copy"), PROVENANCE)
