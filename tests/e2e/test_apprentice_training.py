"""The apprentice's Ray Train job: two-worker DDP on the CPU, EMA, metrics and TensorBoard, a worker killed with
SIGKILL and resumed from its checkpoint with the optimizer state restored, and G growing while training runs."""

import dataclasses
import json
import os
import shutil
import signal
import struct
import threading
import time
from pathlib import Path

import numpy as np

from actors.apprentice_trainer import fit
from benchmarks.processes import processes_named
from core.config import to_dict
from core.data import g as gc
from core.data import g_manifest, storage


def train_worker_processes() -> list[int]:
    return processes_named(b"ray::RayTrainWorker")


def checkpoints(storage_root: str, run_name: str) -> list[str]:
    """Checkpoints Ray Train has registered (listed in its run snapshot), not folders still being reported: a worker
    killed before the registration restarts from scratch, by design."""
    path = os.path.join(storage_root, run_name, "checkpoint_manager_snapshot.json")
    try:
        return [r["checkpoint_dir_name"] for r in json.loads(Path(path).read_text())["checkpoint_results"]]
    except (OSError, ValueError, KeyError):  # not written yet, or being replaced
        return []


def tensorboard_scalars(folder: str) -> dict[str, list[tuple[int, float]]]:
    """Scalars from tensorboardX event files (TFRecord framing: length, crc, event proto, crc)."""
    from tensorboardX.proto import event_pb2

    out: dict[str, list] = {}
    for root, _, names in os.walk(folder):
        for name in names:
            if "tfevents" not in name:
                continue
            data = Path(root, name).read_bytes()
            pos = 0
            while pos < len(data):
                (length,) = struct.unpack("<Q", data[pos : pos + 8])
                event = event_pb2.Event.FromString(data[pos + 12 : pos + 12 + length])
                pos += 12 + length + 4
                for v in event.summary.value:
                    out.setdefault(v.tag, []).append((event.step, v.simple_value))
    return out


def start_fit(config, cfg, g_uri, root, run_name) -> tuple[threading.Thread, dict]:
    full = dataclasses.replace(config, apprentice=cfg)
    out: dict = {}

    def work() -> None:
        try:
            out["result"] = fit(cfg, g_uri, None, config.paths.base, root, run_name, to_dict(full))
        except BaseException as err:  # noqa: BLE001  surfaced by the test's assertions
            out["error"] = err

    thread = threading.Thread(target=work)
    thread.start()
    return thread, out


def final_state(out: dict) -> dict:
    assert "error" not in out, out.get("error")
    with out["result"].checkpoint.as_directory() as folder:
        return json.loads(Path(os.path.join(folder, "train_state.json")).read_text())


def test_two_worker_ddp_sigkilled_worker_resumes_from_its_checkpoint(smoke, tmp_path):
    config, _ = smoke
    cfg = dataclasses.replace(
        config.apprentice,
        num_workers=2,
        threads=1,
        steps=12,
        batch_size=4,
        checkpoint_every=4,
        log_every=2,
        passes_per_epoch=1,
    )
    root, run = str(tmp_path / "train"), "ddp-kill"
    thread, out = start_fit(config, cfg, config.paths.g, root, run)
    deadline = time.monotonic() + 300
    while not checkpoints(root, run) and time.monotonic() < deadline and thread.is_alive():
        time.sleep(0.2)
    assert checkpoints(root, run), f"no checkpoint within 5 minutes: {out}"
    victims = train_worker_processes()
    assert len(victims) == 2, victims
    os.kill(victims[-1], signal.SIGKILL)
    thread.join(timeout=600)
    assert not thread.is_alive()
    state = final_state(out)
    assert state["step"] == cfg.steps and len(state["losses"]) == cfg.steps
    # The resume: the first step after it is the checkpoint's step + 1, with the optimizer state it saved.
    assert len(state["resumes"]) == 1, state["resumes"]
    resume = state["resumes"][0]
    assert resume["checkpoint_step"] in (4, 8) and resume["first_step"] == resume["checkpoint_step"] + 1
    assert resume["optimizer_fingerprint_saved"] > 0
    assert resume["optimizer_fingerprint_loaded"] == resume["optimizer_fingerprint_saved"]
    # Two workers split G: each reads its own part (here rank 0's), about half of the kept rows, in an epoch.
    first = state["epochs"][0]
    assert 0 < first["kept_rows"] < first["kept_rows_all"] and first["balance"] >= 0.5, first
    assert 0 < first["rows_read"] <= first["kept_rows"] * first["passes"]
    assert state["resolved_config"]["apprentice"]["num_workers"] == 2
    metrics = out["result"].metrics
    assert metrics["final"] and metrics["step"] == cfg.steps and metrics["samples_per_s"] > 0 and metrics["lr"] > 0
    scalars = tensorboard_scalars(os.path.join(root, run, "tensorboard"))
    assert {"train/loss", "train/lr", "train/samples_per_s"} <= set(scalars)
    assert max(step for step, _ in scalars["train/loss"]) == cfg.steps
    with out["result"].checkpoint.as_directory() as folder:
        assert {"model_index.json", "ema.safetensors", "optimizer.pt", "train_state.json"} <= set(os.listdir(folder))


