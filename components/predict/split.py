"""Predict every patch of a split with one model: the evaluate step's predictions, made on the GPU image.

`predict_split(model_dir, data, out, name=...)` writes to OUT (local or gs://), published whole:

  <sample>.parquet   sample, row, col, split, <T>_measured, <T>_predicted per target, stamped with the
                     model hash and patch fingerprint (histoxai.prediction), exactly the file the
                     evaluate step writes as predictions/<name>/<sample>.parquet and reads back
  predictions.json   name, model folder and hash, targets, samples, patch count, reused samples

model_dir is a training output folder or a champion folder as the pipeline's champion step fetches it;
one whose champion.json names no version (the registry has no champion yet) gives an OUT with only
predictions.json (model null). A file already in OUT with a matching stamp (a retried task) is reused.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Sequence

from histoxai import artifacts, outputs, storage
from histoxai.components.predict.params import DEFAULTS
from histoxai.console import import_tensorflow
from histoxai.errors import InputError
from histoxai.manifest import natural_key
from histoxai.prediction import (
    PREDICTIONS_INFO,
    open_model,
    parse_model_spec,
    predictions_file,
    read_patches,
    sample_predictions,
    write_predictions,
)


def _no_champion(model_dir: str) -> bool:
    """A champion folder fetched while the registry had no champion: champion.json with version null."""
    if not storage.exists(storage.join(model_dir, artifacts.CHAMPION_INFO)):
        return False
    return artifacts.read_json(model_dir, artifacts.CHAMPION_INFO).get("version") is None


def predict_split(model_dir: str, data: str | Sequence[str], out: str, *, name: str,
                  batch_size: int = DEFAULTS.batch_size, overwrite: bool = False,
                  progress: bool = True) -> dict:
    """Predictions of the model in `model_dir` (named `name`) on every sample of `data` (a split folder,
    split.parquet or ingest outputs); writes OUT (see the module docstring) and returns predictions.json."""
    from tqdm import tqdm

    if batch_size < 1:
        raise InputError(f"--batch-size {batch_size}: expected an integer >= 1")
    name, model_dir = parse_model_spec(f"{name}={model_dir}")
    out = str(out).rstrip("/")
    inputs = [data] if isinstance(data, str) else list(data)
    info = {"name": name, "model_uri": model_dir, "model_sha256": None, "targets": [], "data": inputs,
            "samples": [], "n": 0, "reused": []}
    with outputs.staged(out, overwrite=overwrite, commit_last=PREDICTIONS_INFO) as stage:
        if _no_champion(model_dir):
            info["note"] = "no champion: the registry holds none to predict with"
        else:
            import_tensorflow()  # here, not before: a task without a champion needs no TensorFlow
            frame = read_patches(inputs)
            with contextlib.ExitStack() as stack:
                model = open_model(f"{name}={model_dir}", stack)
                from histoxai.dataset import check_targets

                check_targets(frame, model.targets, f"--data (targets of model {name})")
                by_sample = dict(tuple(frame.groupby("sample", sort=False)))
                samples = sorted(by_sample, key=natural_key)
                for sample in tqdm(samples, desc=f"predict {name}", unit="sample", disable=not progress):
                    # a retried task finds its earlier attempt's files in OUT
                    table, hit = sample_predictions(model, by_sample[sample], [predictions_file(out, sample)],
                                                    batch_size=batch_size)
                    write_predictions(table, stage / f"{sample}.parquet")
                    if hit:
                        info["reused"].append(sample)
                info.update(model_sha256=model.sha256, targets=list(model.targets), samples=samples,
                            n=int(len(frame)))
        (stage / PREDICTIONS_INFO).write_text(json.dumps(info, indent=1) + "\n")
    return info
