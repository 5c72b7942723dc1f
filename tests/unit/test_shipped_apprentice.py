"""The shipped apprentice (artifacts/toy-v2/apprentice, trained by apps.train on the experts' G): given 3 demos of a
few test subjects that no stage trained on, it draws them better than the base and than itself without demos. The
settings are the main job's (experiment=demo); sampling is seeded, so the numbers are the same on every run."""

from pathlib import Path

from apps.config import compose
from apps.evaluate import sample_apprentice_and_base
from core.models.scorer import load_scorer
from core.toy import evaluation
from core.toy.readers import load_readers

ROOT = Path(__file__).resolve().parents[2]
APPRENTICE = ROOT / "artifacts" / "toy-v2" / "apprentice"


def test_the_shipped_apprentice_draws_test_subjects_from_three_demos_better_than_the_base_and_than_without_them():
    config = compose(
        [
            "experiment=demo",
            f"paths.apprentice={APPRENTICE}",
            f"paths.base={ROOT / 'artifacts' / 'toy-v2' / 'base'}",
            "evaluate.num_subjects=6",
            "evaluate.prompts_per_subject=4",
            "evaluate.num_demos=3",
            "evaluate.rows=[base,apprentice]",
            "evaluate.demo_counts=[0]",
            "apprentice.threads=2",
        ]
    )
    records = evaluation.eval_set(config.world, config.evaluate)
    assert len(records) == 6 and all(len(r["demo_images"]) == 3 for r in records)
    sampled = sample_apprentice_and_base(config, [{k: v for k, v in r.items() if k != "oracle"} for r in records])
    rows = ["base", "apprentice", "apprentice, 0 demos"]
    table = evaluation.score(
        records,
        {k: sampled[k] for k in rows},
        load_scorer(str(ROOT / "artifacts" / "toy-v2" / "scorer")),
        load_readers(str(ROOT / "artifacts" / "toy-v2" / "readers")),
        resamples=200,
        seed=0,
    )
    fidelity = {k: table[k]["subject_fidelity"] for k in rows}
    assert fidelity["apprentice"] >= fidelity["base"] + 0.2, fidelity
    assert fidelity["apprentice"] >= fidelity["apprentice, 0 demos"] + 0.2, fidelity
