"""Each step parameter has one home (components/<step>/params.py): the step's function, its CLI, its KFP
component and the pipeline agree with it, and every pipeline parameter has a home."""

from __future__ import annotations

import dataclasses
import inspect

import pytest

from histoxai.cli import parse
from histoxai.components.evaluate import baseline, evaluate
from histoxai.components.evaluate import params as evaluate_params
from histoxai.components.evaluate.component import evaluate_models
from histoxai.components.explain import explain
from histoxai.components.explain import params as explain_params
from histoxai.components.explain.component import explain_model
from histoxai.components.ingest import ingest
from histoxai.components.ingest import params as ingest_params
from histoxai.components.ingest.component import ingest as ingest_component
from histoxai.components.predict import params as predict_params
from histoxai.components.predict import split as predict
from histoxai.components.predict.component import predict_model
from histoxai.components.register import params as register_params
from histoxai.components.register.component import register_model
from histoxai.components.split import params as split_params
from histoxai.components.split import split
from histoxai.components.split.component import split as split_component
from histoxai.components.train import params as train_params
from histoxai.components.tune import params as tune_params
from histoxai.components.tune import tune
from histoxai.components.tune.component import tune_step
from histoxai.pipelines.params import search_space
from histoxai.pipelines.pipeline import build_pipeline

UNSET = (None, "", 0, 0.0, (), [""])  # "no value": None in a function, 0 or "" in a KFP parameter

INGEST_FIELDS = tuple(dataclasses.asdict(ingest_params.DEFAULTS))
# step -> (home, {field: (CLI command line, CLI dest)}, [(function, {field: keyword})], component,
#          {field: pipeline parameter})
STEPS = {
    "ingest": (ingest_params.DEFAULTS,
               {f: (["ingest", "S", "--out", "O"], f) for f in INGEST_FIELDS},
               [(ingest.ingest_sample, {f: f for f in INGEST_FIELDS})],
               ingest_component,
               {f: f for f in INGEST_FIELDS}),
    "split": (split_params.DEFAULTS,
              {f: (["split", "--out", "O"], f) for f in dataclasses.asdict(split_params.DEFAULTS)},
              [(split.split_manifests, {f: f for f in dataclasses.asdict(split_params.DEFAULTS)})],
              split_component,
              {"train_samples": "train_samples", "strategy": "split_strategy", "fractions": "split_fractions",
               "seed": "split_seed", "block_size": "split_block_size", "guard": "split_guard"}),
    "tune": (tune_params.DEFAULTS,
             {f: (["tune", "--data", "D", "--out", "O"], dest) for f, dest in (
                 ("search_space", "search_space"), ("objective_targets", "objective_targets"),
                 ("tuning_trials", "tuning_trials"), ("timeout_s", "timeout"),
                 ("startup_trials", "startup_trials"), ("warmup_epochs", "warmup_epochs"))},
             [(tune.tune, {"tuning_trials": "n_trials", "timeout_s": "timeout_s",
                           "startup_trials": "startup_trials", "warmup_epochs": "warmup_epochs"})],
             tune_step,
             {"tuning_trials": "tuning_trials", "timeout_s": "tuning_timeout_s", "targets": "tuning_targets",
              "startup_trials": "tuning_startup_trials", "search_space": "tuning_search_space"}),
    "train": (train_params.DEFAULTS, {}, [], None,
              {"multitask_targets": "multitask_targets", "single_task_targets": "single_task_targets",
               "tensorboard": "tensorboard"}),
    "evaluate": (evaluate_params.DEFAULTS,
                 {**{f: (["evaluate", "--model", "M", "--data", "D", "--out", "O"], f)
                     for f in ("baseline_summary", "baseline_repeats", "seed", "batch_size")},
                  "baseline_roi": (["baseline"], "roi")},
                 [(evaluate.evaluate, {f: f for f in ("baseline_summary", "baseline_repeats", "seed",
                                                      "batch_size")}),
                  (baseline.compute_baselines, {"baseline_roi": "roi", "baseline_repeats": "repeats",
                                                "seed": "seed"})],
                 evaluate_models,
                 {"baseline_summary": "evaluate_baseline_summary",
                  "baseline_repeats": "evaluate_baseline_repeats"}),
    "predict": (predict_params.DEFAULTS, {},
                [(predict.predict_split, {"batch_size": "batch_size"})],
                predict_model,
                {"batch_size": "predict_batch_size"}),
    "explain": (explain_params.DEFAULTS,
                {f: (["explain", "--model", "M", "--data", "D", "--out", "O"], f)
                 for f in dataclasses.asdict(explain_params.DEFAULTS)},
                [(explain.explain, {f: f for f in dataclasses.asdict(explain_params.DEFAULTS)})],
                explain_model,
                {"shard_range": "explain_shard_ranges"} | {
                    f: f"explain_{f}" for f in ("methods", "scores", "splits", "samples", "max_patches",
                                                "phantom_dir", "trust_patches", "nuclei", "nuclei_voxels")}),
    "register": (register_params.DEFAULTS,
                 {f"promotion_{f}": (["register", "--model", "M", "--split", "S", "--evaluation", "E",
                                      "--evaluated-as", "multitask", "--registry", "R", "--name", "n"], f)
                  for f in ("metric", "margin", "tolerance")},
                 [], register_model,
                 {f: f for f in dataclasses.asdict(register_params.DEFAULTS)}),
}
# artifact inputs a component may go without (None: the pipeline or a caller has none to give)
OPTIONAL_ARTIFACTS = {"single_task_model", "multitask_champion", "single_task_champion",
                      "multitask_predictions", "single_task_predictions", "multitask_champion_predictions",
                      "single_task_champion_predictions"}
