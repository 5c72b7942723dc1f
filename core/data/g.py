"""The G contract: how expert renders are stored, keyed, traced and counted. Every reader and writer of G uses it.

- A writer writes one parquet shard per subject, named `subject-<subject_id>.parquet` (`shard_name`), under a
  temporary name then renamed (`storage.write_shard`), so a half-written shard is never listed, and records it in
  G's manifest (`core.data.g_manifest`), which readers plan from without opening a shard. Small shards are later
  merged into shards of about `g_layout.shard_rows` rows (`g_manifest.compact`), each merge one manifest commit.
- A subject is done when the manifest lists a shard holding it: a re-run skips it (`resume_state`). A listed shard
  whose file is not the size its entry records (a disk that filled, a copy cut short) is moved aside under
  `_corrupt/` when a run resumes, and its subjects are rendered again.
- A row is keyed by `KEY` = (subject_id, prompt_id, sample_index) (`schema.G_KEY`).
- Every row carries its provenance, `PROVENANCE`: the base checkpoint, the expert config and the scorer that made
  and scored it; the manifest adds the kind of G (`g_manifest.KINDS`: expert renders, true renders, or other
  images of the subject). One G holds one provenance and kind; a threshold sweep over renders of different scorers
  or bases would compare unlike things.
- The delta-CLIP threshold (the paper's lambda, `filter.min_delta`) is applied when G is read, never stored: a row
  passes when `delta > min_delta`, and `min_delta=None` keeps every row. So the threshold can be swept without
  re-running the experts.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import NamedTuple

import numpy as np
import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from core.data import g_manifest as manifest
from core.data import schema, storage

KEY = schema.G_KEY
PROVENANCE = manifest.PROVENANCE
SHARD_PREFIX = "subject-"


def shard_name(subject_id: str) -> str:
    """The file stem of a subject's shard (also used for DreamBench's per-subject output shards)."""
    return f"{SHARD_PREFIX}{subject_id}"


def shard_uri(g_uri: str, subject_id: str) -> str:
    return storage.join(g_uri, shard_name(subject_id) + storage.SHARD_SUFFIX)


def subject_of(shard: str) -> str:
    """The subject whose shard this is ("" for a file not named by `shard_name`)."""
    name = shard.rsplit("/", 1)[-1]
    if not (name.startswith(SHARD_PREFIX) and name.endswith(storage.SHARD_SUFFIX)):
        return ""
    return name[len(SHARD_PREFIX) : -len(storage.SHARD_SUFFIX)]


def row_key(row: Mapping) -> tuple:
    return tuple(row[k] for k in KEY)


def provenance_of(row: Mapping) -> tuple[str, ...]:
    return tuple(row[k] for k in PROVENANCE)


def passes(delta: np.ndarray | list[float], min_delta: float | None) -> np.ndarray:
    """Which rows the filter keeps: delta > min_delta (every row when min_delta is None)."""
    delta = np.asarray(delta, dtype=np.float64)
    return np.ones(len(delta), dtype=bool) if min_delta is None else delta > min_delta


def write_subject(rows: list[dict], g_uri: str, subject_id: str, kind: str = "finetune", commit: bool = True) -> dict:
    """Write one subject's rows (kept and rejected renders alike) as its shard, atomically, and (with `commit`)
    record it in G's manifest. Returns its manifest entry, for a writer that commits entries in batches."""
    table = schema.table_from_rows(rows, schema.G_SCHEMA, "G")
    uri = storage.write_shard(table, g_uri, schema.G_SCHEMA, name=shard_name(subject_id))
    fs, path = storage.resolve(uri)
    entry = manifest.entry(uri.rsplit("/", 1)[-1], table, kind, fs.get_file_info(path).size)
    if commit:
        manifest.commit(g_uri, [entry])
    return entry


def read_manifest(g_uri: str, columns: Iterable[str] | None = None, live_only: bool = False) -> manifest.Manifest:
    """G's manifest (only `columns` and the live shards, if asked: `manifest.read`); a G folder of the per-subject
    layout without one gets a clear error naming the migration."""
    m = manifest.read(g_uri, columns, live_only)
    if not m.live.num_rows and not manifest.exists(g_uri) and storage.list_shards(g_uri):
        raise storage.MissingInputError(
            f"G at '{g_uri}' has shards but no {manifest.MANIFEST}/: it predates the manifest; record it with "
            f"`python -m apps.g_compact paths.g={g_uri}`"
        )
    return m


def check_single_provenance(g_uri: str, expected: Mapping | None = None) -> None:
    """Refuse a G whose renders come from more than one (base, expert config, scorer, kind), or from another one
    than `expected` (a provenance dict: the run about to add to G). Reads the manifest only."""
    manifest.check_single(read_manifest(g_uri, manifest.PLAN_COLUMNS, live_only=True), expected)


