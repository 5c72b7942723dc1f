"""G's manifest: which shard files make up G, what each holds, and how a read of G is planned without opening one.

G is a folder of parquet shards plus `_manifest/`, a log of small parquet files (`MANIFEST_SCHEMA`, one row per
shard added or removed):

- `segment-<time>-<id>.parquet`: one commit. Writers add shards in batches (the expert stage's driver commits every
  `g_layout.commit_every` finished subjects); compaction adds a merged shard and removes the shards it merged in the
  same segment, so a reader sees either the small shards or the merged one, never both and never neither.
- `snapshot-<time>-<id>.parquet`: the state after folding a set of segments, the live entries in a row group of
  their own before the tombstones; the folded segments are deleted after it is written. A reader takes the newest
  snapshot plus the segments it did not fold.
- `counts-<time>-<id>.parquet`, written just before its snapshot and named in its metadata: the live entries'
  row-group counts (`groups`, the bulk of an entry) in small row groups, and the names of the folded segments.
  Planning reads the counts of the few shards a cut between workers falls in, not the rest.

Each entry records the shard's rows, its kept rows at each of `KEPT_THRESHOLDS` (so the rows a threshold keeps are
known without reading a `delta` column), its subjects (resume by name), its provenance and its kind, so planning an
epoch reads the manifest only. A file is part of G when the manifest lists it: a shard written whose commit never
came (a driver killed in between) is an orphan until the expert stage adopts it at its next start (`adopt`), and a
shard merged away is deleted only `retention_s` after its removal, so an epoch planned before the merge can still
read it.
"""

from __future__ import annotations

import functools
import json
import logging
import time
import uuid
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from core.data import schema, storage

logger = logging.getLogger(__name__)

MANIFEST = "_manifest"
PROVENANCE = ("base_checkpoint_hash", "expert_config_hash", "scorer_hash")
KINDS = ("finetune", "oracle", "raw")  # expert renders; true renders of each prompt; another image of the subject
# Thresholds (the paper's lambda) whose kept rows every entry records; any other threshold is counted from the
# shards' `delta` columns (and planning then opens each shard once).
KEPT_THRESHOLDS = (0.0, 0.01, 0.02, 0.03)

MANIFEST_SCHEMA = pa.schema(
    [
        pa.field("op", pa.string(), nullable=False),  # "add" or "remove"
        pa.field("shard", pa.string(), nullable=False),  # file name inside G
        pa.field("rows", pa.int64(), nullable=False),
        pa.field("kept", pa.list_(pa.int64()), nullable=False),  # rows with delta > t, for t in KEPT_THRESHOLDS
        # Per parquet row group of the shard: [rows, kept at each of KEPT_THRESHOLDS], so a read can be split
        # between workers inside a shard (a merged shard keeps one row group per subject). Packed as little-endian
        # int32 (`pack_groups`, `groups_of`): a million row groups decode as one buffer, not a million lists.
        pa.field("groups", pa.binary(), nullable=False),
        pa.field("subjects", pa.list_(pa.string()), nullable=False),
        pa.field("kind", pa.string(), nullable=False),
        *(pa.field(k, pa.string(), nullable=False) for k in PROVENANCE),
        pa.field("bytes", pa.int64(), nullable=False),
        pa.field("committed_at", pa.float64(), nullable=False),  # seconds since the epoch, at commit
    ]
)


# What planning a read (and checking provenance) needs of the manifest: not its subject lists nor its row groups'
# counts, the bulk of it (planning reads the counts of the few shards that a cut between workers falls in, alone).
PLAN_COLUMNS = ("op", "shard", "rows", "kept", "kind", "committed_at", *PROVENANCE)
# A snapshot keeps its live entries' `groups` in a file of their own (`counts-<time>-<id>.parquet`, named in the
# snapshot's metadata), in row groups of this many entries, so that planning reads the counts of the few shards a
# cut falls in without the rest; the same file's metadata lists the segments the snapshot folded.
COUNTS_GROUP_ENTRIES = 32


def kept_counts(delta: np.ndarray) -> list[int]:
    delta = np.asarray(delta, dtype=np.float64)
    return [int((delta > t).sum()) for t in KEPT_THRESHOLDS]