# pipeline parameters that belong to the run, not to one step
RUN_PARAMETERS = {"samples_uri", "samples", "config", "config_overrides", "tuning"}


def canonical(value, like):
    """A value in the home's form: comma-separated text and lists become tuples."""
    if isinstance(like, tuple) and isinstance(value, str):
        value = tuple(v.strip() for v in value.split(",") if v.strip())
    if isinstance(value, list):
        value = tuple(value)
    return value


def agree(value, home) -> bool:
    value = canonical(value, home)
    if value in UNSET and home in UNSET:
        return True
    return value == home or (isinstance(home, tuple) and value == tuple(str(h) for h in home))


@pytest.fixture(scope="module")
def pipeline_inputs():
    return build_pipeline().component_spec.inputs


@pytest.mark.parametrize("step", STEPS)
def test_cli_defaults_agree_with_the_home(step):
    home, cli, _, _, _ = STEPS[step]
    for field, (argv, dest) in cli.items():
        value = getattr(parse(argv), dest)
        assert agree(value, getattr(home, field)), f"histoxai {argv[0]} --{dest}: {value!r} vs {field}"


@pytest.mark.parametrize("step", STEPS)
def test_function_defaults_agree_with_the_home(step):
    home, _, functions, _, _ = STEPS[step]
    for function, keywords in functions:
        signature = inspect.signature(function)
        for field, keyword in keywords.items():
            value = signature.parameters[keyword].default
            assert agree(value, getattr(home, field)), f"{function.__name__}({keyword}={value!r}) vs {field}"


@pytest.mark.parametrize("step", STEPS)
def test_components_take_every_value_from_the_pipeline(step):
    """A component repeats no default (its source runs in the container, away from the home): a
    default there would be a second home, so the pipeline passes every value."""
    component = STEPS[step][3]
    if component is None:
        return
    defaults = {name: spec.default for name, spec in component.component_spec.inputs.items()
                if spec.default is not None and name not in OPTIONAL_ARTIFACTS}
    assert not defaults, f"{component.name}: defaults {defaults}; put them in components/{step}/params.py"


@pytest.mark.parametrize("step", STEPS)
def test_pipeline_defaults_agree_with_the_home(step, pipeline_inputs):
    home, _, _, _, pipeline = STEPS[step]
    for field, name in pipeline.items():
        value, expected = pipeline_inputs[name].default, getattr(home, field)
        if field == "search_space":
            expected = search_space(expected)
        if field == "shard_range":
            value = value[0] if value == [""] else value
        assert agree(value, expected), f"pipeline parameter {name}={value!r} vs {step} {field}={expected!r}"


def test_every_pipeline_parameter_has_a_home(pipeline_inputs):
    homed = {name for *_, pipeline in STEPS.values() for name in pipeline.values()}
    assert set(pipeline_inputs) - homed - RUN_PARAMETERS == set()


def test_the_agreement_check_can_fail():
    assert not agree("3,5", ("3", "4")) and not agree(8, 16) and not agree(None, 5)
    assert not agree("0.6,0.3,0.1", (0.6, 0.2, 0.2)) and not agree("png", "raw")
    assert agree("0.6,0.2,0.2", (0.6, 0.2, 0.2)) and agree([0.6, 0.2, 0.2], (0.6, 0.2, 0.2))
    assert agree("", ()) and agree(None, 0.0)
