"""apps.study on the smoke pipeline's D_S, base and scorer: a G of each kind written by the expert actors, an
apprentice trained on each by Ray Train, one evaluate run comparing them; the study's table is evaluate's own."""

import dataclasses
import json

import numpy as np

from apps.study import run
from core.data import g as gc
from core.data import g_manifest, storage


def test_study_trains_an_apprentice_on_each_kind_of_g_and_tables_them_with_evaluate(smoke, tmp_path):
    config, _ = smoke
    lam = float(np.median(gc.read_table(config.paths.g, ["delta"]).column("delta").to_numpy()))  # keeps about half
    config = dataclasses.replace(
        config,
        paths=dataclasses.replace(config.paths, eval=str(tmp_path / "eval")),
        world=dataclasses.replace(config.world, validation_fraction=0.1),
        study=dataclasses.replace(config.study, lambdas=[None, lam, 1.0], sweep_steps=4),
    )
    out = run(config)
    sweep = out["lambda_sweep"]  # chosen on validation subjects, from evaluate's table of that split
    by = sweep["by_lambda"]
    assert sweep["chosen"] in (None, lam) and set(by) == {"lambda=None", f"lambda={lam}", "lambda=1.0"}
    assert by["lambda=None"]["kept_rows"] > by[f"lambda={lam}"]["kept_rows"] > 0 == by["lambda=1.0"]["kept_rows"]
    assert by["lambda=1.0"]["apprentice"] is None  # nothing kept: reported, not trained
    truth = by[f"lambda={lam}"]["g_truth"]  # the kept rows read by the toy readers against the truth
    assert 0 < truth["rows"] <= by[f"lambda={lam}"]["kept_rows"] and 0.0 <= truth["text_fidelity"] <= 1.0
    assert by["lambda=1.0"]["g_truth"]["rows"] == 0
    validation = json.loads(storage.read_bytes(storage.join(config.paths.eval, "validation", "metrics.json")))
    assert set(validation["table"]) == {"lambda=None", f"lambda={lam}"}
    assert {"SuTI, lambda=None", f"SuTI, lambda={lam}"} <= set(out["table"])
    assert set(out["g"]) == {"finetune", "raw", "oracle"}
    for kind in ("raw", "oracle"):
        g_uri = f"{config.paths.g}-{kind}"
        assert g_manifest.kind_of(g_manifest.read(g_uri)) == kind and out["g"][kind]["rows"] > 0
        apprentice = f"{config.paths.apprentice}-{kind}"
        assert storage.exists(apprentice)
    raw = gc.read_table(f"{config.paths.g}-raw")
    assert set(raw.column("prompt_skill").to_pylist()) == {"raw"}
    assert all(r["image"] not in r["demo_images"] for r in raw.select(["image", "demo_images"]).to_pylist())
    metrics = json.loads(storage.read_bytes(storage.join(config.paths.eval, "metrics.json")))
    study = json.loads(storage.read_bytes(storage.join(config.paths.eval, "study.json")))
    assert study["table"] == metrics["table"] == json.loads(json.dumps(out["table"]))
    for kind in ("finetune", "raw", "oracle"):  # each apprentice from a Ray Train checkpoint with its train state
        checkpoint = study["stages"][f"train[{kind}]"]["checkpoint"]
        state = json.loads(storage.read_bytes(storage.join(checkpoint, "train_state.json")))
        assert state["step"] == config.apprentice.steps
    rows = set(metrics["table"])
    assert {"apprentice", "raw-cluster apprentice", "oracle-G apprentice", "apprentice, 0 demos"} <= rows
    markdown = storage.read_bytes(storage.join(config.paths.eval, "study.md")).decode()
    assert "oracle-G apprentice" in markdown and "kept rows' subject fidelity" in markdown
    assert out["g"]["oracle"]["g_truth"]["text_fidelity"] >= 0.9  # true renders follow their prompts
    for kind in ("raw", "oracle"):
        trained = out["table"][{"raw": "raw-cluster apprentice", "oracle": "oracle-G apprentice"}[kind]]
        assert 0.0 <= trained["text_fidelity"] <= 1.0 and trained["images"] > 0


def test_a_study_whose_apprentices_stop_at_their_budget_evaluates_nothing_yet(smoke, tmp_path):
    """With `apprentice.budget_s` spent before `apprentice.steps`, the study reports which apprentice stopped where
    and evaluates nothing; the stopped run is there for the next study run to continue."""
    config, _ = smoke
    config = dataclasses.replace(
        config,
        paths=dataclasses.replace(config.paths, eval=str(tmp_path / "eval"), apprentice=str(tmp_path / "apprentice")),
        study=dataclasses.replace(config.study, kinds=["raw"]),
        apprentice=dataclasses.replace(config.apprentice, steps=40, log_every=2, budget_s=0.0),
    )
    out = run(config)
    assert out["unfinished"].startswith("train[raw] at step 2"), out
    assert out["stages"]["train[raw]"]["finished"] is False
    assert not storage.exists(storage.join(config.paths.eval, "metrics.json"))
