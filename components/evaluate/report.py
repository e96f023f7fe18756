"""The evaluation report in Markdown and HTML: Table 4.1 layout per metric, baselines beside ours, maps.

Table 4.1 layout: one row per sample ("sample 3 *" marks a training sample, whose row mixes its
train, val and test patches), then the pooled "train set", "validation set" and "test set"; one
column per model and target ("MD (multitask)"). The HTML is self-contained (maps and plots embedded
as PNG data), so the pipeline UI shows it without other files.

Plots (histoxai.plots, matplotlib), written under the evaluation output by `write_plots`:
  plots/<model>/learning-curves.png  loss and R² per epoch of both training phases (the model's history.csv)
  plots/<model>/<target>.png         measured vs predicted on the test set and the held-out samples
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from histoxai import artifacts, plots, storage
from histoxai.evaluation import TRAINING_NOTE, column_label, row_label, table41
from histoxai.metrics import METRIC_LABELS, format_value
from histoxai.plots import CURVES_NAME
from histoxai.sections import render_html, render_markdown

METRIC_TITLES = {
    "r2": "R² = 1 - SSE/SST (standard; punishes a constant shift)",
    "r2_var": "R²var = 1 - var(y - ŷ)/var(y) (the thesis's eq. 3.2; ignores a constant shift)",
    "pearson_r2": "Pearson r² (ignores any linear rescaling of ŷ)",
    "mae": "MAE = mean |ŷ - y|",
    "bias": "bias = mean(ŷ - y) (positive: predictions too high)",
}
SCATTER_NOTE = ("Each point is one patch: the test set of the training samples and every patch of the "
                "held-out samples (train and validation patches, which the model has fitted or was "
                "chosen on, are left out). One colour per sample; R² = 1 - SSE/SST of the points shown, "
                "in the legend per sample. Dashed: ŷ = y.")
CAVEATS = (
    "The baselines are the original study's figures on the real summary.mat maps (not on the data "
    "evaluated here unless these are the real samples). Its regressions and per-sample CNNs were "
    "scored on a random 20 % test set of each sample, with the model fitted on the same sample; our "
    "rows score a model trained on the pooled training samples on every patch of a sample."
)


def baseline_comparison(table: pd.DataFrame, per_sample: pd.DataFrame) -> pd.DataFrame:
    """Per sample of ours that the study also has: our R² per model and target, then the study's
    baselines' R² for the same targets (quadratic map regression, per-sample CNN)."""
    from histoxai.components.evaluate.baseline import CNN, QUADRATIC

    ours = table[table["kind"] == "sample"]
    samples = [s for s in dict.fromkeys(ours["group"]) if s in set(per_sample["sample"])]
    training = dict(zip(ours["group"], ours["training"], strict=False))
    out = pd.DataFrame({"data": [row_label("sample", s, training[s]) for s in samples]})
    values = ours.set_index(["group", "model", "target"])["r2"]
    targets = list(dict.fromkeys(ours["target"]))
    for model, target in dict.fromkeys(zip(ours["model"], ours["target"], strict=True)):
        out[column_label(model, target)] = pd.array([values.get((s, model, target), pd.NA) for s in samples],
                                                    dtype="Float64")
    for target in targets:
        for kind in (QUADRATIC, CNN):
            rows = per_sample[(per_sample["baseline"] == kind) & (per_sample["target"] == target)]
            if rows.empty:
                continue
            label = (f"{target} ~ {rows['feature'].iloc[0]} quadratic (2023)" if kind == QUADRATIC
                     else f"{target} per-sample CNN (2023)")
            r2 = rows.set_index("sample")["r2"]
            out[label] = pd.array([r2.get(s, pd.NA) for s in samples], dtype="Float64")
    return out


def plot_files(result: dict) -> dict[tuple[str, str], tuple[str, str]]:
    """(model, 'learning-curves' | target) -> (caption, path relative to the evaluation output) of every
    plot; learning curves only for models whose folder has a history.csv."""
    files = {}
    for m in result["models"]:
        if storage.exists(storage.join(m.uri, artifacts.TRAIN_HISTORY)):
            files[(m.name, CURVES_NAME)] = (f"model {m.name}: learning curves (frozen backbone, then "
                                            "fine-tuning)", plots.plot_path(m.name, CURVES_NAME))
    for m in result["models"]:
        for target in m.targets:
            files[(m.name, target)] = (f"model {m.name}, {target}: measured vs predicted",
                                       plots.plot_path(m.name, target))
    return files


