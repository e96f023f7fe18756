"""Plots of training and evaluation: learning curves per epoch and measured vs predicted scatter plots.

matplotlib is the project's one plotting library: it draws static PNGs that the Markdown and HTML
reports shown in a pipeline UI embed without JavaScript, it is the field's standard for such figures,
and the review app shows the same drawings (st.image). Figures are built as `matplotlib.figure.Figure`
objects without pyplot (no global figure state, so drawing is safe in the app's threads) and rendered
by the Agg canvas at a fixed size and dpi with no metadata, so the same data give the same bytes.
`*_figure` builds the Figure (tests read its axes); the function of the plain name renders it to PNG.
The colour maps of the saliency and residual images are histoxai/colour.py's, not matplotlib's.
"""

from __future__ import annotations

import io
import math
import re

import numpy as np
import pandas as pd
from matplotlib import ticker
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Patch

from histoxai import artifacts, storage
from histoxai.metrics import format_value, r2_score

DPI = 100
CURVES_SIZE = (10.0, 4.0)  # inches: 1000 x 400 pixels at DPI
SCATTER_SIZE = (5.5, 5.0)  # 550 x 500 pixels
PHASE_LABELS = {"frozen": "frozen backbone", "finetune": "fine-tuning"}
R2_FLOOR = -1.0  # R² far below 0 (early epochs) would squash the rest of the curve
NO_PATCHES, NO_EPOCHS = "no patches", "no epochs"
# where the evaluate step writes its plots (the run report and the app look there)
PLOTS_DIR, CURVES_NAME = "plots", "learning-curves"
MARKER_LIMIT = 20_000  # points per scatter: more only blurs it and slows the PNG


def plot_path(model: str, what: str) -> str:
    """A plot's path in the evaluation output: what = CURVES_NAME or a target."""
    return f"{PLOTS_DIR}/{model}/{what}.png"


def png(figure: Figure) -> bytes:
    """The figure as PNG bytes: Agg canvas, fixed dpi, no metadata (no version or date in the file)."""
    buffer = io.BytesIO()
    FigureCanvasAgg(figure).print_png(buffer, metadata={"Software": None})
    return buffer.getvalue()


def _empty(size: tuple[float, float], title: str, message: str) -> Figure:
    figure = Figure(figsize=size, dpi=DPI, layout="constrained")
    axes = figure.add_subplot()
    axes.set_axis_off()
    axes.set_title(title)
    axes.text(0.5, 0.5, message, ha="center", va="center", fontsize=14, color="#666",
              transform=axes.transAxes)
    return figure


# ---- learning curves ----

def read_history(model_dir: str) -> pd.DataFrame | None:
    """A training output folder's history.csv, or None when it has none (e.g. a model trained elsewhere)."""
    uri = storage.join(model_dir, artifacts.TRAIN_HISTORY)
    if not storage.exists(uri):
        return None
    return pd.read_csv(io.StringIO(storage.read_text(uri)))


def history_targets(history: pd.DataFrame) -> list[str]:
    """Targets with an R² column in a history (`<T>_r2`, as the train step's metrics name them)."""
    return [c.removesuffix("_r2") for c in history.columns
            if c.endswith("_r2") and not c.startswith("val_")]


def phase_switch(history: pd.DataFrame) -> float | None:
    """Where fine-tuning begins on the epoch axis (half-way between the phases), None with one phase."""
    if "phase" not in history.columns or history.empty:
        return None
    phases = history["phase"].astype(str).to_numpy()
    changes = np.flatnonzero(phases[1:] != phases[:-1])
    if not changes.size:
        return None
    epochs = history["epoch"].to_numpy(dtype=float)
    return float(epochs[changes[0]] + epochs[changes[0] + 1]) / 2


def _mark_phases(axes, history: pd.DataFrame, switch: float | None) -> None:
    """A dotted line between the last epoch of the first phase and the first of the next, in the legend."""
    if switch is None:
        return
    second = str(pd.unique(history["phase"])[1])
    first_epoch = int(math.ceil(switch))
    axes.axvline(switch, color="#444", linestyle=":", linewidth=1.5,
                 label=f"{PHASE_LABELS.get(second, second)} from epoch {first_epoch}")


class _PlainLogFormatter(ticker.LogFormatter):
    """matplotlib's choice of which log ticks to label, written as plain numbers (0.06, not 6e-02)."""

    def __call__(self, x, pos=None):
        return f"{x:.3g}" if super().__call__(x, pos) else ""


