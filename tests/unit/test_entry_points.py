"""The stage apps as a user runs them: `python -m apps.<stage> ...` with Hydra overrides."""

import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq

ROOT = Path(__file__).resolve().parents[2]


def run_app(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", *args], check=False, capture_output=True, text=True, cwd=ROOT, timeout=300
    )


def test_world_app_writes_the_corpus_and_mine_app_names_what_is_missing(tmp_path):
    done = run_app("apps.world", "experiment=smoke", f"paths.root={tmp_path}", f"hydra.run.dir={tmp_path}/hydra")
    assert done.returncode == 0, done.stderr[-2000:]
    assert '"stage": "world"' in done.stdout
    table = pq.read_table(tmp_path / "corpus" / "corpus.parquet")
    assert table.num_rows > 40 and table.column_names[:3] == ["url", "image", "caption"]
    failed = run_app("apps.mine", "experiment=smoke", f"paths.root={tmp_path}", f"hydra.run.dir={tmp_path}/hydra")
    assert failed.returncode != 0
    assert f"toy scorer not found at '{tmp_path}/scorer' (set by config key `paths.scorer`)" in failed.stderr


def test_pretrain_app_runs_time_boxed_resumable_runs_that_report_each_run(tmp_path):
    import json

    common = ["experiment=smoke", f"paths.root={tmp_path}", f"hydra.run.dir={tmp_path}/hydra", "pretrain.eval_n=8"]
    first = run_app("apps.pretrain", *common, "pretrain.steps=4", "pretrain.save_every=3")
    assert first.returncode == 0, first.stderr[-2000:]
    second = run_app(
        "apps.pretrain", *common, "pretrain.steps=6", "pretrain.budget_s=600", "pretrain.eval_every_s=0.01"
    )
    assert second.returncode == 0, second.stderr[-2000:]
    report = json.loads((tmp_path / "base" / "report.json").read_text())
    assert report["step"] == 6 and report["recipe"]["preset"] == "tiny"
    runs = report["runs"]
    assert [(r["from_step"], r["to_step"]) for r in runs] == [(0, 4), (4, 6)]
    assert runs[1]["command"].startswith("python -m apps.pretrain experiment=smoke")
    measured = runs[1]["test_identity"]
    assert 0.0 <= measured["identity"] <= 1.0 and measured["samples"] == 8 and measured["check"]["samples"] == 8
    assert measured["check"]["identity"] == measured["identity"]  # the same 8 captions and seeds
    curve = runs[1]["curve"]  # a point every 0.01 s of training: after each step
    assert [p["step"] for p in curve] == [5, 6] and all(0.0 <= p["identity"] <= 1.0 for p in curve)
    renoised = runs[1]["readers_on_renoised_test"]
    assert renoised["strength"] == 0.5 and renoised["samples"] == 8 and 0.0 <= renoised["identity"] <= 1.0
    done = run_app("apps.pretrain", *common, "pretrain.steps=6")
    assert done.returncode == 0 and "has all 6 steps already" in done.stdout
    again = run_app("apps.pretrain", *common, "pretrain.steps=6", "pretrain.budget_s=0")  # measure only
    assert again.returncode == 0, again.stderr[-2000:]
    report = json.loads((tmp_path / "base" / "report.json").read_text())
    assert report["step"] == 6 and (report["runs"][2]["from_step"], report["runs"][2]["to_step"]) == (6, 6)
    # The same captions and seeds: the same images up to float rounding, so at most one of the 8 x 3 reads differs.
    assert abs(report["runs"][2]["test_identity"]["identity"] - measured["identity"]) <= 1 / 24 + 1e-6
    changed = run_app("apps.pretrain", *common, "pretrain.steps=8", "pretrain.prediction_type=v_prediction")
    assert changed.returncode != 0 and "pretrain.resume=false" in changed.stderr


def test_readers_app_trains_readers_that_load_and_reports_their_accuracy(tmp_path):
    import json

    from core.toy import readers as rd

    out = tmp_path / "readers"
    done = run_app(
        "apps.readers",
        "experiment=smoke",
        f"paths.root={tmp_path}",
        f"hydra.run.dir={tmp_path}/hydra",
        f"paths.readers={out}",
        "readers.steps=3",
        "readers.batch_size=16",
        "readers.workers=0",
        "readers.eval_n=32",
    )
    assert done.returncode == 0, done.stderr[-2000:]
    info = json.loads((out / "info.json").read_text())
    assert info["steps"] == 3 and info["command"].startswith("python -m apps.readers experiment=smoke")
    assert set(info["clean_test_accuracy"]) >= {"body", "pattern", "pattern_colour", "mean"}
    assert 0.0 <= info["clean_test_identity"] <= 1.0
    assert rd.load_readers(str(out)).width > 0


