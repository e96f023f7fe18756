"""The run report: one Markdown + HTML page and a summary.json that sum up a run from its steps' outputs.

`build_report(...)` reads what the other steps wrote (ingest.json per sample, split.json, each model's
metrics.json and config.yaml, and, when given, the evaluate step's table and the explain steps'
trust measures) and returns the summary (summary.json), the Markdown and the self-contained HTML.
`terminal_summary` prints the summary's headline figures.
The report holds no numbers of its own: every figure is read from the step that produced it. Its
plots are the evaluate step's (plots/<model>/...png, histoxai.plots): each model's learning curves and
measured vs predicted per target, embedded in the HTML (one file, as the pipeline UI shows it) and
linked by URI from the Markdown; a model's learning curves missing there are drawn from its history.csv.
With `explain --nuclei` outputs, "What drives the prediction" per model (drivers_section.py).
"""

from __future__ import annotations

import json
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path

import pandas as pd

from histoxai import artifacts, plots, storage
from histoxai.components.report.drivers_section import drivers_section, drivers_summary, terminal_lines
from histoxai.evaluation import read_table41
from histoxai.metrics import format_value, markdown_table
from histoxai.saliency import controls, trust_report
from histoxai.sections import render_html, render_markdown

SPLIT_ORDER = ("train", "val", "test")


def data_section(ingest_dirs: Sequence[str], split_dir: str) -> dict:
    """Patches per sample (ingest.json) and per sample and set (split.json)."""
    samples, rejected = [], []
    for folder in ingest_dirs:
        refusal = artifacts.read_rejection(folder)
        if refusal is not None:  # the ingest step refused this sample; the run went on without it
            rejected.append({"sample": refusal["sample"], "reason": refusal["reason"]})
            continue
        info = artifacts.read_ingest_info(folder)
        samples.append({"sample": info["sample"], "voxels": info["voxels"], "patches": info["kept"],
                        "patch_size": info["patch_size"], "source": info["sample_dir"]})
    split = artifacts.read_split_info(split_dir)
    return {"samples": samples, "rejected": rejected, "split_options": split["options"],
            "split_counts": split["counts"]}


def models_section(model_dirs: Mapping[str, str]) -> dict:
    """Per model: targets, backbone, epochs and R² per split and target as training measured it."""
    models = {}
    for name, folder in model_dirs.items():
        metrics = artifacts.read_train_metrics(folder)
        config = artifacts.read_model_config(folder)
        models[name] = {"targets": metrics["targets"], "backbone": config.get("backbone"),
                        "epochs": metrics["epochs"], "device": metrics["device"],
                        "r2": metrics["r2"], "n": metrics["n"], "folder": folder}
    return models


def training_r2_table(models: Mapping[str, dict]) -> pd.DataFrame:
    """Rows: train / val / test set; columns: '<target> (<model>)'; cells: R² from training."""
    rows = []
    for split in SPLIT_ORDER:
        row = {"set": split}
        for name, model in models.items():
            for target in model["targets"]:
                row[f"{target} ({name})"] = model["r2"].get(split, {}).get(target)
        rows.append(row)
    return pd.DataFrame(rows)


def evaluation_table(evaluation_dir: str) -> pd.DataFrame:
    """R² in the thesis's Table 4.1 layout (samples, then train / validation / test set), from evaluate."""
    return read_table41(evaluation_dir, "r2")


def _with_controls(row, measure: str) -> str | None:
    """'value (random r · darkness d · edges e · randomised model m)' for one measure, None if unmeasured."""
    value = row.get(measure)
    references = [(label, row.get(f"{control}_{measure}")) for control, label in controls.CONTROLS.items()]
    if pd.isna(value) and all(pd.isna(v) for _, v in references):
        return None
    shown = " · ".join(f"{label} {format_value(v)}" for label, v in references if not pd.isna(v))
    return f"{format_value(value)} ({shown})"


def _trust_rows(frame: pd.DataFrame, model: str) -> pd.DataFrame:
    """Report rows of one explain step's trust table: verdict, randomisation, each measure beside its
    controls, NaN and blank shares."""
    rows = []
    for _, row in frame.iterrows():
        out = {"model": model, "target": row["target"],
               "method": f"{row['method']}:{row['setting']}" if row["setting"] else row["method"],
               "score": row.get("score"), "verdict": row.get("verdict"),
               "randomisation": row.get("randomization")}
        for measure, label in trust_report.MEASURE_NAMES.items():
            cell = _with_controls(row, measure)
            if cell is not None:
                out[label] = cell
        out.update({"NaN share": row.get("nan_maps"), "blank share": row.get("blank_maps")})
        rows.append(out)
    return pd.DataFrame(rows)


