"""Every parquet column the project reads or writes, with its pyarrow type.

Three record kinds flow between stages:
- corpus: a "web" corpus of (url, image, caption) rows, grouped by url into candidate subject clusters;
- D_S: one row per mined subject cluster C_s with its unseen prompts p_s;
- G: one row per expert render y_s with its delta-CLIP scores and provenance; the filter is applied when G is read
  (`core.data.g`).
DreamBench evaluation adds two more: one row per generated image (DREAMBENCH) and one row of metrics per generated
image (DREAMBENCH_SCORE).

Images are PNG bytes. Every reader and writer goes through `validate` (or builds its table with these schemas),
so a column renamed in one place fails loudly everywhere else.
"""

from __future__ import annotations

import pyarrow as pa

CORPUS_SCHEMA = pa.schema(
    [
        pa.field("url", pa.string(), nullable=False),
        pa.field("image", pa.binary(), nullable=False),  # PNG bytes; may be corrupt in a noisy corpus
        pa.field("caption", pa.string(), nullable=False),
        # Ground truth that only the toy world knows (null for a real corpus): which subject drew this image.
        pa.field("truth_subject_id", pa.string(), nullable=True),
    ]
)

DS_SCHEMA = pa.schema(
    [
        pa.field("subject_id", pa.string(), nullable=False),
        pa.field("class_name", pa.string(), nullable=False),
        pa.field("demo_images", pa.list_(pa.binary()), nullable=False),  # C_s images, PNG bytes
        pa.field("demo_captions", pa.list_(pa.string()), nullable=False),  # C_s captions
        pa.field("prompt_ids", pa.list_(pa.string()), nullable=False),
        pa.field("prompts", pa.list_(pa.string()), nullable=False),  # unseen prompts p_s
        pa.field("prompt_skills", pa.list_(pa.string()), nullable=False),
        pa.field("source_url", pa.string(), nullable=True),
        # Toy world only: JSON of the subject's attributes and of each prompt's target attributes.
        pa.field("subject_truth", pa.string(), nullable=True),
        pa.field("prompt_truths", pa.list_(pa.string()), nullable=True),
    ]
)

G_KEY = ("subject_id", "prompt_id", "sample_index")

G_SCHEMA = pa.schema(
    [
        pa.field("subject_id", pa.string(), nullable=False),
        pa.field("prompt_id", pa.string(), nullable=False),
        pa.field("sample_index", pa.int32(), nullable=False),
        pa.field("prompt", pa.string(), nullable=False),
        pa.field("prompt_skill", pa.string(), nullable=False),
        pa.field("image", pa.binary(), nullable=False),  # expert render y_s, PNG bytes
        pa.field("demo_images", pa.list_(pa.binary()), nullable=False),  # C_s, so a row trains on its own
        pa.field("demo_captions", pa.list_(pa.string()), nullable=False),
        pa.field("clip_score", pa.float32(), nullable=False),  # CLIP(y_s, p_s)
        pa.field("ref_clip_score", pa.float32(), nullable=False),  # max over x in C_s of CLIP(x, p_s)
        pa.field("delta", pa.float32(), nullable=False),  # clip_score - ref_clip_score
        # Provenance: a later threshold sweep must never mix renders of different bases, experts or scorers.
        pa.field("base_checkpoint_hash", pa.string(), nullable=False),
        pa.field("expert_config_hash", pa.string(), nullable=False),
        pa.field("scorer_hash", pa.string(), nullable=False),
    ]
)

DREAMBENCH_KEY = ("method", "subject", "prompt_index", "sample_index")

DREAMBENCH_SCHEMA = pa.schema(
    [
        pa.field("method", pa.string(), nullable=False),  # apprentice | expert
        pa.field("subject", pa.string(), nullable=False),  # DreamBench folder name, e.g. "dog2"
        pa.field("class_name", pa.string(), nullable=False),
        pa.field("live", pa.bool_(), nullable=False),  # dog or cat: the live-subject prompt list
        pa.field("prompt_index", pa.int32(), nullable=False),  # position in its prompt list (0-24)
        pa.field("prompt_kind", pa.string(), nullable=False),  # recontextualization | accessorization | property
        pa.field("prompt", pa.string(), nullable=False),  # what the model was given ("a sks dog ..." for experts)
        pa.field("eval_prompt", pa.string(), nullable=False),  # the prompt with the class word only, for CLIP-T
        pa.field("sample_index", pa.int32(), nullable=False),
        pa.field("seed", pa.int64(), nullable=False),
        pa.field("image", pa.binary(), nullable=False),  # PNG bytes at the model's resolution
        pa.field(
            "num_demos", pa.int32(), nullable=False
        ),  # subject images shown (apprentice) or fine-tuned on (expert)
        pa.field("fine_tune_s", pa.float32(), nullable=False),  # per subject; 0 for the apprentice
        pa.field("sample_s", pa.float32(), nullable=False),  # per subject: every prompt and sample
        pa.field("backbone", pa.string(), nullable=False),
        # Hash of the weights and every setting that shapes the images: a resumed run never mixes two of them.
        pa.field("run_hash", pa.string(), nullable=False),
    ]
)

DREAMBENCH_SCORE_SCHEMA = pa.schema(
    [
        pa.field("method", pa.string(), nullable=False),
        pa.field("subject", pa.string(), nullable=False),
        pa.field("prompt_index", pa.int32(), nullable=False),
        pa.field("prompt_kind", pa.string(), nullable=False),
        pa.field("sample_index", pa.int32(), nullable=False),
        pa.field(
            "dino", pa.float32(), nullable=False
        ),  # mean cosine to the subject's real images, DINO CLS embeddings
        pa.field("clip_i", pa.float32(), nullable=False),  # the same with CLIP image embeddings
        pa.field("clip_t", pa.float32(), nullable=False),  # cosine of the image and its eval_prompt, CLIP
    ]
)


class SchemaError(ValueError):
    pass


def validate(table: pa.Table, schema: pa.Schema, what: str) -> pa.Table:
    """Return `table` cast to `schema`; raise SchemaError naming the missing or extra columns."""
    missing = [n for n in schema.names if n not in table.column_names]
    extra = [n for n in table.column_names if n not in schema.names]
    if missing or extra:
        raise SchemaError(f"{what}: columns do not match the schema (missing {missing}, unexpected {extra})")
    table = table.select(schema.names)
    check_non_null(table, schema, what)  # before the cast, which refuses nulls without naming the input
    try:
        table = table.cast(schema)
    except (pa.ArrowInvalid, pa.ArrowTypeError) as err:
        raise SchemaError(f"{what}: {err}") from err
    return table


def check_non_null(table: pa.Table, schema: pa.Schema, what: str) -> None:
    """Raise SchemaError when a column the schema marks non-nullable holds a null."""
    bad = [
        f.name for f in schema if not f.nullable and f.name in table.column_names and table.column(f.name).null_count
    ]
    if bad:
        raise SchemaError(f"{what}: nulls in non-nullable columns {bad}")


def table_from_rows(rows: list[dict], schema: pa.Schema, what: str = "rows") -> pa.Table:
    """Build a table with `schema` from dicts; a missing or unexpected key is an error, not a silent null."""
    for i, row in enumerate(rows):
        if set(row) != set(schema.names):
            missing, extra = sorted(set(schema.names) - set(row)), sorted(set(row) - set(schema.names))
            raise SchemaError(f"{what}: row {i} does not match the schema (missing {missing}, unexpected {extra})")
    table = pa.Table.from_pylist(rows, schema=schema)
    check_non_null(table, schema, what)
    return table
