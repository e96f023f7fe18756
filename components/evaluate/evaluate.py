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

Predictions are computed once per model and sample; a later run into the same OUT (with overwrite)
reuses a predictions file when its stored model hash (SHA-256 of model.keras) and patch fingerprint
(the sample's patch keys and shard locations) both match.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from histoxai import artifacts, outputs, storage
from histoxai.components.evaluate.data import read_data
from histoxai.components.evaluate.params import DEFAULTS
from histoxai.errors import InputError
from histoxai.manifest import natural_key
from histoxai.metrics import METRICS, metrics_by_group

PREDICTIONS_DIR, MAPS_DIR, BASELINE_DIR = "predictions", "maps", "baseline"
POOLED_SPLITS = ("train", "val", "test")
CACHE_KEY = b"histoxai.predictions"
FINGERPRINT_COLUMNS = ("row", "col", "shard", "index", "offset", "encoding", "patch_size")
TABLE_COLUMNS = ("model", "target", "kind", "group", "training", "n", *METRICS, "note")
_SAFE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")


def measured_column(target: str) -> str:
    return f"{target}_measured"


def predicted_column(target: str) -> str:
    return f"{target}_predicted"


@dataclass
class ModelSource:
    """One training output folder, with its model.keras available locally while evaluation runs."""

    name: str
    uri: str
    targets: tuple[str, ...]
    sha256: str
    config: dict
    train_metrics: dict
    local_model: Path
    _net: object = field(default=None, repr=False)

    def net(self):
        """The Keras model, loaded on first use (a run served entirely from the cache never loads it)."""
        if self._net is None:
            from histoxai.model import load_model

            self._net = load_model(str(self.local_model))
            missing = [t for t in self.targets if t not in self._net.output_names]
            if missing:
                raise InputError(f"{self.uri}/model.keras: no output for targets {missing} of config.yaml; "
                                 f"the model's outputs are {list(self._net.output_names)}")
        return self._net


def parse_model_spec(spec: str) -> tuple[str, str]:
    """'NAME=DIR' or 'DIR' (named after the folder) -> (name, uri)."""
    name, sep, uri = spec.partition("=")
    if not sep or "/" in name:
        uri = spec
        name = spec.rstrip("/").rsplit("/", 1)[-1]
    if not _SAFE_NAME.match(name):
        raise InputError(f"--model {spec}: model name {name!r} is not usable in file names; expected "
                         "letters, digits, '.', '_' or '-' (give NAME=DIR to choose one)")
    return name, uri.rstrip("/")


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def open_model(spec: str, stack: contextlib.ExitStack) -> ModelSource:
    """Check a training output folder and make its model.keras local for as long as `stack` lives."""
    from histoxai.config import load_config

    name, uri = parse_model_spec(spec)
    for file in artifacts.MODEL_FILES:
        if not storage.exists(storage.join(uri, file)):
            raise InputError(f"{uri}: no {file}; expected a finished training output folder "
                             f"({', '.join(artifacts.MODEL_FILES)}) from `histoxai train`")
    config = load_config(storage.join(uri, artifacts.MODEL_CONFIG))
    if not config.targets:
        raise InputError(f"{uri}/config.yaml: key 'targets' is empty; "
                         "expected the targets the model predicts")
    train_metrics = artifacts.read_train_metrics(uri)
    local = stack.enter_context(storage.local_copy(storage.join(uri, artifacts.MODEL_FILE)))
    return ModelSource(name=name, uri=uri, targets=tuple(config.targets), sha256=_sha256(local),
                       config=config.to_dict(), train_metrics=train_metrics, local_model=local)


def patch_fingerprint(rows: pd.DataFrame) -> str:
    """SHA-256 of the sample's patch keys and shard locations (row-order independent)."""
    table = rows.loc[:, list(FINGERPRINT_COLUMNS)].sort_values(["row", "col"])
    return hashlib.sha256(table.to_csv(index=False).encode()).hexdigest()


def _read_cached(uri: str, model: ModelSource, fingerprint: str, n: int) -> pd.DataFrame | None:
    """A previous run's predictions file, if it was made by this exact model on these exact patches."""
    import pyarrow.parquet as pq

    if not storage.exists(uri):
        return None
    try:
        table = pq.read_table(io.BytesIO(storage.read_bytes(uri)))
        stamp = json.loads((table.schema.metadata or {}).get(CACHE_KEY, b"{}"))
    except Exception:  # a damaged or foreign file is recomputed, not trusted
        return None
    columns = [predicted_column(t) for t in model.targets]
    if (stamp.get("model_sha256") != model.sha256 or stamp.get("patch_fingerprint") != fingerprint
            or table.num_rows != n or any(c not in table.column_names for c in columns)):
        return None
    return table.select(columns).to_pandas()


def sample_predictions(model: ModelSource, rows: pd.DataFrame, previous_uri: str | None, *,
                       batch_size: int) -> tuple[pd.DataFrame, bool]:
    """The predictions table of one sample (sorted by row, col) and whether it came from the cache."""
    from histoxai import dataset

    rows = rows.sort_values(["row", "col"], kind="stable")
    fingerprint = patch_fingerprint(rows)
    cached = _read_cached(previous_uri, model, fingerprint, len(rows)) if previous_uri else None
    if cached is None:
        predicted = dataset.predict(model.net(), rows, batch_size=batch_size)
    table = rows.loc[:, ["sample", "row", "col", "split"]].reset_index(drop=True)
    for target in model.targets:
        values = cached[predicted_column(target)] if cached is not None else predicted[target]
        table[measured_column(target)] = rows[target].to_numpy(dtype=np.float64)
        table[predicted_column(target)] = np.asarray(values, dtype=np.float64)
    table.attrs["stamp"] = {"model": model.name, "model_sha256": model.sha256,
                            "patch_fingerprint": fingerprint, "targets": list(model.targets)}
    return table, cached is not None


def write_predictions(table: pd.DataFrame, path: Path) -> None:
    """Parquet with the model hash and patch fingerprint in the file's metadata (the cache's key)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    arrow = pa.Table.from_pandas(table, preserve_index=False)
    metadata = {**(arrow.schema.metadata or {}), CACHE_KEY: json.dumps(table.attrs["stamp"]).encode()}
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(arrow.replace_schema_metadata(metadata), path)


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
             champions: dict[str, str] | None = None) -> dict:
    """Score every model on every sample and split; write OUT (see the module docstring).

    models: training output folders, each 'DIR' or 'NAME=DIR'. data: split folders / split.parquet /
    ingest manifests. baseline_summary: the study's summary.mat for the baseline rows ("bundled": the
    copy shipped with histoxai; "": no baselines). champions: model name -> champion folder (`histoxai
    models fetch`), scored beside it as <name>_champion and compared in comparison.json.
    Returns {"table", "models", "data", "baseline", "maps", "cached", "comparisons"}.
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
        for model in sources:
            from histoxai.dataset import check_targets

            check_targets(evaluation.frame, model.targets, f"--data (targets of model {model.name})")
        with outputs.staged(out, overwrite=overwrite, commit_last=artifacts.EVALUATION_TABLE) as stage:
            tables, map_files, cached, predictions = [], {}, {}, {}
            steps = [(m, s) for m in sources for s in evaluation.samples]
            by_sample = dict(tuple(evaluation.frame.groupby("sample", sort=False)))
            for model in sources:
                parts = []
                for sample in tqdm(evaluation.samples, desc=f"evaluate {model.name}", unit="sample",
                                   disable=not progress or len(steps) < 2):
                    relative = f"{PREDICTIONS_DIR}/{model.name}/{sample}.parquet"
                    table, hit = sample_predictions(model, by_sample[sample], storage.join(out, relative),
                                                    batch_size=batch_size)
                    cached[(model.name, sample)] = hit
                    write_predictions(table, stage / relative)
                    parts.append(table)
                    for target in model.targets:
                        relative_map = f"{MAPS_DIR}/{model.name}/{sample}/{target}"
                        arrays = map_images.grid_maps(table, evaluation.grids[sample], target)
                        map_images.write_maps(arrays, stage / relative_map,
                                              title=f"model {model.name} - sample {sample} - {target}")
                        map_files[(model.name, sample, target)] = f"{relative_map}.png"
                predictions[model.name] = pd.concat(parts, ignore_index=True)
                tables.append(score(model, predictions[model.name], evaluation.training_samples))
            table = pd.concat(tables, ignore_index=True)
            comparisons = champion.write_comparisons(stage, pairs, predictions,
                                                     {m.name: m.targets for m in sources},
                                                     evaluation.training_samples)
            result = {"table": table, "models": sources, "data": evaluation, "baseline": baseline,
                      "maps": map_files, "cached": cached, "comparisons": comparisons}
            if baseline is not None:
                from histoxai.components.evaluate.baseline import write_baselines

                write_baselines(baseline, str(stage / BASELINE_DIR))
            (stage / artifacts.REPORT_MARKDOWN).write_text(report.markdown_report(result))
            (stage / artifacts.REPORT_HTML).write_text(report.html_report(result, stage))
            info = {"models": {m.name: {"uri": m.uri, "model_sha256": m.sha256, "targets": list(m.targets),
                                        "train_metrics": m.train_metrics} for m in sources},
                    "data": evaluation.inputs, "samples": evaluation.samples,
                    "training_samples": evaluation.training_samples, "grid_notes": evaluation.grid_notes,
                    "summary": summary, "rows": _records(table)}
            info_text = json.dumps(info, indent=1, ensure_ascii=False) + "\n"
            (stage / artifacts.EVALUATION_INFO).write_text(info_text)
            table.to_parquet(stage / artifacts.EVALUATION_TABLE, index=False)
    return result


def headline_metrics(table: pd.DataFrame) -> dict[str, float]:
    """Standard R² per model, target and split or sample, as flat names for a pipeline UI
    (r2_<model>_<target>_<group>, group = train | val | test | sample_<id>); undefined values left out."""
    out = {}
    for row in table.itertuples():
        group = row.group if row.kind == "split" else f"sample_{row.group}"
        if row.r2 is not pd.NA and row.r2 is not None:
            out[f"r2_{row.model}_{row.target}_{group}"] = float(row.r2)
    return out
