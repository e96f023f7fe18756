"""Resume state of a training run under OUT/checkpoints/, rewritten after every epoch.

Layout: state.json (phase, epochs done, early-stopping state, history so far, resolved config) and
two slots each for the last weights + optimizer state (`last-a.npz` / `last-b.npz`) and for the best
weights (`best-a.npz` / `best-b.npz`). A new slot file is written completely before state.json
points at it, so a run killed at any moment leaves a consistent checkpoint of its last finished
epoch. On gs:// the folder is mirrored from a local working copy (files up, state.json last).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
from pathlib import Path

import numpy as np

from histoxai import artifacts, storage
from histoxai.errors import InputError
from histoxai.outputs import scratch_dir

CHECKPOINTS = "checkpoints"
STATE = "state.json"
# What the store itself writes under checkpoints/ (temporary names included)
OWN_FILES = re.compile(r"tensorboard/.*|\.?(last|best)-[ab]\.npz(\.tmp)?|\.state\.json\..*\.tmp")


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
            self._tmp = contextlib.ExitStack()
            self.dir = self._tmp.enter_context(scratch_dir("ckpt"))
            prefix = self.uri.rstrip("/") + "/"
            for uri in storage.list_files(self.uri):
                storage.download_file(uri, self.dir / uri[len(prefix):])
        else:
            self.dir = Path(self.uri)
            self.dir.mkdir(parents=True, exist_ok=True)
        self.tensorboard_dir = self.dir / artifacts.TENSORBOARD_DIR

    def close(self) -> None:
        if self._tmp is not None:
            self._tmp.close()

    def discard_if_unused(self) -> None:
        """After a failure before the first saved epoch: remove the folder (TensorBoard's files only)."""
        if (self.dir / STATE).exists():
            return
        if self.remote:
            storage.remove(self.uri)
        else:
            shutil.rmtree(self.dir, ignore_errors=True)

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
            if not model.optimizer.built:  # a loss-scale optimizer would add its variables twice
                model.optimizer.build(model.trainable_variables)
            _assign(model.optimizer.variables, saved, f"{storage.join(self.uri, state['last'])} (optimizer)")


def _assign(variables, arrays: list[np.ndarray], source: str) -> None:
    if len(variables) != len(arrays) or any(tuple(v.shape) != a.shape for v, a in zip(variables, arrays,
                                                                                     strict=False)):
        raise InputError(f"{source}: does not match the model built from the config; "
                         "pass --overwrite to start over")
    for variable, array in zip(variables, arrays, strict=True):
        variable.assign(array)


def _entries(out_uri: str) -> dict[str, list[str]]:
    """Top-level names in OUT -> the paths below each (relative); {} for a missing or empty OUT."""
    out_uri = str(out_uri)
    if storage.is_gcs(out_uri):
        prefix = out_uri.rstrip("/") + "/"
        files, found = [uri[len(prefix):] for uri in storage.list_files(out_uri)], {}
    else:
        root = Path(out_uri)
        if not root.is_dir():
            return {}
        found = {p.name: [] for p in root.iterdir()}
        files = [p.relative_to(root).as_posix() for p in root.rglob("*") if not p.is_dir()]
    for path in files:
        top, _, rest = path.partition("/")
        found.setdefault(top, []).append(rest)
    return found


def prepare_out(out_uri: str, overwrite: bool, result_files) -> bool:
    """Check that training may write to OUT; returns whether OUT existed (else a failure removes it).

    OUT may be missing or empty, or hold this training's own resume state (checkpoints/state.json,
    plus results of an interrupted publish). Anything else is refused unless `overwrite` (then the old
    checkpoints go now, old results only when the new ones are complete). A checkpoints/ folder with
    no state (a run killed in its first epoch) is removed when it holds only the store's own files.
    """
    entries = _entries(out_uri)
    existed = bool(entries) or (not storage.is_gcs(out_uri) and Path(out_uri).is_dir())
    if artifacts.TRAIN_METRICS in entries and not overwrite:
        raise InputError(f"{out_uri}: already holds a finished training (metrics.json); "
                         "pass --overwrite to train again")
    state = f"{CHECKPOINTS}/{STATE}"
    if overwrite or (CHECKPOINTS in entries and STATE not in entries[CHECKPOINTS]
                     and all(OWN_FILES.fullmatch(p) for p in entries[CHECKPOINTS])):
        storage.remove(storage.join(out_uri, CHECKPOINTS))
        entries.pop(CHECKPOINTS, None)
    allowed = {CHECKPOINTS, *result_files} if STATE in entries.get(CHECKPOINTS, []) else set()
    foreign = sorted(set(entries) - allowed)
    if foreign and not overwrite:
        shown = ", ".join(foreign[:4]) + (", ..." if len(foreign) > 4 else "")
        raise InputError(f"{out_uri}: output folder is not empty ({shown}) and holds no interrupted training "
                         f"to resume ({state}); pass --overwrite to replace it, or choose another --out")
    return existed
