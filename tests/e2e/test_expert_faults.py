"""Fault tolerance of the expert pool: an actor killed with SIGKILL in the middle of a fine-tune is replaced, its
subject retried, and G ends with every expected key exactly once."""

import dataclasses
import os
import signal
import threading
import time

from actors.expert_pool import run_pool
from apps.experts import provenance
from benchmarks.processes import processes_named
from core.data import g as gc
from core.data import schema, storage


def expert_processes() -> list[int]:
    return processes_named(b"ray::ExpertActor.run")


def test_sigkilled_expert_is_retried_and_every_key_lands_once(smoke, tmp_path):
    config, _ = smoke
    records = storage.read_table(config.paths.ds, schema.DS_SCHEMA, "paths.ds", "D_S").to_pylist()[:3]
    cfg = dataclasses.replace(config.expert, steps=40, num_actors=2, max_tasks_in_flight=1)
    g_uri = str(tmp_path / "g")
    out: dict = {}

    def work() -> None:
        out["results"], out["summary"] = run_pool(
            records,
            config.paths.base,
            config.paths.scorer,
            cfg,
            provenance(config),
            g_uri,
            config.filter,
            progress=False,
        )

    thread = threading.Thread(target=work)
    thread.start()
    deadline = time.monotonic() + 180
    while not expert_processes() and time.monotonic() < deadline:
        time.sleep(0.2)
    victims = expert_processes()
    assert victims, "no expert actor started a subject within 3 minutes"
    time.sleep(2.0)  # well inside its 40-step fine-tune
    os.kill(victims[0], signal.SIGKILL)
    thread.join(timeout=600)
    assert not thread.is_alive()

    summary = out["summary"]
    assert summary["actor_restarts"] >= 1, summary
    assert summary["done"] == len(records) and summary.get("failed", 0) == 0, summary
    g = gc.read_table(g_uri)
    keys = list(zip(*(g.column(c).to_pylist() for c in schema.G_KEY)))
    expected = {
        (r["subject_id"], pid, j) for r in records for pid in r["prompt_ids"] for j in range(cfg.samples_per_prompt)
    }
    assert len(keys) == len(set(keys)) and set(keys) == expected
