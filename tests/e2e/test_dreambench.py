"""DreamBench end to end on the 20-subject copy in ../shared/data/dreambench: generation on the session's Ray
cluster with the smoke pipeline's tiny apprentice and base, metrics with tiny random encoders of the real classes,
the report, resumption, and the encoders' two loading paths."""

import json
import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
DATA = ROOT.parent / "shared" / "data" / "dreambench" / "dataset"
TINY_CLIP = {
    "embed_dim": 32,
    "vision_cfg": {"image_size": 32, "layers": 1, "width": 32, "patch_size": 16, "head_width": 16},
    "text_cfg": {"context_length": 32, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1},
}


def build_tiny_encoders(folder: str) -> dict:
    """Random encoders of the classes DreamBench uses (no weights can be downloaded here; real ones are
    facebook/dino-vits16 and open_clip ViT-B-32): a transformers ViTModel with its image processor, and an open_clip
    CLIP both as a `local-dir:` folder and as a registered config name plus a weights file."""
    import open_clip
    import torch
    from safetensors.torch import save_file
    from transformers import ViTConfig, ViTImageProcessor, ViTModel

    torch.manual_seed(0)
    dino = os.path.join(folder, "dino")
    ViTModel(
        ViTConfig(
            hidden_size=32,
            num_hidden_layers=1,
            num_attention_heads=2,
            intermediate_size=64,
            image_size=32,
            patch_size=16,
        ),
        add_pooling_layer=False,
    ).save_pretrained(dino)
    ViTImageProcessor(size={"height": 32, "width": 32}).save_pretrained(dino)
    clip_dir = os.path.join(folder, "clip")
    os.makedirs(clip_dir, exist_ok=True)
    config_file = os.path.join(folder, "suti-test-tiny-clip.json")
    with open(config_file, "w") as f:
        json.dump(TINY_CLIP, f)
    open_clip.add_model_config(config_file)
    model = open_clip.create_model("suti-test-tiny-clip", pretrained=None)
    state = {k: v.contiguous() for k, v in model.state_dict().items()}
    save_file(state, os.path.join(clip_dir, "open_clip_model.safetensors"))
    with open(os.path.join(clip_dir, "open_clip_config.json"), "w") as f:
        json.dump({"model_cfg": TINY_CLIP, "preprocess_cfg": {}}, f)
    return {
        "dino": dino,
        "clip_dir": clip_dir,
        "clip_name": "suti-test-tiny-clip",
        "clip_file": os.path.join(clip_dir, "open_clip_model.safetensors"),
    }


@pytest.fixture(scope="session")
def tiny_encoders(tmp_path_factory):
    return build_tiny_encoders(str(tmp_path_factory.mktemp("encoders")))


def dreambench_config(smoke_config, encoders: dict, root, *overrides: str):
    """The smoke run's apprentice and base on the shared copy, cheap sampling: 1 image per prompt, 1 step."""
    from apps.config import compose

    return compose(
        [
            "experiment=smoke",
            f"paths.root={root}",
            f"paths.apprentice={smoke_config.paths.apprentice}",
            f"paths.base={smoke_config.paths.base}",
            f"dreambench.data={DATA}",
            f"dreambench.dino={encoders['dino']}",
            f"dreambench.clip_model=local-dir:{encoders['clip_dir']}",
            "dreambench.images_per_prompt=1",
            "apprentice.num_inference_steps=1",
            "expert.num_inference_steps=1",
            "expert.steps=2",
            "dreambench.grid_cell=32",
            *overrides,
        ]
    )


