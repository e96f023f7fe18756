"""The Main page's plots: each model's learning curves and measured vs predicted per model and target.

Drawn by histoxai.plots (the same PNGs as the evaluate step's report) from the run's own files: a
model folder's history.csv, and an evaluation's evaluation.json and predictions/<model>/<sample>.parquet,
so runs evaluated before the reports had plots show them too. Every file is checked against the app's
root before it is read (`runs.ensure_within`). Cached per URI until "Reload run" clears the caches.
"""

from __future__ import annotations

import io

import pandas as pd
import streamlit as st

from histoxai import artifacts, plots, storage
from histoxai.app import runs
from histoxai.errors import InputError

TTL_S = 600
PREDICTIONS_DIR = "predictions"  # the evaluate step's predictions/<model>/<sample>.parquet


@st.cache_data(ttl=TTL_S, show_spinner=False)
def learning_curves(model_dir: str, root: str, title: str) -> bytes | None:
    """PNG of a model folder's learning curves, None when it has no history.csv."""
    path = runs.ensure_within(root, storage.join(model_dir, artifacts.TRAIN_HISTORY), what="training history")
    if not storage.exists(path):
        return None
    return plots.learning_curves(pd.read_csv(io.StringIO(storage.read_text(path))), title)


def _predictions(evaluate_dir: str, root: str, model: str, samples: list[str]) -> pd.DataFrame:
    parts = []
    for sample in samples:
        uri = storage.join(evaluate_dir, PREDICTIONS_DIR, model, f"{sample}.parquet")
        uri = runs.ensure_within(root, uri, what="predictions")
        if storage.exists(uri):
            parts.append(pd.read_parquet(io.BytesIO(storage.read_bytes(uri))))
    return pd.concat(parts, ignore_index=True) if parts else pd.DataFrame()


@st.cache_data(ttl=TTL_S, show_spinner="Drawing measured vs predicted…")
def scatter_plots(evaluate_dir: str, root: str) -> list[tuple[str, bytes]]:
    """(caption, PNG) per model and target of an evaluation: the test set of the training samples and
    the held-out samples, one colour per sample."""
    path = runs.ensure_within(root, storage.join(evaluate_dir, artifacts.EVALUATION_INFO),
                              what="evaluation summary")
    if not storage.exists(path):
        return []
    info = artifacts.read_json(evaluate_dir, artifacts.EVALUATION_INFO)
    samples = [str(s) for s in info.get("samples", [])]
    found = []
    for model, entry in (info.get("models") or {}).items():
        frame = _predictions(evaluate_dir, root, str(model), samples)
        shown = plots.shown_patches(frame, info.get("training_samples", [])) if not frame.empty else frame
        for target in entry.get("targets", []):
            caption = f"model {model}, {target}: measured vs predicted (test set and held-out samples)"
            title = f"model {model}: {target}, test set and held-out samples"  # as the evaluate report's
            found.append((caption, plots.measured_vs_predicted(shown, target, title, by="points")))
    return found


def show(index: runs.RunIndex, root: str) -> None:
    """The plots on the Main page: learning curves per model, then each evaluation's scatter plots."""
    curves = [(index.label(folder), learning_curves(folder, root, f"model {index.label(folder)}"))
              for folder in index.models]
    curves = [(label, png) for label, png in curves if png is not None]
    if curves:
        st.subheader("Learning curves")
        st.caption("Loss and R² per epoch, train (solid) and validation (dashed); dotted: fine-tuning "
                   "begins.")
        for label, png in curves:
            st.image(png, caption=f"learning curves: {label}")
    for folder in index.evaluate:
        try:
            pictures = scatter_plots(folder, root)
        except InputError as err:  # one unreadable evaluation should not hide the rest of the page
            st.warning(" ".join(str(err).split()))
            continue
        if not pictures:
            continue
        st.subheader(f"Measured vs predicted ({index.label(folder)})")
        st.caption("One point per patch of the test set and the held-out samples; R² = 1 - SSE/SST.")
        columns = st.columns(min(len(pictures), 3))
        for i, (caption, png) in enumerate(pictures):
            columns[i % len(columns)].image(png, caption=caption)