def learning_curves_figure(history: pd.DataFrame, title: str) -> Figure:
    """Two panels over the epochs of both phases: loss (train, validation) and R² per target (train
    solid, validation dashed); a dotted vertical line where fine-tuning begins."""
    if history.empty or "epoch" not in history.columns:
        return _empty(CURVES_SIZE, title, NO_EPOCHS)
    history = history.sort_values("epoch", kind="stable")
    epochs = history["epoch"].to_numpy(dtype=float)
    switch = phase_switch(history)
    figure = Figure(figsize=CURVES_SIZE, dpi=DPI, layout="constrained")
    figure.suptitle(title)
    loss_axes, r2_axes = figure.subplots(1, 2)
    losses = [c for c in ("loss", "val_loss") if c in history.columns]
    for column in losses:
        loss_axes.plot(epochs, history[column].to_numpy(dtype=float), marker="o", markersize=3,
                       linestyle="--" if column.startswith("val_") else "-",
                       color="#1f77b4" if column == "loss" else "#ff7f0e",
                       label="validation" if column.startswith("val_") else "train")
    values = history[losses].to_numpy(dtype=float) if losses else np.empty(0)
    if values.size and np.all(values[np.isfinite(values)] > 0):
        loss_axes.set_yscale("log")  # the first epochs' loss is often orders of magnitude above the rest
        loss_axes.yaxis.set_major_formatter(_PlainLogFormatter())
        loss_axes.yaxis.set_minor_formatter(
            _PlainLogFormatter(labelOnlyBase=False, minor_thresholds=(1, 0.5)))
    loss_axes.set(xlabel="epoch", ylabel="loss", title="loss")
    r2_values = []
    for i, target in enumerate(history_targets(history)):
        colour = f"C{i}"
        for column, style, name in ((f"{target}_r2", "-", "train"), (f"val_{target}_r2", "--", "validation")):
            if column in history.columns:
                series = history[column].to_numpy(dtype=float)
                r2_values.append(series)
                r2_axes.plot(epochs, series, marker="o", markersize=3, linestyle=style, color=colour,
                             label=f"{target} {name}")
    r2_axes.set(xlabel="epoch", ylabel="R²", title="R² per target")
    finite = np.concatenate(r2_values)[np.isfinite(np.concatenate(r2_values))] if r2_values else []
    if len(finite):
        low = min(float(finite.min()) - 0.05, 0.0)
        r2_axes.set_ylim(max(low, R2_FLOOR), 1.0)
        if low < R2_FLOOR:
            r2_axes.set_ylabel(f"R² (cut at {R2_FLOOR:g})")
    for axes in (loss_axes, r2_axes):
        _mark_phases(axes, history, switch)
        axes.grid(alpha=0.3)
        if axes.get_legend_handles_labels()[0]:
            axes.legend(fontsize=8, loc="best")
        # whole epochs only: a 3-epoch run should not show epoch 1.5
        axes.xaxis.get_major_locator().set_params(integer=True)
    return figure


def learning_curves(history: pd.DataFrame, title: str) -> bytes:
    """Learning curves (see `learning_curves_figure`) as PNG bytes."""
    return png(learning_curves_figure(history, title))


# ---- measured vs predicted ----

def _finite_pairs(frame: pd.DataFrame, target: str) -> pd.DataFrame:
    measured, predicted = f"{target}_measured", f"{target}_predicted"
    if frame.empty or measured not in frame.columns or predicted not in frame.columns:
        return frame.iloc[0:0].assign(**{measured: [], predicted: []})
    values = frame[[measured, predicted]].apply(pd.to_numeric, errors="coerce").to_numpy(dtype=float)
    return frame[np.isfinite(values).all(axis=1)]


def shown_patches(predictions: pd.DataFrame, training_samples) -> pd.DataFrame:
    """The patches a report's scatter plot shows: the test set of the training samples and every patch of
    the held-out ones (the model fitted, or was chosen on, the others), labelled in column 'points'
    ('sample 3 (test set)', 'sample 5 (held out)')."""
    training = predictions["sample"].astype(str).isin([str(s) for s in training_samples])
    shown = predictions[~training | (predictions["split"] == "test")]
    where = np.where(training[shown.index], "test set", "held out")
    return shown.assign(points=[f"sample {s} ({w})" for s, w in zip(shown["sample"], where, strict=True)])