GROUP_WIDTH = 1 + len(KEPT_THRESHOLDS)  # a row group's counts: rows, then kept rows at each threshold


def pack_groups(groups: list[list[int]]) -> bytes:
    """Row groups' [rows, kept...] counts as the manifest stores them."""
    return np.asarray(groups, "<i4").reshape(-1, GROUP_WIDTH).tobytes()


def groups_of(column: pa.ChunkedArray | pa.Array) -> tuple[np.ndarray, np.ndarray]:
    """(row groups per shard, every row group's counts (N, GROUP_WIDTH) in shard order) of a `groups` column."""
    values = column.to_pylist()
    per_shard = np.array([len(v) for v in values], np.int64) // (4 * GROUP_WIDTH)
    return per_shard, np.frombuffer(b"".join(values), "<i4").reshape(-1, GROUP_WIDTH)


def group_counts(delta: np.ndarray, group_rows: list[int]) -> list[list[int]]:
    """[rows, kept at each threshold] for each row group, the groups being consecutive runs of `group_rows`."""
    out, start = [], 0
    for n in group_rows:
        out.append([int(n), *kept_counts(delta[start : start + n])])
        start += n
    return out


def entry(name: str, table: pa.Table, kind: str, nbytes: int, group_rows: list[int] | None = None) -> dict:
    """The manifest entry (an "add") of shard file `name` holding G rows `table`, written as row groups of
    `group_rows` rows (default: one)."""
    if kind not in KINDS:
        raise ValueError(f"unknown kind of G {kind!r}; one of {KINDS}")
    prov = {k: pc.unique(table.column(k)).to_pylist() for k in PROVENANCE}
    if any(len(v) != 1 for v in prov.values()):
        raise ValueError(f"shard {name} mixes provenances: {prov}")
    return {
        "op": "add",
        "shard": name,
        "rows": table.num_rows,
        "kept": kept_counts(table.column("delta").to_numpy()),
        "groups": pack_groups(group_counts(table.column("delta").to_numpy(), group_rows or [table.num_rows])),
        "subjects": sorted(pc.unique(table.column("subject_id")).to_pylist()),
        "kind": kind,
        **{k: v[0] for k, v in prov.items()},
        "bytes": int(nbytes),
        "committed_at": 0.0,
    }


def _folder(g_uri: str) -> str:
    return storage.join(g_uri, MANIFEST)


def _stamp() -> str:
    return f"{time.time_ns():020d}-{uuid.uuid4().hex[:8]}"


def _removal(name: str, at: float) -> dict:
    """The manifest row that removes shard `name` (a tombstone until its file is deleted)."""
    blank = {"rows": 0, "kept": [], "groups": b"", "subjects": [], "kind": "", "bytes": 0}
    return {**blank, **dict.fromkeys(PROVENANCE, ""), "op": "remove", "shard": name, "committed_at": at}


def commit(g_uri: str, adds: Iterable[Mapping] = (), removes: Iterable[str] = ()) -> str | None:
    """Append one segment: `adds` (entries) and `removes` (shard names), visible together or not at all."""
    now = time.time()
    rows = [{**a, "committed_at": now} for a in adds] + [_removal(name, now) for name in removes]
    if not rows:
        return None
    table = pa.Table.from_pylist(rows, schema=MANIFEST_SCHEMA)
    return storage.write_shard(table, _folder(g_uri), MANIFEST_SCHEMA, name=f"segment-{_stamp()}")


@dataclass
class Manifest:
    """G's state: the live shards' entries (one table row each, in shard-name order) and the shards removed but
    not yet deleted (`removed`: their removal rows, in the same schema; `tombstones`: name -> removal time)."""

    live: pa.Table
    removed: pa.Table = field(default_factory=lambda: _empty())
    snapshot: str | None = None
    segments: list[str] = field(default_factory=list)  # segment files not folded into the snapshot
    partial: bool = False  # read with some columns only (`read(columns=...)`): not to be written back
    # The snapshot's counts file, when `live` is the snapshot's live entries as they lie (no segment applied) and
    # was read without `groups`: `live_column` reads the groups of a few entries from it.
    counts: str | None = None

    @property
    def shards(self) -> list[str]:
        return self.live.column("shard").to_pylist()

    @property
    def tombstones(self) -> dict[str, float]:
        names, times = self.removed.column("shard").to_pylist(), self.removed.column("committed_at").to_pylist()
        return dict(zip(names, times, strict=True))

    def subjects(self) -> set[str]:
        return set(pc.list_flatten(self.live.column("subjects")).to_pylist())


