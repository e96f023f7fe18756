"""KFP component of the evaluate step: Table 4.1 and maps of the trained models, from the predict steps."""

from kfp import dsl
from kfp.dsl import HTML, Dataset, Input, Markdown, Metrics, Model, Output

from histoxai.images import CPU_IMAGE


@dsl.component(base_image=CPU_IMAGE, install_kfp_package=False)
def evaluate_models(
    split: Input[Dataset],
    multitask_model: Input[Model],
    metrics: Output[Metrics],
    report_html: Output[HTML],
    report_markdown: Output[Markdown],
    evaluation: Output[Dataset],
    baseline_summary: str,
    baseline_repeats: int,
    seed: int,
    single_task_model: Input[Model] = None,
    multitask_champion: Input[Model] = None,
    single_task_champion: Input[Model] = None,
    multitask_predictions: Input[Dataset] = None,
    single_task_predictions: Input[Dataset] = None,
    multitask_champion_predictions: Input[Dataset] = None,
    single_task_champion_predictions: Input[Dataset] = None,
):
    """Score the models (training output folders) on every sample and split of `split`.

    evaluation: the whole output folder (evaluation.parquet, report.*, predictions/<model>/<sample>.parquet,
    maps/, comparison.json); metrics: standard R² per model, target and split or sample; the champions
    (folders the champion step fetched, champion.json naming no version when there is none) are scored
    beside the new models on the same patches (model names <model>_champion); *_predictions: the predict
    steps' outputs, whose stamped files are used instead of predicting here (the evaluation's metadata
    counts the patches predicted here anyway, `predicted_here`); baseline_summary: 'bundled' (the
    study's summary.mat shipped with histoxai), '' (no baselines) or a path / gs:// URI.
    Defaults: components/evaluate/params.py (the pipeline passes every value).
    """
    from histoxai import artifacts, storage
    from histoxai.artifacts import location
    from histoxai.components.evaluate.evaluate import evaluate, headline_metrics, predicted_counts

    models = [f"multitask={location(multitask_model)}"]
    if single_task_model is not None:
        models.append(f"single_task={location(single_task_model)}")
    given = (("multitask", multitask_champion), ("single_task", single_task_champion))
    champions = {name: location(folder) for name, folder in given if folder is not None}
    given = {"multitask": multitask_predictions, "single_task": single_task_predictions,
             "multitask_champion": multitask_champion_predictions,
             "single_task_champion": single_task_champion_predictions}
    predictions = {name: location(folder) for name, folder in given.items() if folder is not None}
    out = location(evaluation)
    # overwrite: a retried task may find an earlier attempt's output (its valid predictions are reused)
    result = evaluate(models, [location(split)], out, baseline_summary=baseline_summary,
                      baseline_repeats=baseline_repeats,
                      seed=seed, overwrite=True, progress=False, champions=champions, predictions=predictions)
    for name, value in headline_metrics(result["table"]).items():
        metrics.log_metric(name, value)
    for page, name in ((report_html, artifacts.REPORT_HTML), (report_markdown, artifacts.REPORT_MARKDOWN)):
        storage.write_bytes(location(page), storage.read_bytes(storage.join(out, name)))
    evaluation.metadata.update({
        "models": [m.name for m in result["models"]],
        "samples": result["data"].samples,
        "training_samples": result["data"].training_samples,
        "predictions": "predictions/<model>/<sample>.parquet",
        "table": artifacts.EVALUATION_TABLE,
        # patches the models predicted in this step: none when the predict steps' files all matched
        "predicted_here": sum(result["predicted_here"].values()),
        "predicted_here_by_model": predicted_counts(result["predicted_here"]),
    })
    for artifact in (report_html, report_markdown):
        artifact.metadata["step"] = "evaluate"