def test_full_report_on_the_20_subject_copy_then_resume(smoke, tiny_encoders, tmp_path):
    """All 20 subjects x 25 prompts for the apprentice and the experts, scored and reported, then resumed. 1 image per
    prompt and 1 sampling step instead of 4 and 25, for time: even so the 1,000 images take about a minute here."""
    import io

    import numpy as np
    import pyarrow.parquet as pq
    import torch
    from PIL import Image

    from apps import dreambench as app
    from core.data import schema, storage
    from core.dreambench import data as dreambench
    from core.dreambench.metrics import load_encoders, oracle

    config = dreambench_config(smoke[0], tiny_encoders, tmp_path)
    summary = app.run(config)
    out = Path(config.paths.dreambench)
    assert (
        summary["images"] == {"apprentice": 500, "expert": 500}
        and summary["failed"] == []
        and summary["problems"] == []
    )

    bench = dreambench.load(str(DATA))
    for method in ("apprentice", "expert"):
        shards = storage.list_shards(str(out / "generated" / method))
        assert len(shards) == 20
        rows = storage.read_table(
            str(out / "generated" / method), schema.DREAMBENCH_SCHEMA, "paths.dreambench", "DreamBench"
        ).to_pylist()
        keys = [tuple(r[c] for c in schema.DREAMBENCH_KEY) for r in rows]
        assert len(set(keys)) == len(keys) == 500
        assert {k[1:] for k in keys} == {(s.name, i, 0) for s in bench.subjects for i in range(25)}
        assert len(rows) == 500 and all(
            r["method"] == method and r["live"] == (r["class_name"] in ("dog", "cat")) for r in rows
        )
        hat = next(r for r in rows if r["subject"] == "dog2" and r["prompt_index"] == 10)
        assert hat["eval_prompt"] == "a dog wearing a red hat" and hat["prompt_kind"] == "accessorization"
        assert hat["prompt"] == (
            "a dog wearing a red hat" if method == "apprentice" else "a sks dog wearing a red hat"
        )
        assert hat["num_demos"] == 4 and Image.open(io.BytesIO(hat["image"])).size == (32, 32)
        assert (hat["fine_tune_s"] > 0) == (method == "expert") and hat["sample_s"] > 0

    report = json.loads((out / "report.json").read_text())
    table = {row["method"]: row for row in report["table"]}
    assert list(table) == ["real images", "apprentice", "expert"]
    assert table["real images"]["clip_t"] is None and table["real images"]["seconds_per_subject"] is None
    for method in ("apprentice", "expert"):
        assert table[method]["images"] == 500 and table[method]["backbone"] == "tiny"
        assert all(-1 <= table[method][m] <= 1 for m in ("dino", "clip_i", "clip_t"))
    assert table["expert"]["seconds_per_subject"] > 0 and table["apprentice"]["seconds_per_subject"] > 0
    # Live subjects: 6 (dogs and cat2) x 10 accessorization prompts; 20 x 5 property; the rest re-contextualization.
    kinds = {(r["method"], r["kind"]): r["images"] for r in report["per_kind"]}
    assert kinds == {
        (m, k): n
        for m in ("apprentice", "expert")
        for k, n in (("recontextualization", 340), ("accessorization", 60), ("property", 100))
    }
    assert len(report["per_subject"]) == 60
    assert (
        report["config"]["dreambench"]["images_per_prompt"] == 1
        and report["config"]["dreambench"]["identifier"] == "sks"
    )

    # The oracle row comes from the real images: recompute one subject's pairs with the same encoders.
    dino, clip = load_encoders(config.dreambench, torch.device("cpu"))
    teapot = next(s for s in bench.subjects if s.name == "teapot")
    real = [dreambench.read_image(u) for u in teapot.images]
    expected = oracle(dino.embed(real), clip.embed_images(real))
    got = next(r for r in report["per_subject"] if r["subject"] == "teapot" and r["method"] == "real images")
    assert got["dino"] == pytest.approx(expected["dino"], abs=1e-5) and got["clip_i"] == pytest.approx(
        expected["clip_i"], abs=1e-5
    )
    assert expected["dino"] < 0.9999  # five different photos: not a trivial 1
    subject_oracles = [r["dino"] for r in report["per_subject"] if r["method"] == "real images"]
    assert table["real images"]["dino"] == pytest.approx(float(np.mean(subject_oracles)))

    scores = pq.read_table(out / "scores" / "scores.parquet")
    assert scores.schema.equals(schema.DREAMBENCH_SCORE_SCHEMA, check_metadata=False) and scores.num_rows == 1000
    markdown = (out / "report.md").read_text()
    assert (
        "| method | backbone | DINO | CLIP-I | CLIP-T | s per subject |" in markdown
        and "| real images | - |" in markdown
    )
    assert "## By prompt kind" in markdown and "## By subject" in markdown
    assert (out / "per_subject.csv").read_text().count("\n") == 61 and (out / "per_kind.csv").read_text().count(
        "\n"
    ) == 7
    page = (out / "index.html").read_text()
    for s in bench.subjects:
        grid = Image.open(out / f"grid_{s.name}.png")
        assert grid.height > 25 * 32 and grid.width > 300 + 2 * 32
        assert f"src='grid_{s.name}.png'" in page
    assert "<table>" in page and "real images" in page

    # Resume (the apprentice on the first two subjects, for time): a re-run draws only what is missing, and a deleted
    # shard comes back image for image (every prompt is seeded by subject and prompt index).
    shard = out / "generated" / "apprentice" / "subject-backpack.parquet"
    before = pq.read_table(shard).column("image").to_pylist()
    shard.unlink()
    quick = dreambench_config(
        smoke[0], tiny_encoders, tmp_path, "dreambench.max_subjects=2", "dreambench.methods=[apprentice]"
    )
    again = app.run(quick)
    assert again["skipped_already_generated"] == {"apprentice": 1} and again["images"] == {"apprentice": 50}
    assert pq.read_table(shard).column("image").to_pylist() == before
    # Other settings must not top up (or be mixed into) these shards.
    changed = dreambench_config(
        smoke[0], tiny_encoders, tmp_path, "dreambench.max_subjects=2", "apprentice.guidance_scale=2.0"
    )
    with pytest.raises(ValueError, match="generated by another model or other settings"):
        app.run(changed)


