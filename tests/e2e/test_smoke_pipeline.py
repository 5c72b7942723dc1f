"""`python -m apps.pipeline experiment=smoke`, end to end on the session's local Ray cluster, then checked stage by
stage: G, training, evaluation, and the serve stage's one request (tests/e2e/test_serving.py tests the endpoint)."""

import base64
import json

import numpy as np
import pyarrow.parquet as pq
import pytest

from core.data import g as gc
from core.data import schema, storage
from core.data.images import from_png


def test_g_holds_every_render_once_matching_the_schema(smoke):
    config, summaries = smoke
    ds = storage.read_table(config.paths.ds, schema.DS_SCHEMA, "paths.ds", "D_S")
    subjects = ds.to_pylist()[: config.expert.max_subjects]
    expected = {
        (s["subject_id"], pid, j)
        for s in subjects
        for pid in s["prompt_ids"]
        for j in range(config.expert.samples_per_prompt)
    }
    shards = storage.list_shards(config.paths.g)
    assert len(shards) == len(subjects)
    tables = [pq.read_table(s) for s in shards]
    for t in tables:
        assert t.schema.equals(schema.G_SCHEMA, check_metadata=False)
    g = gc.read_table(config.paths.g)
    keys = list(zip(*(g.column(c).to_pylist() for c in schema.G_KEY)))
    assert len(keys) == len(set(keys)) == len(expected) == 4 * 2 * 4
    assert set(keys) == expected
    summary = summaries["experts"]
    assert summary["kept"] + summary["rejected"] == summary["renders"] == g.num_rows
    assert (
        len(set(g.column("scorer_hash").to_pylist())) == 1
        and len(set(g.column("base_checkpoint_hash").to_pylist())) == 1
    )


def test_expert_stage_rerun_skips_subjects_already_in_g(smoke):
    import dataclasses

    from apps import experts

    config, _ = smoke
    before = sorted(storage.list_shards(config.paths.g))
    summary = experts.run(config)
    assert summary["skipped_already_in_g"] == summary["subjects"] == config.expert.max_subjects
    assert sorted(storage.list_shards(config.paths.g)) == before
    # Another expert config must not top up (or be mixed into) this G.
    other = dataclasses.replace(config, expert=dataclasses.replace(config.expert, steps=config.expert.steps + 1))
    with pytest.raises(ValueError, match=r"G mixes 2 provenances \(base, expert config, scorer, kind\)"):
        experts.run(other)


def test_training_lowered_the_loss_on_g_and_moved_the_gates(smoke):
    """The same G rows, noise and timesteps score a lower loss on the trained apprentice than on its start
    (the base)."""
    import torch

    from actors.g_dataset import decode_batch
    from core.method.apprentice import Apprentice, training_loss
    from core.models.backbone import load_backbone
    from core.pipelines.suti import load_apprentice

    config, _ = smoke
    state = json.loads(storage.read_bytes(storage.join(config.paths.apprentice, "train_state.json")))
    assert state["step"] == config.apprentice.steps
    assert np.abs(np.array(state["gates"]) - np.array(state["initial_gates"])).max() > 0
    meta = json.loads(storage.read_bytes(storage.join(config.paths.apprentice, "apprentice_config.json")))
    assert meta["config"]["resolved"]["experiment_name"] == "smoke"  # the resolved config sits beside the weights

    g = gc.read_table(config.paths.g).to_pydict()
    arrays = decode_batch(g, storage.join(config.paths.base, "tokenizer"), config.apprentice.num_demos, seed=0)
    batch = {k: torch.from_numpy(v) for k, v in arrays.items()}
    models = {
        "start": Apprentice(load_backbone(config.paths.base)).eval(),
        "trained": load_apprentice(config.paths.apprentice),
    }
    losses = {}
    with torch.no_grad():
        for name, model in models.items():
            losses[name] = np.mean(
                [float(training_loss(model, batch, 0.0, 0.0, torch.Generator().manual_seed(s))) for s in range(4)]
            )
    assert losses["trained"] < losses["start"], losses


def test_zero_training_steps_export_the_apprentice_training_starts_from(smoke, tmp_path):
    """apprentice.steps=0: the train stage exports the apprentice before any step on G (the base with its new layers
    at their start), as a row to compare the trained one with; without demos it draws what the base draws."""
    import dataclasses

    import torch

    from apps import train
    from core.method import apprentice as ap
    from core.models import sampling
    from core.models.backbone import load_backbone
    from core.pipelines.suti import load_apprentice

    config, _ = smoke
    start = str(tmp_path / "start")
    summary = train.run(
        dataclasses.replace(
            config,
            apprentice=dataclasses.replace(config.apprentice, steps=0),
            paths=dataclasses.replace(config.paths, apprentice=start),
        )
    )
    assert summary["steps"] == 0 and summary["epochs"] == 0 and summary["loss_last_quarter"] is None
    apprentice = load_apprentice(start)
    assert torch.equal(apprentice.gates(), torch.zeros_like(apprentice.gates()))  # the smoke run's gates moved
    drawn = ap.sample(apprentice, "a ball on sand", [], [], num_images=2, num_inference_steps=4, seed=3)
    base = load_backbone(storage.local_dir(config.paths.base))
    assert np.array_equal(drawn, sampling.sample(base, ["a ball on sand"] * 2, num_inference_steps=4, seed=3))


def test_evaluation_scores_the_oracle_near_the_maximum(smoke):
    config, summaries = smoke
    table = summaries["evaluate"]["table"]
    assert set(table) == {"oracle", "base", "expert", "apprentice", "apprentice, 0 demos", "apprentice, 1 demo"}
    written = json.loads(storage.read_bytes(storage.join(config.paths.eval, "metrics.json")))
    assert written["table"].keys() == table.keys() and set(written["seconds_per_subject"]) == set(table) - {"oracle"}
    for row in table.values():
        for metric, (lo, hi) in row["ci"].items():
            assert np.isnan(row[metric]) or lo - 1e-9 <= row[metric] <= hi + 1e-9
    # The shipped readers read about 99% of clean renders of unseen subjects right (tests/unit/test_readers.py).
    assert table["oracle"]["text_fidelity"] >= 0.75
    assert table["oracle"]["subject_fidelity"] >= 0.75 or np.isnan(table["oracle"]["subject_fidelity"])
    for method in ("base", "expert", "apprentice"):
        assert 0.0 <= table[method]["text_fidelity"] <= 1.0
    for name in ("metrics.json", "metrics.md", "grid.png"):
        assert storage.exists(storage.join(config.paths.eval, name))


def test_serve_answers_over_http_with_the_offline_sampler_image(smoke):
    """The pipeline's serve stage asked the endpoint once (seed 0) and saved the PNG it got over HTTP."""
    from apps.serve import example_request
    from core.method.apprentice import sample
    from core.pipelines.suti import load_apprentice

    config, summaries = smoke
    assert summaries["serve"]["url"].startswith("http://127.0.0.1:")
    served = from_png(storage.read_bytes(summaries["serve"]["out"]))
    body = example_request(config)
    demos = [from_png(base64.b64decode(d["image"])) for d in body["demos"]]
    offline = sample(
        load_apprentice(config.paths.apprentice),
        body["prompt"],
        demos,
        [d["caption"] for d in body["demos"]],
        num_images=1,
        sampler=config.apprentice.sampler,
        num_inference_steps=body["steps"],
        guidance_scale=body["guidance_scale"],
        seed=0,
    )[0]
    assert np.abs(served.astype(int) - offline.astype(int)).max() <= 2
