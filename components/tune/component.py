"""KFP component of the tuning step: an Optuna study on the GPU image over a split Dataset.

Outputs: `study` (the study folder: study.journal, trials.parquet / .csv, summary.md,
best_config.yaml), `best_config` (the best config YAML alone, for the train step's --config),
`best_model` (the best trial's training output, which the train step of the same config and targets
publishes instead of training it again: histoxai/reuse.py; empty when it was not kept),
`summary` (Markdown, shown in the pipeline UI) and `metrics` (best objective, trial counts). On
Vertex AI the study folder is written through the GCS client to the artifact's gs:// URI, so a
retried task that gets the same output URI continues the same study.
"""

from kfp import dsl
from kfp.dsl import Artifact, Dataset, Input, Markdown, Metrics, Model, Output

from histoxai.images import GPU_IMAGE


@dsl.component(base_image=GPU_IMAGE, install_kfp_package=False)
def tune_step(split: Input[Dataset], base_config: dict, search_space: dict, targets: str,
              objective_targets: str, tuning_trials: int, timeout_s: float, startup_trials: int,
              warmup_epochs: int, study: Output[Artifact], best_config: Output[Artifact],
              best_model: Output[Model], summary: Output[Markdown], metrics: Output[Metrics]):
    """Search hyperparameters (base_config: TrainConfig values, see config.as_pipeline_parameter;
    search_space: {fixed, search} as in histoxai/configs/search_space.yaml; targets: e.g. "MD,FA");
    tuning_trials 0 or timeout_s 0: no limit. Defaults: components/tune/params.py (the pipeline
    passes every value)."""
    from histoxai import artifacts, storage
    from histoxai.artifacts import location
    from histoxai.components.tune.space import parse_space, restore_ints
    from histoxai.components.tune.tune import tune
    from histoxai.config import from_dict, load_config

    # Vertex mounts gs:// artifacts under /gcs/; the study then goes through the GCS client.
    out = study.uri if study.path.startswith("/gcs/") else study.path
    base = from_dict({**restore_ints(base_config), "targets": targets}, "base_config parameter")
    space = {part: restore_ints(values or {}) for part, values in search_space.items()}
    result = tune(base, parse_space(space, "search_space parameter"), split.path, out,
                  n_trials=tuning_trials or None, timeout_s=timeout_s or None,
                  objective_targets=objective_targets.split(",") if objective_targets else None,
                  startup_trials=startup_trials, warmup_epochs=warmup_epochs,
                  best_model_uri=location(best_model))
    storage.write_bytes(best_config.path, storage.read_bytes(storage.join(out, artifacts.BEST_CONFIG)))
    storage.write_bytes(summary.path, storage.read_bytes(storage.join(out, artifacts.TUNE_SUMMARY)))
    chosen = load_config(best_config.path)
    best_config.metadata.update({"trial": result["best_trial"], "objective": result["objective"],
                                 "objective_targets": result["objective_targets"], "targets": targets,
                                 "backbone": chosen.backbone,
                                 "params": {k: str(v) for k, v in result["params"].items()}})
    study.metadata.update({k: result[k] for k in ("trials", "complete", "pruned", "failed")})
    best_model.metadata.update({"trial": result["best_trial"] if result["best_model"] else None,
                                "targets": targets, "backbone": chosen.backbone})
    metrics.log_metric("best_objective", result["objective"])
    for target, r2 in result["val_r2"].items():
        if r2 is not None:
            metrics.log_metric(f"best_val_{target}_r2", r2)
    metrics.log_metric("trials", result["trials"])
    for key in ("complete", "pruned", "failed"):
        metrics.log_metric(f"{key}_trials", result[key])
