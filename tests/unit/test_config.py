"""Every config composes onto the typed schema; a missing stage input fails at once, naming path and key."""

from pathlib import Path

import pytest

from apps.config import CONF_DIR, compose
from core.config import PipelineConfig


@pytest.mark.parametrize("experiment", [None, "smoke", "demo"])
def test_experiments_compose_to_the_typed_config(experiment, tmp_path):
    overrides = [f"paths.root={tmp_path}"] + ([f"experiment={experiment}"] if experiment else [])
    config = compose(overrides)
    assert isinstance(config, PipelineConfig)
    assert config.paths.g == f"{tmp_path}/g"
    assert config.serve.host == "127.0.0.1"
    if experiment:
        assert config.experiment_name == experiment


def test_every_group_option_composes(tmp_path):
    groups = [p for p in Path(CONF_DIR).iterdir() if p.is_dir()]
    assert {g.name for g in groups} >= {"model", "expert", "apprentice", "filter", "serve", "cluster", "experiment"}
    for group in groups:
        for option in group.glob("*.yaml"):
            compose([f"{group.name}={option.stem}", f"paths.root={tmp_path}"])


def test_a_wrongly_typed_value_is_refused(tmp_path):
    with pytest.raises(Exception, match="expert.steps"):
        compose(["expert.steps=many", f"paths.root={tmp_path}"])


def test_relative_paths_become_absolute(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    config = compose(["paths.root=rel/run"])
    assert config.paths.ds == f"{tmp_path}/rel/run/ds"


@pytest.mark.parametrize(
    ("stage", "key"),
    [("mine", "paths.corpus"), ("experts", "paths.ds"), ("train", "paths.base"), ("evaluate", "paths.apprentice"), ("serve", "paths.apprentice")],
)
def test_missing_input_fails_at_once_naming_path_and_key(stage, key, tmp_path):
    import importlib

    from core.storage import MissingInputError

    config = compose([f"paths.root={tmp_path}/empty"])
    with pytest.raises(MissingInputError, match=rf"{tmp_path}/empty.*`{key}`"):
        importlib.import_module(f"apps.{stage}").run(config)