def _label_key(label: str) -> list:
    """Sort labels with their numbers as numbers ('sample 2' before 'sample 10')."""
    return [(0, int(part), "") if part.isdigit() else (1, 0, part) for part in re.split(r"(\d+)", label)]


def scatter_figure(frame: pd.DataFrame, target: str, title: str, by: str = "sample") -> Figure:
    """Measured (x) vs predicted (y) of one target from an evaluate predictions table, one colour per
    value of `by` (legend: its R² and n), the identity line, and R² of all points in the title.
    Rows with a missing or non-finite value are left out; no rows left gives a 'no patches' figure."""
    measured, predicted = f"{target}_measured", f"{target}_predicted"
    rows = _finite_pairs(frame, target)
    if rows.empty:
        return _empty(SCATTER_SIZE, title, NO_PATCHES)
    y, y_hat = rows[measured].to_numpy(dtype=float), rows[predicted].to_numpy(dtype=float)
    figure = Figure(figsize=SCATTER_SIZE, dpi=DPI, layout="constrained")
    axes = figure.add_subplot()
    groups = rows[by].astype(str) if by in rows.columns else pd.Series("all", index=rows.index)
    size = 12 if len(rows) <= 500 else 4
    for i, group in enumerate(sorted(groups.unique(), key=_label_key)):
        chosen = (groups == group).to_numpy()
        step = max(1, int(math.ceil(chosen.sum() / MARKER_LIMIT)))  # thin evenly; R² uses every point
        label = f"{group}: R² {format_value(r2_score(y[chosen], y_hat[chosen]))} (n {int(chosen.sum())})"
        axes.scatter(y[chosen][::step], y_hat[chosen][::step], s=size, alpha=0.6, linewidths=0,
                     color=f"C{i % 10}", label=label)
    low, high = float(min(y.min(), y_hat.min())), float(max(y.max(), y_hat.max()))
    pad = (high - low) * 0.05 or abs(high) * 0.05 or 1.0
    low, high = low - pad, high + pad
    axes.plot([low, high], [low, high], color="#333", linewidth=1, linestyle="--", label="ŷ = y")
    axes.set(xlim=(low, high), ylim=(low, high), xlabel=f"measured {target}", ylabel=f"predicted {target}",
             aspect="equal")
    axes.set_title(f"{title}\nR² {format_value(r2_score(y, y_hat))} (n {len(rows)})", fontsize=10)
    axes.grid(alpha=0.3)
    axes.legend(fontsize=7, loc="upper left", markerscale=1.5)
    return figure


def measured_vs_predicted(frame: pd.DataFrame, target: str, title: str, by: str = "sample") -> bytes:
    """The measured vs predicted scatter (see `scatter_figure`) as PNG bytes."""
    return png(scatter_figure(frame, target, title, by=by))


# ---- predicted maps ----

MAP_SIZE = (6.0, 5.0)  # 600 x 500 pixels


def map_figure(values: np.ndarray, title: str, label: str) -> Figure:
    """A map on the voxel grid with a colour bar labelled `label`; NaN (no prediction) shows grey."""
    import matplotlib

    finite = values[np.isfinite(values)]
    if not finite.size:
        return _empty(MAP_SIZE, title, "no tissue voxels")
    figure = Figure(figsize=MAP_SIZE, dpi=DPI, layout="constrained")
    axes = figure.add_subplot()
    colours = matplotlib.colormaps["viridis"].with_extremes(bad="#d9d9d9")
    image = axes.imshow(np.ma.masked_invalid(values), cmap=colours, interpolation="nearest",
                        vmin=float(finite.min()), vmax=float(finite.max()))
    axes.set_title(title)
    axes.set_xlabel("voxel column")
    axes.set_ylabel("voxel row")
    figure.colorbar(image, ax=axes, label=label)
    return figure


def predicted_map(values: np.ndarray, title: str, label: str) -> bytes:
    return png(map_figure(values, title, label))


# ---- what drives the relevance: per nuclear property ----

DRIVERS_KINDS = ("signed", "positive")  # nuclei_stats.KINDS: relevance_mean, positive_mean
CONTROL_MARKERS = {"darkness": ("D", "#222"), "edges": ("X", "#888")}


def _method_label(row, scores: int) -> str:
    setting = row.get("setting")
    label = f"{row['method']}:{setting}" if isinstance(setting, str) and setting else str(row["method"])
    return f"{label} ({row['score']})" if scores > 1 and row.get("score") not in (None, "") else label


