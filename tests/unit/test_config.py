"""Every config composes onto the typed schema; a missing stage input fails at once, naming path and key."""

from pathlib import Path

import pytest

from apps.config import CONF_DIR, compose
from core.config import PipelineConfig


@pytest.mark.parametrize("experiment", [None, "smoke", "demo", "toy_base", "toy_study"])
def test_experiments_compose_to_the_typed_config(experiment, tmp_path):
    overrides = [f"paths.root={tmp_path}"] + ([f"experiment={experiment}"] if experiment else [])
    config = compose(overrides)
    assert isinstance(config, PipelineConfig)
    assert config.paths.g == f"{tmp_path}/g"
    assert config.apprentice.demo_encoder_init in (None, f"{tmp_path}/demo_encoder")
    assert config.serve.host == "127.0.0.1"
    if experiment:
        assert config.experiment_name == experiment


def _leaves(node: dict, prefix: str = "") -> dict:
    out = {}
    for key, value in node.items():
        if isinstance(value, dict) and value:
            out.update(_leaves(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def test_presets_hold_only_what_differs_from_the_dataclass_defaults():
    """The dataclasses of core/config.py are the one source of defaults: a YAML value equal to its default is a
    second copy that can drift, so none may exist."""
    import dataclasses

    import yaml

    defaults = _leaves(dataclasses.asdict(PipelineConfig()))
    checked = 0
    for path in sorted(Path(CONF_DIR).rglob("*.yaml")):
        if path.name == "config.yaml":
            continue
        data = yaml.safe_load(path.read_text()) or {}
        prefix = "" if path.parent.name == "experiment" else f"{path.parent.name}."
        for key, value in _leaves(data).items():
            full = prefix + key
            assert full in defaults, f"{path.relative_to(CONF_DIR)}: `{full}` is not a config key"
            assert value != defaults[full], (
                f"{path.relative_to(CONF_DIR)}: `{full}: {value}` repeats the dataclass default"
            )
            checked += 1
    assert checked > 20


def test_every_group_option_composes(tmp_path):
    groups = [p for p in Path(CONF_DIR).iterdir() if p.is_dir()]
    assert {g.name for g in groups} >= {"model", "expert", "experiment"}
    for group in groups:
        for option in group.glob("*.yaml"):
            # Real backbones have no default folder (path: ???): they compose once one is given.
            required = [f"{group.name}.path={tmp_path}"] if "path: ???" in option.read_text() else []
            compose([f"{group.name}={option.stem}", f"paths.root={tmp_path}", *required])


def test_a_wrongly_typed_value_is_refused(tmp_path):
    with pytest.raises(Exception, match="expert.steps"):
        compose(["expert.steps=many", f"paths.root={tmp_path}"])


def test_relative_paths_become_absolute(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    config = compose(["paths.root=rel/run"])
    assert config.paths.ds == f"{tmp_path}/rel/run/ds"


@pytest.mark.parametrize(
    ("stage", "key"),
    [
        ("mine", "paths.corpus"),
        ("experts", "paths.ds"),
        ("train", "paths.base"),
        ("evaluate", "paths.apprentice"),
        ("serve", "paths.apprentice"),
    ],
)
def test_missing_input_fails_at_once_naming_path_and_key(stage, key, tmp_path):
    import importlib

    from core.data.storage import MissingInputError

    config = compose([f"paths.root={tmp_path}/empty"])
    with pytest.raises(MissingInputError, match=rf"{tmp_path}/empty.*`{key}`"):
        importlib.import_module(f"apps.{stage}").run(config)


def test_run_outputs_sit_under_paths_run(tmp_path):
    config = compose([f"paths.root={tmp_path}"])
    assert config.paths.run == str(tmp_path) and config.paths.apprentice == f"{tmp_path}/apprentice"
    config = compose([f"paths.root={tmp_path}", f"paths.run={tmp_path}/runs/x"])
    assert (
        config.paths.apprentice == f"{tmp_path}/runs/x/apprentice"
        and config.paths.dreambench == f"{tmp_path}/runs/x/dreambench"
    )
    assert config.paths.g == f"{tmp_path}/g" and config.paths.train_storage == f"{tmp_path}/ray_train"  # shared inputs


def test_a_sweep_job_is_named_by_the_overrides_that_change_what_it_computes():
    from apps.config import run_names

    overrides = [
        "experiment=demo",
        "paths.root=/data/x",
        "filter.min_delta=0.01",
        "apprentice.steps=5",
        "cluster.address=auto",
        "dreambench.dino=/w/dino",
        "+hydra.launcher.ray.init.num_cpus=4",
    ]
    assert run_names(overrides) == ("apprentice.steps=5,filter.min_delta=0.01", "")
    assert run_names(list(reversed(overrides))) == run_names(overrides)  # order does not matter
    # Evaluation-only settings name a folder of their own below the apprentice's run, not another run.
    assert run_names(overrides + ["apprentice.guidance_scale=7.5", "dreambench.max_demos=3"]) == (
        "apprentice.steps=5,filter.min_delta=0.01",
        "apprentice.guidance_scale=7.5,dreambench.max_demos=3",
    )
    assert run_names(["experiment=demo", "cluster.num_cpus=2"]) == ("", "")
    assert run_names(["model.path=/w/base"]) == ("model.path=_w_base", "")  # one folder level, whatever the value
    long = run_names([f"expert.resources={{TPU: {i}}}" for i in range(40)])[0]
    assert len(long) <= 200 and long != run_names([f"expert.resources={{TPU: {i}}}" for i in range(41)])[0]


def test_warm_start_folders_become_absolute_for_ray_train_workers():
    """Ray Train runs each worker in a working directory of its own: the folders a worker loads are made absolute
    when the config is composed, like the paths, even when they come from a relative `paths.root`."""
    import os

    config = compose(["experiment=toy_study", "apprentice.init=some/apprentice"])
    assert os.path.isabs(config.apprentice.demo_encoder_init)
    assert config.apprentice.demo_encoder_init == config.paths.demo_encoder
    assert config.apprentice.init == os.path.abspath("some/apprentice")
