"""Mining against the toy corpus's known truth, with a toy scorer trained here (about a minute on 2 cores)."""

import numpy as np
import pytest

from core.config import MineConfig, ScorerConfig, WorldConfig
from core.data import schema
from core.data.images import from_png, to_png
from core.method.mining import mine
from core.toy import world as toyworld
from core.toy.scorer_training import train_scorer


@pytest.fixture(scope="module")
def corpus():
    train, _ = toyworld.split_subjects(0, 0.2)
    rows = toyworld.corpus_rows(train, WorldConfig(corpus_groups=40), np.random.default_rng(7))
    return train, schema.table_from_rows(rows, schema.CORPUS_SCHEMA)


def test_mining_keeps_clusters_purer_than_the_corpus(corpus):
    train, table = corpus
    scorer, losses = train_scorer(ScorerConfig(steps=300), train, progress=False)
    assert np.mean(losses[-20:]) < 0.7 * np.mean(losses[:20])
    rows, summary = mine(table, scorer, MineConfig(), progress=False)
    assert summary["corrupt_images_skipped"] == 3
    assert rows, summary
    assert summary["kept_pure_share"] > summary["corpus_pure_share"], summary
    assert summary["kept_pure_share"] >= 0.8, summary
    assert 0 < summary["pure_groups_kept_share"] <= 1, summary  # some pure groups kept, as a share of all of them
    for row in rows:
        assert 3 <= len(row["demo_images"]) <= 5 and len(row["prompts"]) == 4
    schema.table_from_rows(rows, schema.DS_SCHEMA)  # rows match the D_S schema


def test_mining_skips_and_counts_corrupt_images_and_drops_small_groups(corpus):
    from core.models.scorer import create_scorer

    _, table = corpus
    rows, summary = mine(
        table,
        create_scorer(ScorerConfig()),
        MineConfig(min_image_image=-1, min_image_text=-1, min_cluster_size=7),
        progress=False,
    )
    assert rows == [] and summary["corrupt_images_skipped"] == 3
    assert summary["dropped_too_small"] == summary["groups"]


def test_mining_resizes_images_of_other_sizes_and_counts_them():
    from core.models.scorer import create_scorer

    rng = np.random.default_rng(0)
    subject = toyworld.all_subjects()[0]
    big = to_png(np.repeat(np.repeat(toyworld.render(subject, toyworld.random_scene(rng)), 2, 0), 2, 1))  # 64x64
    rows = [
        {
            "url": "u",
            "image": big if i == 0 else to_png(toyworld.render(subject, toyworld.random_scene(rng))),
            "caption": "a ball on sand",
            "truth_subject_id": None,
        }
        for i in range(4)
    ]
    out, summary = mine(
        schema.table_from_rows(rows, schema.CORPUS_SCHEMA),
        create_scorer(ScorerConfig()),
        MineConfig(min_image_image=-1, min_image_text=-1),
        progress=False,
    )
    assert summary["images_resized"] == 1 and len(out) == 1
    assert from_png(out[0]["demo_images"][0]).shape == (32, 32, 3)
