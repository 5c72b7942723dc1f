"""DreamBench generation on the cluster: a fixed pool of actors, one per accelerator slot, each holding one model
(the apprentice, or the base that it resets and fine-tunes into one expert per subject) and writing one parquet
shard per (method, subject) atomically. A re-run skips the shards already written; a subject that fails is
reported with its reason, and the next run picks it up.
"""

from __future__ import annotations

from dataclasses import dataclass

import ray

from actors.pool import run_actor_pool
from core.config import PipelineConfig
from core.data import g, schema, storage
from core.dreambench import data as dreambench
from core.dreambench.data import Prompt, Subject


@ray.remote
class DreamBenchActor:
    def __init__(self, method: str, model_uri: str, config: PipelineConfig):
        import torch

        from core.models.device import pick_device

        torch.set_num_threads(config.dreambench.threads)
        device = pick_device()
        self.method, self.config = method, config
        if method == "apprentice":
            from core.pipelines.suti import load_apprentice

            self.model = load_apprentice(storage.local_dir(model_uri)).to(device)
            self.resolution = self.model.resolution
        else:
            from core.method.expert import Expert
            from core.models.backbone import load_backbone

            backbone = load_backbone(storage.local_dir(model_uri)).to(device)
            self.model = Expert(backbone, None, config.expert, {})  # no scorer: DreamBench scores afterwards
            self.resolution = backbone.resolution

    def run(self, subject: Subject, prompts: list[Prompt], out_uri: str, provenance: dict) -> dict:

        db = self.config.dreambench
        demos = [
            dreambench.square(dreambench.read_image(uri), self.resolution) for uri in subject.images[: db.max_demos]
        ]
        if self.method == "apprentice":
            acfg = self.config.apprentice
            sampling = {
                "sampler": acfg.sampler,
                "num_inference_steps": acfg.num_inference_steps,
                "guidance_scale": acfg.guidance_scale,
                "demo_guidance_scale": acfg.demo_guidance_scale,
            }
            rows = dreambench.generate_apprentice(
                self.model, subject, prompts, demos, db.images_per_prompt, db.seed, sampling, provenance
            )
        else:
            rows = dreambench.generate_expert(
                self.model, subject, prompts, demos, db.images_per_prompt, db.seed, db.identifier, provenance
            )
        table = schema.table_from_rows(rows, schema.DREAMBENCH_SCHEMA, "DreamBench")
        storage.write_shard(table, out_uri, schema.DREAMBENCH_SCHEMA, name=g.shard_name(subject.name))
        return {
            "subject": subject.name,
            "status": "done",
            "images": len(rows),
            "seconds": rows[0]["fine_tune_s"] + rows[0]["sample_s"],
        }


@dataclass
class GenerationJob:
    """One method's share of the work: its model, the (subject, prompts) tasks still to draw, where shards go."""

    model_uri: str
    tasks: list[tuple[Subject, list[Prompt]]]
    out_uri: str
    provenance: dict


def run_generation(method: str, job: GenerationJob, config: PipelineConfig, progress: bool = True) -> list[dict]:
    """Draw every task of one method with `dreambench.num_actors` actors (each holds the model), at most two tasks
    queued per actor (`actors.pool.run_actor_pool`; a subject whose actor died is failed, not retried: the next run
    picks it up). Returns one result per task. Methods run one after another, so on a shared machine each method's
    seconds per subject are measured without the other's actors beside it."""
    cfg = config.dreambench
    options = {"num_cpus": cfg.num_cpus, "num_gpus": cfg.num_gpus, "resources": dict(cfg.resources)}
    results, _ = run_actor_pool(
        lambda: DreamBenchActor.options(**options).remote(method, job.model_uri, config),
        job.tasks,
        lambda actor, task: actor.run.remote(task[0], task[1], job.out_uri, job.provenance),
        key=lambda task: task[0].name,
        key_field="subject",
        num_actors=cfg.num_actors,
        max_in_flight=2,  # one running, one waiting
        max_retries=0,
        desc=f"dreambench: {method}",
        progress=progress,
    )
    return results
