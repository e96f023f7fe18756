"""Cross-sample evaluation: predictions (cached), metrics per model x target x sample and split, maps, report.

`evaluate(models, data, out)` scores one or more training output folders (model.keras, config.yaml,
metrics.json) on any set of ingested samples (a split folder, split.parquet, or ingest manifests) and
writes to OUT (local or gs://), published whole:

  evaluation.parquet    tidy table: model, target, kind (sample | split), group, training, n, r2,
                        r2_var, pearson_r2, mae, bias, note (histoxai.metrics; undefined = null + note)
  evaluation.json       the same rows, the models (hash, targets, training metrics) and the settings
  report.md, report.html  the thesis's Table 4.1 layout, the other metrics, baselines, maps
  predictions/<model>/<sample>.parquet   sample, row, col, split, <T>_measured, <T>_predicted per target
  maps/<model>/<sample>/<target>.png|.npz  measured, predicted and residual maps on the MR grid
  baseline/             the original study's baselines (components/evaluate/baseline.py) unless
                        baseline_summary is ""

A predictions file (histoxai.prediction) is reused when its stored model hash (SHA-256 of model.keras)
and patch fingerprint (the sample's patch keys and shard locations) both match: first from a predict
step's output (`predictions`; the pipeline predicts there, on the GPU image), then from an earlier run
into the same OUT (with overwrite); only otherwise does the model predict here, once per model and sample.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd

from histoxai import artifacts, outputs, storage
from histoxai.components.evaluate.data import read_data
from histoxai.components.evaluate.params import DEFAULTS
from histoxai.errors import InputError
from histoxai.manifest import natural_key
from histoxai.metrics import METRICS, metrics_by_group
from histoxai.prediction import (
    ModelSource,
    measured_column,
    open_model,
    predicted_column,
    predictions_file,
    sample_predictions,
    write_predictions,
)

PREDICTIONS_DIR, MAPS_DIR, BASELINE_DIR = "predictions", "maps", "baseline"
POOLED_SPLITS = ("train", "val", "test")
TABLE_COLUMNS = ("model", "target", "kind", "group", "training", "n", *METRICS, "note")


def score(model: ModelSource, predictions: pd.DataFrame, training_samples: Sequence[str]) -> pd.DataFrame:
    """Tidy metric rows of one model: per target, every sample, then the pooled train / val / test."""
    parts = []
    for target in model.targets:
        # named after the target, so that notes read "without a measured MD"
        frame = predictions.rename(columns={measured_column(target): target})
        predicted = predicted_column(target)
        per_sample = metrics_by_group(frame, "sample", target, predicted).rename(columns={"sample": "group"})
        per_sample = per_sample.assign(kind="sample", training=per_sample["group"].isin(training_samples))
        per_sample = per_sample.sort_values("group", key=lambda s: s.map(natural_key))
        pooled = frame[frame["split"].isin(POOLED_SPLITS)]
        per_split = metrics_by_group(pooled, "split", target, predicted).rename(columns={"split": "group"})
        per_split = per_split.assign(kind="split", training=True)
        per_split = per_split.set_index("group").reindex(
            [s for s in POOLED_SPLITS if s in set(per_split["group"])]).reset_index()
        parts += [per_sample.assign(model=model.name, target=target),
                  per_split.assign(model=model.name, target=target)]
    table = pd.concat(parts, ignore_index=True)
    return table.loc[:, list(TABLE_COLUMNS)].astype({"training": bool, "n": "int64"})


def _records(frame: pd.DataFrame) -> list[dict]:
    return [{k: (None if v is pd.NA or (isinstance(v, float) and np.isnan(v)) else v) for k, v in row.items()}
            for row in frame.astype(object).to_dict("records")]


def evaluate(models: Sequence[str], data: Sequence[str], out: str, *,
             baseline_summary: str = DEFAULTS.baseline_summary,
             baseline_repeats: int = DEFAULTS.baseline_repeats, seed: int = DEFAULTS.seed,
             batch_size: int = DEFAULTS.batch_size, overwrite: bool = False, progress: bool = True,
             champions: dict[str, str] | None = None, predictions: dict[str, str] | None = None) -> dict:
    """Score every model on every sample and split; write OUT (see the module docstring).

    models: training output folders, each 'DIR' or 'NAME=DIR'. data: split folders / split.parquet /
    ingest manifests. baseline_summary: the study's summary.mat for the baseline rows ("bundled": the
    copy shipped with histoxai; "": no baselines). champions: model name -> champion folder (`histoxai
    models fetch`), scored beside it as <name>_champion and compared in comparison.json. predictions:
    model name (<name>_champion for a champion) -> a predict step's output folder; a sample's file there
    is used when its stamp matches (the model is then never loaded), else the model predicts here.
    Returns {"table", "models", "data", "baseline", "maps", "cached", "predicted_here", "comparisons"}:
    cached and predicted_here per (model, sample): reused from a stamped file, patches predicted here.
    """
    from tqdm import tqdm

    from histoxai.components.evaluate import champion, report
    from histoxai.components.evaluate import maps as map_images

    if not models:
        raise InputError("--model: none given; expected one or more training output folders")
    if batch_size < 1:
        raise InputError(f"--batch-size {batch_size}: expected an integer >= 1")
    out = str(out).rstrip("/")
    evaluation = read_data(data)
    from histoxai.components.evaluate.baseline import summary_path

    summary = summary_path(baseline_summary)
    baseline = None
    if summary is not None:
        from histoxai.components.evaluate.baseline import compute_baselines

        baseline = compute_baselines(summary, repeats=baseline_repeats, seed=seed, progress=progress)
    with contextlib.ExitStack() as stack:
        sources = [open_model(spec, stack) for spec in models]
        pairs = champion.champions(champions, [m.name for m in sources])
        sources += [open_model(f"{pair.name}={pair.uri}", stack) for pair in pairs]
        names = [m.name for m in sources]
        if len(set(names)) != len(names):
            raise InputError(f"--model: two models named {sorted({n for n in names if names.count(n) > 1})}; "
                             "name them apart with NAME=DIR")
        folders = _prediction_folders(predictions, names, [f"{c}{champion.SUFFIX}" for c in champions or {}])
        for model in sources:
            from histoxai.dataset import check_targets

            check_targets(evaluation.frame, model.targets, f"--data (targets of model {model.name})")
        with outputs.staged(out, overwrite=overwrite, commit_last=artifacts.EVALUATION_TABLE) as stage:
            tables, map_files, cached, predicted_here, scored = [], {}, {}, {}, {}
            steps = [(m, s) for m in sources for s in evaluation.samples]
            by_sample = dict(tuple(evaluation.frame.groupby("sample", sort=False)))
            for model in sources:
                parts = []
                for sample in tqdm(evaluation.samples, desc=f"evaluate {model.name}", unit="sample",
                                   disable=not progress or len(steps) < 2):
                    relative = f"{PREDICTIONS_DIR}/{model.name}/{sample}.parquet"
                    # the predict step's file first, then this OUT's from an earlier run
                    files = [predictions_file(folders[model.name], sample)] if model.name in folders else []
                    files.append(storage.join(out, relative))
                    table, hit = sample_predictions(model, by_sample[sample], files, batch_size=batch_size)
                    cached[(model.name, sample)] = hit
                    predicted_here[(model.name, sample)] = 0 if hit else len(table)
                    write_predictions(table, stage / relative)
                    parts.append(table)
                    for target in model.targets:
                        relative_map = f"{MAPS_DIR}/{model.name}/{sample}/{target}"
                        arrays = map_images.grid_maps(table, evaluation.grids[sample], target)
                        map_images.write_maps(arrays, stage / relative_map,
                                              title=f"model {model.name} - sample {sample} - {target}")
                        map_files[(model.name, sample, target)] = f"{relative_map}.png"
                scored[model.name] = pd.concat(parts, ignore_index=True)
                tables.append(score(model, scored[model.name], evaluation.training_samples))
            table = pd.concat(tables, ignore_index=True)
            comparisons = champion.write_comparisons(stage, pairs, scored,
                                                     {m.name: m.targets for m in sources},
                                                     evaluation.training_samples)
            result = {"table": table, "models": sources, "data": evaluation, "baseline": baseline,
                      "maps": map_files, "cached": cached, "predicted_here": predicted_here,
                      "comparisons": comparisons}
            if baseline is not None:
                from histoxai.components.evaluate.baseline import write_baselines

                write_baselines(baseline, str(stage / BASELINE_DIR))
            (stage / artifacts.REPORT_MARKDOWN).write_text(report.markdown_report(result))
            (stage / artifacts.REPORT_HTML).write_text(report.html_report(result, stage))
            info = {"models": {m.name: {"uri": m.uri, "model_sha256": m.sha256, "targets": list(m.targets),
                                        "train_metrics": m.train_metrics} for m in sources},
                    "data": evaluation.inputs, "samples": evaluation.samples,
                    "training_samples": evaluation.training_samples, "grid_notes": evaluation.grid_notes,
                    "summary": summary, "predicted_here": predicted_counts(predicted_here),
                    "rows": _records(table)}
            info_text = json.dumps(info, indent=1, ensure_ascii=False) + "\n"
            (stage / artifacts.EVALUATION_INFO).write_text(info_text)
            table.to_parquet(stage / artifacts.EVALUATION_TABLE, index=False)
    return result


def _prediction_folders(given: Mapping[str, str] | None, names: list[str],
                        champion_names: list[str]) -> dict[str, str]:
    """`given` checked: each name is a model's, or a champion's that may have no version to score."""
    folders = {}
    for name, folder in (given or {}).items():
        if name not in names and name not in champion_names:
            raise InputError(f"--predictions {name}={folder}: no model named {name!r}; expected one of "
                             f"{', '.join([*names, *(c for c in champion_names if c not in names)])}")
        folders[name] = str(folder).rstrip("/")
    return folders


def predicted_counts(predicted_here: Mapping[tuple[str, str], int]) -> dict[str, int]:
    """Patches each model predicted in the evaluate step itself (0: all came from stamped files)."""
    counts = {}
    for (model, _), n in predicted_here.items():
        counts[model] = counts.get(model, 0) + int(n)
    return counts


def headline_metrics(table: pd.DataFrame) -> dict[str, float]:
    """Standard R² per model, target and split or sample, as flat names for a pipeline UI
    (r2_<model>_<target>_<group>, group = train | val | test | sample_<id>); undefined values left out."""
    out = {}
    for row in table.itertuples():
        group = row.group if row.kind == "split" else f"sample_{row.group}"
        if row.r2 is not pd.NA and row.r2 is not None:
            out[f"r2_{row.model}_{row.target}_{group}"] = float(row.r2)
    return out
