"""Tuning's search space: validation naming the parameter, conditional sampling, seeded sampling."""

from pathlib import Path

import optuna
import pytest
import yaml

from histoxai import config as configs
from histoxai.cli import main
from histoxai.components.tune.space import CONDITIONS, load_space, parse_space, table_space
from histoxai.errors import InputError
from tests.train_data import QUICK_TUNE as QUICK
from tests.train_data import write_blob_manifest, write_yaml

REPO_CONFIGS = Path(__file__).resolve().parents[1] / "histoxai" / "configs"
SCHEDULE_CHILDREN = [k for k, (_, when) in CONDITIONS.items() if when == ("warmup_cosine",)]


@pytest.fixture(scope="module")
def blobs(tmp_path_factory):
    return write_blob_manifest(tmp_path_factory.mktemp("blobs"), n=20, size=32, seed=1)


def test_shipped_spaces_validate_and_reuse_the_table_values():
    thesis = configs.load_config("thesis", {"targets": ["MD", "FA"]})
    default = load_space("search_space")
    default.check_against(default.start_config(thesis))
    by_name = {p.name: p for p in default.params}
    for name in ("batch_size", "learning_rate", "backbone", "optimizer", "lr_schedule"):
        assert list(by_name[name].choices) == configs.FIELDS[name].metadata["search"]
    assert (by_name["weight_decay"].low, by_name["weight_decay"].high, by_name["weight_decay"].log) == (
        1e-3, 1e-2, True)
    assert set(table_space().names) <= set(default.names)
    demo = load_space("search_space_demo")
    start = demo.start_config(configs.load_config("demo", {"targets": "MD"}))
    demo.check_against(start)
    assert start.backbone == "tiny" and start.frozen_epochs + start.finetune_epochs <= 6


@pytest.mark.parametrize(("values", "message"), [
    ({"search": {"batchsize": [8]}}, r"unknown parameter 'batchsize'"),
    ({"search": {"weight_decay": {"low": 0.01, "high": 0.001}}}, r"'weight_decay': expected low < high"),
    ({"search": {"dropout": {"low": 0.1, "high": 1.0}}}, r"parameter 'dropout': expected a number in \[0.0"),
    ({"search": {"learning_rate": {"low": 0, "high": 0.1, "log": True}}}, r"parameter 'learning_rate'"),
    ({"search": {"batch_size": {"low": 4, "high": 32, "step": 2.5}}}, r"parameter 'batch_size': step"),
    ({"search": {"backbone": ["ResNet50"]}}, r"parameter 'backbone': expected one of"),
    ({"search": {"dropout": "table"}}, r"parameter 'dropout' has no Table 3.2 values"),
    ({"search": {"optimizer": {"low": 1, "high": 2}}}, r"parameter 'optimizer': a range"),
    ({"search": {"targets": [["MD"]]}}, r"parameter 'targets' cannot be searched"),
    ({"search": {"dropout": []}}, r"parameter 'dropout': expected at least one choice"),
    ({"search": {"dropout": [0.1, 0.1]}}, r"parameter 'dropout': choices .* repeat"),
    ({"fixed": {"dropout": 0.2}, "search": {"dropout": [0.1]}}, r"parameter 'dropout' is both fixed"),
    ({"fixed": {"patience": 0}, "search": {"dropout": [0.1]}}, r"fixed: parameter 'patience'"),
    ({"space": {"dropout": [0.1]}}, r"unknown section 'space'"),
    ({"search": {"optimizer": ["adam"], "weight_decay": "table"}},
     r"parameter 'weight_decay' is only used when optimizer is one of \['adamw'\]"),
    ({"search": {"warmup_epochs": {"low": 1, "high": 3}}},
     r"parameter 'warmup_epochs' is only used when lr_schedule .* config sets lr_schedule: 'none'"),
])
def test_invalid_space_is_rejected_naming_the_parameter(tmp_path, capsys, blobs, values, message):
    path = write_yaml(tmp_path, values)
    config = write_yaml(tmp_path, QUICK, "quick.yaml")
    out = tmp_path / "out"
    assert main(["tune", "--config", config, "--search-space", path, "--data", str(blobs),
                 "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and path in err, err
    with pytest.raises(InputError, match=message):
        space = load_space(path)
        space.check_against(space.start_config(configs.from_dict(QUICK)))
    assert not out.exists()


def test_conditional_parameters_are_sampled_only_when_used():
    space = table_space()
    start = configs.from_dict({**QUICK, "backbone": "MobileNet", "weights": "imagenet"})
    study = optuna.create_study(sampler=optuna.samplers.TPESampler(seed=3, n_startup_trials=10),
                                direction="maximize")
    study.optimize(lambda trial: float(len(space.sample(trial, start))), n_trials=40)
    for trial in study.trials:
        params = trial.params
        assert ("weight_decay" in params) == (params["optimizer"] == "adamw")
        assert ("learning_rate" in params) == (params["lr_schedule"] == "none")
        for name in SCHEDULE_CHILDREN:
            assert (name in params) == (params["lr_schedule"] == "warmup_cosine"), params
        configs.with_values(start, params)  # every sample is a valid config
    seen = {(t.params["optimizer"], t.params["lr_schedule"]) for t in study.trials}
    assert seen == {(o, s) for o in ("adam", "adamw") for s in ("none", "warmup_cosine")}


def test_a_seeded_study_samples_the_same_whatever_the_key_order():
    """A search space that went through a KFP dict parameter comes back in another key order."""
    search = yaml.safe_load((REPO_CONFIGS / "search_space_demo.yaml").read_text())
    reordered = {**search, "search": dict(reversed(list(search["search"].items())))}
    start = configs.from_dict(QUICK)
    sampled = []
    for values in (search, reordered):
        space = parse_space(values)
        study = optuna.create_study(sampler=optuna.samplers.TPESampler(seed=42, n_startup_trials=2),
                                    direction="maximize")
        study.optimize(lambda trial, space=space: float(len(space.sample(trial, start))), n_trials=3)
        sampled.append([t.params for t in study.trials])
    assert sampled[0] == sampled[1]
