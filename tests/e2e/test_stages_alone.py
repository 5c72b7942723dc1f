"""Each stage run alone, as a user runs it (`python -m apps.<stage> experiment=smoke`), one process after another on
the same folder, each under a time limit: every stage opens the configured local cluster itself, and the Ray Data
mining engine leaves CPUs for its read tasks (it used to hang forever when run alone)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import free_port

ROOT = Path(__file__).resolve().parents[2]

# (stage, extra overrides, seconds allowed): the smoke pipeline's stages in order, mining on Ray Data.
STAGES = [
    ("world", [], 120),
    ("scorer", [], 240),
    ("pretrain", [], 240),
    ("mine", ["mine.engine=ray_data"], 300),
    ("experts", [], 300),
    ("train", [], 300),
    ("evaluate", [], 300),
    ("serve", [], 300),
]


def summary(stdout: str) -> dict:
    """The JSON summary a stage prints last."""
    start = stdout.rindex("\n{") + 1 if "\n{" in stdout else stdout.index("{")
    return json.loads(stdout[start:])


def test_every_stage_runs_alone_within_its_time_limit(tmp_path):
    env = dict(os.environ, PYTHONPATH=str(ROOT), TQDM_DISABLE="1")
    common = ["experiment=smoke", f"paths.root={tmp_path / 'smoke'}", f"serve.port={free_port()}"]
    common += [f"hydra.run.dir={tmp_path / 'hydra'}"]
    for stage, extra, limit in STAGES:
        try:
            done = subprocess.run(
                [sys.executable, "-m", f"apps.{stage}", *common, *extra],
                cwd=ROOT,
                env=env,
                capture_output=True,
                text=True,
                timeout=limit,
                check=False,
            )
        except subprocess.TimeoutExpired as err:
            pytest.fail(f"apps.{stage} alone did not finish in {limit} s: {str(err.stderr)[-3000:]}")
        assert done.returncode == 0, f"apps.{stage} failed:\n{done.stderr[-4000:]}"
        assert summary(done.stdout)["stage"] == stage
