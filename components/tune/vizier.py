"""The second tuning backend: a Vertex AI hyperparameter tuning job (Vizier) over the same search space.

`build_tuning_job(...)` turns a SearchSpace into an `aiplatform.HyperparameterTuningJob` whose trials
run this module as their container command on a GPU worker: each trial trains the base config with
Vizier's values through histoxai/training.py and reports the mean validation R² in the format
of Google's cloudml-hypertune package. Conditional parameters become Vizier conditional parameter
specs under their parent. Building needs no network (pass AnonymousCredentials to build offline);
only `job.run()` submits.

Trial entry point (Vertex appends one --KEY=VALUE per searched parameter):
  python -m histoxai.components.tune.vizier --config-json '{...}' --data gs://b/split \\
      --objective-targets MD,FA [--out gs://b/trial]   (default: $AIP_MODEL_DIR)
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Sequence
from typing import Any

from histoxai.components.tune.space import CONDITIONS, Param, SearchSpace
from histoxai.config import FIELDS, TrainConfig, from_dict
from histoxai.errors import InputError

METRIC = "val_r2_mean"
DEFAULT_METRIC_FILE = "/tmp/hypertune/output.metrics"  # cloudml-hypertune's default location


def _spec(param: Param, parent_values: Sequence[Any] | None = None, children: dict | None = None):
    """One Vizier parameter spec: numbers -> discrete / integer / double, anything else categorical."""
    from google.cloud.aiplatform import hyperparameter_tuning as hpt

    extra = {"parent_values": list(parent_values) if parent_values is not None else None,
             "conditional_parameter_spec": children or None}
    scale = "log" if param.log else "linear"
    numeric = param.kind == "choice" and all(isinstance(v, int | float) and not isinstance(v, bool)
                                             for v in param.choices)
    if param.kind == "choice" and not numeric:
        return hpt.CategoricalParameterSpec(values=[_text(v) for v in param.choices], **extra)
    if numeric:
        values = sorted(float(v) for v in param.choices)
        spans_decades = values[0] > 0 and values[-1] / values[0] >= 10  # e.g. learning rates
        return hpt.DiscreteParameterSpec(values=values, scale="log" if spans_decades else "linear", **extra)
    if param.step is not None:
        count = int(round((param.high - param.low) / param.step)) + 1
        values = [param.low + i * param.step for i in range(count)]
        return hpt.DiscreteParameterSpec(values=[float(v) for v in values], scale="linear", **extra)
    if param.kind == "int":
        return hpt.IntegerParameterSpec(min=param.low, max=param.high, scale=scale, **extra)
    return hpt.DoubleParameterSpec(min=param.low, max=param.high, scale=scale, **extra)


def _text(value: Any) -> str:
    return json.dumps(value) if not isinstance(value, str) else value  # true / false / null, as YAML reads


def parameter_specs(space: SearchSpace) -> dict:
    """Top-level Vizier specs; a conditional parameter nests under its searched parent."""
    by_name = {p.name: p for p in space.params}
    nested: dict[str, dict] = {}
    for param in space.params:
        parent = CONDITIONS.get(param.name, (None,))[0]
        if parent in by_name:
            when = [v for v in CONDITIONS[param.name][1] if v in by_name[parent].choices]
            nested.setdefault(parent, {})[param.name] = _spec(param, parent_values=[_text(v) for v in when])
    return {p.name: _spec(p, children=nested.get(p.name)) for p in space.params
            if CONDITIONS.get(p.name, (None,))[0] not in by_name}


def build_tuning_job(base: TrainConfig, space: SearchSpace, data_uri: str, output_uri: str, *,
                     project: str, location: str, staging_bucket: str | None = None,
                     image: str | None = None, machine_type: str = "n1-standard-8",
                     accelerator_type: str = "NVIDIA_TESLA_T4", accelerator_count: int = 1,
                     max_trial_count: int = 20, parallel_trial_count: int = 2,
                     objective_targets: Sequence[str] | None = None, credentials=None,
                     display_name: str = "histoxai-tune"):
    """The Vertex AI hyperparameter tuning job (not submitted); trials write under output_uri."""
    from google.cloud import aiplatform

    from histoxai.components.tune.tune import check_objective_targets
    from histoxai.images import GPU_IMAGE

    if not str(output_uri).startswith("gs://"):
        raise InputError(f"--out {output_uri}: a Vertex AI tuning job writes to Cloud Storage; "
                         "expected a gs:// URI")
    start = space.start_config(base)
    space.check_against(start)
    targets = check_objective_targets(start, objective_targets)
    machine = {"machine_type": machine_type}
    if accelerator_count > 0:
        machine.update(accelerator_type=accelerator_type, accelerator_count=accelerator_count)
    args = ["--config-json", json.dumps(start.to_dict()), "--data", str(data_uri),
            "--objective-targets", ",".join(targets)]
    custom_job = aiplatform.CustomJob(
        display_name=f"{display_name}-trial", project=project, location=location, credentials=credentials,
        staging_bucket=staging_bucket or f"{str(output_uri).rstrip('/')}/staging",
        base_output_dir=str(output_uri),
        worker_pool_specs=[{"machine_spec": machine, "replica_count": 1,
                            "container_spec": {"image_uri": image or GPU_IMAGE,
                                               "command": ["python", "-m", __name__], "args": args}}])
    return aiplatform.HyperparameterTuningJob(
        display_name=display_name, custom_job=custom_job, metric_spec={METRIC: "maximize"},
        parameter_spec=parameter_specs(space), max_trial_count=max_trial_count,
        parallel_trial_count=parallel_trial_count, project=project, location=location,
        credentials=credentials)


def job_json(job) -> str:
    """The job request as JSON (what `job.run()` would send)."""
    resource = job._gca_resource
    return type(resource).to_json(resource, use_integers_for_enums=False)


def _parse_value(name: str, text: str) -> Any:
    """Vizier passes every value as text: read it back as the config key's type."""
    default = FIELDS[name].default
    try:
        if isinstance(default, bool):
            if text.lower() not in ("true", "false"):
                raise ValueError(text)
            return text.lower() == "true"
        if isinstance(default, int):
            number = float(text)
            if not number.is_integer():
                raise ValueError(text)
            return int(number)
        if isinstance(default, float):
            return float(text)
    except ValueError:
        raise InputError(f"--{name}={text}: expected a {type(default).__name__}") from None
    return None if text == "null" else text


