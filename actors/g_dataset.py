"""Ray Data over G: read the complete shards, filter by the delta threshold at read time, decode for training.

The threshold (the paper's lambda, `filter.min_delta`) is applied here, not by the experts, so it can be swept
without re-running them. The shards read are the ones G's manifest lists (or a training worker's part of them).
"""

from __future__ import annotations

import functools
import time

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import ray
import ray.data
from ray.data._internal.execution.execution_callback import ExecutionCallback

from core.data import g, schema, storage
from core.data.images import from_png
from core.method.expert import seed_for
from core.models.backbone import images_to_tensor
from core.models.tokenizer import tokenize

# Ray Data's scheduling loop (ray 2.60) blocks in ray.wait only while some task runs: once every task is done and
# their outputs wait for a slower consumer (a training step), it spins, holding the GIL that the training thread's
# backward needs to free tensors (a toy apprentice step in a Ray Train worker: 6 s, about 2.4 s with the pause). A
# pause per loop step gives the GIL back; it delays the next dispatch by at most this much.
SCHEDULER_PAUSE_S = 0.01


class PauseBetweenSchedulingSteps(ExecutionCallback):
    """Sleeps `SCHEDULER_PAUSE_S` after each step of Ray Data's scheduling loop (the executor's own thread)."""

    def on_execution_step(self, executor) -> None:
        time.sleep(SCHEDULER_PAUSE_S)


@functools.lru_cache(maxsize=4)
def _tokenizer(uri: str):
    """One tokenizer per worker process and URI (a remote URI is copied to local disk once)."""
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(storage.local_dir(uri), local_files_only=True)


def decode_batch(
    batch: dict, tokenizer_uri: str, num_demos: int, seed: int, passes: int = 1, random_flip: bool = False
) -> dict:
    """Decode a batch of G rows into arrays for training, each row `passes` times with its own pick of demos (and,
    with `random_flip`, its target mirrored left to right half the time).

    Returns image (B, 3, H, W) float32 in [-1, 1]; input_ids (B, L) int64; demo_images (B, K, 3, H, W);
    demo_ids (B, K, L), with B = passes * rows. K = `num_demos` demos per row, picked deterministically from the
    row's key and the pass.
    """
    tok = _tokenizer(tokenizer_uri)
    images, prompts, demo_imgs, demo_caps = [], [], [], []
    for i in range(len(batch["prompt"])):
        image = from_png(batch["image"][i])
        demos = [from_png(d) for d in batch["demo_images"][i]]
        caps = [str(c) for c in batch["demo_captions"][i]]
        for p in range(passes):
            prompts.append(str(batch["prompt"][i]))
            key = (seed, *(batch[k][i] for k in g.KEY), p)
            rng = np.random.default_rng(seed_for(*key))
            pick = rng.choice(len(demos), size=num_demos, replace=len(demos) < num_demos)
            images.append(np.ascontiguousarray(image[:, ::-1]) if random_flip and rng.random() < 0.5 else image)
            demo_imgs.append(np.stack([demos[j] for j in pick]))
            demo_caps.extend(caps[j] for j in pick)
    b = len(images)
    demo_t = images_to_tensor(np.concatenate(demo_imgs)).view(b, num_demos, 3, *images[0].shape[:2])
    return {
        "image": images_to_tensor(images).numpy(),
        "input_ids": tokenize(tok, prompts).numpy(),
        "demo_images": demo_t.numpy(),
        "demo_ids": tokenize(tok, demo_caps).view(b, num_demos, -1).numpy(),
    }


def read_pieces(batch: pa.Table, filesystem, min_delta: float | None) -> pa.Table:
    """Read G rows from (path, row groups) pieces (no row groups: the whole shard), keeping delta > min_delta."""
    tables = []
    for path, groups in zip(batch.column("path").to_pylist(), batch.column("row_groups").to_pylist(), strict=True):
        with filesystem.open_input_file(path) as f:
            shard = pq.ParquetFile(f)
            table = shard.read_row_groups(groups) if groups else shard.read()
        if min_delta is not None:
            table = table.filter(pc.greater(table.column("delta"), float(min_delta)))
        tables.append(schema.validate(table, schema.G_SCHEMA, f"G shard {path}"))
    return pa.concat_tables(tables)


def read_g(
    g_uri: str,
    min_delta: float | None,
    tokenizer_uri: str,
    num_demos: int,
    seed: int = 0,
    passes: int = 1,
    part: list[tuple[str, list[int] | None]] | None = None,
    random_flip: bool = False,
) -> ray.data.Dataset:
    """A streaming dataset of decoded G rows with delta > min_delta (every row when min_delta is None).

    `passes` > 1 emits every row that many times (each with its own demos) within one read: every epoch restarts
    Ray Data's execution (seconds on a small machine), so a small G is better seen several times per epoch than
    once per many short epochs. `part` is what to read: one training worker's part of an epoch's plan
    (`core.data.g_manifest.plan`: shards and their row groups), by default every shard G's manifest lists now.
    """
    storage.require(g_uri, "paths.g", "G (expert renders)")
    if part is None:
        g.check_single_provenance(g_uri)
        part = [(uri, None) for uri in g.live_shards(g_uri)]
    if not part:
        raise storage.MissingInputError(f"G: no shards in the manifest under '{g_uri}' (config key `paths.g`)")
    fs, paths = storage.shard_paths(g_uri, [uri for uri, _ in part])
    context = ray.data.DataContext.get_current()
    context.enable_progress_bars = False  # they flood the logs of long runs
    if PauseBetweenSchedulingSteps not in context.custom_execution_callback_classes:
        context.custom_execution_callback_classes.append(PauseBetweenSchedulingSteps)
    pieces = [{"path": p, "row_groups": list(groups or [])} for p, (_, groups) in zip(paths, part, strict=True)]
    ds = ray.data.from_items(pieces, override_num_blocks=len(pieces)).map_batches(
        read_pieces, fn_kwargs={"filesystem": fs, "min_delta": min_delta}, batch_format="pyarrow", batch_size=1
    )
    return ds.map_batches(
        decode_batch,
        fn_kwargs={
            "tokenizer_uri": tokenizer_uri,
            "num_demos": num_demos,
            "seed": seed,
            "passes": passes,
            "random_flip": random_flip,
        },
        batch_format="numpy",
        batch_size=32,
    )
