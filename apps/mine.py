"""Stage `mine`: group the corpus by URL, keep coherent clusters, write D_S (DS_SCHEMA parquet) to `paths.ds`.

python -m apps.mine experiment=smoke
"""

from __future__ import annotations

from actors.cluster import ray_cluster
from apps.config import stage_main
from core.config import PipelineConfig
from core.data import schema, storage


def run(config: PipelineConfig) -> dict:
    from core.method.mining import mine
    from core.models.scorer import load_scorer

    storage.require(config.paths.corpus, "paths.corpus", "corpus")
    storage.require(config.paths.scorer, "paths.scorer", "toy scorer")
    if config.mine.engine == "ray_data":
        from actors.mining_pool import mine_with_ray_data

        with ray_cluster(config.cluster):  # the configured cluster, as every stage that uses Ray
            rows, summary = mine_with_ray_data(
                config.paths.corpus,
                config.paths.scorer,
                config.mine,
                config.world.resolution,
                config.mine.num_actors,
                config.mine.batch_size,
                config.world.version,
            )
    elif config.mine.engine == "local":
        corpus = storage.read_table(config.paths.corpus, schema.CORPUS_SCHEMA, "paths.corpus", "corpus")
        scorer = load_scorer(storage.local_dir(config.paths.scorer))
        rows, summary = mine(corpus, scorer, config.mine, config.world.resolution, version=config.world.version)
    else:
        raise ValueError(f"mine.engine must be local or ray_data, not {config.mine.engine!r}")
    if not rows:
        raise RuntimeError(f"mining kept no cluster ({summary}); lower mine.min_image_image / mine.min_image_text")
    storage.write_shard(
        schema.table_from_rows(rows, schema.DS_SCHEMA, "D_S"), config.paths.ds, schema.DS_SCHEMA, name="ds"
    )
    return {"stage": "mine", **summary, "out": config.paths.ds}


main = stage_main(run)

if __name__ == "__main__":
    main()