def trust_table(maps_dirs: Mapping[str, Sequence[str]]) -> tuple[pd.DataFrame, list[str]]:
    """The explain steps' trust verdicts and measures (each beside its controls) per model, target, method
    and score (one row per output part when the maps were fanned out over shard ranges), and the methods
    that did not pass the randomisation check."""
    frames, flagged = [], []
    for model, folders in maps_dirs.items():
        for part, folder in enumerate(folders):
            info = artifacts.read_explain_info(folder)
            flagged += [f"{model}: {item}" for item in info.get("trust", {}).get("flagged", [])]
            if not storage.exists(storage.join(folder, artifacts.TRUST_TABLE)):
                continue  # trust measures were turned off for this run
            frame = storage.read_parquet(storage.join(folder, artifacts.TRUST_TABLE),
                                         "the explain step's trust table")
            frames.append(_trust_rows(frame, model if len(folders) == 1 else f"{model} (part {part + 1})"))
    if not frames:
        return pd.DataFrame(), flagged
    table = pd.concat(frames, ignore_index=True)
    order = ["model", "target", "method", "score", "verdict", "randomisation",
             *trust_report.MEASURE_NAMES.values(), "NaN share", "blank share"]
    return table[[c for c in order if c in table.columns]], flagged


def run_plots(model_dirs: Mapping[str, str], models: Mapping[str, dict],
              evaluation_dir: str | None) -> list[dict]:
    """Per model its learning curves, then measured vs predicted per target: {kind: 'curves' | 'scatter',
    caption, uri (the evaluate step's PNG, or None when drawn here), png (bytes)}. A scatter plot the
    evaluate step did not write is left out (only that step has the predictions' split of patches)."""
    found = []
    for name, folder in model_dirs.items():
        targets = models[name]["targets"]
        wanted = [("curves", plots.CURVES_NAME, f"model {name}: learning curves (frozen backbone, then "
                                               "fine-tuning)")]
        wanted += [("scatter", t, f"model {name}, {t}: measured vs predicted (test set and held-out "
                                  "samples)") for t in targets]
        for kind, what, caption in wanted:
            uri = storage.join(evaluation_dir, plots.plot_path(name, what)) if evaluation_dir else None
            if uri and storage.exists(uri):
                found.append({"kind": kind, "caption": caption, "uri": uri, "png": storage.read_bytes(uri)})
            elif kind == "curves" and (history := plots.read_history(folder)) is not None:
                found.append({"kind": kind, "caption": caption, "uri": None,
                              "png": plots.learning_curves(history, f"model {name}: learning curves")})
    return found


def _records(frame: pd.DataFrame) -> list[dict]:
    return json.loads(frame.to_json(orient="records"))


def run_settings(samples, train_samples, multitask_targets: str, single_task_targets: str,
                 tuning: bool) -> dict:
    """The settings block at the top of a report, as the component and `histoxai report` show it."""
    return {"samples": [str(s) for s in samples], "training samples": [str(s) for s in train_samples],
            "multi-task targets": multitask_targets, "single-task targets": single_task_targets,
            "tuning": "on (the config below is the study's best)" if tuning else "off"}


def build_report(*, ingest_dirs: Sequence[str], split_dir: str, model_dirs: Mapping[str, str],
                 evaluation_dir: str | None = None, maps_dirs: Mapping[str, Sequence[str]] | None = None,
                 parameters: Mapping | None = None, config: str = "",
                 code_version: str | None = None) -> tuple[dict, str, str]:
    """(summary, markdown, html) for one run; evaluation and saliency sections when given."""
    data = data_section(ingest_dirs, split_dir)
    models = models_section(model_dirs)
    training = training_r2_table(models)
    evaluation = evaluation_table(evaluation_dir) if evaluation_dir else None
    trust, flagged = trust_table(maps_dirs or {})
    summary = {"code_version": code_version, "parameters": dict(parameters or {}), "config": config, **data,
               "models": models, "training_r2_table": _records(training),
               "r2_table": _records(evaluation) if evaluation is not None else None,
               "trust_table": _records(trust), "flagged": flagged}
    summary["drivers"] = drivers_summary(maps_dirs or {})
    figures = run_plots(model_dirs, models, evaluation_dir)
    drivers, drivers_figures = drivers_section(maps_dirs or {})
    figures += drivers_figures
    summary["plots"] = [{"kind": f["kind"], "caption": f["caption"], "uri": f["uri"]} for f in figures]
    sections = _sections(summary, training, evaluation, trust, drivers)
    markdown = render_markdown(_with_figures(sections, figures, None))
    with tempfile.TemporaryDirectory(prefix="histoxai-report-") as folder:
        for i, figure in enumerate(figures):
            (Path(folder) / f"{i}.png").write_bytes(figure["png"])
        page = render_html(_with_figures(sections, figures, folder), "histoxai run report", image_root=folder)
    return summary, markdown, page


def _with_figures(sections: list[tuple[str, object]], figures: list[dict],
                  folder: str | None) -> list[tuple[str, object]]:
    """The ('figures', kind) placeholders replaced: for HTML (folder given) images of the PNGs written
    there; for Markdown images linked to the evaluate step's files, or a line that the HTML has them."""
    out = []
    for section, content in sections:
        if section != "figures":
            out.append((section, content))
            continue
        for i, figure in enumerate(figures):
            if figure["kind"] != content:
                continue
            if folder is not None:
                out.append(("image", (figure["caption"], f"{i}.png")))
            elif figure["uri"]:
                out.append(("image", (figure["caption"], figure["uri"])))
            else:
                out.append(("p", f"{figure['caption']}: in report.html"))
    return out


