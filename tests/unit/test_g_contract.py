"""The G contract (`core.data.g`): shard names, the key, provenance, and the threshold applied when G is read."""

import pytest

from core.data import g, schema, storage


def row(subject: str, prompt: str, delta: float, scorer: str = "s") -> dict:
    return {
        "subject_id": subject,
        "prompt_id": prompt,
        "sample_index": 0,
        "prompt": "a ball on sand",
        "prompt_skill": "style",
        "image": b"png",
        "demo_images": [b"a"],
        "demo_captions": ["a ball"],
        "clip_score": 0.3,
        "ref_clip_score": 0.3 - delta,
        "delta": delta,
        "base_checkpoint_hash": "b",
        "expert_config_hash": "e",
        "scorer_hash": scorer,
    }


def test_shard_names_round_trip_and_the_key_is_the_schemas():
    assert g.KEY == schema.G_KEY and set(g.PROVENANCE) <= set(schema.G_SCHEMA.names)
    assert "kept" not in schema.G_SCHEMA.names  # the verdict is never stored
    uri = g.shard_uri("/tmp/g", "ball-red-dots-blue")
    assert uri.endswith("/subject-ball-red-dots-blue.parquet") and g.subject_of(uri) == "ball-red-dots-blue"
    assert g.subject_of("/tmp/g/notes.parquet") == "" and g.subject_of("/tmp/g/subject-x.parquet.tmp") == ""
    assert g.row_key(row("s", "p3", 0.1)) == ("s", "p3", 0)


def test_threshold_counts_from_delta_at_read_time(tmp_path):
    root = str(tmp_path / "g")
    g.write_subject([row("a", "p0", -0.05), row("a", "p1", 0.01), row("a", "p2", 0.03)], root, "a")
    g.write_subject([row("b", "p0", 0.02)], root, "b")
    assert g.count_kept(root, None) == 4
    assert g.count_kept(root, 0.0) == 3
    assert g.count_kept(root, 0.02) == 1  # strictly above lambda, as the paper keeps delta > lambda
    assert list(g.passes([0.1, -0.1], 0.0)) == [True, False] and list(g.passes([0.1, -0.1], None)) == [True, True]
    assert g.resume_state(root, row("x", "p", 0.0)).done == {"a", "b"}


def test_one_provenance_per_g(tmp_path):
    root = str(tmp_path / "g")
    g.write_subject([row("a", "p0", 0.1)], root, "a")
    g.write_subject([row("b", "p0", 0.1, scorer="other")], root, "b")
    with pytest.raises(ValueError, match="mixes 2 provenances"):
        g.check_single_provenance(storage.list_shards(root))
    with pytest.raises(ValueError, match="its own `paths.g`"):
        g.resume_state(str(tmp_path / "g"), row("c", "p0", 0.1, scorer="third"))


def test_an_unreadable_shard_is_moved_aside_and_its_subject_is_not_done(tmp_path):
    """A zero-byte or truncated shard (a disk that filled, a copy cut short) does not block a resume: it is moved
    aside under `_corrupt/` (where no reader lists it), reported with its error, and its subject is rendered again."""
    root = str(tmp_path / "g")
    for subject in "abc":
        g.write_subject([row(subject, "p0", 0.1), row(subject, "p1", 0.2)], root, subject)
    zero, truncated = g.shard_uri(root, "b"), g.shard_uri(root, "c")
    open(zero, "wb").close()
    with open(truncated, "r+b") as f:
        f.truncate(40)
    state = g.resume_state(root, row("x", "p", 0.0))
    assert state.done == {"a"}
    assert sorted(m["shard"] for m in state.moved_aside) == [zero, truncated]
    for moved in state.moved_aside:
        assert storage.exists(moved["moved_to"]) and "/_corrupt/" in moved["moved_to"]
        assert not storage.exists(moved["shard"]) and moved["error"]
    assert storage.list_shards(root) == [g.shard_uri(root, "a")]
    assert g.count_kept(root, None) == 2  # readers after the resume see only whole shards