def shard_entry(shard: str, kind: str) -> dict:
    """A manifest entry for a complete shard found in G but not in its manifest (opens the shard)."""
    fs, path = storage.resolve(shard)
    with fs.open_input_file(path) as f:
        pf = pq.ParquetFile(f)
        table = pf.read(columns=["subject_id", "delta", *PROVENANCE])
        groups = [pf.metadata.row_group(i).num_rows for i in range(pf.metadata.num_row_groups)]
    return manifest.entry(shard.rsplit("/", 1)[-1], table, kind, fs.get_file_info(path).size, groups)


class ResumeState(NamedTuple):
    done: set[str]  # subjects whose shard is in G and whole
    moved_aside: list[dict]  # {"shard", "moved_to", "error"} for each unreadable shard found
    adopted: int = 0  # complete shards found outside the manifest and added to it


def _top_level(g_uri: str) -> dict[str, int]:
    """G's data files (name -> size) from one listing of its folder: no file is opened."""
    fs, path = storage.resolve(g_uri)
    if fs.get_file_info(path).type == pafs.FileType.NotFound:
        return {}
    infos = fs.get_file_info(pafs.FileSelector(path))
    return {
        i.base_name: i.size
        for i in infos
        if i.type == pafs.FileType.File and i.base_name.endswith(storage.SHARD_SUFFIX)
    }


def sync_manifest(g_uri: str, kind: str = "finetune") -> tuple[manifest.Manifest, list[dict], int]:
    """Bring G's manifest up to date with G's folder (one listing of it; only shards outside the manifest are
    opened). Returns (the manifest, the shards moved aside or lost, the shards adopted):

    - a listed shard whose file is shorter or longer than its entry says (zero-byte, truncated) is moved aside under
      `_corrupt/` and removed from the manifest, so its subjects are no longer done; a listed file that is gone is
      removed from it;
    - a complete shard the manifest does not list (its writer stopped before committing it, or G predates the
      manifest) is opened once and added, as `kind`, or moved aside when it cannot be read.
    """
    m = manifest.read(g_uri)
    files = _top_level(g_uri)
    moved, removes = [], []

    def aside(name: str, error: str) -> None:
        uri = storage.join(g_uri, name)
        moved.append({"shard": uri, "moved_to": storage.move_aside(uri), "error": error})

    for name, size in zip(m.shards, m.live.column("bytes").to_pylist(), strict=True):
        if name not in files:
            removes.append(name)
            moved.append({"shard": storage.join(g_uri, name), "moved_to": None, "error": "file missing"})
        elif files[name] != size:
            aside(name, f"size {files[name]} bytes, the manifest says {size}")
            removes.append(name)
    listed = set(m.shards) | set(m.tombstones)
    adds = []
    for name in sorted(set(files) - listed):
        try:
            adds.append(shard_entry(storage.join(g_uri, name), kind))
        except (pa.ArrowInvalid, OSError, KeyError, ValueError) as err:
            aside(name, f"{type(err).__name__}: {err}")
    if adds or removes:
        manifest.commit(g_uri, adds, removes)
        m = manifest.read(g_uri)
    return m, moved, len(adds)


def resume_state(g_uri: str, provenance: Mapping) -> ResumeState:
    """What a run adding to G with this `provenance` finds there, after `sync_manifest`: the subjects done, the
    shards moved aside (their subjects are rendered again) and the shards adopted. G must have been made by this
    very provenance (and kind: "finetune" unless `provenance` says otherwise)."""
    m, moved, adopted = sync_manifest(g_uri, provenance.get("kind", "finetune"))
    manifest.check_single(m, provenance)
    return ResumeState(m.subjects(), moved, adopted)


def count_kept(g_uri: str, min_delta: float | None) -> int:
    """Rows of G passing the threshold, from the manifest (or, at a threshold it does not record, the shards'
    `delta` columns)."""
    return sum(manifest.plan(g_uri, min_delta, 1, read_manifest(g_uri, manifest.PLAN_COLUMNS, live_only=True)).rows)


def live_shards(g_uri: str) -> list[str]:
    """The URIs of the shards G's manifest lists now (sorted)."""
    return [storage.join(g_uri, name) for name in read_manifest(g_uri).shards]


def read_table(g_uri: str, columns: list[str] | None = None) -> pa.Table:
    """All of G (or its `columns`) as one table, from the shards its manifest lists: for tests, reports and small
    G; training streams it through `actors.g_dataset.read_g` instead."""
    storage.require(g_uri, "paths.g", "G (expert renders)")
    shards = live_shards(g_uri)
    if not shards:
        raise storage.MissingInputError(f"G: no shards in the manifest under '{g_uri}' (config key `paths.g`)")
    tables = [storage.read_shard(s, schema.G_SCHEMA, "G", "paths.g") for s in shards]
    table = pa.concat_tables(tables)
    return table.select(columns) if columns else table
