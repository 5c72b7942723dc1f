"""The learnability study end to end in its quick form: readers per world version, the pretraining loop with each
recipe, identity at every mark, and the files it writes."""

import json

from benchmarks import learnability


def test_quick_study_measures_every_candidate_at_every_mark(tmp_path):
    out = learnability.main(["--work", str(tmp_path / "work"), "--out", str(tmp_path / "out"), "--quick"])
    assert list(out["candidates"]) == ["v1", "v2", "v2-v-minsnr"]
    for name, result in out["candidates"].items():
        assert [p["minutes"] for p in result["points"]] == out["marks_min"], name
        assert all(0.0 <= p["identity"] <= 1.0 for p in result["points"])
        assert result["steps"] > 0 and result["seconds_per_step"] > 0
    assert out["candidates"]["v2-v-minsnr"]["recipe"]["prediction_type"] == "v_prediction"
    assert set(out["readers"]) == {"v1", "v2"}
    for suffix in (".json", ".md", ".png", "_samples.png"):
        assert (tmp_path / "out" / f"learnability_quick{suffix}").stat().st_size > 0
    assert json.loads((tmp_path / "out" / "learnability_quick.json").read_text())["chance"] < 0.25
    # A second run resumes: every candidate is kept from the work folder, none is trained again.
    again = learnability.main(["--work", str(tmp_path / "work"), "--out", str(tmp_path / "out"), "--quick"])
    assert again["candidates"] == out["candidates"]
