"""The evaluation's metrics on known inputs: the oracle scores near the maximum, a demo copied back scores CLIP-I 1."""

import os

from core.config import EvaluateConfig, ScorerConfig, WorldConfig
from core.data.images import from_png
from core.models.scorer import create_scorer
from core.toy import evaluation
from core.toy.readers import load_readers

READERS = os.path.join(os.path.dirname(__file__), "..", "..", "artifacts", "toy", "readers")


def test_metrics_reach_their_maximum_on_identical_and_oracle_images():
    records = evaluation.eval_set(WorldConfig(), EvaluateConfig(num_subjects=2, prompts_per_subject=4))
    copies = [[[from_png(r["demo_images"][0])] * 2 for _ in r["prompts"]] for r in records]
    outputs = {"oracle": [r["oracle"] for r in records], "copy": copies}
    # Keep only the copied demo as the demonstration: CLIP-I of an image with itself is 1, whatever the encoder.
    scorer = create_scorer(ScorerConfig())
    for r in records:
        r["demo_images"] = r["demo_images"][:1]
    table = evaluation.score(records, outputs, scorer, load_readers(READERS))
    # The readers are trained (about 99% on clean renders of unseen subjects), so the oracle is near, not at, 1.
    assert table["oracle"]["subject_fidelity"] >= 0.9 and table["oracle"]["text_fidelity"] >= 0.9
    assert abs(table["copy"]["clip_i"] - 1.0) < 1e-5
    assert table["copy"]["text_fidelity"] < table["oracle"]["text_fidelity"]  # a plain demo follows no edit or style
    assert "| oracle |" in evaluation.markdown_table(table)
    grid = evaluation.grid(records, outputs)
    assert grid.size[0] > 32 * 3 * 3 and grid.size[1] > 32 * 3 * 8
