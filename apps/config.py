"""Hydra glue: the structured schema, conversion of a composed config to `core.config.PipelineConfig`, and the
decorator every stage app uses."""

from __future__ import annotations

import dataclasses
import functools
import json
import logging
import os
from pathlib import Path

import hydra
from hydra.core.config_store import ConfigStore
from omegaconf import DictConfig, OmegaConf

from core import storage
from core.config import PipelineConfig

CONF_DIR = str(Path(__file__).resolve().parent.parent / "conf")

ConfigStore.instance().store(name="base_config", node=PipelineConfig)
os.environ.setdefault("HF_HUB_OFFLINE", "1")  # weights only ever come from local folders


def to_config(cfg: DictConfig) -> PipelineConfig:
    """Resolve and type-check once; local paths become absolute so Ray workers resolve the same files."""
    config: PipelineConfig = OmegaConf.to_object(cfg)
    for f in dataclasses.fields(config.paths):
        setattr(config.paths, f.name, storage.absolute_uri(getattr(config.paths, f.name)))
    if config.model.path:
        config.model.path = storage.absolute_uri(config.model.path)
    return config


def compose(overrides: list[str] | None = None) -> PipelineConfig:
    """Compose the config without running an app (tests, notebooks)."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        return to_config(hydra_compose(config_name="config", overrides=overrides or []))


def stage_main(run):
    """Turn `run(config: PipelineConfig) -> dict` into a Hydra app that prints the stage's summary."""

    @hydra.main(config_path=CONF_DIR, config_name="config", version_base="1.3")
    @functools.wraps(run)
    def main(cfg: DictConfig) -> None:
        logging.getLogger("ray").setLevel(logging.WARNING)
        summary = run(to_config(cfg))
        print(json.dumps(summary, indent=1, default=str))

    return main


def base_uri(config: PipelineConfig) -> str:
    return config.model.path or config.paths.base


def require_base(config: PipelineConfig) -> str:
    """The base model's URI, failing at once (naming the key that set it) when nothing is there."""
    uri = base_uri(config)
    storage.require(uri, "model.path" if config.model.path else "paths.base", "base model")
    return uri
