"""The evaluation's metrics on known inputs: the oracle scores near the maximum, a demo copied back scores CLIP-I 1."""

import math
import os

import numpy as np
import pytest

from core.config import EvaluateConfig, ScorerConfig, WorldConfig
from core.data.images import from_png, to_png
from core.models.scorer import create_scorer
from core.toy import evaluation
from core.toy import world as tw
from core.toy.readers import load_readers

READERS = os.path.join(os.path.dirname(__file__), "..", "..", "artifacts", "toy-v2", "readers")


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
    oracle = table["oracle"]
    for metric in evaluation.METRICS:  # each mean inside its interval over subjects
        lo, hi = oracle["ci"][metric]
        assert lo - 1e-9 <= oracle[metric] <= hi + 1e-9, (metric, oracle["ci"])
    assert set(oracle["identity"]) == set(evaluation.IDENTITY) and min(oracle["identity"].values()) >= 0.8
    assert set(oracle["text_by_skill"]) == {p for r in records for p in r["prompt_skills"]}
    assert table["copy"]["text_by_skill"]["style"] < oracle["text_by_skill"]["style"]
    markdown = evaluation.markdown_table(table)
    assert "| oracle |" in markdown and "text: style" in markdown and "[" in markdown
    grid = evaluation.grid(records, outputs)
    assert grid.size[0] > 32 * 3 * 3 and grid.size[1] > 32 * 3 * 8


def test_bootstrap_intervals_are_over_subjects():
    same = evaluation.bootstrap_interval(np.full(5, 2.0), np.full(5, 4.0), 200, 0)
    assert same == [0.5, 0.5]  # every subject alike: no spread
    lo, hi = evaluation.bootstrap_interval(np.array([0.0, 4.0, 0.0, 4.0]), np.full(4, 4.0), 2000, 0)
    assert 0.0 <= lo < 0.5 < hi <= 1.0
    assert all(math.isnan(v) for v in evaluation.bootstrap_interval(np.zeros(3), np.zeros(3), 100, 0))


def test_the_evaluation_set_can_be_drawn_from_validation_subjects():
    world = WorldConfig(validation_fraction=0.1)
    train, _ = tw.split_subjects(world.seed, world.test_fraction)
    _, validation = tw.split_validation(train, world.seed, world.validation_fraction)
    records = evaluation.eval_set(world, EvaluateConfig(num_subjects=4, split="validation"))
    assert {r["subject_id"] for r in records} <= {s.subject_id for s in validation}
    with pytest.raises(ValueError, match="validation_fraction"):
        evaluation.eval_set(WorldConfig(), EvaluateConfig(split="validation"))


def test_the_experts_plateau_is_the_fewest_steps_reaching_the_best_interval():
    from apps.evaluate import expert_plateau, expert_row_name
    from core.config import ExpertConfig, PipelineConfig

    config = PipelineConfig(expert=ExpertConfig(steps=60), evaluate=EvaluateConfig(expert_steps=[20, 40, 100]))
    assert [expert_row_name(config, n) for n in (20, 60)] == ["expert, 20 steps", "expert"]

    def row(mean, lo):
        return {"subject_fidelity": mean, "text_fidelity": 1 - mean, "ci": {"subject_fidelity": [lo, mean + 0.1]}}

    table = {
        "expert, 20 steps": row(0.40, 0.30),
        "expert, 40 steps": row(0.62, 0.55),
        "expert": row(0.70, 0.60),  # 60 steps: the best; 40 steps' 0.62 reaches its interval's lower end 0.60
        "expert, 100 steps": row(0.66, 0.58),
    }
    plateau = expert_plateau(config, table)
    assert plateau["steps"] == 40 and plateau["best_steps"] == 60
    assert plateau["subject_fidelity_by_steps"] == {"20": 0.40, "40": 0.62, "60": 0.70, "100": 0.66}
    table["expert, 40 steps"] = row(0.59, 0.5)
    assert expert_plateau(config, table)["steps"] == 60
    assert expert_plateau(PipelineConfig(), table) is None  # no expert_steps: no curve


