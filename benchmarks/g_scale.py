"""Does G's data path hold at the paper's size? Planning a read, reading it with several workers, and the expert
stage's driver memory, on synthetic G rows written by the project's own writer (`core.data.g.write_subject` and the
expert stage's `ManifestWriter`), before and after the manifest layout.

    python -m benchmarks.g_scale            # 10^4, 10^5, 10^6 rows planned; 10^4 read; up to 10^5 subjects
    python -m benchmarks.g_scale --quick    # 10^3 and 10^4 rows planned; 2,000 read; 1,000 and 4,000 subjects

- **Planning** (8x8 images, 16 rows per subject): "per-subject" is the read as it was before the manifest (list G's
  shards, read each shard's `delta` column to count kept rows, read each shard's provenance columns to check G has
  one); "manifest" is `core.data.g_manifest.plan` after the expert stage's merges. Shards opened are counted
  through a wrapped pyarrow filesystem (every file opened, every byte read), not OS counters.
- **Reading** (64x64 target images, 3 demos of 64x64 per subject): for 1, 2 and 4 workers, each worker's part of
  the plan read and decoded by `actors.g_dataset.read_g` (Ray Data, as a training worker reads it): rows/s, bytes
  read, row balance. Before the manifest, every worker read all of G and kept its share by a hash of the row key,
  so its bytes were those of one whole read (measured once). Against plain pyarrow reading every shard once in one
  process.
- **Driver memory** of the expert stage over many subjects: the real pool (`actors.expert_pool.run_pool`) on a
  local cluster with 16 logical CPUs, a stub expert that writes its rows without a model; the driver's peak RSS,
  in a fresh process per size. "before" materialises D_S and keeps every result, as the stage did (10^3 and 10^4
  subjects: it grows by about 0.25 MB a subject, so 10^5 would not fit this machine); "streaming" draws records
  from a stream and summarises results as they come (10^4 and 10^5 subjects).

Writes `benchmarks/results/g_scale[_quick].json`.
"""

from __future__ import annotations

import argparse
import dataclasses
import io
import json
import os
import platform
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq
from PIL import Image

from core.config import ClusterConfig, ExpertConfig, FilterConfig, GLayoutConfig
from core.data import g, storage
from core.data import g_manifest as manifest

RESULTS = Path(__file__).resolve().parent / "results"
PROVENANCE = {"base_checkpoint_hash": "bench-base", "expert_config_hash": "bench-expert", "scorer_hash": "bench-s"}
ROWS_PER_SUBJECT = 16


# ---------------------------------------------------------------- a filesystem that counts


class CountingFile:
    """A file opened through `CountingHandler`: every byte read is counted, and logged when it is closed."""

    def __init__(self, raw, log: str):
        self.raw, self.log, self.read_bytes = raw, log, 0
        self.closed = False

    def read(self, n: int = -1) -> bytes:
        data = self.raw.read() if n is None or n < 0 else self.raw.read(n)
        self.read_bytes += len(data)
        return data

    def seek(self, pos: int, whence: int = 0) -> int:
        return self.raw.seek(pos, whence)

    def tell(self) -> int:
        return self.raw.tell()

    def size(self) -> int:
        return self.raw.size()

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def writable(self) -> bool:
        return False

    def close(self) -> None:
        if not self.closed:
            self.raw.close()
            with open(self.log, "a") as f:
                f.write(f"bytes\t{self.read_bytes}\n")
            self.closed = True

    def __del__(self):  # readers that drop a file without closing it
        self.close()


