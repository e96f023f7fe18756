"""Resume state of a training run under OUT/checkpoints/, rewritten after every epoch.

Layout: state.json (phase, epochs done, early-stopping state, history so far, resolved config) and
two slots each for the last weights + optimizer state (`last-a.npz` / `last-b.npz`) and for the best
weights (`best-a.npz` / `best-b.npz`). A new slot file is written completely before state.json
points at it, so a run killed at any moment leaves a consistent checkpoint of its last finished
epoch. On gs:// the folder is mirrored from a local working copy (files up, state.json last).
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

import numpy as np

from histoxai import artifacts, storage
from histoxai.errors import InputError

CHECKPOINTS = "checkpoints"
STATE = "state.json"


def _other_slot(name: str | None, stem: str) -> str:
    return f"{stem}-b.npz" if name == f"{stem}-a.npz" else f"{stem}-a.npz"


def _write_npz(path: Path, arrays: dict[str, np.ndarray]) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "wb") as fh:
        np.savez(fh, **arrays)
    os.replace(tmp, path)


class CheckpointStore:
    """Reads and writes the resume state of the training whose output is `out_uri`."""

    def __init__(self, out_uri: str):
        self.uri = storage.join(out_uri, CHECKPOINTS)
        self.remote = storage.is_gcs(out_uri)
        self._tmp = None
        if self.remote:
            self._tmp = tempfile.TemporaryDirectory(prefix="histoxai-ckpt-")
            self.dir = Path(self._tmp.name)
            prefix = self.uri.rstrip("/") + "/"
            for uri in storage.list_files(self.uri):
                storage.download_file(uri, self.dir / uri[len(prefix):])
        else:
            self.dir = Path(self.uri)
            self.dir.mkdir(parents=True, exist_ok=True)
        self.tensorboard_dir = self.dir / artifacts.TENSORBOARD_DIR

    def close(self) -> None:
        if self._tmp is not None:
            self._tmp.cleanup()

    def load_state(self) -> dict | None:
        path = self.dir / STATE
        if not path.exists():
            return None
        try:
            return json.loads(path.read_text())
        except json.JSONDecodeError as err:
            raise InputError(f"{storage.join(self.uri, STATE)}: unreadable resume state ({err}); "
                             "pass --overwrite to start over") from err

    def save(self, state: dict, *, model=None, best_weights: list[np.ndarray] | None = None) -> dict:
        """Write new slot files for the model (weights + optimizer) and best weights if given, then
        the state pointing at them. Returns the state as written."""
        state = dict(state)
        written = []
        if model is not None:
            name = _other_slot(state.get("last"), "last")
            arrays = {f"w{i}": np.asarray(v) for i, v in enumerate(model.get_weights())}
            if model.optimizer is not None:
                arrays.update({f"o{i}": np.asarray(v) for i, v in enumerate(model.optimizer.variables)})
            _write_npz(self.dir / name, arrays)
            state["last"] = name
            written.append(name)
        if best_weights is not None:
            name = _other_slot(state.get("best"), "best")
            _write_npz(self.dir / name, {f"w{i}": w for i, w in enumerate(best_weights)})
            state["best"] = name
            written.append(name)
        storage.write_text(self.dir / STATE, json.dumps(state, indent=1))
        if self.remote:
            for name in written:
                storage.upload_file(self.dir / name, storage.join(self.uri, name))
            for path in sorted(self.tensorboard_dir.rglob("*")) if self.tensorboard_dir.exists() else []:
                if path.is_file():
                    storage.upload_file(path, storage.join(self.uri, path.relative_to(self.dir).as_posix()))
            storage.upload_file(self.dir / STATE, storage.join(self.uri, STATE))
        return state

    def _arrays(self, name: str, prefix: str) -> list[np.ndarray]:
        with np.load(self.dir / name) as data:
            keys = sorted((k for k in data.files if k.startswith(prefix)), key=lambda k: int(k[1:]))
            return [data[k] for k in keys]

    def best_weights(self, state: dict) -> list[np.ndarray] | None:
        return self._arrays(state["best"], "w") if state.get("best") else None

    def restore(self, state: dict, model, *, optimizer: bool) -> None:
        """Load the last checkpoint's weights (and optimizer state) into a model of the same config."""
        weights = self._arrays(state["last"], "w")
        _assign(model.weights, weights, f"{storage.join(self.uri, state['last'])} (weights)")
        if optimizer:
            saved = self._arrays(state["last"], "o")
            model.optimizer.build(model.trainable_variables)
            _assign(model.optimizer.variables, saved, f"{storage.join(self.uri, state['last'])} (optimizer)")


def _assign(variables, arrays: list[np.ndarray], source: str) -> None:
    if len(variables) != len(arrays) or any(tuple(v.shape) != a.shape for v, a in zip(variables, arrays,
                                                                                     strict=False)):
        raise InputError(f"{source}: does not match the model built from the config; "
                         "pass --overwrite to start over")
    for variable, array in zip(variables, arrays, strict=True):
        variable.assign(array)