def drivers_figure(nuclei_drivers: pd.DataFrame, kind: str = "signed") -> Figure:
    """Per target a panel of horizontal bars: each nuclear property's within-map rank correlation rho of
    relevance (one bar per method, its 95 % CI as error bars; bars of a property that 'drives' the
    method's relevance solid, the others pale), and the input-only controls' rho marked on each property
    (darkness, edges). `nuclei_drivers`: the explain step's nuclei_drivers.parquet
    (histoxai.saliency.nuclei_stats.findings); `kind`: 'signed' or 'positive' relevance."""
    frame = nuclei_drivers
    if frame is not None and len(frame) and "kind" in frame.columns:
        frame = frame[frame["kind"].astype(str) == kind]
    if frame is None or frame.empty:
        return _empty(MAP_SIZE, "relevance per nuclear property", "no nuclei")
    frame = frame.assign(setting=frame["setting"].fillna("") if "setting" in frame.columns else "",
                         score=frame["score"].fillna("") if "score" in frame.columns else "")
    scores = frame["score"].nunique()
    frame = frame.assign(label=[_method_label(r, scores) for r in frame.to_dict("records")])
    targets = list(dict.fromkeys(frame["target"].astype(str)))
    methods = list(dict.fromkeys(frame["label"]))
    properties = list(dict.fromkeys(frame["property"].astype(str)))
    height = max(3.0, 1.4 + 0.28 * len(properties) * max(len(methods), 1.5))
    figure = Figure(figsize=(5.2 * len(targets), height), dpi=DPI, layout="constrained")
    figure.suptitle(f"Within-map rank correlation of {kind} relevance with each nuclear property "
                    "(95 % CI; pale: does not drive it)", fontsize=10)
    band = 0.8 / len(methods)
    for t, target in enumerate(targets):
        axes = figure.add_subplot(1, len(targets), t + 1)
        rows = frame[frame["target"].astype(str) == target]
        for m, method in enumerate(methods):
            chosen = rows[rows["label"] == method].drop_duplicates("property").set_index("property")
            chosen = chosen.reindex(properties)
            rho = chosen["rho"].to_numpy(dtype=float)
            missing = np.full_like(rho, np.nan)
            low = chosen["rho_low"].to_numpy(dtype=float) if "rho_low" in chosen else missing
            high = chosen["rho_high"].to_numpy(dtype=float) if "rho_high" in chosen else missing
            drives = (chosen["verdict"] == "drives").to_numpy() if "verdict" in chosen else \
                np.zeros(len(rho), bool)
            y = np.arange(len(properties)) - 0.4 + band * (m + 0.5)
            error = np.vstack([rho - low, high - rho])
            error = np.where(np.isfinite(error), np.clip(error, 0, None), 0.0)
            axes.barh(y, np.nan_to_num(rho), height=band * 0.9, color=f"C{m % 10}", label=method,
                      xerr=error, ecolor="#333", capsize=2, edgecolor=f"C{m % 10}", linewidth=0.8)
            for bar, strong in zip(axes.containers[-1].patches, drives, strict=True):
                bar.set_alpha(1.0 if strong else 0.35)
        for control, (marker, colour) in CONTROL_MARKERS.items():
            column = f"{control}_rho"
            if column not in rows.columns:
                continue
            values = rows.drop_duplicates("property").set_index("property")[column].reindex(properties)
            values = values.to_numpy(dtype=float)
            shown = np.isfinite(values)
            if shown.any():
                axes.scatter(values[shown], np.arange(len(properties))[shown], marker=marker, s=30,
                             color=colour, zorder=3, label=f"control: {control}")
        axes.axvline(0, color="#444", linewidth=0.8)
        axes.set_yticks(np.arange(len(properties)), properties)
        axes.invert_yaxis()
        axes.set_xlim(-1.05, 1.05)
        axes.set(xlabel="rho (within-map Spearman)", title=target)
        axes.grid(axis="x", alpha=0.3)
    handles = [Patch(color=f"C{m % 10}", label=method) for m, method in enumerate(methods)]
    handles += [Line2D([], [], linestyle="", marker=marker, color=colour, label=f"control: {control}")
                for control, (marker, colour) in CONTROL_MARKERS.items() if f"{control}_rho" in frame.columns]
    figure.legend(handles=handles, loc="outside lower center", ncols=min(len(handles), 4), fontsize=8)
    return figure
