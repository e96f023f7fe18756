"""Early stopping and best-weights restore in `train`: a run whose validation loss worsens after its
best epoch stops each phase `patience` epochs later and publishes the best epoch's weights and metrics.

The validation loss is made to worsen by the config alone: a warmup schedule that ramps the learning
rate from 3e-3 to 1.0 (Adam), so after a few epochs the steps are far too large and the loss jumps up.
"""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from histoxai import config as configs
from histoxai.manifest import read_manifest
from histoxai.metrics import r2_score
from histoxai.training import train
from tests.train_data import write_blob_manifest

PATIENCE = 2
MAX_EPOCHS = 20  # per phase; early stopping must end both phases well before this
DIVERGING = {"backbone": "tiny", "weights": None, "image_size": 32, "batch_size": 8, "targets": ["CC"],
             "frozen_epochs": MAX_EPOCHS, "finetune_epochs": MAX_EPOCHS, "patience": PATIENCE,
             "monitor": "val_loss", "optimizer": "adam", "lr_schedule": "warmup_cosine",
             "initial_lr": 3e-3, "warmup_target_lr": 1.0, "warmup_epochs": 6, "decay_epochs": 100,
             "dense_units": 16, "feature_units": 8, "dropout": 0.0, "feature_dropout": 0.0}


@pytest.fixture(scope="module")
def diverged(tmp_path_factory):
    """One finished run: (manifest, out folder, metrics returned by train)."""
    root = tmp_path_factory.mktemp("best-weights")
    manifest = write_blob_manifest(root / "data", n=48, size=32, seed=1)
    out = root / "out"
    metrics = train(configs.from_dict(DIVERGING), str(manifest), str(out))
    return manifest, out, metrics


def _val_predictions(manifest, out) -> tuple[np.ndarray, np.ndarray]:
    """(measured, predicted) CC on the val patches, predicted by the published model.keras."""
    from histoxai import dataset
    from histoxai.model import load_model

    frame = read_manifest(manifest)
    val = frame[(frame["split"] == "val") & frame["CC"].notna()]
    predicted = dataset.predict(load_model(str(out / "model.keras")), val, batch_size=32)
    return val["CC"].to_numpy(np.float64), predicted["CC"].to_numpy(np.float64)


def test_each_phase_stops_patience_epochs_after_its_last_improvement(diverged):
    _, out, metrics = diverged
    history = pd.read_csv(out / "history.csv")
    assert set(out.iterdir()) >= {out / "model.keras", out / "history.csv", out / "metrics.json"}
    assert list(history["epoch"]) == list(range(1, len(history) + 1))
    counts = history.groupby("phase", sort=False).size().to_dict()
    assert list(counts) == ["frozen", "finetune"]
    assert metrics["epochs"] == counts == json.loads((out / "metrics.json").read_text())["epochs"]
    # The run-wide best so far (the score early stopping compares against carries over between phases;
    # the count of epochs without improvement restarts with each phase).
    best_before = history["val_loss"].cummin().ffill().shift(fill_value=np.inf)
    improved = history["val_loss"] < best_before  # NaN never improves, as in training
    for phase, rows in history.groupby("phase", sort=False):
        assert len(rows) < MAX_EPOCHS, f"{phase}: ran all {MAX_EPOCHS} epochs, no early stop"
        assert list(rows["phase_epoch"]) == list(range(1, len(rows) + 1))
        flags = list(improved[rows.index])
        trailing = len(flags) - (max(i for i, f in enumerate(flags) if f) + 1 if any(flags) else 0)
        assert trailing == PATIENCE, f"{phase}: stopped {trailing} epochs after its last improvement"


def test_published_model_is_the_best_epochs_not_the_last(diverged):
    manifest, out, metrics = diverged
    history = pd.read_csv(out / "history.csv").set_index("epoch")
    best = int(history["val_loss"].idxmin())
    last = int(history.index[-1])
    # The scenario: the loss got clearly worse after the best epoch, which is neither first nor last.
    assert 1 < best < last
    assert history.loc[last, "val_loss"] > 1.1 * history.loc[best, "val_loss"]
    assert metrics["best_epoch"] == best
    assert json.loads((out / "metrics.json").read_text()) == metrics

    measured, predicted = _val_predictions(manifest, out)
    assert len(measured) == metrics["n"]["val"]
    mse = float(np.mean((predicted - measured) ** 2))
    assert mse == pytest.approx(history.loc[best, "val_loss"], rel=1e-4)
    assert mse != pytest.approx(history.loc[last, "val_loss"], rel=0.05)
    # metrics.json's val R² is the saved model's, and the one the best epoch logged
    r2 = r2_score(measured, predicted)
    assert metrics["r2"]["val"]["CC"] == pytest.approx(r2, abs=1e-9)
    assert metrics["r2"]["val"]["CC"] == pytest.approx(history.loc[best, "val_CC_r2"], abs=1e-4)
