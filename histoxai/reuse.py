"""A finished training reused instead of repeated: the tuning study's best trial is the trained model.

A tuning trial trains its config with the code of `histoxai train`, on the same patches and for the
same epochs as the training that follows with the study's best config (the search space's `fixed`
epochs are part of that config), so training it again repeats the best trial: weight for weight on a
CPU, where training is deterministic, and as a second draw of the same training on a GPU.
`train(..., reuse=DIR)` publishes DIR's model instead, scored on every split, when DIR holds a
finished training of exactly this config (image_size following the patches), on the same training and
validation patches (keys, shard locations and target values), by the same code version, with the same
precision, XLA and determinism; anything else trains as usual and says why.

Selection on the validation split makes the reused model's validation R² optimistic, as it makes a
retrained one's with the same seed; the test split and the held-out samples, which no trial saw, are
unaffected, and they are what the evaluation reports.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import shutil
from collections.abc import Mapping, Sequence

from histoxai import artifacts, storage
from histoxai.errors import InputError

REUSED_FROM = "reused_from"  # metrics.json: the folder whose training was reused
FITTED = ("train", "val")  # the splits a training fits and early-stops on


def training_fingerprint(splits: Mapping, targets: Sequence[str]) -> str:
    """SHA-256 of the training and validation patches: keys, shard locations (relative to their
    manifest, so the same data read through another mount gives the same value) and target values."""
    import pandas as pd

    from histoxai.manifest import LOCATION

    columns = ["sample", "row", "col", *LOCATION, *targets]
    rows = pd.concat([splits[s].loc[:, columns].assign(split=s) for s in FITTED], ignore_index=True)
    rows = rows.sort_values(["split", "sample", "row", "col"], kind="stable")
    return hashlib.sha256(rows.to_csv(index=False).encode()).hexdigest()


def why_not_reusable(uri: str, config, fingerprint: str, runtime) -> str | None:
    """Why the training in `uri` is not this training (None: it is)."""
    return _check(uri, config, fingerprint, runtime)[0]


def _check(uri: str, config, fingerprint: str, runtime) -> tuple[str | None, dict]:
    """(why the training in `uri` is not this training or None, its metrics.json)."""
    from histoxai.artifacts import code_version
    from histoxai.config import config_from_yaml

    missing = [name for name in artifacts.MODEL_FILES if not storage.exists(storage.join(uri, name))]
    if missing:
        return f"it holds no finished training (no {', '.join(missing)})", {}
    try:
        earlier = json.loads(storage.read_text(storage.join(uri, artifacts.TRAIN_METRICS)))
        trained = config_from_yaml(storage.read_text(storage.join(uri, artifacts.MODEL_CONFIG)),
                                   source=storage.join(uri, artifacts.MODEL_CONFIG))
    except (json.JSONDecodeError, InputError) as err:
        return f"its results are unreadable ({err})", {}
    if trained.to_dict() != config.to_dict():
        changed = sorted(k for k, v in config.to_dict().items() if trained.to_dict().get(k) != v)
        return f"it trained another config ({', '.join(changed)} differ)", earlier
    if earlier.get("data_fingerprint") != fingerprint:
        return "it trained on other training or validation patches", earlier
    if earlier.get("code_version") != code_version():
        return f"other code trained it ({earlier.get('code_version')}, this is {code_version()})", earlier
    for key in ("precision", "jit_compile", "deterministic"):
        if earlier.get(key) != getattr(runtime, key):
            return (f"it trained with {key} {earlier.get(key)}, this device resolves "
                    f"{getattr(runtime, key)}"), earlier
    return None, earlier


def reuse_finished(uri: str, config, splits: Mapping, runtime, out_uri: str,
                   scored_splits: Sequence[str]) -> dict | None:
    """Publish the training in `uri` to OUT, as `train` would publish its own, when it is this training;
    returns the metrics written, or None (after printing why) when OUT must be trained."""
    import pandas as pd

    from histoxai import dataset
    from histoxai.checkpoint import CHECKPOINTS
    from histoxai.model import load_model
    from histoxai.training import SPLITS_USED, publish_results, score_model

    uri = str(uri)
    fingerprint = training_fingerprint(splits, config.targets)
    reason, earlier = _check(uri, config, fingerprint, runtime)
    if reason is not None:
        print(f"not reusing {uri}: {reason}; training", flush=True)
        return None
    print(f"reusing the finished training in {uri}: same config, patches, code and precision, so no "
          "epoch is run again; scoring its model", flush=True)
    history_uri = storage.join(uri, artifacts.TRAIN_HISTORY)
    history = pd.read_csv(io.StringIO(storage.read_text(history_uri))).to_dict("records") \
        if storage.exists(history_uri) else []
    tensorboard = storage.join(uri, artifacts.TENSORBOARD_DIR)
    with contextlib.ExitStack() as stack:
        model_file = stack.enter_context(storage.local_copy(storage.join(uri, artifacts.MODEL_FILE)))
        logs = (stack.enter_context(storage.local_copy(tensorboard)) if storage.list_files(tensorboard)
                else None)
        net = load_model(str(model_file))
        used = dataset.reading_order(pd.concat([splits[s] for s in SPLITS_USED]))
        with dataset.local_shards(used) as local, dataset.read_errors(local):
            parts = {s: local.loc[local["split"] == s] for s in SPLITS_USED}
            metrics = score_model(net, parts, config, runtime, history, earlier.get("best_epoch"),
                                  scored_splits)
        metrics.update({"data_fingerprint": fingerprint, REUSED_FROM: uri})
        publish_results(out_uri, config, metrics, history, logs,
                        lambda path: shutil.copyfile(model_file, path))
    storage.remove(storage.join(out_uri, CHECKPOINTS))  # an interrupted training's resume state (gs://)
    return metrics