class CountingHandler(pafs.FileSystemHandler):
    """The local filesystem, counting every file opened for reading and every byte read into `<log_dir>/<pid>.log`
    (readers in Ray Data's worker processes get a copy of this handler and log there too)."""

    def __init__(self, log_dir: str):
        self.log_dir = log_dir
        self.fs = pafs.LocalFileSystem()

    def __getstate__(self):
        return {"log_dir": self.log_dir}

    def __setstate__(self, state):
        self.__init__(state["log_dir"])

    def _log(self) -> str:
        return os.path.join(self.log_dir, f"{os.getpid()}.log")

    def _opened(self, path: str):
        with open(self._log(), "a") as f:
            f.write(f"open\t{path}\n")
        return pa.PythonFile(CountingFile(self.fs.open_input_file(path), self._log()), mode="r")

    def open_input_file(self, path):
        return self._opened(path)

    def open_input_stream(self, path):
        return self._opened(path)

    def get_type_name(self):
        return "counting-local"

    def normalize_path(self, path):
        return self.fs.normalize_path(path)

    def equals(self, other):
        return isinstance(other, CountingHandler) and other.log_dir == self.log_dir

    def get_file_info(self, paths):
        return self.fs.get_file_info(paths)

    def get_file_info_selector(self, selector):
        return self.fs.get_file_info(selector)

    def create_dir(self, path, recursive):
        self.fs.create_dir(path, recursive=recursive)

    def delete_dir(self, path):
        self.fs.delete_dir(path)

    def delete_dir_contents(self, path, missing_dir_ok=False):
        self.fs.delete_dir_contents(path, missing_dir_ok=missing_dir_ok)

    def delete_root_dir_contents(self):
        raise OSError("not here")

    def delete_file(self, path):
        self.fs.delete_file(path)

    def move(self, src, dest):
        self.fs.move(src, dest)

    def copy_file(self, src, dest):
        self.fs.copy_file(src, dest)

    def open_output_stream(self, path, metadata):
        return self.fs.open_output_stream(path, metadata=metadata)

    def open_append_stream(self, path, metadata):
        return self.fs.open_append_stream(path, metadata=metadata)


class Counted:
    """While active, every local URI the project resolves (`core.data.storage.resolve`) goes through a
    `CountingHandler`; `totals()` sums what was logged since."""

    def __init__(self):
        self.log_dir = tempfile.mkdtemp(prefix="g-scale-counts-")
        self.fs = pafs.PyFileSystem(CountingHandler(self.log_dir))
        self.original = storage.resolve

    def __enter__(self):
        self.reset()
        storage.resolve = lambda uri: (self.fs, storage.absolute_uri(uri))
        return self

    def __exit__(self, *exc):
        storage.resolve = self.original

    def reset(self) -> None:
        for name in os.listdir(self.log_dir):
            os.remove(os.path.join(self.log_dir, name))

    def totals(self) -> dict:
        """Distinct files opened (G's shards, and its manifest's files), open calls (pyarrow opens a parquet file
        more than once per read) and bytes read."""
        paths, calls, read = set(), 0, 0
        for name in os.listdir(self.log_dir):
            with open(os.path.join(self.log_dir, name)) as f:
                for line in f:
                    kind, value = line.rstrip("\n").split("\t", 1)
                    if kind == "open":
                        paths.add(value)
                        calls += 1
                    else:
                        read += int(value)
        shards = {p for p in paths if f"/{manifest.MANIFEST}/" not in p}
        return {
            "shards_opened": len(shards),
            "manifest_files_opened": len(paths) - len(shards),
            "open_calls": calls,
            "bytes_read": read,
        }


# ---------------------------------------------------------------- synthetic G, written by the project's writer


def png(rng: np.random.Generator, size: int) -> bytes:
    out = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)).save(out, format="PNG")
    return out.getvalue()


def subject_rows(subject: str, rng: np.random.Generator, size: int, pool: list[bytes] | None) -> list[dict]:
    pick = (lambda: pool[int(rng.integers(len(pool)))]) if pool else (lambda: png(rng, size))
    demos = [pick() for _ in range(3)]
    return [
        {
            "subject_id": subject,
            "prompt_id": f"p{i // 2}",
            "sample_index": i % 2,
            "prompt": "a ball on sand",
            "prompt_skill": "recontextualization",
            "image": pick(),
            "demo_images": demos,
            "demo_captions": ["a ball"] * 3,
            "clip_score": 0.3,
            "ref_clip_score": 0.28,
            "delta": float(rng.normal(0.01, 0.02)),
            **PROVENANCE,
        }
        for i in range(ROWS_PER_SUBJECT)
    ]