def test_the_apprentices_gates_hold_or_miss_by_their_gains_and_need_their_rows():
    from apps.evaluate import check_gates, gate_specs
    from core.config import PipelineConfig

    gated = EvaluateConfig(demo_counts=[0, 3], gain_over_base=0.30, gain_over_no_demos=0.10)
    config = PipelineConfig(evaluate=gated)
    table = {
        "base": {"subject_fidelity": 0.40},
        "apprentice": {"subject_fidelity": 0.75},
        "apprentice, 0 demos": {"subject_fidelity": 0.70},
    }
    gates = {g["gate"]: g for g in check_gates(config, table)}
    assert gates["subject fidelity over the base"]["held"] and gates["subject fidelity over the base"]["needed"] == 0.7
    assert not gates["subject fidelity over 0 demos"]["held"]  # 0.75 < 0.70 + 0.10
    table["apprentice, 0 demos"]["subject_fidelity"] = 0.65
    assert all(g["held"] for g in check_gates(config, table))
    assert check_gates(PipelineConfig(), table) == []  # no gates set: none checked
    with pytest.raises(ValueError, match="0 in evaluate.demo_counts"):
        gate_specs(PipelineConfig(evaluate=EvaluateConfig(gain_over_no_demos=0.1)))
    with pytest.raises(ValueError, match="'base' in evaluate.rows"):
        gate_specs(PipelineConfig(evaluate=EvaluateConfig(rows=["apprentice"], gain_over_base=0.3)))


def test_readers_made_for_another_world_version_are_refused(tmp_path):
    import dataclasses
    import json

    from apps.evaluate import check_readers_world
    from core.config import PathsConfig, PipelineConfig

    (tmp_path / "info.json").write_text(json.dumps({"world_version": 1}))
    config = PipelineConfig(paths=PathsConfig(readers=str(tmp_path)))
    with pytest.raises(ValueError, match="read world version 1, not world.version=2"):
        check_readers_world(config)
    check_readers_world(dataclasses.replace(config, world=WorldConfig(version=1)))
    (tmp_path / "info.json").write_text(json.dumps({"steps": 3}))  # says nothing: trusted
    check_readers_world(config)


def test_g_truth_reads_each_kept_row_against_the_truth_of_its_subject_and_prompt():
    """G's rows checked by the readers: true renders of each prompt follow it, a demo drawn back follows no edit or
    style; a threshold that keeps only the true renders raises the kept rows' text fidelity; rows of a cluster with
    no known subject are left out."""
    records = evaluation.eval_set(WorldConfig(), EvaluateConfig(num_subjects=3, prompts_per_subject=4))
    rows = []
    for r in records:
        for pid, skill, oracle in zip(r["prompt_ids"], r["prompt_skills"], r["oracle"], strict=True):
            rows.append({"subject_id": r["subject_id"], "prompt_id": pid, "prompt_skill": skill,
                         "image": to_png(oracle[0]), "delta": 0.1})  # fmt: skip
            rows.append({"subject_id": r["subject_id"], "prompt_id": pid, "prompt_skill": skill,
                         "image": r["demo_images"][0], "delta": -0.1})  # fmt: skip
    impure = {**records[0], "subject_id": "impure", "subject_truth": None}
    rows.append({**rows[0], "subject_id": "impure"})
    checked = evaluation.g_truth(rows, [*records, impure], load_readers(READERS))
    assert len(checked) == len(rows) - 1
    every, kept = evaluation.kept_truth(checked, None), evaluation.kept_truth(checked, 0.0)
    assert every["rows"] == len(checked) and kept["rows"] == len(checked) // 2
    assert kept["text_fidelity"] >= 0.9 and kept["subject_fidelity"] >= 0.9
    assert every["text_fidelity"] < kept["text_fidelity"] - 0.2
    assert set(kept["text_by_skill"]) == {s for r in records for s in r["prompt_skills"]}
    assert evaluation.kept_truth(checked, 1.0) == {"rows": 0, "subject_fidelity": None, "text_fidelity": None,
                                                   "text_by_skill": {}}  # fmt: skip
