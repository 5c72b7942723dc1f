"""Each stage run alone, as a user runs it (`python -m apps.<stage> experiment=smoke`), one process after another on
the same folder, each under a time limit: every stage opens the configured local cluster itself, and the Ray Data
mining engine leaves CPUs for its read tasks (it used to hang forever when run alone). Then the serve stage kept
serving in the background, as `python -m apps.serve ... &` leaves it, stops cleanly on SIGINT and on SIGTERM."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from apps.config import free_port, stage_summary
from benchmarks.processes import alive, descendants

ROOT = Path(__file__).resolve().parents[2]
ENV = dict(os.environ, PYTHONPATH=str(ROOT), TQDM_DISABLE="1")

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
    """The JSON summary a stage prints last (it must print one)."""
    out = stage_summary(stdout)
    assert out, stdout[-2000:]
    return out


def overrides(folder: Path) -> list[str]:
    return ["experiment=smoke", f"paths.root={folder / 'smoke'}", f"hydra.run.dir={folder / 'hydra'}"]


@pytest.fixture(scope="module")
def alone(tmp_path_factory) -> tuple[Path, dict]:
    folder = tmp_path_factory.mktemp("alone")
    summaries = {}
    for stage, extra, limit in STAGES:
        try:
            done = subprocess.run(
                [sys.executable, "-m", f"apps.{stage}", *overrides(folder), f"serve.port={free_port()}", *extra],
                cwd=ROOT,
                env=ENV,
                capture_output=True,
                text=True,
                timeout=limit,
                check=False,
            )
        except subprocess.TimeoutExpired as err:
            pytest.fail(f"apps.{stage} alone did not finish in {limit} s: {str(err.stderr)[-3000:]}")
        assert done.returncode == 0, f"apps.{stage} failed:\n{done.stderr[-4000:]}"
        summaries[stage] = summary(done.stdout)
    return folder, summaries


def test_every_stage_runs_alone_within_its_time_limit(alone):
    _, summaries = alone
    assert [s["stage"] for s in summaries.values()] == [stage for stage, _, _ in STAGES]
    assert summaries["mine"]["kept"] > 0 and summaries["train"]["steps"] > 0


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_a_backgrounded_server_stops_on_a_signal(alone, sig):
    folder, _ = alone
    port = free_port()
    # A shell's background job starts with SIGINT ignored, and Python then installs no KeyboardInterrupt handler:
    # ignore it, then exec the server, as `python -m apps.serve ... &` does.
    background = (
        "import os, signal, sys; signal.signal(signal.SIGINT, signal.SIG_IGN); "
        "os.execv(sys.executable, [sys.executable, '-m', 'apps.serve', *sys.argv[1:]])"
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", background, *overrides(folder), f"serve.port={port}", "serve.keep_serving=true"],
        cwd=ROOT,
        env=ENV,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    try:
        deadline = time.monotonic() + 300
        for line in proc.stdout:
            if line.startswith("serving on") or time.monotonic() > deadline:
                break
        assert line.startswith("serving on"), "the server never came up"
        family = descendants(proc.pid)
        assert len(family) > 3  # the driver and the local cluster it started
        proc.send_signal(sig)
        out, _ = proc.communicate(timeout=120)
        assert proc.returncode == 0, proc.returncode
        assert summary(out)["stopped_by"] == sig.name
        deadline = time.monotonic() + 30
        while alive(family) and time.monotonic() < deadline:
            time.sleep(0.5)
        assert not alive(family), "processes of the server's cluster outlived it"
    finally:
        proc.kill()
