"""Score trained models on every sample and split: the thesis's Table 4.1, maps, cached predictions.

For each model (a `histoxai train` output folder: model.keras, config.yaml, metrics.json) x target
x (each sample, and the pooled train / val / test sets of the training samples): n, R² = 1 - SSE/SST
(the standard definition, which punishes a shifted prediction on an unseen sample), the thesis's
R²var = 1 - var(y - ŷ)/var(y) (ignores a constant shift), Pearson r², MAE and bias = mean(ŷ - y).
Undefined values (one patch, constant measured values) show as n/a with a note, never NaN.

--data takes a split folder (or split.parquet) and/or ingest outputs of further samples (folder or
manifest.parquet; their patches count as heldout). Writes to OUT (local or gs://):
  report.md, report.html   Table 4.1 layout (samples as rows, training samples marked with *,
                           model x target as columns) for every metric, notes, baselines, maps
  evaluation.parquet       tidy table, one row per model x target x sample or split
  evaluation.json          the same rows, model hashes and settings
  predictions/<model>/<sample>.parquet   sample, row, col, split, <T>_measured, <T>_predicted
  maps/<model>/<sample>/<T>.png, .npz    measured, predicted, residual ŷ - y on the MR grid
  baseline/                the study's baselines (as `histoxai baseline`; --summary '' skips)
Predictions are reused when the model's hash and the sample's patches match: from --predictions
folders (the predict step's output), then from an earlier run into the same OUT (--overwrite).

Examples:
  histoxai evaluate --model outputs/models/mdfa --model outputs/models/cc --data outputs/demo/split \\
      --out outputs/evaluate
  histoxai evaluate --model multitask=gs://b/run/mdfa --data gs://b/run/split --data gs://b/ingest/7 \\
      --summary '' --out gs://b/run/evaluate --overwrite
"""

from __future__ import annotations

import argparse

from histoxai.components.evaluate.params import DEFAULTS


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", action="append", required=True, metavar="[NAME=]DIR",
                        help="training output folder, local or gs://; repeat for several models "
                             "(named after the folder unless NAME= is given)")
    parser.add_argument("--data", action="append", required=True, metavar="SPLIT_OR_MANIFEST",
                        help="split folder / split.parquet, or an ingest folder / manifest.parquet; "
                             "repeat for more (e.g. the split and further held-out samples)")
    parser.add_argument("--out", required=True, help="output folder, local or gs://")
    parser.add_argument("--summary", dest="baseline_summary", default=DEFAULTS.baseline_summary,
                        metavar="PATH",
                        help="the original study's summary.mat whose baselines the report shows beside "
                             "ours: 'bundled' (the copy shipped with histoxai; the default), a path or "
                             "gs:// URI, or '' for none")
    parser.add_argument("--baseline-repeats", type=int, default=DEFAULTS.baseline_repeats,
                        help="random 80/20 splits per baseline regression (default: %(default)s)")
    parser.add_argument("--seed", type=int, default=DEFAULTS.seed,
                        help="seed of the baselines' splits (default: %(default)s)")
    parser.add_argument("--batch-size", type=int, default=DEFAULTS.batch_size,
                        help="patches per prediction batch (default: %(default)s)")
    parser.add_argument("--champion", action="append", default=[], metavar="NAME=DIR",
                        help="the registered champion to score beside model NAME on the same patches: a "
                             "folder that `histoxai models fetch` wrote; writes comparison.json; repeatable")
    parser.add_argument("--predictions", action="append", default=[], metavar="NAME=DIR",
                        help="predictions of model NAME (NAME_champion: of its champion) that the "
                             "pipeline's predict step wrote; used where their stamp matches the model "
                             "and patches, else the model predicts here; repeatable")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace an existing OUT (its predictions are reused where still valid)")


def _named_folders(items: list[str], option: str, what: str) -> dict[str, str]:
    """NAME=DIR options as {name: folder}."""
    from histoxai.errors import InputError

    folders = {}
    for item in items:
        name, sep, folder = item.partition("=")
        if not sep or not name or not folder:
            raise InputError(f"{option} {item}: expected NAME=DIR (the model's name, {what})")
        folders[name] = folder
    return folders


def run(args: argparse.Namespace) -> None:
    from histoxai import artifacts, storage
    from histoxai.components.evaluate.evaluate import evaluate
    from histoxai.console import import_tensorflow
    from histoxai.errors import InputError
    from histoxai.evaluation import table41
    from histoxai.metrics import markdown_table
    from histoxai.prediction import parse_model_spec

    for data in args.data:  # wrong paths fail here, before TensorFlow loads
        if not storage.exists(data):
            raise InputError(f"--data {data}: no such file or folder; expected a split folder, "
                             "split.parquet, an ingest folder or manifest.parquet")
    models = [parse_model_spec(spec)[1] for spec in args.model]
    for model in models:
        artifacts.model_file(model)
    champions = _named_folders(args.champion, "--champion", "the fetched champion")
    predictions = _named_folders(args.predictions, "--predictions", "a predictions folder")
    for name, folder in predictions.items():
        if not storage.exists(folder):
            raise InputError(f"--predictions {name}={folder}: no such folder; expected the output of a "
                             "predict step (<sample>.parquet files)")
    import_tensorflow()
    result = evaluate(args.model, args.data, args.out, baseline_summary=args.baseline_summary,
                      baseline_repeats=args.baseline_repeats, seed=args.seed, batch_size=args.batch_size,
                      overwrite=args.overwrite, champions=champions, predictions=predictions)
    reused = sum(result["cached"].values())
    print(f"\nR² = 1 - SSE/SST (* = training sample); predictions reused for {reused} of "
          f"{len(result['cached'])} model x sample pairs, {sum(result['predicted_here'].values())} "
          "patches predicted here\n")
    print(markdown_table(table41(result["table"], "r2")))
    for name, comparison in result["comparisons"].items():
        print(f"{name}: champion version {comparison['champion']['version']} scored on the "
              f"{comparison['basis']} ({comparison['n']} patches neither model trained on)")
    print(f"wrote {args.out} (report.md, report.html, evaluation.parquet, predictions/, maps/)")