def _empty() -> pa.Table:
    return MANIFEST_SCHEMA.empty_table()


def _list(g_uri: str) -> tuple[list[str], list[str]]:
    """(snapshots, segments): complete manifest files, sorted by name (time)."""
    fs, path = storage.resolve(_folder(g_uri))
    if fs.get_file_info(path).type == pafs.FileType.NotFound:
        return [], []
    names = sorted(
        i.base_name for i in fs.get_file_info(pafs.FileSelector(path)) if i.base_name.endswith(storage.SHARD_SUFFIX)
    )
    return [n for n in names if n.startswith("snapshot-")], [n for n in names if n.startswith("segment-")]


def exists(g_uri: str) -> bool:
    snapshots, segments = _list(g_uri)
    return bool(snapshots or segments)


def read(g_uri: str, columns: Iterable[str] | None = None, live_only: bool = False) -> Manifest:
    """G's manifest now: the newest snapshot and the segments it did not fold, applied (opens no data shard).
    `columns`: read only these of `MANIFEST_SCHEMA` (plus op, shard and committed_at), e.g. `PLAN_COLUMNS`.
    `live_only`: the live shards alone (what planning needs): a snapshot's tombstones, which after merges can
    outnumber its live entries many times, are not read, and `removed` holds only those of unfolded segments."""
    cols = None
    if columns is not None:
        wanted = set(columns) | {"op", "shard", "committed_at"}
        cols = [n for n in MANIFEST_SCHEMA.names if n in wanted]
    snapshots, segments = _list(g_uri)
    fs, folder = storage.resolve(_folder(g_uri))
    tables, folded, snapshot, live_rows, counts = [], set(), None, None, None
    if snapshots:
        snapshot = snapshots[-1]
        file = pq.ParquetFile(f"{folder}/{snapshot}", filesystem=fs)
        meta = file.schema_arrow.metadata or {}
        counts = meta[b"counts"].decode() if b"counts" in meta else None
        live_rows = int(meta[b"live"]) if b"live" in meta else None
        live_groups = None
        if b"live_groups" in meta:  # the live entries' row groups (a writer caps their rows), found by their sizes
            sizes = np.cumsum([file.metadata.row_group(i).num_rows for i in range(file.metadata.num_row_groups)])
            live_groups = int(np.searchsorted(sizes, live_rows)) + 1 if live_rows else 0
        if counts is None:  # a snapshot written before counts files: the folded segments in its own metadata
            folded = set(json.loads(meta.get(b"folded", b"[]")))
        elif segments:  # only segments still lying about can have been folded
            folded = _folded(fs, folder, snapshot, counts)
        if live_only and live_groups is not None:  # the live entries are the snapshot's first row groups
            table = file.read_row_groups(range(live_groups), columns=cols) if live_groups else None
            table = table if table is not None else _empty().select(cols or MANIFEST_SCHEMA.names)
        else:
            table = file.read(columns=cols)
        table = table.replace_schema_metadata(None)
        if counts is not None and "groups" in table.column_names:  # the live entries' counts, from their file
            groups = pq.read_table(f"{folder}/{counts}", filesystem=fs).column("groups")
            filled = pa.concat_arrays([*groups.chunks, table.column("groups").slice(live_rows).combine_chunks()])
            table = table.set_column(table.schema.get_field_index("groups"), MANIFEST_SCHEMA.field("groups"), filled)
            counts = None
        tables.append(table)
    pending = [s for s in segments if s not in folded]
    if tables and not pending and live_rows is not None:  # a snapshot alone: its live entries, then its tombstones
        log = tables[0]
        live, removed = log.slice(0, live_rows), log.slice(live_rows)
        return Manifest(live, removed, snapshot, pending, cols is not None or live_only, counts)
    tables += [pq.read_table(f"{folder}/{s}", filesystem=fs, columns=cols) for s in pending]
    log = pa.concat_tables(tables) if tables else _empty().select(cols or MANIFEST_SCHEMA.names)
    # Each shard's last row in commit order says what it is now: added (live; a shard committed twice, e.g. a
    # retried subject whose first result was lost, counts once) or removed (a tombstone; a subject moved aside and
    # rendered again is added back under the same name).
    order = pa.array(np.arange(log.num_rows), pa.int64())
    last = log.select(["shard"]).append_column("_i", order).group_by("shard").aggregate([("_i", "max")])
    last = last.column("_i_max")
    # Live entries first, then tombstones, each in shard-name order: one copy of the log's rows.
    keys = log.select(["op", "shard"]).take(last)
    state = log.take(pc.take(last, pc.sort_indices(keys, sort_keys=[("op", "ascending"), ("shard", "ascending")])))
    adds = int(pc.sum(pc.equal(state.column("op"), "add")).as_py() or 0)
    return Manifest(state.slice(0, adds), state.slice(adds), snapshot, pending, partial=cols is not None or live_only)


