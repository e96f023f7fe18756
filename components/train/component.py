"""KFP components of the train step: resolve the run's training config, then train one model on the split."""

from typing import NamedTuple

from kfp import dsl
from kfp.dsl import Artifact, Dataset, Input, Metrics, Model, Output

from histoxai.images import CPU_IMAGE, GPU_IMAGE


@dsl.component(base_image=CPU_IMAGE, install_kfp_package=False)
def resolve_config(
    finished_training: Output[Model],
    config: str = "",
    overrides: list = [],  # noqa: B006 (KFP reads the default from the signature)
    config_file: Input[Artifact] = None,
) -> NamedTuple("Outputs", [("config", str), ("values", dict)]):
    """The training config as the trainings get it: `config_file` (e.g. the tuning step's best config)
    when given, else `config` (YAML text); then `overrides` (KEY=VALUE, values in YAML); validated.

    Pipeline parameters carry the config as text, so a run records exactly what it trained with and
    needs no config file in the image; a wrong key or value fails the run before any ingestion.
    Targets are left to each model. Outputs: config (YAML text) and values, the same as a KFP dict
    parameter (no nulls: weights null is "none", other null keys are left out), as the tuning step's
    base_config takes it. finished_training stays empty: a config resolved here has no finished training
    for the train step to reuse (the pipeline joins it by dsl.OneOf with the tuning step's best_model).
    """
    import yaml

    from histoxai import storage
    from histoxai.artifacts import location
    from histoxai.config import as_pipeline_parameter, config_from_yaml, parse_overrides

    source, text = "pipeline parameter config", config
    if config_file is not None:
        source, text = location(config_file), storage.read_text(location(config_file))
    changes = parse_overrides(overrides, "pipeline parameter config_overrides")
    resolved = config_from_yaml(text, changes, source)
    values = resolved.to_dict()
    values.pop("targets")
    return yaml.safe_dump(values, sort_keys=False), as_pipeline_parameter(values)


@dsl.component(base_image=GPU_IMAGE, install_kfp_package=False)
def train_model(
    data: Input[Dataset],
    config: str,
    targets: str,
    tensorboard: str,
    run_name: str,
    model: Output[Model],
    metrics: Output[Metrics],
    tuned_model: Input[Model] = None,
):
    """Train one model for `targets` (e.g. MD,FA or CC) on the split with `config` (resolved YAML).

    tuned_model: the tuning step's best trial (without tuning: an empty artifact); when it trained this
    same config and targets on these patches (histoxai/reuse.py), it is scored and published instead
    of training again.

    model: the training output folder (model.keras, config.yaml, history.csv, metrics.json,
    tensorboard/), with lineage metadata; metrics: R² per split and target (r2_<split>_<target>) and
    the patch counts (n_<split>). A retried task resumes from the checkpoints in its own output.
    tensorboard: a Vertex AI TensorBoard instance (projects/P/locations/L/tensorboards/ID) or "":
    after training, each epoch's scalars go to its experiment `run_name` (the pipeline job's name),
    run <kind>-<targets> (e.g. multitask-md-fa); a retry uploads again without duplicating a step.
    """
    import hashlib
    import json

    from histoxai import artifacts, storage
    from histoxai.artifacts import code_version, location
    from histoxai.config import config_from_yaml
    from histoxai.reuse import REUSED_FROM
    from histoxai.training import train

    resolved = config_from_yaml(config, {"targets": targets}, "resolved config")
    if tensorboard:  # a wrong name fails the task before hours of training, not after
        from histoxai.vertex_tensorboard import parse_tensorboard, resource_id

        parse_tensorboard(tensorboard)
        resource_id(run_name, "run_name")
    out, data_uri = location(model), location(data)
    finished = storage.join(out, artifacts.TRAIN_METRICS)
    if storage.exists(finished):  # a retry of a task whose training had already finished
        result = json.loads(storage.read_text(finished))
    else:
        # without tuning the artifact is empty: nothing to reuse, and nothing to say about it
        offered = location(tuned_model) if tuned_model is not None else None
        result = train(resolved, data_uri, out,
                       reuse=offered if offered and storage.list_files(offered) else None)
    for split, values in result["r2"].items():
        metrics.log_metric(f"n_{split}", result["n"][split])
        for target, value in values.items():
            if value is not None:  # R² is undefined on an empty or constant split
                metrics.log_metric(f"r2_{split}_{target}", value)
    split_info = artifacts.read_split_info(data_uri)
    import keras
    import tensorflow as tf

    model.metadata.update({
        "framework": f"tensorflow {tf.__version__}, keras {keras.__version__}",
        "backbone": resolved.backbone, "targets": list(resolved.targets),
        "config_hash": hashlib.sha256(resolved.to_yaml().encode()).hexdigest()[:16],
        "training_samples": split_info["options"]["train_samples"],
        "split_strategy": split_info["options"]["strategy"],
        "code_version": code_version(), "device": result["device"], "epochs": result["epochs"],
        "reused_from": result.get(REUSED_FROM, ""),
        "files": "model.keras, config.yaml, history.csv, metrics.json, tensorboard/",
    })
    if tensorboard:
        import io

        import pandas as pd

        from histoxai import vertex_tensorboard

        history = pd.read_csv(io.StringIO(storage.read_text(storage.join(out, artifacts.TRAIN_HISTORY))))
        sent = vertex_tensorboard.upload_history(history, tensorboard=tensorboard, experiment=run_name,
                                                 run=vertex_tensorboard.run_id(resolved.targets))
        model.metadata["tensorboard_experiment"] = sent["experiment"]
        print(f"TensorBoard: {sent['written']} scalars written, {sent['skipped']} already there; "
              f"{sent['url']}", flush=True)
