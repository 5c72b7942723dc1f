"""Ray Data over G: the delta threshold is applied at read time, and mixed provenance is refused."""

import time

import numpy as np
import pytest

from actors.g_dataset import SCHEDULER_PAUSE_S, PauseBetweenSchedulingSteps, read_g
from core.data import g as gc
from core.data import g_manifest
from core.data.images import to_png
from core.models.tokenizer import create_tokenizer
from core.toy import world as toyworld


def rows(subject: str, deltas: list[float], scorer: str = "s") -> list[dict]:
    rng = np.random.default_rng(0)
    png = lambda: to_png(toyworld.render(toyworld.all_subjects()[0], toyworld.random_scene(rng)))
    demos = [png() for _ in range(4)]
    return [
        {
            "subject_id": subject,
            "prompt_id": f"p{i}",
            "sample_index": 0,
            "prompt": "a ball on sand",
            "prompt_skill": "recontextualization",
            "image": png(),
            "demo_images": demos,
            "demo_captions": ["a ball on grass"] * 4,
            "clip_score": 0.5 + d,
            "ref_clip_score": 0.5,
            "delta": d,
            "base_checkpoint_hash": "b",
            "expert_config_hash": "e",
            "scorer_hash": scorer,
        }
        for i, d in enumerate(deltas)
    ]


@pytest.fixture(scope="module")
def tokenizer_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("tok")
    create_tokenizer(24).save_pretrained(folder)
    return str(folder)


def test_threshold_filters_at_read_time_and_batches_decode(ray_session, tmp_path, tokenizer_dir):
    g = str(tmp_path / "g")
    gc.write_subject(rows("a", [-0.1, 0.0, 0.01, 0.03]), g, "a")
    gc.write_subject(rows("b", [0.02, 0.05]), g, "b")
    counts = {
        t: sum(len(b["image"]) for b in read_g(g, t, tokenizer_dir, num_demos=3).iter_batches(batch_size=16))
        for t in (None, 0.0, 0.02)
    }
    assert counts == {None: 6, 0.0: 4, 0.02: 2}
    assert (
        sum(len(b["image"]) for b in read_g(g, 0.0, tokenizer_dir, num_demos=3, passes=3).iter_batches(batch_size=16))
        == 12
    )
    batch = next(iter(read_g(g, None, tokenizer_dir, num_demos=3, passes=2).iter_batches(batch_size=6)))
    assert batch["image"].shape == (6, 3, 32, 32) and batch["demo_images"].shape == (6, 3, 3, 32, 32)
    assert batch["input_ids"].shape == (6, 24) and batch["demo_ids"].shape == (6, 3, 24)
    assert -1.0 <= batch["image"].min() and batch["image"].max() <= 1.0


def test_g_mixing_scorers_is_refused(tmp_path, tokenizer_dir):
    g = str(tmp_path / "g")
    gc.write_subject(rows("a", [0.1]), g, "a")
    gc.write_subject(rows("b", [0.1], scorer="other"), g, "b")
    with pytest.raises(ValueError, match="G mixes 2 provenances"):
        read_g(g, 0.0, tokenizer_dir, num_demos=3)


def test_workers_parts_of_a_merged_shard_are_read_once_each(ray_session, tmp_path, tokenizer_dir):
    """Two workers' parts of one merged shard (row groups split between them): each reads only its own rows."""
    g = str(tmp_path / "g")
    for subject in "abcd":
        gc.write_subject(rows(subject, [0.1, 0.2, 0.3]), g, subject)
    assert len(g_manifest.compact(g, target_rows=12)) == 1
    plan = g_manifest.plan(g, 0.0, 2)
    assert plan.rows == [6, 6] and all(idx is not None for part in plan.parts for _, idx in part)
    counts = [
        sum(len(b["image"]) for b in read_g(g, 0.0, tokenizer_dir, num_demos=3, part=part).iter_batches(batch_size=4))
        for part in plan.parts
    ]
    assert counts == [6, 6]


def test_reading_g_pauses_between_ray_data_scheduling_steps(ray_session, tmp_path, tokenizer_dir):
    # Ray Data's scheduling loop spins while finished outputs wait for a slower consumer, holding the GIL a training
    # step needs; read_g's datasets pause it after every step.
    g = str(tmp_path / "g")
    gc.write_subject(rows("s1", [0.1, 0.2]), g, "s1")
    ds = read_g(g, None, tokenizer_dir, num_demos=3)
    assert PauseBetweenSchedulingSteps in ds.context.custom_execution_callback_classes
    assert sum(len(b["image"]) for b in ds.iter_batches(batch_size=4)) == 2
    start = time.perf_counter()
    PauseBetweenSchedulingSteps().on_execution_step(None)
    assert time.perf_counter() - start >= SCHEDULER_PAUSE_S