def live_column(g_uri: str, m: Manifest, column: str, indices: list[int]) -> list:
    """`column` of the live entries at `indices` (of `m.live`), read if `m` was read without it: the `groups` of a
    snapshot's live entries from the row groups of its counts file that hold them, anything else from the whole
    manifest, by shard name."""
    if column in m.live.column_names:
        return m.live.column(column).take(pa.array(indices, pa.int64())).to_pylist()
    if not indices:
        return []
    fs, folder = storage.resolve(_folder(g_uri))
    if column == "groups" and m.counts is not None:
        file = pq.ParquetFile(f"{folder}/{m.counts}", filesystem=fs)
        sizes = np.array([file.metadata.row_group(i).num_rows for i in range(file.metadata.num_row_groups)], np.int64)
        starts = np.cumsum(sizes) - sizes
        group = np.searchsorted(starts, np.asarray(indices, np.int64), side="right") - 1  # the row group of each
        wanted = np.unique(group)
        values = file.read_row_groups(wanted.tolist(), columns=[column]).column(column)
        read_start = np.cumsum(sizes[wanted]) - sizes[wanted]  # where each wanted row group begins in `values`
        at = read_start[np.searchsorted(wanted, group)] + np.asarray(indices, np.int64) - starts[group]
        return values.take(pa.array(at, pa.int64())).to_pylist()
    full = read(g_uri, ("shard", column), live_only=True)
    by_name = dict(zip(full.shards, full.live.column(column).to_pylist(), strict=True))
    names = m.live.column("shard").take(pa.array(indices, pa.int64())).to_pylist()
    return [by_name[n] for n in names]


def write_snapshot(g_uri: str, manifest: Manifest | None = None) -> str:
    """Fold the segments into a new snapshot, then delete them and older snapshots. Returns the snapshot's URI.
    Written in this order, each file whole under its name or not at all: the counts file (the live entries' `groups`
    and the names of the folded segments), then the snapshot (the live entries in a row group of their own, first,
    so that planning reads them without the tombstones)."""
    m = manifest or read(g_uri)
    if m.partial:
        raise ValueError("a manifest read with some columns only cannot be written back as a snapshot")
    fs, folder = storage.resolve(_folder(g_uri))
    snapshots, lying = _list(g_uri)
    prev_counts = _counts_of(fs, folder, m.snapshot) if m.snapshot else None
    # What an earlier snapshot folded stays folded while its segment files still lie about (a deletion that failed).
    leftover = set(lying) - set(m.segments)
    folded = set(m.segments) | (
        _folded(fs, folder, m.snapshot, prev_counts) & leftover if leftover and m.snapshot else set()
    )
    stamp = _stamp()
    name, counts = f"snapshot-{stamp}", f"counts-{stamp}{storage.SHARD_SUFFIX}"
    fs.create_dir(folder, recursive=True)
    groups = pa.table({"groups": m.live.column("groups")}).replace_schema_metadata(
        {"folded": json.dumps(sorted(folded))}
    )
    tmp = f"{folder}/.{name}.counts{storage.TMP_SUFFIX}"
    pq.write_table(groups, tmp, filesystem=fs, row_group_size=COUNTS_GROUP_ENTRIES)
    fs.move(tmp, f"{folder}/{counts}")
    live = m.live.set_column(
        m.live.schema.get_field_index("groups"),
        MANIFEST_SCHEMA.field("groups"),
        pa.array([b""] * m.live.num_rows, pa.binary()),
    )
    table = pa.concat_tables([live, m.removed]).replace_schema_metadata(
        {"live": str(m.live.num_rows), "live_groups": str(int(m.live.num_rows > 0)), "counts": counts}
    )
    tmp = f"{folder}/.{name}{storage.TMP_SUFFIX}"
    with pq.ParquetWriter(tmp, table.schema, filesystem=fs) as writer:
        if m.live.num_rows:
            writer.write_table(table.slice(0, m.live.num_rows), row_group_size=m.live.num_rows)
        if m.removed.num_rows:
            writer.write_table(table.slice(m.live.num_rows))
    fs.move(tmp, f"{folder}/{name}{storage.SHARD_SUFFIX}")
    # Older counts files go, but the previous snapshot's, which a reader that listed it may still open (it goes with
    # the next snapshot), and any newer one (another writer's, about to be named by its snapshot).
    keep = {counts, prev_counts}
    stale = [
        i.base_name
        for i in fs.get_file_info(pafs.FileSelector(folder))
        if i.base_name.startswith("counts-") and i.base_name < counts and i.base_name not in keep
    ]
    for old in [*m.segments, *snapshots, *stale]:
        _delete(fs, f"{folder}/{old}")
    return storage.join(_folder(g_uri), name + storage.SHARD_SUFFIX)


