"""Build the run report (as the pipeline's report step does) from step outputs on disk or gs://.

Reads what the other steps wrote: the ingest folders (ingest.json, or rejected.json of a refused
sample), the split folder (split.json), the two trained models (metrics.json, config.yaml, history.csv)
and, when given, the evaluate step's folder and the explain steps' folders of each model. Writes to OUT
(local or gs://; published whole, an existing OUT replaced only with --overwrite):
  report.md, report.html   the run summary: settings, data, R² from training and evaluation, plots,
                           saliency trust measures, what drives the prediction
  summary.json             the same figures for programs
and prints the headline figures. The run's settings shown at the top default to what the inputs say:
the ingested samples, the split's training samples, each model's targets, the multi-task model's config.

Examples:
  histoxai report --ingested outputs/ingest/3 --ingested outputs/ingest/4 --split outputs/split \\
      --multitask-model outputs/models/mdfa --single-task-model outputs/models/cc \\
      --evaluation outputs/evaluate --multitask-maps outputs/explain/mdfa --out outputs/report
"""

from __future__ import annotations

import argparse

# option -> (what it names, is it required); in the order of the component's inputs
_FOLDERS = {
    "ingested": ("an ingest step's output folder", True),
    "split": ("the split step's output folder", True),
    "multitask_model": ("the multi-task model's training output folder", True),
    "single_task_model": ("the single-task model's training output folder", True),
    "evaluation": ("the evaluate step's output folder", False),
    "multitask_maps": ("an explain step's output folder for the multi-task model", False),
    "single_task_maps": ("an explain step's output folder for the single-task model", False),
}


def _option(dest: str) -> str:
    return "--" + dest.replace("_", "-")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    steps = parser.add_argument_group("step outputs (local or gs://)")
    steps.add_argument("--ingested", action="append", default=[], metavar="DIR",
                       help="an ingest output folder, one per sample; repeat for each (required)")
    steps.add_argument("--split", metavar="DIR", help="the split output folder (required)")
    steps.add_argument("--multitask-model", metavar="DIR", help="the multi-task model's folder (required)")
    steps.add_argument("--single-task-model", metavar="DIR", help="the single-task model's folder (required)")
    steps.add_argument("--evaluation", metavar="DIR",
                       help="the evaluate output folder (default: none; the report then shows R² from "
                            "training)")
    steps.add_argument("--multitask-maps", action="append", default=[], metavar="DIR",
                       help="an explain output folder of the multi-task model; repeat for each shard range")
    steps.add_argument("--single-task-maps", action="append", default=[], metavar="DIR",
                       help="an explain output folder of the single-task model; repeat for each shard range")
    shown = parser.add_argument_group("the run's settings, shown at the top of the report")
    shown.add_argument("--samples", help="comma-separated sample ids (default: the ingested samples)")
    shown.add_argument("--train-samples", help="comma-separated training samples (default: the split's)")
    shown.add_argument("--tuning", action="store_true",
                       help="say that the models' config is a tuning study's best (default: tuning off)")
    shown.add_argument("--config", help="the training config shown: a YAML file, gs:// URI or a shipped name "
                                        "(demo, thesis); default: the multi-task model's config.yaml")
    parser.add_argument("--out", required=True, help="output folder, local or gs://")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing OUT")


def _check_folders(args: argparse.Namespace) -> None:
    """Every required input given, every folder given present: else one line naming the option."""
    from histoxai import storage
    from histoxai.errors import InputError

    for dest, (what, required) in _FOLDERS.items():
        value = getattr(args, dest)
        folders = value if isinstance(value, list) else [value] if value else []
        if required and not folders:
            raise InputError(f"{_option(dest)}: not given; expected {what}")
        for folder in folders:
            if not storage.exists(folder):
                raise InputError(f"{_option(dest)} {folder}: no such folder; expected {what}")


def _comma_list(text: str, option: str) -> list[str]:
    from histoxai.errors import InputError

    items = [item.strip() for item in text.split(",")]
    if not text.strip() or not all(items):
        raise InputError(f"{option} {text!r}: expected a comma-separated list without empty entries, "
                         "e.g. 3,4")
    return items


def _parameters(args: argparse.Namespace) -> tuple[dict, str]:
    """The run's settings and config text as the report shows them, defaulting to what the inputs say."""
    from histoxai import artifacts, storage
    from histoxai.components.report.report import run_settings
    from histoxai.config import read_named

    if args.samples:
        samples = _comma_list(args.samples, "--samples")
    else:
        samples = [str((artifacts.read_rejection(folder) or artifacts.read_ingest_info(folder))["sample"])
                   for folder in args.ingested]
    if args.train_samples:
        train_samples = _comma_list(args.train_samples, "--train-samples")
    else:
        train_samples = [str(s) for s in artifacts.read_split_info(args.split)["options"]["train_samples"]]
    models = {"multitask": args.multitask_model, "single_task": args.single_task_model}
    targets = {name: ",".join(artifacts.read_train_metrics(folder)["targets"])
               for name, folder in models.items()}
    if args.config:
        config = read_named(args.config, "--config")
    else:
        config = storage.read_text(storage.join(args.multitask_model, artifacts.MODEL_CONFIG))
    settings = run_settings(samples, train_samples, targets["multitask"], targets["single_task"], args.tuning)
    return settings, config.strip()


def run(args: argparse.Namespace) -> None:
    import json

    from histoxai import artifacts, outputs
    from histoxai.artifacts import code_version
    from histoxai.components.report.report import build_report, terminal_summary

    _check_folders(args)
    parameters, config = _parameters(args)
    with outputs.staged(args.out, overwrite=args.overwrite, commit_last=artifacts.RUN_SUMMARY) as stage:
        content, markdown, page = build_report(
            ingest_dirs=list(args.ingested), split_dir=args.split,
            model_dirs={"multitask": args.multitask_model, "single_task": args.single_task_model},
            evaluation_dir=args.evaluation,
            maps_dirs={"multitask": list(args.multitask_maps), "single_task": list(args.single_task_maps)},
            parameters=parameters, config=config, code_version=code_version())
        (stage / artifacts.REPORT_HTML).write_text(page, encoding="utf-8")
        (stage / artifacts.REPORT_MARKDOWN).write_text(markdown, encoding="utf-8")
        (stage / artifacts.RUN_SUMMARY).write_text(json.dumps(content, indent=1, default=str) + "\n",
                                                   encoding="utf-8")
    print(terminal_summary(content))
    print(f"\nwrote {args.out} ({artifacts.REPORT_MARKDOWN}, {artifacts.REPORT_HTML}, "
          f"{artifacts.RUN_SUMMARY})")
