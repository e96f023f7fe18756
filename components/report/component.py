"""KFP component of the report step: one HTML and Markdown summary of the run, shown in the pipeline UI."""

from kfp import dsl
from kfp.dsl import HTML, Artifact, Dataset, Input, Markdown, Model, Output

from histoxai.images import CPU_IMAGE


@dsl.component(base_image=CPU_IMAGE, install_kfp_package=False)
def report(
    ingested: Input[list[Dataset]],
    split: Input[Dataset],
    multitask_model: Input[Model],
    single_task_model: Input[Model],
    evaluation: Input[Dataset],
    multitask_maps: Input[list[Dataset]],
    single_task_maps: Input[list[Dataset]],
    samples: list,
    train_samples: list,
    multitask_targets: str,
    single_task_targets: str,
    tuning: bool,
    config: str,
    report_html: Output[HTML],
    report_markdown: Output[Markdown],
    summary: Output[Artifact],
):
    """Sum up the run from the other steps' outputs: R² per sample and set (evaluate), R² from training,
    the saliency trust measures (explain, one output per model and shard range), models, data.

    samples ... config (the config the models trained with): the run's settings, shown at the top.
    summary: summary.json, the same figures for programs (`histoxai run-local` prints from it).
    """
    import json

    from histoxai import artifacts, storage
    from histoxai.artifacts import code_version, location
    from histoxai.components.report.report import build_report, run_settings

    content, markdown, page = build_report(
        ingest_dirs=[location(d) for d in ingested], split_dir=location(split),
        model_dirs={"multitask": location(multitask_model), "single_task": location(single_task_model)},
        evaluation_dir=location(evaluation),
        maps_dirs={"multitask": [location(m) for m in multitask_maps],
                   "single_task": [location(m) for m in single_task_maps]},
        parameters=run_settings(samples, train_samples, multitask_targets, single_task_targets, tuning),
        config=config, code_version=code_version())
    storage.write_text(location(report_html), page)
    storage.write_text(location(report_markdown), markdown)
    storage.write_text(location(summary), json.dumps(content, indent=1, default=str) + "\n")
    summary.metadata["format"] = artifacts.RUN_SUMMARY
    for artifact in (report_html, report_markdown):
        artifact.metadata["step"] = "report"