def write_plots(result: dict, folder: Path) -> dict[tuple[str, str], tuple[str, str]]:
    """Draw every plot of `plot_files` into `folder` (the evaluation output being built) from the models'
    history.csv and the predictions already written there; plots already there are kept."""
    from histoxai.components.evaluate.evaluate import PREDICTIONS_DIR

    folder = Path(folder)
    files = plot_files(result)
    models = {m.name: m for m in result["models"]}
    predictions = {}
    for (name, what), (_, relative) in files.items():
        path = folder / relative
        if path.exists():
            continue
        model = models[name]
        if what == CURVES_NAME:
            picture = plots.learning_curves(plots.read_history(model.uri), f"model {name}: learning curves")
        else:
            if name not in predictions:
                parts = [pd.read_parquet(folder / PREDICTIONS_DIR / name / f"{sample}.parquet")
                         for sample in result["data"].samples]
                predictions[name] = plots.shown_patches(pd.concat(parts, ignore_index=True),
                                                   result["data"].training_samples)
            picture = plots.measured_vs_predicted(predictions[name], what,
                                                  f"model {name}: {what}, test set and held-out samples",
                                                  by="points")
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(picture)
    return files


def _models_table(result: dict) -> pd.DataFrame:
    rows = []
    for m in result["models"]:
        test = (m.train_metrics.get("r2") or {}).get("test") or {}
        rows.append({"model": m.name, "targets": ", ".join(m.targets), "backbone": m.config.get("backbone"),
                     "image size": m.config.get("image_size"), "model.keras SHA-256": m.sha256[:12],
                     "test R² at training": ", ".join(f"{t} {format_value(test.get(t))}" for t in m.targets),
                     "folder": m.uri})
    return pd.DataFrame(rows)


def _notes(table: pd.DataFrame) -> list[str]:
    noted = table[table["note"].astype(str) != ""]
    return [f"{row_label(r.kind, r.group, r.training)}, {r.target} ({r.model}): {r.note}"
            for r in noted.itertuples()]


def _sections(result: dict) -> list[tuple[str, object]]:
    """The report as (kind, content) blocks shared by the Markdown and HTML renderers."""
    table, data = result["table"], result["data"]
    blocks = [("h1", "Evaluation across samples"),
              ("p", f"Samples: {', '.join(data.samples)}; training samples: "
                    f"{', '.join(data.training_samples) or 'none'}. Data: {', '.join(data.inputs)}."),
              ("table", _models_table(result)),
              ("h2", f"Table 4.1: {METRIC_TITLES['r2']}"), ("table", table41(table, "r2")),
              ("p", TRAINING_NOTE)]
    for metric in ("r2_var", "pearson_r2", "mae", "bias"):
        blocks += [("h2", METRIC_TITLES[metric]), ("table", table41(table, metric))]
    blocks += [("h2", "Definitions"), ("list", [f"{k}: {v}" for k, v in METRIC_LABELS.items()] + [
        "Undefined values (n < 2, constant measured values; Pearson r² also with a constant prediction) "
        "show as n/a and are null in evaluation.parquet; the notes say why.",
        "Rows without a measured value for a target (e.g. no FAIP map) are left out of that target's "
        "metrics."])]
    notes = _notes(table) + list(data.grid_notes.values())
    if notes:
        blocks += [("h2", "Notes"), ("list", notes)]
    baseline = result.get("baseline")
    if baseline is not None:
        blocks += [("h2", "Beside the original study's baselines (R² = 1 - SSE/SST)"),
                   ("table", baseline_comparison(table, baseline["per_sample"])), ("p", CAVEATS),
                   ("h3", "Across tumours (squared Pearson correlation of per-tumour ROI means)"),
                   ("table", baseline["across_tumour"]),
                   ("p", f"All baseline rows: {'baseline/baseline.md'} (summary.mat: "
                         f"{baseline['settings']['summary']}, {baseline['settings']['repeats']} repeats, "
                         f"seed {baseline['settings']['seed']}).")]
    files = plot_files(result)
    curves = [value for (_, what), value in files.items() if what == CURVES_NAME]
    if curves:
        blocks += [("h2", "Learning curves: loss and R² per epoch, train and validation set"),
                   ("p", "From each model's history.csv; the dotted line marks where fine-tuning of the "
                         "backbone began.")]
        blocks += [("image", value) for value in curves]
    blocks += [("h2", "Measured vs predicted"), ("p", SCATTER_NOTE)]
    blocks += [("image", value) for (_, what), value in files.items() if what != CURVES_NAME]
    blocks += [("h2", "Maps: measured, predicted and residual ŷ - y on the MR grid"),
               ("p", "Measured and predicted share one colour scale (1st-99th percentile of both); the "
                     "residual's scale is symmetric about 0. Grey: no patch. Arrays: the .npz beside each "
                     "PNG.")]
    blocks += [("image", (f"model {model}, sample {sample}, {target}", path))
               for (model, sample, target), path in result["maps"].items()]
    return blocks


def markdown_report(result: dict) -> str:
    return render_markdown(_sections(result))


def html_report(result: dict, folder: Path) -> str:
    """Self-contained HTML; map and plot PNGs are read from `folder` (the output being built) and
    embedded; plots not yet there are drawn first (`write_plots`)."""
    write_plots(result, folder)
    return render_html(_sections(result), "histoxai evaluation", image_root=folder)
