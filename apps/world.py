"""Stage `world`: write the toy world's noisy URL-grouped corpus (CORPUS_SCHEMA parquet) to `paths.corpus`.

python -m apps.world experiment=smoke
"""

from __future__ import annotations

import numpy as np

from apps.config import stage_main
from core.config import PipelineConfig
from core.data import schema, storage
from core.toy import world as toyworld


def run(config: PipelineConfig) -> dict:
    world = config.world
    train, test = toyworld.split_subjects(world.seed, world.test_fraction)
    train, validation = toyworld.split_validation(train, world.seed, world.validation_fraction)
    rows = toyworld.corpus_rows(train, world, np.random.default_rng(world.seed))
    table = schema.table_from_rows(rows, schema.CORPUS_SCHEMA)
    storage.write_shard(table, config.paths.corpus, schema.CORPUS_SCHEMA, name="corpus")
    return {
        "stage": "world",
        "rows": table.num_rows,
        "train_subjects": len(train),
        "validation_subjects": len(validation),
        "test_subjects": len(test),
        "out": config.paths.corpus,
    }


main = stage_main(run)

if __name__ == "__main__":
    main()
