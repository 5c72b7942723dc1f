"""Hydra glue: the structured schema, conversion of a composed config to `core.config.PipelineConfig`, and the
decorator every stage app uses."""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import logging
import os
import socket
import sys
from pathlib import Path

import hydra
from hydra.core.config_store import ConfigStore
from omegaconf import DictConfig, OmegaConf

from core.config import LOCAL_DIR, PipelineConfig
from core.data import storage

CONF_DIR = str(Path(__file__).resolve().parent.parent / "conf")

ConfigStore.instance().store(name="base_config", node=PipelineConfig)
os.environ.setdefault("HF_HUB_OFFLINE", "1")  # weights only ever come from local folders


def to_config(cfg: DictConfig) -> PipelineConfig:
    """Resolve and type-check once; local paths become absolute so Ray workers resolve the same files."""
    config: PipelineConfig = OmegaConf.to_object(cfg)
    if "://" not in config.paths.readers and not os.path.isabs(config.paths.readers):
        config.paths.readers = str(Path(CONF_DIR).parent / config.paths.readers)  # shipped: relative to the project
    for f in dataclasses.fields(config.paths):
        setattr(config.paths, f.name, storage.absolute_uri(getattr(config.paths, f.name)))
    # Folders Ray Train workers load (they run in a working directory of their own): absolute, like the paths.
    ap = config.apprentice
    ap.demo_encoder_init = storage.absolute_uri(ap.demo_encoder_init) if ap.demo_encoder_init else None
    ap.init = storage.absolute_uri(ap.init) if ap.init else None
    config.evaluate.apprentices = {k: storage.absolute_uri(v) for k, v in config.evaluate.apprentices.items()}
    if config.model.path and config.model.path.startswith("hf://"):  # a repo in the local Hugging Face cache
        from core.models.backbone import resolve_model_dir

        config.model.path = resolve_model_dir(config.model.path)
    if config.model.path:
        config.model.path = storage.absolute_uri(config.model.path)
    db = config.dreambench
    db.data = storage.absolute_uri(db.data) if db.data else None
    db.dino = storage.absolute_uri(db.dino) if db.dino else None
    db.clip_pretrained = storage.absolute_uri(db.clip_pretrained) if db.clip_pretrained else None
    if db.clip_model.startswith(LOCAL_DIR):
        db.clip_model = LOCAL_DIR + storage.absolute_uri(db.clip_model[len(LOCAL_DIR) :])
    return config


def invocation() -> str:
    """The command line that started this process, as `python -m <module> <overrides>` (the module that ran as
    `__main__`: a stage's own app, or apps.pipeline when the stage runs inside the pipeline)."""
    spec = getattr(sys.modules.get("__main__"), "__spec__", None)
    module = spec.name if spec is not None else os.path.basename(sys.argv[0])
    return " ".join(["python -m", module, *sys.argv[1:]])


def compose(overrides: list[str] | None = None) -> PipelineConfig:
    """Compose the config without running an app (tests, notebooks)."""

    with hydra.initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        return to_config(hydra.compose(config_name="config", overrides=overrides or []))


# Overrides that say where things are or how the cluster looks, not what a run computes: they name no folder.
RUN_NAME_EXCLUDES = (
    "experiment",
    "stages",
    "paths.",
    "cluster.",
    "hydra.",
    "hydra/",
    "serve.",
    "apprentice.budget_s",  # how long one run trains, not what it trains: runs with other budgets continue each other
    "dreambench.data",
    "dreambench.dino",
    "dreambench.clip_model",
    "dreambench.clip_pretrained",
)
# Overrides that change only how a trained apprentice is evaluated: they name a folder below eval/ and dreambench/,
# so an evaluation sweep reads the apprentice that the training overrides (or their absence) point at.
EVAL_ONLY = (
    "dreambench.",
    "evaluate.",
    "apprentice.sampler",
    "apprentice.num_inference_steps",
    "apprentice.guidance_scale",
    "apprentice.demo_guidance_scale",
)


def _matches(key: str, prefixes: tuple[str, ...]) -> bool:
    return any(key == p or (p.endswith((".", "/")) and key.startswith(p)) for p in prefixes)


