import os

import pyarrow as pa
import pytest

from core.data import schema, storage


def g_row(i: int = 0) -> dict:
    return {
        "subject_id": "s1",
        "prompt_id": f"p{i}",
        "sample_index": 0,
        "prompt": "a ball on sand",
        "prompt_skill": "style",
        "image": b"png",
        "demo_images": [b"a", b"b", b"c"],
        "demo_captions": ["x", "y", "z"],
        "clip_score": 0.3,
        "ref_clip_score": 0.2,
        "delta": 0.1,
        "base_checkpoint_hash": "b",
        "expert_config_hash": "e",
        "scorer_hash": "s",
    }


def test_g_schema_has_key_and_provenance_columns():
    for name in (*schema.G_KEY, "delta", "base_checkpoint_hash", "expert_config_hash", "scorer_hash"):
        assert name in schema.G_SCHEMA.names
    assert schema.G_SCHEMA.field("image").type == pa.binary()


def test_shard_round_trip_through_the_schema(tmp_path):
    table = schema.table_from_rows([g_row(0), g_row(1)], schema.G_SCHEMA)
    uri = storage.write_shard(table, str(tmp_path / "g"), schema.G_SCHEMA, name="subject-s1")
    assert uri.endswith("subject-s1.parquet")
    back = storage.read_table(str(tmp_path / "g"), schema.G_SCHEMA, "paths.g", "G")
    assert back.equals(table)
    assert os.listdir(tmp_path / "g") == ["subject-s1.parquet"]  # no temporary file left behind


def test_validate_names_missing_and_extra_columns():
    table = (
        schema.table_from_rows([g_row()], schema.G_SCHEMA).drop_columns(["delta"]).append_column("oops", pa.array([1]))
    )
    with pytest.raises(schema.SchemaError, match=r"missing \['delta'\].*unexpected \['oops'\]"):
        schema.validate(table, schema.G_SCHEMA, "G")


def test_rows_and_shards_that_break_the_schema_are_refused(tmp_path):
    import pyarrow.parquet as pq

    row = g_row()
    del row["delta"]
    with pytest.raises(schema.SchemaError, match=r"missing \['delta'\]"):
        schema.table_from_rows([row], schema.G_SCHEMA)
    with pytest.raises(schema.SchemaError, match="non-nullable"):
        schema.table_from_rows([dict(g_row(), prompt=None)], schema.G_SCHEMA)
    folder = tmp_path / "g"
    folder.mkdir()
    renamed = schema.table_from_rows([g_row()], schema.G_SCHEMA).rename_columns(
        ["delta_clip" if n == "delta" else n for n in schema.G_SCHEMA.names]
    )
    pq.write_table(renamed, folder / "old.parquet")  # a shard from a writer that renamed a column
    with pytest.raises(schema.SchemaError, match=r"missing \['delta'\].*unexpected \['delta_clip'\]"):
        storage.read_table(str(folder), schema.G_SCHEMA, "paths.g", "G")
    with pytest.raises(schema.SchemaError):
        storage.write_shard(renamed, str(tmp_path / "h"), schema.G_SCHEMA)


def test_half_written_and_temporary_files_are_never_listed(tmp_path):
    folder = tmp_path / "g"
    storage.write_shard(schema.table_from_rows([g_row()], schema.G_SCHEMA), str(folder), schema.G_SCHEMA, name="done")
    (folder / ".part-x.1234.tmp").write_bytes(b"PAR1 half")
    assert [os.path.basename(s) for s in storage.list_shards(str(folder))] == ["done.parquet"]
    assert storage.read_table(str(folder), schema.G_SCHEMA, "paths.g", "G").num_rows == 1


def test_missing_input_names_path_and_config_key(tmp_path):
    missing = str(tmp_path / "nowhere")
    with pytest.raises(storage.MissingInputError, match=r"nowhere.*`paths\.corpus`"):
        storage.read_table(missing, schema.CORPUS_SCHEMA, "paths.corpus", "corpus")


def test_uris_go_through_pyarrow_fs(tmp_path):
    fs, path = storage.resolve(f"file://{tmp_path}")
    assert type(fs).__name__ == "LocalFileSystem" and path == str(tmp_path)
    fs, _ = storage.resolve("mock://bucket/g")  # a non-local URI goes to pyarrow's filesystem for its scheme
    assert "Mock" in type(fs).__name__
    storage.write_bytes(str(tmp_path / "a" / "b.txt"), b"hi")
    assert storage.read_bytes(str(tmp_path / "a" / "b.txt")) == b"hi"


def _write_corpus_shard(folder, name: str = "ok") -> str:
    rows = [{"url": "u1", "image": b"png", "caption": "a ball", "truth_subject_id": None}]
    return storage.write_shard(
        schema.table_from_rows(rows, schema.CORPUS_SCHEMA), str(folder), schema.CORPUS_SCHEMA, name
    )


@pytest.mark.parametrize("damage", ["zero-byte", "truncated", "not parquet"])
def test_an_unreadable_shard_is_an_error_naming_its_path_and_config_key(tmp_path, damage):
    folder = tmp_path / "corpus"
    _write_corpus_shard(folder, "ok")
    good = (folder / "ok.parquet").read_bytes()
    bad = {"zero-byte": b"", "truncated": good[: len(good) // 2], "not parquet": b"<html>not found</html>"}[damage]
    (folder / "bad.parquet").write_bytes(bad)
    for read in (
        lambda: storage.read_table(str(folder), schema.CORPUS_SCHEMA, "paths.corpus", "corpus"),
        lambda: storage.check_shards(storage.list_shards(str(folder)), "paths.corpus", "corpus"),
    ):
        with pytest.raises(storage.UnreadableInputError, match=r"bad\.parquet.*`paths\.corpus`") as err:
            read()
        assert "ok.parquet" not in str(err.value)
    storage.check_shards([storage.join(str(folder), "ok.parquet")], "paths.corpus", "corpus")  # a good shard passes


def test_a_null_in_a_non_nullable_column_names_the_shard_column_and_config_key(tmp_path):
    import pyarrow.parquet as pq

    folder = tmp_path / "ds"
    folder.mkdir()
    loose = pa.schema([f.with_nullable(True) for f in schema.CORPUS_SCHEMA])  # a writer that did not check
    table = pa.Table.from_pylist([{"url": None, "image": b"png", "caption": "c", "truth_subject_id": None}], loose)
    pq.write_table(table, folder / "nulls.parquet")
    with pytest.raises(schema.SchemaError, match=r"nulls\.parquet.*`paths\.corpus`.*\['url'\]"):
        storage.read_table(str(folder), schema.CORPUS_SCHEMA, "paths.corpus", "corpus")
