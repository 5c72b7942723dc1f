"""The evaluation's metrics on known inputs: the oracle scores at the maximum, a demo copied back scores CLIP-I 1."""

import numpy as np

from core import evaluation
from core.config import EvaluateConfig, ScorerConfig, WorldConfig
from core.scorer import create_scorer
from core.toyworld import from_png


def test_metrics_reach_their_maximum_on_identical_and_oracle_images():
    records = evaluation.eval_set(WorldConfig(), EvaluateConfig(num_subjects=2, prompts_per_subject=4))
    copies = [[[from_png(r["demo_images"][0])] * 2 for _ in r["prompts"]] for r in records]
    outputs = {"oracle": [r["oracle"] for r in records], "copy": copies}
    # Keep only the copied demo as the demonstration: CLIP-I of an image with itself is 1, whatever the encoder.
    scorer = create_scorer(ScorerConfig())
    for r in records:
        r["demo_images"] = r["demo_images"][:1]
    table = evaluation.score(records, outputs, scorer)
    assert table["oracle"]["subject_fidelity"] == 1.0 and table["oracle"]["text_fidelity"] == 1.0
    assert abs(table["copy"]["clip_i"] - 1.0) < 1e-5
    assert table["copy"]["text_fidelity"] < 1.0  # a plain demo does not follow edit, accessory or style prompts
    assert "| oracle | 1.000 | 1.000 |" in evaluation.markdown_table(table)
    grid = evaluation.grid(records, outputs)
    assert grid.size[0] > 32 * 3 * 3 and grid.size[1] > 32 * 3 * 8
