"""The G contract: how expert renders are stored, keyed, traced and counted. Every reader and writer of G uses it.

- One parquet shard per subject, named `subject-<subject_id>.parquet` (`shard_name`), written under a temporary
  name and renamed (`storage.write_shard`), so a re-run knows which subjects are done from the file names alone
  and a half-written shard is never listed. A shard that is there but cannot be read (a disk that filled, a copy
  cut short) is moved aside under `_corrupt/` when a run resumes, and its subject is rendered again (`resume_state`).
- A row is keyed by `KEY` = (subject_id, prompt_id, sample_index) (`schema.G_KEY`).
- Every row carries its provenance, `PROVENANCE`: the base checkpoint, the expert config and the scorer that made
  and scored it. One G holds one provenance; a threshold sweep over renders of different scorers or bases would
  compare unlike things.
- The delta-CLIP threshold (the paper's lambda, `filter.min_delta`) is applied when G is read, never stored: a row
  passes when `delta > min_delta`, and `min_delta=None` keeps every row. So the threshold can be swept without
  re-running the experts.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import NamedTuple

import numpy as np
import pyarrow as pa

from core.data import schema, storage

KEY = schema.G_KEY
PROVENANCE = ("base_checkpoint_hash", "expert_config_hash", "scorer_hash")
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


def write_subject(rows: list[dict], g_uri: str, subject_id: str) -> str:
    """Write one subject's rows (kept and rejected renders alike) as its shard, atomically. Returns the shard URI."""
    table = schema.table_from_rows(rows, schema.G_SCHEMA, "G")
    return storage.write_shard(table, g_uri, schema.G_SCHEMA, name=shard_name(subject_id))


def shard_provenance(shard: str) -> set[tuple[str, ...]]:
    table = storage.read_columns(shard, list(PROVENANCE))
    return set(zip(*(table.column(c).to_pylist() for c in PROVENANCE), strict=True))


def check_single_provenance(shards: list[str], expected: Mapping | None = None) -> None:
    """Refuse a G whose renders come from more than one (base, expert config, scorer), or from another one than
    `expected` (a provenance dict: the run about to add to G)."""
    _check_provenances({shard: shard_provenance(shard) for shard in shards}, expected)


def _check_provenances(by_shard: Mapping[str, set[tuple[str, ...]]], expected: Mapping | None) -> None:
    seen: dict[tuple[str, ...], str] = {}
    if expected is not None:
        seen[provenance_of(expected)] = "this run"
    for shard, provenances in by_shard.items():
        for prov in provenances:
            seen.setdefault(prov, shard)
    if len(seen) > 1:
        listed = "; ".join(f"{dict(zip(PROVENANCE, p, strict=True))} ({s})" for p, s in seen.items())
        raise ValueError(
            f"G mixes {len(seen)} provenances (base, expert config, scorer): {listed}. "
            "Write each to its own `paths.g`."
        )


class ResumeState(NamedTuple):
    done: set[str]  # subjects whose shard is in G and readable
    moved_aside: list[dict]  # {"shard", "moved_to", "error"} for each unreadable shard found


def resume_state(g_uri: str, provenance: Mapping) -> ResumeState:
    """What a run adding to G with this `provenance` finds there: the subjects whose shard is already in G, after
    checking that G was made by this very provenance. A shard that cannot be read (zero-byte, truncated, not parquet)
    is moved aside under `_corrupt/` and reported, and its subject is not done: the run renders it again. Each shard
    is opened once, for its provenance columns."""
    by_shard, moved = {}, []
    for shard in storage.list_shards(g_uri):
        try:
            by_shard[shard] = shard_provenance(shard)
        except (pa.ArrowInvalid, OSError) as err:
            error = f"{type(err).__name__}: {err}"
            moved.append({"shard": shard, "moved_to": storage.move_aside(shard), "error": error})
    _check_provenances(by_shard, provenance)
    return ResumeState({subject_of(s) for s in by_shard}, moved)


def count_kept(g_uri: str, min_delta: float | None, shards: list[str] | None = None) -> int:
    """Rows of G passing the threshold, from the `delta` column alone, over `shards` (default: G's complete shards,
    listed now)."""
    total = 0
    for shard in storage.list_shards(g_uri) if shards is None else shards:
        delta = storage.read_columns(shard, ["delta"]).column("delta").to_numpy()
        total += int(passes(delta, min_delta).sum())
    return total