def _sections(summary: dict, training: pd.DataFrame, evaluation: pd.DataFrame | None,
              trust: pd.DataFrame, drivers: list[tuple[str, object]] = ()) -> list[tuple[str, object]]:
    options = summary["split_options"]
    counts = pd.DataFrame.from_dict(summary["split_counts"], orient="index")
    counts.insert(0, "sample", counts.index)
    models = pd.DataFrame([
        {"model": name, "targets": ", ".join(m["targets"]), "backbone": m["backbone"],
         "epochs frozen": m["epochs"]["frozen"], "epochs fine-tuned": m["epochs"]["finetune"],
         "device": m["device"]} for name, m in summary["models"].items()])
    fractions = "/".join(str(f) for f in options["fractions"])
    sections: list[tuple[str, object]] = [("h1", "histoxai run report")]
    if summary.get("rejected"):
        sections += [("h2", "Samples left out: ingestion refused them"),
                     ("list", [f"sample {r['sample']}: {r['reason']}" for r in summary["rejected"]])]
    if summary["code_version"]:
        sections.append(("p", f"Code version {summary['code_version']}."))
    if summary["parameters"]:
        sections.append(("list", [f"{k}: {v}" for k, v in summary["parameters"].items()]))
    if evaluation is not None:
        sections += [("h2", "R² per sample and set (Table 4.1 layout; * = a training sample)"),
                     ("table", evaluation),
                     ("p", "Standard R² = 1 - SSE/SST; the evaluate step's report adds the other metrics, "
                           "the original study's baselines and the predicted, measured and residual maps.")]
    if any(p["kind"] == "scatter" for p in summary.get("plots", [])):
        sections += [("h2", "Measured vs predicted (test set and held-out samples)"),
                     ("p", "One point per patch, one colour per sample; R² = 1 - SSE/SST in the legend. "
                           "Dashed: ŷ = y."), ("figures", "scatter")]
    sections += [("h2", "R² as training measured it (train / validation / test set)"), ("table", training)]
    if any(p["kind"] == "curves" for p in summary.get("plots", [])):
        sections += [("h3", "Learning curves: loss and R² per epoch (dotted: fine-tuning begins)"),
                     ("figures", "curves")]
    if not trust.empty:
        sections += [("h2", "Can the saliency maps be trusted?"), ("table", trust),
                     ("p", "Each measure is shown beside its controls in brackets."),
                     ("list", list(trust_report.LEGEND))]
        if summary["flagged"]:
            sections.append(("list", [f"randomisation check not passed: {item}"
                                      for item in summary["flagged"]]))
    sections += list(drivers)
    sections += [
        ("h2", "Models"), ("table", models),
        ("h2", "Data"),
        ("table", pd.DataFrame(summary["samples"]).drop(columns="source")),
        ("p", f"Split: strategy {options['strategy']}, "
              f"training samples {', '.join(options['train_samples'])}, fractions {fractions}, "
              f"seed {options['seed']}."),
        ("table", counts),
    ]
    if summary["config"]:
        sections += [("h2", "Training config"), ("pre", summary["config"])]
    return sections


def _compact_trust(trust: pd.DataFrame) -> pd.DataFrame:
    """The trust table narrowed for a terminal: model, target, method, score, verdict, randomisation."""
    columns = ["model", "target", "method", "score", "verdict", "randomisation"]
    return trust[[c for c in columns if c in trust.columns]]


def terminal_summary(summary: Mapping) -> str:
    """The summary's headline figures as plain text for a terminal: R² table, trust table, flags."""
    if summary.get("r2_table"):
        lines = ["R² per sample and set (* = a training sample), from the evaluate step:",
                 markdown_table(pd.DataFrame(summary["r2_table"])).rstrip()]
    else:
        lines = ["R² (train / validation / test set), from training:",
                 markdown_table(pd.DataFrame(summary["training_r2_table"])).rstrip()]
    if summary.get("trust_table"):
        lines += ["\nSaliency trust verdicts, from the explain step (the report shows the measures):",
                  markdown_table(_compact_trust(pd.DataFrame(summary["trust_table"]))).rstrip()]
    if summary.get("flagged"):
        lines.append("Randomisation check not passed: " + "; ".join(summary["flagged"]))
    if drivers := terminal_lines(summary.get("drivers")):
        lines += ["\nWhat drives the prediction (top property per answer; explain --nuclei):", *drivers]
    patches = ", ".join(f"sample {s['sample']}: {s['patches']}" for s in summary["samples"])
    lines.append(f"\nPatches: {patches}")
    for refused in summary.get("rejected") or []:
        lines.append(f"Left out: sample {refused['sample']}, refused by ingestion: {refused['reason']}")
    return "\n".join(lines)
