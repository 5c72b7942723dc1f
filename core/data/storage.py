"""Stage paths are URIs read and written through `pyarrow.fs`.

A local path works here; on a cluster the same code reads `s3://`, `gs://` or a shared mount, because one
worker's local disk is invisible to the others. Shards are written under a temporary name and renamed, so a
reader that lists a folder never meets a half-written file (readers only ever list `*.parquet`).
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

SHARD_SUFFIX = ".parquet"
TMP_SUFFIX = ".tmp"


class MissingInputError(FileNotFoundError):
    """A stage's input is absent; the message names the path and the config key that set it."""


class UnreadableInputError(ValueError):
    """A stage's input is there but cannot be read (zero-byte, truncated, not parquet); the message names the file and
    the config key that set it."""


def is_local(uri: str) -> bool:
    return "://" not in uri or uri.startswith("file://")


def absolute_uri(uri: str) -> str:
    """Make a local path absolute (Ray workers may run in another directory); leave remote URIs alone."""
    uri = uri.removeprefix("file://")
    return str(Path(uri).expanduser().resolve()) if is_local(uri) else uri


def resolve(uri: str) -> tuple[pafs.FileSystem, str]:
    if is_local(uri):
        return pafs.LocalFileSystem(), absolute_uri(uri)
    return pafs.FileSystem.from_uri(uri)


def join(uri: str, *parts: str) -> str:
    return "/".join([uri.rstrip("/"), *parts])


def exists(uri: str) -> bool:
    fs, path = resolve(uri)
    return fs.get_file_info(path).type != pafs.FileType.NotFound


def require(uri: str, config_key: str, what: str) -> None:
    """Fail at once, naming the path and the config key, when a stage input is missing."""
    if not exists(uri):
        raise MissingInputError(
            f"{what} not found at '{uri}' (set by config key `{config_key}`); run the stage that writes it "
            f"first or point `{config_key}` at an existing location"
        )


def list_shards(uri: str) -> list[str]:
    """Complete parquet shards under a folder URI, sorted; temporary files are never listed, nor anything under a
    folder whose name starts with "_" or "." (a G's `_manifest/` and `_corrupt/`, as Hive and Spark hide theirs)."""
    fs, path = resolve(uri)
    if fs.get_file_info(path).type == pafs.FileType.NotFound:
        return []
    infos = fs.get_file_info(pafs.FileSelector(path, recursive=True))
    root = path.rstrip("/") + "/"
    found = sorted(
        i.path
        for i in infos
        if i.type == pafs.FileType.File
        and i.path.endswith(SHARD_SUFFIX)
        and not any(part.startswith(("_", ".")) for part in i.path[len(root) :].split("/")[:-1])
    )
    prefix = uri.split("://", 1)[0] + "://" if not is_local(uri) else ""
    return [prefix + p for p in found]


def write_shard(table: pa.Table, folder_uri: str, schema: pa.Schema, name: str | None = None) -> str:
    """Write one parquet shard of `schema` atomically: temporary name first, then rename. Returns the shard's URI."""
    from core.data.schema import validate

    table = validate(table, schema, f"shard for {folder_uri}")
    fs, folder = resolve(folder_uri)
    fs.create_dir(folder, recursive=True)
    name = name or f"part-{uuid.uuid4().hex}"
    final = f"{folder}/{name}{SHARD_SUFFIX}"
    tmp = f"{folder}/.{name}.{uuid.uuid4().hex[:8]}{TMP_SUFFIX}"
    pq.write_table(table, tmp, filesystem=fs)
    fs.move(tmp, final)
    return join(folder_uri, name + SHARD_SUFFIX)


def shard_paths(uri: str, shards: list[str]) -> tuple[pafs.FileSystem, list[str]]:
    """The filesystem of folder `uri` and its `shards` as paths on it (no scheme): what a reader such as Ray Data's
    `read_parquet(paths, filesystem=fs)` takes."""
    fs, _ = resolve(uri)
    return fs, [s.split("://", 1)[1] if "://" in s else s for s in shards]


def read_table(folder_uri: str, schema: pa.Schema, config_key: str, what: str) -> pa.Table:
    """Read every complete shard under a folder URI into one table with `schema`."""
    require(folder_uri, config_key, what)
    shards = list_shards(folder_uri)
    if not shards:
        raise MissingInputError(f"{what}: no parquet shards under '{folder_uri}' (config key `{config_key}`)")
    return pa.concat_tables([read_shard(shard, schema, what, config_key) for shard in shards])


def _key_note(config_key: str | None) -> str:
    return f" (config key `{config_key}`)" if config_key else ""


def _unreadable(shard_uri: str, what: str, config_key: str | None, err: Exception) -> UnreadableInputError:
    return UnreadableInputError(
        f"{what}: cannot read '{shard_uri}'{_key_note(config_key)}: {type(err).__name__}: {err}"
    )


def read_shard(shard_uri: str, schema: pa.Schema, what: str, config_key: str | None = None) -> pa.Table:
    """One parquet shard, validated against `schema`; an unreadable file is an UnreadableInputError naming it."""
    from core.data.schema import validate

    fs, path = resolve(shard_uri)
    try:
        # Read as written, then validate: reading "with" a schema would fill a missing column with nulls.
        table = pq.read_table(path, filesystem=fs)
    except (pa.ArrowInvalid, OSError) as err:
        raise _unreadable(shard_uri, what, config_key, err) from err
    return validate(table, schema, f"{what} shard {shard_uri}{_key_note(config_key)}")