def test_missing_encoders_fail_at_once_naming_the_key(tmp_path):
    from apps import dreambench as app
    from apps.config import compose
    from core.data.storage import MissingInputError

    base = [f"paths.root={tmp_path}", f"dreambench.data={DATA}"]
    with pytest.raises(MissingInputError, match="`dreambench.dino`"):
        app.run(compose(base))
    (tmp_path / "dino").mkdir()
    (tmp_path / "dino" / "config.json").write_text("{}")
    with pytest.raises(MissingInputError, match="`dreambench.clip_pretrained`"):
        app.run(compose(base + [f"dreambench.dino={tmp_path}/dino"]))
    with pytest.raises(MissingInputError, match=rf"{tmp_path}/nowhere.pt.*`dreambench.clip_pretrained`"):
        app.run(
            compose(base + [f"dreambench.dino={tmp_path}/dino", f"dreambench.clip_pretrained={tmp_path}/nowhere.pt"])
        )
    with pytest.raises(MissingInputError, match="`dreambench.clip_model`"):
        app.run(
            compose(base + [f"dreambench.dino={tmp_path}/dino", f"dreambench.clip_model=local-dir:{tmp_path}/dino"])
        )


def test_clip_loads_by_name_and_weights_file_as_from_its_folder(tiny_encoders):
    """The two ways to give open_clip weights (a model name with a file; a local-dir: folder) load the same model."""
    import numpy as np
    import open_clip
    import torch

    from core.dreambench.metrics import ClipEncoder, DinoEncoder, oracle

    open_clip.add_model_config(os.path.join(os.path.dirname(tiny_encoders["dino"]), "suti-test-tiny-clip.json"))
    by_name = ClipEncoder(tiny_encoders["clip_name"], tiny_encoders["clip_file"], torch.device("cpu"))
    by_dir = ClipEncoder(f"local-dir:{tiny_encoders['clip_dir']}", None, torch.device("cpu"))
    images = [np.random.default_rng(i).integers(0, 255, (64, 48, 3), dtype=np.uint8) for i in range(3)]
    assert torch.allclose(by_name.embed_images(images), by_dir.embed_images(images), atol=1e-6)
    assert torch.allclose(by_name.embed_texts(["a dog"]), by_dir.embed_texts(["a dog"]), atol=1e-6)
    dino = DinoEncoder(tiny_encoders["dino"], torch.device("cpu"), batch_size=2)
    emb = dino.embed(images)
    assert emb.shape == (3, 32) and torch.allclose(emb.norm(dim=-1), torch.ones(3), atol=1e-5)
    same = oracle(dino.embed([images[0]] * 3), by_dir.embed_images([images[0]] * 3))
    assert same["dino"] == pytest.approx(1.0, abs=1e-5) and same["clip_i"] == pytest.approx(1.0, abs=1e-5)
