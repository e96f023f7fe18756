"""Plots (histoxai.plots): learning curves from a real training's history.csv and measured vs predicted
scatter plots: PNG size and decoding, the data actually drawn (read back from the Figure's axes), the
phase line's place, NaN rows, empty input, and byte-identical output for identical data."""

from __future__ import annotations

import io

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from histoxai import artifacts, plots
from histoxai import config as configs
from histoxai.metrics import format_value, r2_score
from histoxai.training import train
from tests.train_data import write_blob_manifest

TINY = {"backbone": "tiny", "weights": None, "image_size": 32, "batch_size": 16, "frozen_epochs": 2,
        "finetune_epochs": 2, "patience": 5, "lr_schedule": "none", "learning_rate": 3e-3,
        "dense_units": 16, "feature_units": 8, "targets": ["MD", "CC"]}


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A tiny MD + CC model trained 2 epochs frozen, then 2 fine-tuned; its folder and history.csv."""
    root = tmp_path_factory.mktemp("plots")
    split = write_blob_manifest(root / "split", n=64, size=32, seed=4)
    train(configs.from_dict(TINY), str(split), str(root / "model"))
    return root / "model", pd.read_csv(root / "model" / artifacts.TRAIN_HISTORY)


def _decoded(png: bytes) -> Image.Image:
    image = Image.open(io.BytesIO(png))
    image.load()
    return image


def _vertical_lines(axes) -> list[float]:
    """x of every vertical line (constant x, spanning the axes) in a panel."""
    return [float(line.get_xdata()[0]) for line in axes.get_lines()
            if len(set(np.asarray(line.get_xdata(), dtype=float))) == 1 and len(line.get_xdata()) == 2]


def _curve(axes, label: str) -> tuple[np.ndarray, np.ndarray]:
    line = next(line for line in axes.get_lines() if line.get_label() == label)
    return np.asarray(line.get_xdata(), dtype=float), np.asarray(line.get_ydata(), dtype=float)


def _history(values: list[float], frozen: int) -> pd.DataFrame:
    n = len(values)
    return pd.DataFrame({"epoch": range(1, n + 1),
                         "phase": ["frozen"] * frozen + ["finetune"] * (n - frozen),
                         "phase_epoch": [*range(1, frozen + 1), *range(1, n - frozen + 1)],
                         "learning_rate": 1e-3, "loss": values, "val_loss": [v * 1.1 for v in values],
                         "MD_r2": [1 - v for v in values], "val_MD_r2": [0.9 - v for v in values]})


# ---- learning curves ----

def test_learning_curves_of_a_real_training_draw_its_history(trained):
    model_dir, history = trained
    assert list(history["phase"]) == ["frozen", "frozen", "finetune", "finetune"]
    assert sorted(plots.history_targets(history)) == ["CC", "MD"]
    figure = plots.learning_curves_figure(plots.read_history(str(model_dir)), "tiny")
    loss_axes, r2_axes = figure.axes
    # the phase switch lies between epoch 2 (last frozen) and epoch 3 (first fine-tuned), in both panels
    assert _vertical_lines(loss_axes) == [2.5] and _vertical_lines(r2_axes) == [2.5]
    assert any("fine-tuning from epoch 3" in text.get_text() for text in r2_axes.get_legend().get_texts())
    x, y = _curve(loss_axes, "validation")
    assert list(x) == [1, 2, 3, 4] and np.allclose(y, history["val_loss"])
    for target in ("MD", "CC"):
        assert np.allclose(_curve(r2_axes, f"{target} train")[1], history[f"{target}_r2"])
        assert np.allclose(_curve(r2_axes, f"{target} validation")[1], history[f"val_{target}_r2"])
    image = _decoded(plots.learning_curves(history, "tiny"))
    assert image.format == "PNG" and image.size == (1000, 400)


def test_learning_curves_depend_on_the_data_and_are_reproducible():
    first = _history([0.5, 0.4, 0.3, 0.2, 0.15], frozen=2)
    second = _history([0.5, 0.45, 0.42, 0.41, 0.40], frozen=2)
    png = plots.learning_curves(first, "a")
    assert png == plots.learning_curves(first.copy(), "a")  # same data, same bytes
    assert png != plots.learning_curves(second, "a")
    assert np.array_equal(np.asarray(_decoded(png)), np.asarray(_decoded(plots.learning_curves(first, "a"))))
    assert _vertical_lines(plots.learning_curves_figure(_history([0.5] * 5, frozen=3), "b").axes[0]) == [3.5]


def test_one_phase_has_no_phase_line_and_no_epochs_is_a_figure_not_a_crash():
    figure = plots.learning_curves_figure(_history([0.5, 0.4, 0.3], frozen=3), "frozen only")
    assert plots.phase_switch(_history([0.5, 0.4, 0.3], frozen=3)) is None
    assert all(not _vertical_lines(axes) for axes in figure.axes)
    empty = plots.learning_curves_figure(_history([0.5], frozen=1).iloc[0:0], "none")
    assert [t.get_text() for t in empty.axes[0].texts] == [plots.NO_EPOCHS]
    assert _decoded(plots.png(empty)).size == (1000, 400)


def test_very_negative_r2_is_cut_and_the_axis_says_so():
    history = _history([5.0, 0.4, 0.3], frozen=1)  # train R² -4 in epoch 1
    r2_axes = plots.learning_curves_figure(history, "x").axes[1]
    assert r2_axes.get_ylim()[0] == plots.R2_FLOOR and "cut" in r2_axes.get_ylabel()


def test_read_history_of_a_folder_without_one(tmp_path):
    assert plots.read_history(str(tmp_path)) is None


# ---- measured vs predicted ----

def _predictions(seed: int, n: int = 60) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    measured = rng.uniform(0.5, 2.0, n)
    return pd.DataFrame({"sample": np.where(np.arange(n) < n // 3, "10", "2"), "row": np.arange(n), "col": 0,
                         "split": "test", "MD_measured": measured,
                         "MD_predicted": measured + rng.normal(0, 0.2, n)})


def test_scatter_draws_every_finite_pair_with_r2_from_the_metrics_library():
    frame = _predictions(1)
    frame.loc[[0, 30], "MD_measured"] = np.nan
    frame.loc[31, "MD_predicted"] = np.inf
    figure = plots.scatter_figure(frame, "MD", "model a: MD")
    axes = figure.axes[0]
    kept = frame.drop(index=[0, 30, 31])
    points = np.concatenate([c.get_offsets() for c in axes.collections])
    assert len(points) == len(kept)
    assert np.allclose(np.sort(points[:, 0]), np.sort(kept["MD_measured"]))
    overall = format_value(r2_score(kept["MD_measured"], kept["MD_predicted"]))
    assert f"R² {overall} (n {len(kept)})" in axes.get_title()
    labels = [t.get_text() for t in axes.get_legend().get_texts()]
    two = kept[kept["sample"] == "2"]
    # samples in numeric order, each with its own R² and count
    r2_two = format_value(r2_score(two["MD_measured"], two["MD_predicted"]))
    assert labels[0] == f"2: R² {r2_two} (n {len(two)})"
    assert labels[1].startswith("10: ") and labels[2] == "ŷ = y"
    identity = _curve(axes, "ŷ = y")
    assert np.array_equal(identity[0], identity[1]) and identity[0][0] <= points.min()


def test_scatter_png_depends_on_the_data():
    first = plots.measured_vs_predicted(_predictions(1), "MD", "t")
    image = _decoded(first)
    assert image.format == "PNG" and image.size == (550, 500)
    assert first == plots.measured_vs_predicted(_predictions(1), "MD", "t")
    assert first != plots.measured_vs_predicted(_predictions(2), "MD", "t")


def test_scatter_of_no_patches_says_so():
    for frame in (_predictions(1).iloc[0:0], _predictions(1).assign(MD_measured=np.nan), pd.DataFrame()):
        figure = plots.scatter_figure(frame, "MD", "empty")
        assert [t.get_text() for t in figure.axes[0].texts] == [plots.NO_PATCHES]
        assert _decoded(plots.png(figure)).size == (550, 500)


def test_a_constant_measured_value_shows_an_undefined_r2():
    frame = _predictions(3).assign(MD_measured=1.0)
    title = plots.scatter_figure(frame, "MD", "constant").axes[0].get_title()
    assert "R² n/a" in title


# ---- the run report's plots ----

def test_run_report_takes_the_evaluate_steps_plots_and_draws_missing_curves(trained, tmp_path):
    from histoxai.components.report.report import _with_figures, run_plots
    from histoxai.sections import render_html, render_markdown

    model_dir, history = trained
    evaluation = tmp_path / "evaluation"
    scatter = plots.measured_vs_predicted(_predictions(1), "MD", "m: MD")
    (evaluation / "plots" / "m").mkdir(parents=True)
    (evaluation / plots.plot_path("m", "MD")).write_bytes(scatter)
    found = run_plots({"m": str(model_dir)}, {"m": {"targets": ["MD", "CC"]}}, str(evaluation))
    # curves from history.csv (the evaluation has none), MD's scatter from the evaluation, no CC scatter
    assert [(f["kind"], f["uri"]) for f in found] == [
        ("curves", None), ("scatter", str(evaluation / "plots" / "m" / "MD.png"))]
    assert found[0]["png"] == plots.learning_curves(history, "model m: learning curves")
    assert found[1]["png"] == scatter
    sections = [("h2", "plots"), ("figures", "scatter"), ("figures", "curves")]
    markdown = render_markdown(_with_figures(sections, found, None))
    assert f"]({evaluation / 'plots' / 'm' / 'MD.png'})" in markdown and "curves" in markdown
    for i, figure in enumerate(found):
        (tmp_path / f"{i}.png").write_bytes(figure["png"])
    page = render_html(_with_figures(sections, found, str(tmp_path)), "t", image_root=tmp_path)
    assert page.count("<img src=\"data:image/png;base64,") == 2


# ---- what drives the relevance: per nuclear property ----

def _drivers_table() -> pd.DataFrame:
    rows = []
    for target in ("MD", "CC"):
        for method, setting, shift in (("gradcam++", "", 0.0), ("smoothgrad", "sigma=0.2", -0.3)):
            for prop, rho in (("area_um2", 0.6), ("elongation", -0.2), ("density_per_mm2", np.nan)):
                for kind in ("signed", "positive"):
                    value = rho + shift + (0.05 if kind == "positive" else 0.0)
                    rows.append({"target": target, "method": method, "setting": setting, "score": "increase",
                                 "property": prop, "kind": kind, "rho": value, "rho_low": value - 0.1,
                                 "rho_high": value + 0.2, "darkness_rho": 0.25, "edges_rho": -0.1,
                                 "verdict": "drives" if abs(value) > 0.4 else "no evidence"})
    return pd.DataFrame(rows)


def test_drivers_figure_draws_rho_with_its_interval_per_method_and_marks_the_controls():
    table = _drivers_table()
    figure = plots.drivers_figure(table)
    assert [a.get_title() for a in figure.axes] == ["MD", "CC"]
    axes = figure.axes[0]
    assert [t.get_text() for t in axes.get_yticklabels()] == ["area_um2", "elongation", "density_per_mm2"]
    first, second = (container for container in axes.containers if hasattr(container, "patches"))
    assert np.allclose([b.get_width() for b in first.patches], [0.6, -0.2, 0.0])  # NaN: no bar
    assert np.allclose([b.get_width() for b in second.patches], [0.3, -0.5, 0.0])
    assert [b.get_alpha() for b in first.patches] == [1.0, 0.35, 0.35]  # only area drives gradcam++
    assert [b.get_alpha() for b in second.patches] == [0.35, 1.0, 0.35]
    # the 95 % CI as error bars: rho - 0.1 .. rho + 0.2
    segments = first.errorbar.lines[2][0].get_segments()
    assert np.allclose([s[:, 0] for s in segments[:2]], [[0.5, 0.8], [-0.3, 0.0]])
    markers = {c.get_label(): c.get_offsets() for c in axes.collections
               if c.get_label().startswith("control")}
    assert np.allclose(markers["control: darkness"][:, 0], 0.25) and len(markers["control: edges"]) == 3
    labels = [t.get_text() for t in figure.legends[0].get_texts()]
    assert labels == ["gradcam++", "smoothgrad:sigma=0.2", "control: darkness", "control: edges"]
    positive = plots.drivers_figure(table, kind="positive").axes[0]
    bars = next(c for c in positive.containers if hasattr(c, "patches"))
    assert np.isclose(bars.patches[0].get_width(), 0.65)
    assert plots.png(plots.drivers_figure(table)) == plots.png(plots.drivers_figure(table.copy()))
    empty = plots.drivers_figure(table.iloc[0:0])
    assert [t.get_text() for t in empty.axes[0].texts] == ["no nuclei"]


def test_run_report_shows_what_drives_the_prediction_or_that_the_run_did_not_ask(tmp_path):
    from histoxai.components.report.drivers_section import drivers_section, drivers_summary, terminal_lines
    from histoxai.components.report.report import _with_figures
    from histoxai.sections import render_html, render_markdown
    from tests.app_data import synthesise_run
    from tests.test_app_drivers import write_drivers

    for name in ("asked", "other"):
        synthesise_run(tmp_path / name, patches=4, patch_size=32, map_size=16, samples=1,
                       targets=("MD", "CC"))
    asked, other = tmp_path / "asked" / "explain", tmp_path / "other" / "explain"
    write_drivers(asked)
    (asked / artifacts.CONCEPTS_TABLE).unlink()  # a missing table leaves its answer empty, nothing else
    maps_dirs = {"multitask": [str(asked)], "single_task": [str(other)]}
    sections, figures = drivers_section(maps_dirs)
    assert [c for k, c in sections if k == "h2"] == ["What drives the prediction: model multitask",
                                                     "What drives the prediction: model single_task"]
    assert ("h3", "1. Relevance per nucleus") in sections
    assert ("list", ["MD gradcam++ (signed): rho +0.60"]) in sections
    table = next(c for k, c in sections if k == "table")
    assert list(table.columns)[0] == "target" and table["verdict"].tolist() == ["disagree", "disagree"]
    assert any(k == "p" and "explain_nuclei" in c for k, c in sections[-2:])
    assert [f["uri"] for f in figures] == [str(asked / artifacts.RESPONSE_PLOT),
                                           str(asked / artifacts.DRIVERS_PLOT)]
    markdown = render_markdown(_with_figures(sections, figures, None))
    assert f"]({asked / artifacts.DRIVERS_PLOT})" in markdown and "| MD | size | density | size |" in markdown
    for i, figure in enumerate(figures):
        (tmp_path / f"{i}.png").write_bytes(figure["png"])
    page = render_html(_with_figures(sections, figures, str(tmp_path)), "t", image_root=tmp_path)
    assert page.count("<img src=\"data:image/png;base64,") == 2 and "<td>disagree</td>" in page
    assert "<h3>1. Relevance per nucleus</h3>" in page and "# What" not in page

    facts = drivers_summary(maps_dirs)
    assert facts["single_task"] is None
    md = facts["multitask"]["targets"]["MD"]
    assert md["saliency"] == {"property": "area_um2", "rho": 0.6}
    assert md["concepts"] is None and md["interventions"] == {"property": "size", "slope_std": -0.5}
    assert md["agreement"] == "disagree"
    assert terminal_lines(facts)[0] == ("multitask MD: saliency area_um2, concepts -, interventions size; "
                                        "disagree")
    none_asked, none_figures = drivers_section({"single_task": [str(other)]})
    assert none_figures == [] and [k for k, _ in none_asked] == ["h2", "p"]
    assert "did not ask" in none_asked[1][1] and drivers_section({}) == ([], [])
