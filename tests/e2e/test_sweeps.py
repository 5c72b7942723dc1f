"""A Hydra multirun (`-m`) as a user types it: `python -m apps.train -m filter.min_delta=...` on the smoke run's G and
base. Hydra's basic launcher runs the jobs one after another; each joins the Ray cluster at `cluster.address` (here
the test session's) and must write its own apprentice, recording the value it was given."""

import json
import re
import subprocess
import sys
from pathlib import Path

import yaml

from core.data import g as gc

ROOT = Path(__file__).resolve().parents[2]


def test_min_delta_sweep_trains_one_apprentice_per_value(smoke, ray_session, tmp_path):
    config, _ = smoke
    deltas = sorted(gc.read_table(config.paths.g).column("delta").to_pylist())
    threshold = round(deltas[len(deltas) // 2], 4)  # about half of G passes it
    kept = {"null": len(deltas), str(threshold): sum(d > threshold for d in deltas)}
    assert 0 < kept[str(threshold)] < len(deltas)
    root = tmp_path / "root"
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "apps.train",
            "-m",
            "experiment=smoke",
            f"paths.root={root}",
            f"paths.g={config.paths.g}",
            f"paths.base={config.paths.base}",
            f"filter.min_delta=null,{threshold}",
            "apprentice.steps=2",
            f"cluster.address={ray_session.get_runtime_context().gcs_address}",
            f"hydra.sweep.dir={tmp_path}/multirun",
        ],
        check=False,
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-3000:]

    runs = sorted(p.name for p in (root / "runs").iterdir())
    assert runs == sorted(f"apprentice.steps=2,filter.min_delta={v}" for v in kept)
    for value, n_kept in kept.items():
        run = root / "runs" / f"apprentice.steps=2,filter.min_delta={value}"
        given = json.loads((run / "apprentice" / "apprentice_config.json").read_text())["config"]["resolved"]
        assert given["filter"]["min_delta"] == (None if value == "null" else float(value))
        assert given["paths"]["apprentice"] == str(run / "apprentice") and given["paths"]["g"] == config.paths.g
        assert json.loads((run / "apprentice" / "train_state.json").read_text())["step"] == 2
        assert f"filter.min_delta={value}" in json.loads((run / "sweep_job.json").read_text())["overrides"]
        assert f'"g_rows_kept": {n_kept},' in done.stdout
    # Two trainings, not one resumed or copied twice: two Ray Train runs of their own names and checkpoints. (Their
    # weights may still agree to the bit: 2 steps can see the same batches when the first rows of G pass both filters.)
    run_names = re.findall(r'"run_name": "([^"]+)"', done.stdout)
    checkpoints = re.findall(r'"checkpoint": "([^"]+)"', done.stdout)
    assert len(run_names) == len(set(run_names)) == 2 and len(set(checkpoints)) == 2, (run_names, checkpoints)
    assert not (root / "apprentice").exists()  # nothing written to the single-run location
    # Hydra's own record of each job, numbered in its sweep folder.
    for num, value in enumerate(kept):
        assert f"filter.min_delta={value}" in yaml.safe_load(
            (tmp_path / "multirun" / str(num) / ".hydra" / "overrides.yaml").read_text()
        )