def test_training_waits_for_g_and_reads_shards_written_while_it_runs(smoke, tmp_path):
    config, _ = smoke
    shards = storage.list_shards(config.paths.g)
    assert len(shards) >= 3
    g = tmp_path / "g"
    g.mkdir()

    def publish(shard: str) -> None:  # as the expert stage does: a temporary name, a rename, a manifest commit
        shutil.copy(shard, g / (os.path.basename(shard) + ".tmp"))
        os.rename(g / (os.path.basename(shard) + ".tmp"), g / os.path.basename(shard))
        g_manifest.commit(str(g), [gc.shard_entry(str(g / os.path.basename(shard)), "finetune")])

    cfg = dataclasses.replace(
        config.apprentice, steps=14, batch_size=4, checkpoint_every=2, log_every=2, passes_per_epoch=1, g_wait_s=120
    )
    root, run = str(tmp_path / "train"), "streaming"
    thread, out = start_fit(config, cfg, str(g), root, run)
    time.sleep(3.0)  # training has started and waits: G is empty
    publish(shards[0])
    deadline = time.monotonic() + 300
    while not checkpoints(root, run) and time.monotonic() < deadline and thread.is_alive():
        time.sleep(0.2)
    for shard in shards[1:]:
        publish(shard)
    thread.join(timeout=600)
    assert not thread.is_alive()
    state = final_state(out)
    epochs = state["epochs"]
    assert epochs[0]["shards"] == 1 and epochs[0]["rows_read"] == epochs[0]["kept_rows"]
    grown = [e for e in epochs if e["shards"] == len(shards)]
    assert grown, epochs
    assert grown[0]["rows_read"] > epochs[0]["kept_rows"]  # rows of the later shards were trained on
    assert state["step"] == cfg.steps


def test_a_corrupt_latest_checkpoint_is_skipped_and_a_finished_run_is_a_no_op(smoke, tmp_path):
    config, _ = smoke
    cfg = dataclasses.replace(
        config.apprentice, steps=8, batch_size=4, checkpoint_every=4, log_every=2, passes_per_epoch=1, threads=1
    )
    root, run = str(tmp_path / "train"), "corrupt"
    thread, out = start_fit(config, cfg, config.paths.g, root, run)
    thread.join(timeout=600)
    first = final_state(out)
    assert first["step"] == 8 and first["resumes"] == []

    # The same run again: it is finished, says so, and trains nothing (no resume is recorded).
    thread, again = start_fit(config, cfg, config.paths.g, root, run)
    thread.join(timeout=600)
    assert again["result"].already_finished
    assert final_state(again) == first

    # Truncate the weights of the newest checkpoint, as a disk that filled up would: the run resumes from the
    # newest good one instead of failing on every retry, and records which it took and which it skipped.
    newest = out["result"].checkpoint.path
    ema = Path(newest, "ema.safetensors")
    ema.write_bytes(ema.read_bytes()[:100])
    longer = dataclasses.replace(cfg, steps=12)
    thread, resumed = start_fit(config, longer, config.paths.g, root, run)
    thread.join(timeout=600)
    state = final_state(resumed)
    assert not resumed["result"].already_finished
    assert state["step"] == 12 and len(state["losses"]) == 12
    (resume,) = state["resumes"]
    assert resume["checkpoint_step"] == 4 and resume["first_step"] == 5
    assert resume["skipped"] == [os.path.basename(newest)]
    assert resume["checkpoint"] != os.path.basename(newest)


def test_a_spent_budget_ends_the_run_with_a_checkpoint_that_the_next_run_continues(smoke, tmp_path):
    """`apprentice.budget_s`: the run stops at the first `log_every` step past its budget, with a checkpoint that is
    not finished; the next run of the same settings resumes from it on the same schedule."""
    config, _ = smoke
    cfg = dataclasses.replace(
        config.apprentice, steps=8, batch_size=4, checkpoint_every=4, log_every=2, passes_per_epoch=1, threads=1
    )
    root, run = str(tmp_path / "train"), "budget"
    thread, out = start_fit(config, dataclasses.replace(cfg, budget_s=0.0), config.paths.g, root, run)
    thread.join(timeout=600)
    first = final_state(out)
    assert first["step"] == 2 and not out["result"].already_finished
    thread, again = start_fit(config, cfg, config.paths.g, root, run)
    thread.join(timeout=600)
    state = final_state(again)
    assert state["step"] == 8 and len(state["losses"]) == 8
    (resume,) = state["resumes"]
    assert resume["checkpoint_step"] == 2 and resume["first_step"] == 3

    # `apprentice.init`: a new run (another name) starts from the exported apprentice instead of the base.
    from actors.apprentice_trainer import export

    folder = str(tmp_path / "exported")
    with again["result"].checkpoint.as_directory() as ckpt:
        export(ckpt, folder, use_ema=True)
    thread, cont = start_fit(config, dataclasses.replace(cfg, steps=2, init=folder), config.paths.g, root, "init")
    thread.join(timeout=600)
    state = final_state(cont)
    assert state["init"] == folder and state["step"] == 2 and state["resumes"] == []
    from core.pipelines.suti import load_apprentice

    exported = load_apprentice(folder).gates().detach().numpy()
    assert np.abs(exported).max() > 0  # trained gates, not a fresh apprentice's zeros
    assert np.allclose(state["initial_gates"], exported, atol=1e-3)  # the run started from them, gate by gate