def _counts_of(fs: pafs.FileSystem, folder: str, snapshot: str) -> str | None:
    """The counts file snapshot `snapshot` names (None for one written before counts files, or gone)."""
    try:
        meta = pq.read_schema(f"{folder}/{snapshot}", filesystem=fs).metadata or {}
    except FileNotFoundError:
        return None
    return meta[b"counts"].decode() if b"counts" in meta else None


def _folded(fs: pafs.FileSystem, folder: str, snapshot: str, counts: str | None) -> set[str]:
    """The segments snapshot `snapshot` folded: named in its counts file `counts`, or in its own metadata if older."""
    path = f"{folder}/{counts}" if counts else f"{folder}/{snapshot}"
    return set(json.loads((pq.read_schema(path, filesystem=fs).metadata or {}).get(b"folded", b"[]")))


def _delete(fs: pafs.FileSystem, path: str) -> None:
    try:
        fs.delete_file(path)
    except FileNotFoundError:
        pass


def vacuum(g_uri: str, retention_s: float) -> list[str]:
    """Delete the files of shards removed more than `retention_s` ago; the next snapshot forgets them."""
    m = read(g_uri)
    fs, root = storage.resolve(g_uri)
    due = pc.less_equal(m.removed.column("committed_at"), time.time() - retention_s)
    deleted = m.removed.filter(due).column("shard").to_pylist()
    for name in deleted:
        _delete(fs, f"{root}/{name}")
    if deleted:
        m.removed = m.removed.filter(pc.invert(due))
        write_snapshot(g_uri, m)
    return deleted


def check_single(m: Manifest, expected: Mapping | None = None) -> None:
    """Refuse a G whose shards come from more than one (base, expert config, scorer, kind), or from another one
    than `expected` (the provenance of a run about to add to G; its kind defaults to "finetune")."""
    keys = [*PROVENANCE, "kind"]
    seen: dict[tuple[str, ...], str] = {}
    if expected is not None:
        seen[(*(expected[k] for k in PROVENANCE), expected.get("kind", "finetune"))] = "this run"
    if all(len(pc.unique(m.live.column(k))) <= 1 for k in keys):  # the usual G: one provenance (or none yet)
        combos = m.live.slice(0, 1).select(keys).to_pylist()
    else:
        combos = m.live.select(keys).group_by(keys).aggregate([]).to_pylist()
    for combo in combos:  # each distinct provenance once
        prov = tuple(combo[k] for k in keys)
        if prov not in seen:  # one of its shards, to name it
            mask = functools.reduce(pc.and_, [pc.equal(m.live.column(k), combo[k]) for k in keys])
            seen[prov] = m.live.filter(mask).column("shard")[0].as_py()
    if len(seen) > 1:
        listed = "; ".join(f"{dict(zip((*PROVENANCE, 'kind'), p, strict=True))} ({s})" for p, s in seen.items())
        raise ValueError(
            f"G mixes {len(seen)} provenances (base, expert config, scorer, kind): {listed}. "
            "Write each to its own `paths.g`."
        )


