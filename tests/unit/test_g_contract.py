"""The G contract (`core.data.g`, `core.data.g_manifest`): shard names, the key, provenance, the threshold applied
when G is read, the manifest that plans a read without opening a shard, merging and resume."""

import os

import numpy as np
import pytest

from core.data import g, schema, storage
from core.data import g_manifest as manifest


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
    assert g.count_kept(root, 0.015) == 2  # a threshold the manifest does not record: counted from the shards
    assert list(g.passes([0.1, -0.1], 0.0)) == [True, False] and list(g.passes([0.1, -0.1], None)) == [True, True]
    assert g.resume_state(root, row("x", "p", 0.0)).done == {"a", "b"}


def test_one_provenance_per_g(tmp_path):
    root = str(tmp_path / "g")
    g.write_subject([row("a", "p0", 0.1)], root, "a")
    g.write_subject([row("b", "p0", 0.1, scorer="other")], root, "b")
    with pytest.raises(ValueError, match="mixes 2 provenances"):
        g.check_single_provenance(root)
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
    # The subject rendered again: its shard, under the name that was removed, is part of G again.
    g.write_subject([row("c", "p0", 0.1)], root, "c")
    assert g.resume_state(root, row("x", "p", 0.0)).done == {"a", "c"} and g.count_kept(root, None) == 3
    manifest.write_snapshot(root)
    assert manifest.read(root).shards == ["subject-a.parquet", "subject-c.parquet"]
    assert manifest.vacuum(root, retention_s=0) == ["subject-b.parquet"] and storage.exists(g.shard_uri(root, "c"))


def subject_rows(subject: str, n: int, delta: float = 0.1) -> list[dict]:
    return [row(subject, f"p{i}", delta + 0.001 * i) for i in range(n)]


def test_planning_reads_the_manifest_only_and_splits_g_into_disjoint_balanced_parts(tmp_path):
    root = str(tmp_path / "g")
    sizes = {f"s{i:02d}": 3 + (i * 7) % 11 for i in range(40)}
    for subject, n in sizes.items():
        g.write_subject(subject_rows(subject, n), root, subject)
    for shard in storage.list_shards(root):  # the data files are gone: a plan that opened one would fail
        os.remove(shard)
    plan = manifest.plan(root, 0.0, 4)
    assert plan.opened == 0
    parts = [set(p) for p in plan.shards]
    assert sum(map(len, parts)) == len(set().union(*parts)) == 40  # disjoint, and every shard read once
    assert sum(plan.rows) == sum(sizes.values()) and plan.balance >= 0.9, plan.rows
    assert manifest.plan(root, 0.0, 4).shards == plan.shards  # the same plan on every worker that makes it


def test_a_plan_splits_merged_shards_by_row_group_so_workers_stay_balanced(tmp_path):
    """Merged shards larger than a worker's share: the plan cuts inside them at row groups (one per subject), and
    every row group is read by exactly one worker."""
    root = str(tmp_path / "g")
    for i in range(24):
        g.write_subject(subject_rows(f"s{i:02d}", 8), root, f"s{i:02d}")
    assert len(manifest.compact(root, target_rows=64)) == 3
    plan = manifest.plan(root, None, 4)
    assert plan.rows == [48, 48, 48, 48] and plan.opened == 0
    m = manifest.read(root)
    groups_of = dict(zip(m.shards, manifest.groups_of(m.live.column("groups"))[0].tolist(), strict=True))
    pieces = []
    for part in plan.parts:
        for uri, idx in part:
            pieces += [(uri, i) for i in (idx or range(groups_of[uri.rsplit("/", 1)[-1]]))]
    assert len(pieces) == len(set(pieces)) == 24


def test_merging_keeps_every_key_once_and_a_reader_sees_one_layout_or_the_other(tmp_path):
    root = str(tmp_path / "g")
    for i in range(10):
        g.write_subject(subject_rows(f"s{i}", 4), root, f"s{i}")
    keys = sorted(map(tuple, g.read_table(root, list(g.KEY)).to_pylist()))
    before = set(storage.list_shards(root))
    merged = manifest.compact(root, target_rows=16, final=True)
    assert len(merged) == 3  # 16 + 16 + 8 rows
    assert sorted(map(tuple, g.read_table(root, list(g.KEY)).to_pylist())) == keys
    assert set(g.live_shards(root)) == set(merged)
    assert before <= set(storage.list_shards(root))  # merged-away files stay for epochs planned before the merge
    assert manifest.vacuum(root, retention_s=3600) == []
    assert len(manifest.vacuum(root, retention_s=0)) == 10
    assert set(storage.list_shards(root)) == set(merged)
    assert g.resume_state(root, row("x", "p", 0.0)).done == {f"s{i}" for i in range(10)}
    assert g.count_kept(root, 0.0) == 40


def test_a_snapshot_folds_the_segments_and_later_commits_still_count(tmp_path):
    root = str(tmp_path / "g")
    for subject in "abc":
        g.write_subject(subject_rows(subject, 2), root, subject)
    manifest.write_snapshot(root)
    snapshots, segments = manifest._list(root)
    assert len(snapshots) == 1 and segments == []
    g.write_subject(subject_rows("d", 2), root, "d")
    assert manifest.read(root).subjects() == set("abcd") and g.count_kept(root, None) == 8


