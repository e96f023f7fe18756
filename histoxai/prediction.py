"""A trained model's predictions on ingested patches, one Parquet file per sample, stamped for reuse.

Shared by the predict step (components/predict: every patch of a split, on the GPU image) and the
evaluate step (which reads those files, or predicts itself when none match). A predictions file holds
sample, row, col, split, <T>_measured and <T>_predicted per target of the model, sorted by row and col;
its Parquet metadata (CACHE_KEY) holds the stamp: model name, SHA-256 of model.keras, the patch
fingerprint (the sample's patch keys and shard locations) and the targets. A file is reused only when
the model hash and the fingerprint both match, so a retrained model or re-ingested sample is predicted
again.

Also here: what a model folder (`histoxai train` output, or a fetched champion) offers for prediction
(ModelSource, open_model) and the patches of split folders, split tables and ingest manifests
(read_patches).
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

from histoxai import artifacts, storage
from histoxai.errors import InputError
from histoxai.manifest import KEY, SPLITS, read_manifest

CACHE_KEY = b"histoxai.predictions"
FINGERPRINT_COLUMNS = ("row", "col", "shard", "index", "offset", "encoding", "patch_size")
PREDICTIONS_INFO = "predictions.json"  # beside a predict step's <sample>.parquet files
_SAFE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")


def measured_column(target: str) -> str:
    return f"{target}_measured"


def predicted_column(target: str) -> str:
    return f"{target}_predicted"


def predictions_file(folder: str, sample: str) -> str:
    """The predictions file of `sample` in a predictions folder."""
    return storage.join(str(folder).rstrip("/"), f"{sample}.parquet")


@dataclass
class ModelSource:
    """One training output folder, with its model.keras available locally while it is in use."""

    name: str
    uri: str
    targets: tuple[str, ...]
    sha256: str
    config: dict
    train_metrics: dict
    local_model: Path
    _net: object = field(default=None, repr=False)

    def net(self):
        """The Keras model, loaded on first use (work served entirely from stamped files never loads it)."""
        if self._net is None:
            from histoxai.model import load_model

            self._net = load_model(str(self.local_model))
            missing = [t for t in self.targets if t not in self._net.output_names]
            if missing:
                raise InputError(f"{self.uri}/model.keras: no output for targets {missing} of config.yaml; "
                                 f"the model's outputs are {list(self._net.output_names)}")
        return self._net

    @property
    def loaded(self) -> bool:
        return self._net is not None


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


def _input_file(uri: str) -> str:
    if uri.endswith(".parquet"):
        return uri
    for name in (artifacts.SPLIT_TABLE, artifacts.MANIFEST):
        if storage.exists(storage.join(uri, name)):
            return storage.join(uri, name)
    raise InputError(f"{uri}: neither {artifacts.SPLIT_TABLE} nor {artifacts.MANIFEST} found; expected a "
                     "split folder (`histoxai split`) or an ingest output folder (`histoxai ingest`)")


def read_patches(uris: Sequence[str]) -> pd.DataFrame:
    """The patches of one or more inputs (split folder / split.parquet, ingest folder / manifest.parquet)
    in one frame; a sample may come from one input only. Rows without a split (plain ingest manifests)
    are 'heldout'."""
    if not uris:
        raise InputError("--data: none given; expected a split folder or ingest manifests")
    frames, owner = [], {}
    for uri in (str(u) for u in uris):
        path = _input_file(uri)
        frame = read_manifest(path)
        if frame.empty:
            raise InputError(f"{path}: no patches (an empty manifest); expected at least one patch")
        if "split" not in frame.columns:
            frame["split"] = "heldout"
        unknown = sorted(set(frame["split"].astype(str)) - set(SPLITS))
        if unknown:
            raise InputError(f"{path}: column 'split' holds {unknown}; expected values among {list(SPLITS)}")
        for sample in frame["sample"].unique():
            if sample in owner:
                raise InputError(f"sample {sample!r} is in both {owner[sample]} and {path}; "
                                 "give each sample once (the split already holds every sample it split)")
            owner[sample] = path
        frames.append(frame)
    frame = pd.concat(frames, ignore_index=True)
    if frame.duplicated(list(KEY)).any():
        first = frame[frame.duplicated(list(KEY), keep=False)].iloc[0]
        raise InputError(f"{owner[first['sample']]}: voxel row {first['row']}, col {first['col']} of sample "
                         f"{first['sample']} is listed more than once; expected one patch per voxel")
    return frame


def patch_fingerprint(rows: pd.DataFrame) -> str:
    """SHA-256 of the sample's patch keys and shard locations (row-order independent)."""
    table = rows.loc[:, list(FINGERPRINT_COLUMNS)].sort_values(["row", "col"])
    return hashlib.sha256(table.to_csv(index=False).encode()).hexdigest()


def _read_cached(uri: str, model: ModelSource, fingerprint: str, n: int) -> pd.DataFrame | None:
    """A predictions file, if it was made by this exact model on these exact patches."""
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


def sample_predictions(model: ModelSource, rows: pd.DataFrame, cached_uris: Sequence[str] = (), *,
                       batch_size: int) -> tuple[pd.DataFrame, bool]:
    """The predictions table of one sample (sorted by row, col) and whether it came from a stamped file:
    the first of `cached_uris` whose stamp matches is used; with none, the model predicts."""
    from histoxai import dataset

    rows = rows.sort_values(["row", "col"], kind="stable")
    fingerprint = patch_fingerprint(rows)
    cached = None
    for uri in cached_uris:
        cached = _read_cached(uri, model, fingerprint, len(rows))
        if cached is not None:
            break
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
