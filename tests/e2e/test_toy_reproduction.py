"""`python -m benchmarks.toy_reproduction --quick`, the benchmark's smoke check, end to end from the shipped
artifacts: G shards from experts, expert checkpoints, every apprentice variant, the table with intervals."""

import json
import os
from pathlib import Path

from benchmarks import toy_reproduction as tr


def test_quick_benchmark_writes_every_row_study_and_grid(tmp_path):
    work, out = tmp_path / "work", tmp_path / "out"
    tr.main(["--quick", "--work", str(work), "--out", str(out)])
    result = json.loads(Path(out / "toy_reproduction_quick.json").read_text())
    assert list(result["rows"]) == list(tr.ROWS)
    for name, row in result["rows"].items():
        mean, lo, hi = row["subject_fidelity"]
        assert lo <= mean <= hi, name
    assert result["rows"]["oracle"]["subject_fidelity"][0] >= 0.9  # the readers read real renders right
    for metric in tr.IDENTITY_METRICS.values():  # and each identity attribute of them
        assert result["rows"]["oracle"][metric][0] >= 0.8, metric
    assert result["rows"]["SuTI apprentice"]["seconds_per_subject"] > 0
    for key in ("demos", "demos_raw", "demos_oracle_g"):  # the SuTI, raw and oracle-G apprentices with 0/1/3/5 demos
        assert set(result[key]) == {"0", "1", "3", "5"}, key
    assert set(result["sweep"]) <= {tr.lam_name(lam) for lam in tr.SWEEP} and "none" in result["sweep"]
    assert 0.0 <= result["mine"]["precision"] <= 1.0 and 0.0 <= result["mine"]["recall"] <= 1.0
    assert result["expert_curve"]["plateau_steps"] in tr.QUICK.expert_checkpoints
    assert set(result["expert_curve"]["text_fidelity_by_steps"]) == set(
        result["expert_curve"]["subject_fidelity_by_steps"]
    )
    # G: one parquet shard per expert subject; re-running the stage skips them all.
    shards = sorted(os.listdir(work / "g"))
    assert len(shards) == tr.QUICK.g_subjects and all(s.endswith(".parquet") for s in shards)
    tr.main(["--quick", "--work", str(work), "--out", str(out), "--stage", "g"])
    assert sorted(os.listdir(work / "g")) == shards
    assert (out / "toy_reproduction_quick_grid.png").stat().st_size > 1000
    assert "| SuTI apprentice |" in (out / "toy_reproduction_quick.md").read_text()