def _name(items: list[str]) -> str:
    """Hydra's override_dirname format (`key=value,key=value`, sorted), one folder level, at most 200 characters."""
    name = ",".join(sorted(items))
    return name if len(name) <= 200 else name[:180] + "-" + hashlib.sha256(name.encode()).hexdigest()[:12]


def run_names(overrides: list[str]) -> tuple[str, str]:
    """A sweep job's (training name, evaluation name): its overrides less RUN_NAME_EXCLUDES, split by EVAL_ONLY.
    Deterministic, so a train sweep and an evaluation sweep over the same training values meet in the same folders."""
    train, evaluation = [], []
    for override in overrides:
        key, _, value = override.lstrip("+~").partition("=")
        if not _matches(key, RUN_NAME_EXCLUDES):
            (evaluation if _matches(key, EVAL_ONLY) else train).append(
                f"{key}={value.replace('/', '_').replace('$', '_')}"
            )
    return _name(train), _name(evaluation)


def sweep_job(cfg: DictConfig) -> dict | None:
    """In a Hydra multirun, give each job its own outputs, unless the command sets those paths itself:
    - training overrides put `paths.run` (apprentice, eval, dreambench) at `paths.root/runs/<training name>`;
    - evaluation-only overrides put `paths.eval` and `paths.dreambench` one folder deeper, `.../<evaluation name>`;
    - a job with neither (a sweep over cluster settings) gets `paths.root/runs/job<N>`.
    Returns what the job was given."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    hydra_cfg = HydraConfig.get()
    if hydra_cfg.mode != RunMode.MULTIRUN:
        return None
    overrides = list(hydra_cfg.overrides.task)
    given = {o.lstrip("+~").partition("=")[0] for o in overrides}
    train, evaluation = run_names(overrides)
    if "paths.run" not in given and (train or not evaluation):
        cfg.paths.run = f"{cfg.paths.root}/runs/{train or f'job{hydra_cfg.job.num}'}"
    for key in ("eval", "dreambench"):
        if evaluation and f"paths.{key}" not in given:
            cfg.paths[key] = f"${{paths.run}}/{key}/{evaluation}"
    return {
        "job_num": hydra_cfg.job.num,
        "overrides": overrides,
        "sweep_dir": hydra_cfg.sweep.dir,
        "app": hydra_cfg.job.name,
    }


def stage_main(run, epilogue=None):
    """Turn `run(config: PipelineConfig) -> dict` into a Hydra app that prints the stage's summary.

    Under `-m` each job writes its own outputs (see `sweep_job`) and records its overrides in
    `paths.run/sweep_job.json` (when it has a run folder of its own; Hydra keeps them in `hydra.sweep.dir/<N>/.hydra/`
    too).
    """

    @hydra.main(config_path=CONF_DIR, config_name="config", version_base="1.3")
    @functools.wraps(run)
    def main(cfg: DictConfig) -> None:
        logging.getLogger("ray").setLevel(logging.WARNING)
        job = sweep_job(cfg)
        config = to_config(cfg)
        if job and config.paths.run != config.paths.root:
            storage.write_bytes(storage.join(config.paths.run, "sweep_job.json"), json.dumps(job, indent=1).encode())
        summary = run(config)
        print(json.dumps(summary, indent=1, default=str))
        if epilogue is not None:  # what a person reads last, after the summary
            epilogue(config, summary)

    return main


def stage_summary(stdout: str) -> dict:
    """The JSON summary a stage's `main` prints, from its standard output: the last object that starts a line, with
    whatever follows it ignored (the pipeline's closing table); {} when it printed none."""
    if "{" not in stdout:
        return {}
    start = stdout.rindex("\n{") + 1 if "\n{" in stdout else stdout.index("{")
    try:
        return json.JSONDecoder().raw_decode(stdout[start:])[0]
    except ValueError:
        return {}


def free_port() -> int:
    """A TCP port free on 127.0.0.1 now, for `serve.port` of a stage started beside others."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def base_uri(config: PipelineConfig) -> str:
    return config.model.path or config.paths.base


def require_base(config: PipelineConfig) -> str:
    """The base model's URI, failing at once (naming the key that set it) when nothing is there."""
    uri = base_uri(config)
    storage.require(uri, "model.path" if config.model.path else "paths.base", "base model")
    return uri