def test_a_shard_whose_commit_never_came_is_adopted_on_resume(tmp_path):
    """A driver killed after an expert wrote its shard but before the manifest commit: the shard is not part of G
    for readers, and the next run adds it rather than rendering its subject again."""
    root = str(tmp_path / "g")
    g.write_subject(subject_rows("a", 2), root, "a")
    g.write_subject(subject_rows("b", 3), root, "b", commit=False)
    assert g.count_kept(root, None) == 2
    state = g.resume_state(root, row("x", "p", 0.0))
    assert state.done == {"a", "b"} and state.adopted == 1
    assert g.count_kept(root, None) == 5


def test_a_g_from_before_the_manifest_is_refused_by_readers_until_migrated(tmp_path):
    root = str(tmp_path / "g")
    for subject in "ab":
        table = schema.table_from_rows(subject_rows(subject, 2), schema.G_SCHEMA)
        storage.write_shard(table, root, schema.G_SCHEMA, name=g.shard_name(subject))
    with pytest.raises(storage.MissingInputError, match="apps.g_compact"):
        g.count_kept(root, None)
    _, moved, adopted = g.sync_manifest(root)
    assert adopted == 2 and not moved and g.count_kept(root, None) == 4


def reference_plan(groups: list[np.ndarray], world: int) -> list[dict]:
    """A read split row group by row group (each to the worker in whose share its middle row falls), written out
    plainly: what `manifest.plan`, which unpacks only the shards a cut falls in, must give."""
    total = sum(int(k.sum()) for k in groups)
    parts: list[dict] = [{} for _ in range(world)]
    done = 0
    for s, kept in enumerate(groups):
        for i, k in enumerate(kept.tolist()):
            if k:
                w = min(world - 1, int((done + k / 2) * world // total))
                parts[w].setdefault(s, []).append(i)
                done += k
    return parts


def test_planning_shard_by_shard_matches_planning_row_group_by_row_group(tmp_path):
    rng = np.random.default_rng(0)
    for trial in range(12):
        root = str(tmp_path / f"g{trial}")
        groups = [rng.integers(0, 40, size=int(rng.integers(1, 30))) * (rng.random() < 0.9) for _ in range(25)]
        entries = [
            {
                "op": "add",
                "shard": f"part-{s:03d}.parquet",
                "rows": int(k.sum()) + 7,
                "kept": [int(k.sum())] * len(manifest.KEPT_THRESHOLDS),
                "groups": manifest.pack_groups([[n + 1, *[n] * len(manifest.KEPT_THRESHOLDS)] for n in k.tolist()]),
                "subjects": [f"s{s}"],
                "kind": "finetune",
                **dict.fromkeys(manifest.PROVENANCE, "p"),
                "bytes": 1,
                "committed_at": 0.0,
            }
            for s, k in enumerate(groups)
        ]
        manifest.commit(root, entries)
        for world in (1, 2, 3, 4, 7):
            plan = manifest.plan(root, 0.0, world)
            expected = reference_plan(groups, world)
            for part, want in zip(plan.parts, expected, strict=True):
                got = {int(uri.rsplit("-", 1)[1].split(".")[0]): idx for uri, idx in part}
                assert set(got) == set(want), (trial, world)
                for s, idx in got.items():
                    nonzero = np.flatnonzero(groups[s]).tolist()
                    assert (idx or nonzero) == want[s], (trial, world, s)
            assert sum(plan.rows) == sum(int(k.sum()) for k in groups)


def test_planning_reads_a_snapshots_live_entries_without_its_tombstones(tmp_path):
    """After merges, a snapshot holds a tombstone per merged-away shard; the live entries are its first row groups, so
    a live-only read (what planning does) skips the tombstones, before and after further commits."""
    import pyarrow.parquet as pq

    root = str(tmp_path / "g")
    for i in range(12):
        g.write_subject(subject_rows(f"s{i:02d}", 4), root, f"s{i:02d}")
    manifest.compact(root, target_rows=16, final=True)
    manifest.write_snapshot(root)
    full = manifest.read(root)
    assert full.live.num_rows == 3 and full.removed.num_rows == 12
    (snapshot,), _ = manifest._list(root)
    meta = pq.ParquetFile(os.path.join(root, manifest.MANIFEST, snapshot)).metadata
    assert [meta.row_group(i).num_rows for i in range(meta.num_row_groups)] == [3, 12]  # under 128 live entries
    live = manifest.read(root, manifest.PLAN_COLUMNS, live_only=True)
    assert live.shards == full.shards and live.removed.num_rows == 0 and live.partial
    with pytest.raises(ValueError, match="cannot be written back"):
        manifest.write_snapshot(root, live)
    # A commit after the snapshot: a new subject, and a live shard removed; the live-only read applies both.
    g.write_subject(subject_rows("t", 4), root, "t")
    manifest.commit(root, removes=[full.shards[0]])
    live = manifest.read(root, manifest.PLAN_COLUMNS, live_only=True)
    assert live.shards == manifest.read(root).shards and full.shards[0] not in live.shards
    assert manifest.plan(root, 0.0, 2).rows == manifest.plan(root, 0.0, 2, manifest.read(root)).rows


def test_planning_reads_the_row_group_counts_of_the_cut_shards_alone(tmp_path, monkeypatch):
    """A snapshot keeps its live entries' row-group counts in a counts file; planning reads none of them but those of
    the shards a cut falls in, from the file's row groups holding them. Its plans equal those made from the whole
    manifest, a column read that way equals the full one, and a snapshot's older counts files are deleted."""
    import pyarrow.parquet as pq

    monkeypatch.setattr(manifest, "COUNTS_GROUP_ENTRIES", 2)  # many row groups of counts from a few shards
    root = str(tmp_path / "g")
    for i in range(28):
        g.write_subject(subject_rows(f"s{i:02d}", 3 + i % 4), root, f"s{i:02d}")
    folder = os.path.join(root, manifest.MANIFEST)

    def counts_files() -> list[str]:
        return sorted(n for n in os.listdir(folder) if n.startswith("counts-"))

    manifest.write_snapshot(root)
    first = counts_files()
    manifest.compact(root, target_rows=12, final=True)
    manifest.write_snapshot(root)
    assert len(counts_files()) == 2 and counts_files()[0] == first[0]  # the previous one kept for its readers
    manifest.write_snapshot(root)
    counts = counts_files()
    assert len(counts) == 2 and first[0] not in counts  # and gone one snapshot later
    full = manifest.read(root)
    live = manifest.read(root, manifest.PLAN_COLUMNS, live_only=True)
    assert "groups" not in live.live.column_names and live.counts == counts[-1]
    meta = pq.ParquetFile(os.path.join(folder, counts[-1])).metadata
    assert meta.num_row_groups == -(-full.live.num_rows // 2) >= 3
    for world in (2, 3, 5):
        assert manifest.plan(root, 0.0, world, live).parts == manifest.plan(root, 0.0, world, full).parts
        assert manifest.plan(root, 0.02, world).rows == manifest.plan(root, 0.02, world, full).rows
    every = list(range(full.live.num_rows))
    want = full.live.column("groups").to_pylist()
    assert all(want) and manifest.live_column(root, live, "groups", every[::-1]) == want[::-1]
    assert manifest.live_column(root, live, "groups", [1, 4]) == [want[1], want[4]]
    # A manifest read before a writer's snapshots deleted its counts file: planning reads the manifest again.
    manifest.write_snapshot(root)
    manifest.write_snapshot(root)
    assert live.counts not in counts_files()
    assert manifest.plan(root, 0.0, 3, live).parts == manifest.plan(root, 0.0, 3, full).parts
    # After a commit the snapshot's live entries are no longer `live` as they lie: the column is found by name.
    g.write_subject(subject_rows("t", 4), root, "t")
    later = manifest.read(root, manifest.PLAN_COLUMNS, live_only=True)
    assert later.counts is None
    assert manifest.plan(root, 0.0, 3, later).parts == manifest.plan(root, 0.0, 3, manifest.read(root)).parts


def test_random_flip_mirrors_about_half_the_targets_by_key_and_keeps_the_demos(tmp_path):
    """`apprentice.random_flip`: a decoded target is the stored image or its mirror, chosen from the row's key and
    pass (the same on every call), about half of each; demo picks and demos are those of a read without it."""
    from actors.g_dataset import decode_batch
    from core.data.images import to_png
    from core.models.tokenizer import create_tokenizer

    tokenizer = str(tmp_path / "tokenizer")
    create_tokenizer(16).save_pretrained(tokenizer)
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 256, (8, 8, 3), dtype=np.uint8) for _ in range(40)]
    rows = [row(f"s{i}", "p0", 0.1) for i in range(40)]
    for r, image in zip(rows, images, strict=True):
        r.update(
            image=to_png(image), demo_images=[to_png(image[::-1]), to_png(np.ascontiguousarray(image[:, :, ::-1]))]
        )
        r["demo_captions"] = ["a ball", "a red ball"]
    batch = {k: [r[k] for r in rows] for k in rows[0]}
    plain = decode_batch(batch, tokenizer, 2, seed=3, passes=2)
    flipped = decode_batch(batch, tokenizer, 2, seed=3, passes=2, random_flip=True)
    assert np.array_equal(decode_batch(batch, tokenizer, 2, seed=3, passes=2, random_flip=True)["image"],
                          flipped["image"])  # fmt: skip
    mirrored = [bool(np.array_equal(f, p[:, :, ::-1])) and not np.array_equal(f, p)
                for f, p in zip(flipped["image"], plain["image"], strict=True)]  # fmt: skip
    same = [np.array_equal(f, p) for f, p in zip(flipped["image"], plain["image"], strict=True)]
    assert all(m or s for m, s in zip(mirrored, same, strict=True)) and 25 <= sum(mirrored) <= 55, sum(mirrored)
    for key in ("demo_images", "demo_ids", "input_ids"):
        assert np.array_equal(flipped[key], plain[key])