def report_metric(value: float, step: int) -> None:
    """Append one measurement where Vertex AI's hyperparameter tuning service reads it."""
    path = os.environ.get("CLOUD_ML_HP_METRIC_FILE", DEFAULT_METRIC_FILE)
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    line = {"timestamp": time.time(), "trial": os.environ.get("CLOUD_ML_TRIAL_ID", "0"),
            METRIC: str(value), "global_step": str(step)}
    with open(path, "a") as fh:
        fh.write(json.dumps(line) + "\n")


def run_trial(argv: Sequence[str]) -> dict:
    """One Vizier trial: train the base config with the trial's values and report the objective."""
    from histoxai.components.tune.tune import objective_score
    from histoxai.training import train

    parser = argparse.ArgumentParser(prog="python -m histoxai.components.tune.vizier")
    parser.add_argument("--config-json", required=True)
    parser.add_argument("--data", required=True)
    parser.add_argument("--objective-targets", required=True)
    parser.add_argument("--out", default=os.environ.get("AIP_MODEL_DIR"))
    args, rest = parser.parse_known_args(list(argv))
    if not args.out:
        raise InputError("no output folder: give --out or run where AIP_MODEL_DIR is set")
    values = json.loads(args.config_json)
    for item in rest:
        name, sep, text = item.removeprefix("--").partition("=")
        if not item.startswith("--") or not sep or name not in FIELDS:
            raise InputError(f"{item}: expected --KEY=VALUE with a TrainConfig key")
        values[name] = _parse_value(name, text)
    config = from_dict(values, "trial parameters")
    metrics = train(config, args.data, args.out, scored_splits=("val",))  # as a local trial: no test patch
    score = objective_score(metrics["r2"]["val"], args.objective_targets.split(","))
    report_metric(score, sum(metrics["epochs"].values()))
    print(f"{METRIC} = {score:.4f}", flush=True)
    return metrics


if __name__ == "__main__":
    try:
        run_trial(sys.argv[1:])
    except InputError as err:
        print(f"histoxai tune trial: error: {err}", file=sys.stderr)
        sys.exit(2)
