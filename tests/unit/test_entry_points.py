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