def write_g(folder: str, rows: int, size: int, pooled: bool, layout: GLayoutConfig) -> dict:
    """Per-subject shards recorded by the expert stage's `ManifestWriter` (no merges yet). Returns timings."""
    from actors.expert_pool import ManifestWriter

    shutil.rmtree(folder, ignore_errors=True)
    rng = np.random.default_rng(0)
    pool = [png(rng, size) for _ in range(256)] if pooled else None
    writer = ManifestWriter(folder, dataclasses.replace(layout, compact_every=10**12))
    start = time.perf_counter()
    for s in range(rows // ROWS_PER_SUBJECT):
        writer.add(g.write_subject(subject_rows(f"s{s:07d}", rng, size, pool), folder, f"s{s:07d}", commit=False))
    writer.commit()
    return {"write_s": round(time.perf_counter() - start, 2)}


def merge(folder: str, layout: GLayoutConfig) -> dict:
    """What the expert stage does as it goes and at its end: merge, delete what was merged away, snapshot."""
    start = time.perf_counter()
    merged = manifest.compact(folder, layout.shard_rows)
    manifest.vacuum(folder, 0.0)
    manifest.write_snapshot(folder)
    return {"merged_shards": len(merged), "merge_s": round(time.perf_counter() - start, 2)}


def legacy_plan(folder: str, min_delta: float) -> int:
    """The read's planning before the manifest: list, count kept rows from each shard's `delta`, check provenance
    from each shard's provenance columns. Returns the kept rows."""
    shards = storage.list_shards(folder)
    kept = 0
    for shard in shards:
        delta = storage.read_columns(shard, ["delta"]).column("delta").to_numpy()
        kept += int((delta > min_delta).sum())
    provenances = set()
    for shard in shards:
        table = storage.read_columns(shard, list(g.PROVENANCE))
        provenances |= set(zip(*(table.column(c).to_pylist() for c in g.PROVENANCE), strict=True))
    assert len(provenances) == 1
    return kept


def timed(fn, repeats: int = 3) -> tuple[float, object, dict]:
    """The best of `repeats` timed calls of `fn` (through the plain filesystem: the counting wrapper's own cost is
    not timed), its result, and what one call opened and read (one more call, through the counting filesystem).
    With `repeats` 1, the counted call is the timed one."""
    with Counted() as counted:
        start = time.perf_counter()
        out = fn()
        best = time.perf_counter() - start
        counts = counted.totals()
    if repeats > 1:
        best = float("inf")
        for _ in range(repeats):
            start = time.perf_counter()
            out = fn()
            best = min(best, time.perf_counter() - start)
    return best, out, counts


def planning(work: str, sizes: list[int], layout: GLayoutConfig) -> dict:
    out = {}
    for rows in sizes:
        folder = os.path.join(work, f"plan_{rows}")
        info = write_g(folder, rows, 8, pooled=True, layout=layout)
        shards_before = len(storage.list_shards(folder))
        seconds, kept, counts = timed(lambda f=folder: legacy_plan(f, 0.0), repeats=1 if rows >= 10**6 else 3)
        before = {"seconds": round(seconds, 4), "kept_rows": kept, **counts}
        info.update(merge(folder, layout))
        seconds, plan, counts = timed(lambda f=folder: manifest.plan(f, 0.0, 4), repeats=20)  # milliseconds: noisy
        after = {"seconds": round(seconds, 4), "kept_rows": sum(plan.rows), **counts}
        after["shards"] = len(g.live_shards(folder))
        out[str(rows)] = {"rows": rows, **info, "per_subject": {**before, "shards": shards_before}, "manifest": after}
        print(json.dumps({"planning": out[str(rows)]}), flush=True)
        shutil.rmtree(folder, ignore_errors=True)
    return out


def reading(work: str, rows: int, layout: GLayoutConfig) -> dict:
    from actors.cluster import ray_cluster
    from actors.g_dataset import read_g
    from core.models.tokenizer import create_tokenizer

    folder = os.path.join(work, "read")
    info = write_g(folder, rows, 64, pooled=False, layout=layout)
    info.update(merge(folder, layout))
    tok = os.path.join(work, "tokenizer")
    create_tokenizer(24).save_pretrained(tok)
    g_bytes = int(sum(manifest.read(folder).live.column("bytes").to_pylist()))
    out = {"rows": rows, **info, "g_bytes": g_bytes, "bytes_per_row": round(g_bytes / rows)}

    with Counted() as counted:  # plain pyarrow, one process, every shard once: the baseline
        start = time.perf_counter()
        fs, paths = storage.shard_paths(folder, g.live_shards(folder))
        n = sum(pq.read_table(p, filesystem=fs).num_rows for p in paths)
        seconds = time.perf_counter() - start
        out["plain_pyarrow"] = {"rows": n, "rows_per_s": round(n / seconds), **counted.totals()}

    def read_part(part: list | None) -> dict:
        with Counted() as counted:
            start = time.perf_counter()
            ds = read_g(folder, 0.0, tok, num_demos=3, seed=0, passes=1, part=part)
            n = sum(len(b["image"]) for b in ds.iter_batches(batch_size=64))
            seconds = time.perf_counter() - start
            return {"rows": n, "seconds": round(seconds, 2), "rows_per_s": round(n / seconds), **counted.totals()}

    with ray_cluster(ClusterConfig(num_cpus=4)):
        read_part(None)  # Ray Data's first start, not timed
        whole = read_part(None)
        out["before_each_worker_read_all"] = whole
        for world in (1, 2, 4):
            plan = manifest.plan(folder, 0.0, world)
            parts = [read_part(plan.parts[r]) for r in range(world)]
            total = sum(p["bytes_read"] for p in parts)
            out[f"workers_{world}"] = {
                "per_worker": parts,
                "rows": [p["rows"] for p in parts],
                "row_balance": round(min(p["rows"] for p in parts) / max(p["rows"] for p in parts), 4),
                "read_amplification": round(total / whole["bytes_read"], 3),
                "read_amplification_before": world,
                "rows_per_s_per_worker": round(float(np.mean([p["rows_per_s"] for p in parts]))),
            }
            print(json.dumps({f"workers_{world}": out[f"workers_{world}"]}), flush=True)
    shutil.rmtree(folder, ignore_errors=True)
    return out


# ---------------------------------------------------------------- the expert stage's driver


def stub_actor_class():
    import ray

    @ray.remote
    class StubExpert:
        """Writes a subject's rows as an expert would, without a model (no fine-tuning, no sampling)."""

        def __init__(self, base_uri, scorer_uri, cfg, provenance, world_version=1):
            self.rng = np.random.default_rng(os.getpid())

        def run(self, record: dict, g_uri: str, min_delta: float | None) -> dict:
            rows = subject_rows(record["subject_id"], self.rng, 8, [record["demo_images"][0]])
            entry = g.write_subject(rows, g_uri, record["subject_id"], commit=False)
            return {"status": "done", "total": len(rows), "kept": len(rows), "entry": entry, "rows": rows}

    return StubExpert


def driver_memory(subjects: int, streaming: bool, work: str) -> dict:
    """Run in its own process: the expert stage's pool over `subjects` synthetic D_S records."""
    from actors.cluster import ray_cluster
    from actors.expert_pool import run_pool

    rng = np.random.default_rng(1)
    demo = [png(rng, 32) for _ in range(3)]

    def records():
        for s in range(subjects):
            # Bytes of its own per record, as a table's rows would have (`to_pylist` copies each value).
            yield {
                "subject_id": f"s{s:07d}",
                "demo_images": [bytes(bytearray(d)) for d in demo],
                "demo_captions": ["a ball"] * 3,
            }

    folder = os.path.join(work, f"mem_{subjects}_{streaming}")
    shutil.rmtree(folder, ignore_errors=True)
    cfg = ExpertConfig(num_actors=8, num_cpus=1, max_tasks_in_flight=4)
    start = time.perf_counter()
    with ray_cluster(ClusterConfig(num_cpus=16, object_store_memory_mb=512)):
        rss_start = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        stream = records() if streaming else list(records())
        results, summary = run_pool(
            stream, "", "", cfg, PROVENANCE, folder, FilterConfig(), progress=False,
            layout=GLayoutConfig(shard_rows=4096), total=subjects, keep_rows=not streaming,
            actor_class=stub_actor_class(),
        )  # fmt: skip
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    shutil.rmtree(folder, ignore_errors=True)
    return {
        "subjects": subjects,
        "streaming": streaming,
        "done": summary.get("done", 0),
        "seconds": round(time.perf_counter() - start, 1),
        "driver_peak_rss_mb": round(peak, 1),
        "driver_rss_at_start_mb": round(rss_start, 1),
        "results_kept": len(results),
    }


def memory(sizes: dict[str, list[int]], work: str) -> dict:
    out = {}
    for streaming in (False, True):
        for subjects in sizes["streaming" if streaming else "before"]:
            cmd = [sys.executable, "-m", "benchmarks.g_scale", "--driver-memory", str(subjects), "--work", work]
            flags = ["--streaming"] if streaming else []
            proc = subprocess.run([*cmd, *flags], check=False, capture_output=True, text=True)
            if proc.returncode:
                raise RuntimeError(proc.stderr[-3000:])
            result = json.loads(proc.stdout.strip().splitlines()[-1])
            out[f"{'streaming' if streaming else 'before'}_{subjects}"] = result
            print(json.dumps(result), flush=True)
    for side in ("before", "streaming"):
        small, large = out[f"{side}_{sizes[side][0]}"], out[f"{side}_{sizes[side][-1]}"]
        out[f"{side}_ratio"] = round(large["driver_peak_rss_mb"] / small["driver_peak_rss_mb"], 3)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--work", default=None, help="scratch folder (default: a temporary one)")
    parser.add_argument("--parts", default="planning,reading,memory")
    parser.add_argument("--read-rows", type=int, default=None, help="rows of the reading part (default 10^4)")
    parser.add_argument("--driver-memory", type=int, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--streaming", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    work = args.work or tempfile.mkdtemp(prefix="g-scale-")
    if args.driver_memory is not None:
        print(json.dumps(driver_memory(args.driver_memory, args.streaming, work)))
        return
    layout = GLayoutConfig(shard_rows=1024)
    plan_sizes = [10**3, 10**4] if args.quick else [10**4, 10**5, 10**6]
    read_rows = args.read_rows or (2_000 if args.quick else 10**4)
    # Before, the driver's memory grew by about 0.25 MB a subject: 10^5 subjects would not fit this machine.
    subjects = {"before": [1_000, 4_000], "streaming": [1_000, 4_000]}
    if not args.quick:
        subjects = {"before": [10**3, 10**4], "streaming": [10**4, 10**5]}
    parts = args.parts.split(",")
    report = {
        "date": time.strftime("%Y-%m-%d"),
        "machine": f"{platform.machine()} CPU, {os.cpu_count()} cores",
        "command": "python -m benchmarks.g_scale" + (" --quick" if args.quick else ""),
        "rows_per_subject": ROWS_PER_SUBJECT,
        "shard_rows": layout.shard_rows,
    }
    if "planning" in parts:
        report["planning"] = planning(work, plan_sizes, layout)
        small, large = report["planning"][str(plan_sizes[0])], report["planning"][str(plan_sizes[-1])]
        report["planning_time_ratio"] = {
            side: round(large[side]["seconds"] / max(small[side]["seconds"], 1e-9), 2)
            for side in ("per_subject", "manifest")
        }
    if "reading" in parts:
        report["reading"] = reading(work, read_rows, layout)
    if "memory" in parts:
        report["driver_memory"] = memory(subjects, work)
    RESULTS.mkdir(exist_ok=True)
    path = RESULTS / f"g_scale{'_quick' if args.quick else ''}.json"
    old = json.loads(path.read_text()) if path.exists() else {}
    path.write_text(json.dumps({**old, **report}, indent=1) + "\n")
    print(json.dumps({k: report[k] for k in report if k.endswith("ratio")}, indent=1))
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
