"""Mining against the toy corpus's known truth, with a toy scorer trained here (about a minute on 2 cores)."""

import numpy as np
import pytest

from core import schema, toyworld
from core.config import MineConfig, ScorerConfig, WorldConfig
from core.mining import mine
from core.scorer import train_scorer


@pytest.fixture(scope="module")
def corpus():
    train, _ = toyworld.split_subjects(0, 0.2)
    rows = toyworld.corpus_rows(train, WorldConfig(corpus_groups=40), np.random.default_rng(7))
    return train, schema.table_from_rows(rows, schema.CORPUS_SCHEMA)


def test_mining_keeps_clusters_purer_than_the_corpus(corpus):
    train, table = corpus
    scorer, losses = train_scorer(ScorerConfig(steps=300), train, progress=False)
    assert np.mean(losses[-20:]) < 0.7 * np.mean(losses[:20])
    rows, summary = mine(table, scorer, MineConfig())
    assert summary["corrupt_images_skipped"] == 3
    assert rows, summary
    assert summary["kept_pure_share"] > summary["corpus_pure_share"], summary
    assert summary["kept_pure_share"] >= 0.8, summary
    for row in rows:
        assert 3 <= len(row["demo_images"]) <= 5 and len(row["prompts"]) == 4
    schema.table_from_rows(rows, schema.DS_SCHEMA)  # rows match the D_S schema


def test_mining_skips_and_counts_corrupt_images_and_drops_small_groups(corpus):
    from core.scorer import create_scorer

    _, table = corpus
    rows, summary = mine(table, create_scorer(ScorerConfig()), MineConfig(min_image_image=-1, min_image_text=-1, min_cluster_size=7))
    assert rows == [] and summary["corrupt_images_skipped"] == 3
    assert summary["dropped_too_small"] == summary["groups"]