def iter_rows(
    folder_uri: str, schema: pa.Schema, config_key: str, what: str, batch_size: int = 64
) -> tuple[int, Iterator[dict]]:
    """(rows, a stream of row dicts) of every complete shard under a folder URI, `batch_size` rows in memory at a
    time, each batch validated against `schema`. Every footer is read first, so a cut shard stops the reader before
    any row is used, naming the file."""
    from core.data.schema import validate

    require(folder_uri, config_key, what)
    shards = list_shards(folder_uri)
    if not shards:
        raise MissingInputError(f"{what}: no parquet shards under '{folder_uri}' (config key `{config_key}`)")
    rows = check_shards(shards, config_key, what)

    def stream() -> Iterator[dict]:
        for shard in shards:
            fs, path = resolve(shard)
            with fs.open_input_file(path) as f:
                for batch in pq.ParquetFile(f).iter_batches(batch_size=batch_size):
                    table = pa.Table.from_batches([batch])
                    yield from validate(table, schema, f"{what} shard {shard}{_key_note(config_key)}").to_pylist()

    return rows, stream()


def check_shards(shards: list[str], config_key: str, what: str) -> int:
    """Read each shard's parquet footer (a few KB, no data): an UnreadableInputError naming the first file that is
    zero-byte, truncated or not parquet. For readers such as Ray Data that would fail deep inside a task. Returns
    the shards' rows."""
    rows = 0
    for shard in shards:
        fs, path = resolve(shard)
        try:
            with fs.open_input_file(path) as f:
                rows += pq.read_metadata(f).num_rows
        except (pa.ArrowInvalid, OSError) as err:
            raise _unreadable(shard, what, config_key, err) from err
    return rows


def move_aside(shard_uri: str, folder: str = "_corrupt") -> str:
    """Move an unreadable shard into `folder` beside it, under a name no reader lists (its name, a UTC time stamp
    and `.corrupt`), keeping its bytes for whoever wants to look. Returns where it went."""
    fs, path = resolve(shard_uri)
    parent, name = path.rsplit("/", 1)
    fs.create_dir(f"{parent}/{folder}", recursive=True)
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    target = f"{parent}/{folder}/{name}.{stamp}-{uuid.uuid4().hex[:6]}.corrupt"
    fs.move(path, target)
    prefix = shard_uri.split("://", 1)[0] + "://" if not is_local(shard_uri) else ""
    return prefix + target


def read_columns(shard_uri: str, columns: list[str]) -> pa.Table:
    """Only `columns` of one parquet shard (parquet reads just those column chunks)."""
    fs, path = resolve(shard_uri)
    return pq.read_table(path, filesystem=fs, columns=columns)


def write_bytes(uri: str, data: bytes) -> None:
    fs, path = resolve(uri)
    parent = path.rsplit("/", 1)[0]
    fs.create_dir(parent, recursive=True)
    tmp = f"{path}.{uuid.uuid4().hex[:8]}{TMP_SUFFIX}"
    with fs.open_output_stream(tmp) as out:
        out.write(data)
    fs.move(tmp, path)


def read_bytes(uri: str) -> bytes:
    fs, path = resolve(uri)
    with fs.open_input_stream(path) as f:
        return f.read()


def upload_dir(local_dir: str, uri: str) -> None:
    """Copy a local folder to a folder URI (a plain copy when both are local)."""
    fs, path = resolve(uri)
    fs.create_dir(path, recursive=True)
    pafs.copy_files(local_dir, path, source_filesystem=pafs.LocalFileSystem(), destination_filesystem=fs)


def replace_dir(local_dir: str, uri: str) -> None:
    """Put a local folder's contents at a folder URI, replacing what was there. Locally the swap is two renames (a
    reader sees the old folder or the new one, and `readable_dir` finds the old one if a crash falls between them);
    elsewhere the files are copied over the old ones."""
    if not is_local(uri):
        upload_dir(local_dir, uri)
        return
    path = absolute_uri(uri)
    staged, old = path + TMP_SUFFIX, path + ".old"
    shutil.rmtree(staged, ignore_errors=True)
    shutil.copytree(local_dir, staged)
    shutil.rmtree(old, ignore_errors=True)
    if os.path.exists(path):
        os.replace(path, old)
    os.replace(staged, path)
    shutil.rmtree(old, ignore_errors=True)


def readable_dir(uri: str) -> str | None:
    """The folder `replace_dir` last completed at `uri` (None when there is none)."""
    if exists(uri):
        return uri
    old = absolute_uri(uri) + ".old" if is_local(uri) else None
    return old if old and os.path.isdir(old) else None


def local_dir(uri: str) -> str:
    """A local folder holding the contents of a folder URI: the folder itself when local, else a fresh copy."""
    if is_local(uri):
        return absolute_uri(uri)
    fs, path = resolve(uri)
    target = tempfile.mkdtemp(prefix="suti-")
    pafs.copy_files(path, target, source_filesystem=fs, destination_filesystem=pafs.LocalFileSystem())
    return target


def sha256_files(paths: list[str]) -> str:

    h = hashlib.sha256()
    for p in sorted(paths):
        h.update(os.path.basename(p).encode())
        with open(p, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
    return h.hexdigest()[:16]