def kind_of(m: Manifest) -> str | None:
    kinds = set(m.live.column("kind").to_pylist())
    return kinds.pop() if len(kinds) == 1 else None


# ---------------------------------------------------------------- planning a read


@dataclass
class Plan:
    """One epoch's read of G: for each of `world` workers, its part (disjoint): (shard URI, the row groups to read,
    None for all of them) pairs, and the kept rows in it."""

    parts: list[list[tuple[str, list[int] | None]]]
    rows: list[int]
    opened: int = 0  # shards opened while planning (only for a threshold the manifest does not record)

    @property
    def shards(self) -> list[list[str]]:
        """The shards each worker opens."""
        return [[uri for uri, _ in part] for part in self.parts]

    @property
    def balance(self) -> float:
        """The fewest rows a worker gets over the most (1.0: equal)."""
        return min(self.rows) / max(self.rows) if self.rows and max(self.rows) else 1.0


def plan(g_uri: str, min_delta: float | None, world: int, manifest: Manifest | None = None) -> Plan:
    """Split G's live shards among `world` workers. The shards' row groups, in shard order, are cut into `world`
    consecutive runs of about equal kept rows (a row group goes to the worker in whose share of the total its middle
    row falls), so each worker reads whole shards except at most two at the ends of its run, and rows differ between
    workers by at most a row group (a subject's rows). Shard by shard: only a shard that a cut falls in has its row
    groups unpacked. Reads the manifest only, unless `min_delta` is a threshold it does not record: then each
    shard's `delta` column is read once."""
    m = manifest or read(g_uri, PLAN_COLUMNS, live_only=True)
    check_single(m)
    names, opened = m.shards, 0
    column = _threshold_column(min_delta)
    if column is None:
        logger.warning("filter.min_delta=%s is not among %s: counting kept rows from each shard", min_delta,
                       KEPT_THRESHOLDS)  # fmt: skip
        counted = [np.asarray(_count_groups(storage.join(g_uri, n), min_delta), np.int64) for n in names]
        opened = len(names)
        shard_kept = np.array([c.sum() for c in counted], np.int64)
        groups_kept = counted.__getitem__
    else:
        if column == 0:
            shard_kept = m.live.column("rows").to_numpy().astype(np.int64)
        else:
            flat = pc.list_flatten(m.live.column("kept")).to_numpy(zero_copy_only=False)
            shard_kept = flat.reshape(-1, len(KEPT_THRESHOLDS))[:, column - 1].astype(np.int64)
    total = int(shard_kept.sum())
    starts = np.cumsum(shard_kept) - shard_kept
    first = starts * world // max(total, 1)
    last = (starts + shard_kept - 1) * world // max(total, 1)  # the workers of a shard's first and last kept row
    nonzero = np.flatnonzero(shard_kept)
    whole = nonzero[first[nonzero] == last[nonzero]]  # shards in one worker's share: no row group looked at
    owner = np.minimum(world - 1, first[whole])
    rows = np.bincount(owner, weights=shard_kept[whole], minlength=world).astype(np.int64).tolist()
    entries: list[list[tuple[int, list[int] | None]]] = [[] for _ in range(world)]
    for w, s in zip(owner.tolist(), whole.tolist(), strict=True):
        entries[w].append((s, None))
    cut = nonzero[first[nonzero] != last[nonzero]].tolist()  # at most world - 1 shards: a cut falls in each
    if column is not None:  # their row groups' counts, read from the manifest for these shards alone
        try:
            packed = live_column(g_uri, m, "groups", cut)
        except (FileNotFoundError, KeyError):  # G changed since `m` was read (a writer folded or merged): read again
            if "groups" in m.live.column_names:
                raise
            return plan(g_uri, min_delta, world, read(g_uri, (*PLAN_COLUMNS, "groups"), live_only=True))
        counts = {
            s: groups_of(pa.array([p], pa.binary()))[1][:, column].astype(np.int64)
            for s, p in zip(cut, packed, strict=True)
        }
        groups_kept = counts.__getitem__
    for s in cut:
        kept = groups_kept(s)
        before = starts[s] + np.cumsum(kept) - kept
        worker = np.minimum(world - 1, ((before + kept / 2) * world // total).astype(np.int64))
        groups = np.flatnonzero(kept)
        for w in np.unique(worker[groups]).tolist():
            mine = groups[worker[groups] == w]
            entries[w].append((s, None if len(mine) == len(groups) else mine.tolist()))
            rows[w] += int(kept[mine].sum())
    prefix = storage.join(g_uri, "")
    parts = [[(prefix + names[s], idx) for s, idx in sorted(e, key=lambda e: e[0])] for e in entries]
    return Plan(parts, rows, opened)


def _threshold_column(min_delta: float | None) -> int | None:
    """Where a row group's [rows, kept...] counts hold `min_delta`'s kept rows (None: not recorded)."""
    if min_delta is None:
        return 0
    for i, t in enumerate(KEPT_THRESHOLDS):
        if float(min_delta) == t:
            return 1 + i
    return None


def _count_groups(shard_uri: str, min_delta: float | None) -> list[int]:
    fs, path = storage.resolve(shard_uri)
    with fs.open_input_file(path) as f:
        pf = pq.ParquetFile(f)
        sizes = [pf.metadata.row_group(i).num_rows for i in range(pf.metadata.num_row_groups)]
        delta = pf.read(columns=["delta"]).column("delta").to_numpy().astype(np.float64)
    kept, start = [], 0
    for n in sizes:
        d = delta[start : start + n]
        kept.append(int(len(d) if min_delta is None else (d > min_delta).sum()))
        start += n
    return kept


# ---------------------------------------------------------------- compaction


def compact(g_uri: str, target_rows: int, final: bool = False) -> list[str]:
    """Merge live shards smaller than `target_rows` / 2 into shards of about `target_rows` rows, each merge one
    commit (add the merged shard, remove the ones it holds); `final` merges the last group even when small. Only
    committed shards are merged, so a subject still being retried is never in one. The
    merged-away files stay until `vacuum`. Returns the merged shards' URIs."""
    m = read(g_uri)
    small = [
        (name, rows)
        for name, rows in zip(m.shards, m.live.column("rows").to_pylist(), strict=True)
        if rows < target_rows / 2
    ]
    groups, group, total = [], [], 0
    for item in small:
        group.append(item)
        total += item[1]
        if total >= target_rows:
            groups.append(group)
            group, total = [], 0
    if group and (final or total >= target_rows) and len(group) > 1:
        groups.append(group)
    kind = kind_of(m) or "finetune"
    merged = []
    for group in groups:
        merged.append(_merge(g_uri, [name for name, _ in group], kind))
    return merged


def _merge(g_uri: str, names: list[str], kind: str) -> str:
    fs, root = storage.resolve(g_uri)
    name = f"part-{uuid.uuid4().hex}"
    tmp, final = f"{root}/.{name}{storage.TMP_SUFFIX}", f"{root}/{name}{storage.SHARD_SUFFIX}"
    deltas, groups, subjects, provs, rows = [], [], set(), set(), 0
    with pq.ParquetWriter(tmp, schema.G_SCHEMA, filesystem=fs) as writer:
        for shard in names:  # one shard in memory at a time
            table = pq.read_table(f"{root}/{shard}", filesystem=fs, schema=schema.G_SCHEMA)
            if not table.num_rows:
                continue
            writer.write_table(table, row_group_size=table.num_rows)
            deltas.append(table.column("delta").to_numpy())
            groups += group_counts(deltas[-1], [table.num_rows])
            subjects |= set(table.column("subject_id").to_pylist())
            provs |= {tuple(pc.unique(table.column(k)).to_pylist()[0] for k in PROVENANCE)}
            rows += table.num_rows
    fs.move(tmp, final)
    (prov,) = provs
    add = {
        "op": "add",
        "shard": name + storage.SHARD_SUFFIX,
        "rows": rows,
        "kept": kept_counts(np.concatenate(deltas)),
        "groups": pack_groups(groups),
        "subjects": sorted(subjects),
        "kind": kind,
        **dict(zip(PROVENANCE, prov, strict=True)),
        "bytes": fs.get_file_info(final).size,
        "committed_at": 0.0,
    }
    commit(g_uri, [add], names)
    return storage.join(g_uri, add["shard"])