def test_g_compact_app_brings_a_g_from_before_the_manifest_to_it_and_merges_small_shards(tmp_path):
    import json

    from core.data import g, schema, storage
    from tests.unit.test_g_contract import subject_rows

    root = tmp_path / "g"
    for i in range(6):  # shards as the expert stage wrote them before the manifest: files alone
        table = schema.table_from_rows(subject_rows(f"s{i}", 4), schema.G_SCHEMA)
        storage.write_shard(table, str(root), schema.G_SCHEMA, name=g.shard_name(f"s{i}"))
    args = (f"paths.g={root}", "g_layout.shard_rows=12", "g_layout.retention_s=0", f"hydra.run.dir={tmp_path}/hydra")
    done = run_app("apps.g_compact", *args)
    assert done.returncode == 0, done.stderr[-2000:]
    summary = json.loads(done.stdout[done.stdout.index("{") :])
    assert summary["adopted_into_manifest"] == 6 and summary["merged_shards"] == 2 and summary["shards"] == 2
    assert summary["rows"] == 24 and g.count_kept(str(root), None) == 24
    assert len(storage.list_shards(str(root))) == 2  # the merged-away files are gone (retention 0)


def test_demo_encoder_app_makes_a_warm_start_that_a_new_apprentice_loads(tmp_path):
    import json

    import pytest
    import torch
    from safetensors.torch import save_file

    from core.method.apprentice import DEMO_ENCODER_FILE, Apprentice, load_demo_encoder
    from core.models.backbone import create_backbone, save_backbone

    save_backbone(create_backbone("tiny"), str(tmp_path / "base"))
    out = tmp_path / "encoder"
    args = [f"paths.root={tmp_path}", f"hydra.run.dir={tmp_path}/hydra", f"paths.demo_encoder={out}"]
    done = run_app("apps.demo_encoder", "experiment=smoke", *args, "demo_encoder.steps=5", "demo_encoder.eval_n=16")
    assert done.returncode == 0, done.stderr[-2000:]
    info = json.loads((out / "info.json").read_text())
    assert info["steps"] == 5 and set(info["test_accuracy"]) == {"class_name", "body", "pattern", "pattern_colour"}
    fresh = Apprentice(create_backbone("tiny"), 4)
    before = {k: v.clone() for k, v in fresh.adapter.encoder.conv.state_dict().items()}
    load_demo_encoder(fresh, str(out / DEMO_ENCODER_FILE))
    after = fresh.adapter.encoder.conv.state_dict()
    assert any(not torch.equal(before[k], after[k]) for k in before)  # trained weights, not the fresh ones
    other = {k: (v[..., :1] if v.dim() == 4 else v).contiguous() for k, v in after.items()}  # other kernels
    save_file(other, str(tmp_path / "other.safetensors"))
    with pytest.raises(ValueError, match="does not fit this apprentice"):
        load_demo_encoder(fresh, str(tmp_path / "other.safetensors"))


def test_the_main_job_ends_with_the_table_and_the_grid_and_its_summary_still_parses(tmp_path, capsys):
    import json

    from apps.config import compose, stage_summary
    from apps.pipeline import closing
    from core.data import storage

    config = compose([f"paths.root={tmp_path}"])
    storage.write_bytes(storage.join(config.paths.eval, "metrics.md"), b"| method | subject fidelity |\n")
    summary = {"evaluate": {"stage": "evaluate", "out": config.paths.eval}}
    print(json.dumps(summary, indent=1))
    closing(config, summary)
    out = capsys.readouterr().out
    assert "| method | subject fidelity |" in out.split("\n}\n", 1)[1]  # after the summary
    assert out.rstrip().endswith(f"{config.paths.eval}/grid.png")
    assert stage_summary(out) == summary
    closing(config, {"train": {"stage": "train"}})  # no evaluation: nothing more to say
    assert capsys.readouterr().out == ""
