"""Interventions on the phantom: change one property of one voxel's nuclei, keep the rest, and see what a
model does, where the true effect on the targets is known.

`render_voxel` renders one voxel's block exactly as render_phantom does (same stroma, holes, noise and
seeded draws; the neighbours' nuclei that reach into it included) with one property overridden:

- count: the number of nuclei (count_factor: a multiplier of the voxel's rint(CD * n_max)). Fewer keeps
  the first k nuclei unchanged; more keeps all of them and adds nuclei, drawn from their own seeded
  stream like the phantom's, on free tissue pixels of the block's inner pixels.
- size: the median equivalent diameter in um (7.5 in the phantom); every diameter is scaled by
  size / 7.5, so each nucleus keeps its own deviation. The phantom keeps every semi-minor axis >= 1.5 px,
  so at P px per 200 um voxel diameters below about 600 / P um all look alike (the truth agrees).
- elongation: the median aspect a/b (1.2 + 2.0 SA in the phantom); each nucleus keeps its deviation.
- coherence: the SA that sets the von Mises spread of the doubled angles (0 .. 0.95), direction fixed.
  Each doubled angle's deviation from the direction is mapped through the von Mises CDF at the voxel's
  own SA and back through the inverse CDF at the new one, so the nuclei keep their rank of deviation.

`response_curves` sweeps such values over voxels and feeds the re-rendered blocks to a model (resized
like ingestion does, histoxai.patches.resize_block); with derived=True it adds the true MD, FA and FAIP
of each re-rendered voxel (nuclei.derived_targets, the `--targets derived` formula) and CC, its nuclei
count, so the model's response can be set against the right answer. `summarise` reduces the curves to
slopes and rank correlations, `response_figure` draws them and `markdown` tabulates the summary.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable, Iterable

import numpy as np
import pandas as pd

from histoxai.errors import InputError
from histoxai.phantom import nuclei as nu

PROPERTIES = ("count", "count_factor", "size", "elongation", "coherence")
TRUTH_TARGETS = ("MD", "FA", "FAIP", "CC")
CDF_POINTS = 4097  # grid over the doubled angle's deviation (-pi .. pi) for the von Mises CDF


@functools.lru_cache(maxsize=8)
def _renderer(summary: str | None, sample: int, crop: tuple[int, int] | None, pixels_per_voxel: int,
              n_max: int, seed: int):
    from histoxai.phantom.render import PhantomRenderer
    from histoxai.phantom.summary import load_summary

    maps = load_summary(summary).sample(sample)
    if crop is not None:
        maps = maps.cropped(*crop)
    return PhantomRenderer(maps, pixels_per_voxel, n_max, seed)


def _check_overrides(overrides: dict | None, pixels_per_voxel: int) -> dict[str, float]:
    checked = {}
    for name, value in (overrides or {}).items():
        if name not in PROPERTIES:
            raise InputError(f"override {name!r}: expected one of {', '.join(PROPERTIES)}")
        try:
            value = float(value)
        except (TypeError, ValueError) as err:
            raise InputError(f"override {name}={value!r}: expected a number") from err
        most = nu.max_n_max(pixels_per_voxel)
        bounds = {"count": (0, most), "count_factor": (0, np.inf), "size": (1e-3, np.inf),
                  "elongation": (1.0, np.inf), "coherence": (0.0, nu.MAX_COHERENCE)}[name]
        if not bounds[0] <= value <= bounds[1] or (name == "count" and value != int(value)):
            what = {"count": f"an integer from 0 to {most} (nuclei that fit the block)",
                    "count_factor": "a multiplier >= 0", "size": "a diameter in um > 0",
                    "elongation": "an aspect ratio >= 1",
                    "coherence": f"a value from 0 to {nu.MAX_COHERENCE}"}
            raise InputError(f"override {name}={value!r}: expected {what[name]}")
        checked[name] = value
    if "count" in checked and "count_factor" in checked:
        raise InputError("overrides: give count or count_factor, not both")
    return checked


def _von_mises_cdf(kappa: float) -> tuple[np.ndarray, np.ndarray]:
    """(deviation grid, CDF) of a von Mises of mean 0 on -pi .. pi."""
    grid = np.linspace(-np.pi, np.pi, CDF_POINTS)
    density = np.exp(kappa * (np.cos(grid) - 1))
    cdf = np.concatenate([[0.0], np.cumsum((density[1:] + density[:-1]) / 2)])
    return grid, cdf / cdf[-1]


def remap_coherence(doubled: np.ndarray, direction: float, sa_from: float, sa_to: float) -> np.ndarray:
    """Doubled angles drawn around 2 * direction at SA sa_from, moved by quantile to SA sa_to."""
    kappa_from, kappa_to = (float(nu.kappa_for_coherence(s)) for s in (sa_from, sa_to))
    if kappa_from == kappa_to:
        return doubled
    deviation = np.mod(doubled - 2 * direction + np.pi, 2 * np.pi) - np.pi
    grid, cdf_from = _von_mises_cdf(kappa_from)
    _, cdf_to = _von_mises_cdf(kappa_to)
    return 2 * direction + np.interp(np.interp(deviation, grid, cdf_from), cdf_to, grid)


def _added_draws(rng: np.random.Generator, add: int, taken: np.ndarray, allowed: np.ndarray,
                 direction: float, sa: float) -> dict[str, np.ndarray]:
    """Draws for `add` more nuclei on distinct free inner pixels, allowed (tissue) pixels first."""
    size = allowed.shape[0]
    free = np.ones((size, size), bool)
    free[taken[0], taken[1]] = False
    inner = np.zeros_like(free)
    inner[1:size - 1, 1:size - 1] = True
    ys, xs = np.nonzero(free & inner)
    order = rng.permutation(ys.size)
    order = order[np.argsort(~allowed[ys[order], xs[order]], kind="stable")][:add]
    draws = {"pixel_y": ys[order].astype(np.int64), "pixel_x": xs[order].astype(np.int64),
             "offset_y": rng.uniform(0.05, 0.95, add), "offset_x": rng.uniform(0.05, 0.95, add)}
    draws["doubled"] = rng.vonmises(2 * direction, float(nu.kappa_for_coherence(sa)), add)
    for name in ("aspect_z", "diameter_z", "stain_z"):
        draws[name] = rng.standard_normal(add)
    return draws


def _intervened(renderer, row: int, col: int, overrides: dict[str, float]):
    """The replacement of voxel (row, col)'s nuclei that applies the overrides (render.VoxelNuclei)."""
    size = renderer.size
    direction, sa = float(renderer.direction[row, col]), float(renderer.sa[row, col])

    def make(rng: np.random.Generator, count: int, allowed: np.ndarray) -> dict[str, np.ndarray]:
        draws = nu.voxel_draws(rng, count, allowed, direction, sa)
        wanted = count
        if "count" in overrides:
            wanted = int(overrides["count"])
        elif "count_factor" in overrides:
            wanted = min(int(np.rint(count * overrides["count_factor"])), nu.max_n_max(size))
        if wanted < count:
            draws = {k: v[:wanted] for k, v in draws.items()}
        elif wanted > count:
            extra = nu.stream(renderer.seed, renderer.maps.sample, nu.STREAM_INTERVENTION, row, col)
            added = _added_draws(extra, wanted - count, (draws["pixel_y"], draws["pixel_x"]), allowed,
                                 direction, sa)
            draws = {k: np.concatenate([v, added[k]]) for k, v in draws.items()}
        if "coherence" in overrides:
            draws["doubled"] = remap_coherence(draws["doubled"], direction, sa, overrides["coherence"])
        diameter_scale = overrides.get("size", nu.DIAMETER_UM) / nu.DIAMETER_UM
        return nu.nuclei_from_draws(draws, row, col, size, sa, aspect_median=overrides.get("elongation"),
                                    diameter_scale=diameter_scale)

    return make


def render_voxel(sample: int, row: int, col: int, *, pixels_per_voxel: int, seed: int,
                 n_max: int | None = None, overrides: dict | None = None, crop=None,
                 summary: str | os.PathLike | None = None) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """Voxel (row, col) of a sample as render_phantom renders it with the same options, one property
    of its nuclei overridden (PROPERTIES; None: none). Returns (P x P x 3 uint8 block, its nuclei
    table: nuclei.FIELDS with centroids in the sample's image pixels, labels local to the block)."""
    from histoxai.phantom.writer import resolve_options

    options = resolve_options(pixels_per_voxel, n_max, "real", seed, crop, "v7.3")
    checked = _check_overrides(overrides, options.pixels_per_voxel)
    renderer = _renderer(None if summary is None else os.fspath(summary), int(sample), options.crop,
                         options.pixels_per_voxel, options.n_max, options.seed)
    rows, cols = renderer.maps.shape
    if not (0 <= row < rows and 0 <= col < cols):
        raise InputError(f"voxel ({row}, {col}): sample {sample}'s grid is {rows} x {cols} voxels")
    if checked and not renderer.tissue_voxels[row, col]:
        raise InputError(f"voxel ({row}, {col}) of sample {sample} holds no tissue, so no nuclei to change")
    edit = _intervened(renderer, int(row), int(col), checked) if checked else None
    return renderer.block(int(row), int(col), edit)


def voxel_truth(table: dict[str, np.ndarray], n_max: int, pixels_per_voxel: int) -> dict[str, float]:
    """The derived-mode MD, FA and FAIP (nuclei.derived_targets) and CC (nuclei count) of one tissue
    voxel's nuclei table."""
    count = table["voxel_row"].size
    own = {**table, "voxel_row": np.zeros(count, np.int32), "voxel_col": np.zeros(count, np.int32)}
    zero = np.zeros((1, 1))
    derived = nu.derived_targets(own, np.ones((1, 1), bool), n_max, pixels_per_voxel,
                                 {"MD": zero, "FA": zero, "FAIP": zero})
    return {**{t: float(derived[t][0, 0]) for t in ("MD", "FA", "FAIP")}, "CC": float(count)}


def keras_predictor(model, batch_size: int = 64) -> Callable[[np.ndarray], dict[str, np.ndarray]]:
    """A predict callable for a Keras model fed like histoxai.dataset: float32 pixels 0-255."""

    def predict(images: np.ndarray) -> dict[str, np.ndarray]:
        outputs = model.predict(np.asarray(images, np.float32), batch_size=batch_size, verbose=0)
        if not isinstance(outputs, dict):
            outputs = dict(zip(model.output_names, outputs if isinstance(outputs, list) else [outputs],
                               strict=True))
        return {name: np.asarray(v, np.float64).reshape(-1) for name, v in outputs.items()}

    return predict


def response_curves(predict: Callable[[np.ndarray], dict[str, np.ndarray]], voxels: Iterable,
                    properties: dict[str, list[float]], *, pixels_per_voxel: int, image_size: int, seed: int,
                    n_max: int | None = None, derived: bool = False, crop=None,
                    summary: str | os.PathLike | None = None) -> pd.DataFrame:
    """Predictions for every voxel re-rendered at every value of every property: long rows of
    property, value, target, voxel ('sample:row:col'), sample, row, col, prediction (and truth, the
    derived-mode value of TRUTH_TARGETS, NaN for other targets, when derived)."""
    from histoxai.patches import resize_block
    from histoxai.phantom.writer import resolve_options

    voxels = [tuple(int(v) for v in voxel) for voxel in voxels]
    if not voxels or any(len(v) != 3 for v in voxels):
        raise InputError("voxels: expected a non-empty list of (sample, row, col)")
    if not properties or any(len(values) == 0 for values in properties.values()):
        raise InputError("properties: expected {property: [values, ...]} with at least one value each")
    n_max = resolve_options(pixels_per_voxel, n_max, "real", seed, crop, "v7.3").n_max
    rows = []
    for prop, values in properties.items():
        for value in values:
            blocks, truths = [], []
            for sample, row, col in voxels:
                block, table = render_voxel(sample, row, col, pixels_per_voxel=pixels_per_voxel, seed=seed,
                                            n_max=n_max, overrides={prop: value}, crop=crop, summary=summary)
                blocks.append(resize_block(block, image_size))
                truths.append(voxel_truth(table, n_max, pixels_per_voxel))
            predictions = predict(np.stack(blocks))
            for target, predicted in predictions.items():
                predicted = np.asarray(predicted, np.float64).reshape(-1)
                for (sample, row, col), p, truth in zip(voxels, predicted, truths, strict=True):
                    record = {"property": prop, "value": float(value), "target": target,
                              "voxel": f"{sample}:{row}:{col}", "sample": sample, "row": row, "col": col,
                              "prediction": float(p)}
                    if derived:
                        record["truth"] = truth.get(target, np.nan)
                    rows.append(record)
    return pd.DataFrame(rows)


def _slope(x: np.ndarray, y: np.ndarray) -> float:
    if np.ptp(x) == 0 or not np.isfinite(y).all():
        return float("nan")
    dx = x - x.mean()
    return float(np.sum(dx * (y - y.mean())) / np.sum(dx * dx))  # exactly 0 for a flat curve


def _pearson(x: np.ndarray, y: np.ndarray) -> float:
    if len(x) < 2 or np.ptp(x) == 0 or np.ptp(y) == 0:
        return float("nan")
    return float(np.corrcoef(x, y)[0, 1])


def _spearman(x: np.ndarray, y: np.ndarray) -> float:
    return _pearson(pd.Series(x).rank().to_numpy(), pd.Series(y).rank().to_numpy())


def summarise(curves: pd.DataFrame) -> pd.DataFrame:
    """Per property x target: the values and mean prediction per value (tuples), slope (per unit),
    slope_std (slope x SD of the values / SD of all the target's predictions), spearman (mean over
    voxels of Spearman's rho of prediction vs value); with truth also true_means, true_slope,
    true_slope_std and agreement (Pearson r of the mean predicted and mean true curves)."""
    has_truth = "truth" in curves.columns
    spread = curves.groupby("target")["prediction"].std(ddof=0)
    true_spread = curves.groupby("target")["truth"].std(ddof=0) if has_truth else None
    rows = []
    for (prop, target), group in curves.groupby(["property", "target"], sort=False):
        means = group.groupby("value")["prediction"].mean()
        x, y = means.index.to_numpy(float), means.to_numpy()
        slope = _slope(x, y)
        rhos = [_spearman(g["value"].to_numpy(), g["prediction"].to_numpy())
                for _, g in group.groupby("voxel")]
        rhos = [r for r in rhos if np.isfinite(r)]
        row = {"property": prop, "target": target, "values": tuple(x), "means": tuple(y), "slope": slope,
               "slope_std": slope * x.std() / spread[target] if spread[target] > 0 else float("nan"),
               "spearman": float(np.mean(rhos)) if rhos else float("nan")}
        if has_truth:
            truth = group.groupby("value")["truth"].mean().to_numpy()
            true_slope = _slope(x, truth)
            row.update(true_means=tuple(truth), true_slope=true_slope,
                       true_slope_std=true_slope * x.std() / true_spread[target]
                       if true_spread[target] > 0 else float("nan"),
                       agreement=_pearson(y, truth) if np.isfinite(truth).all() else float("nan"))
        rows.append(row)
    return pd.DataFrame(rows)


def response_figure(curves: pd.DataFrame):
    """One panel per target: mean prediction (solid) and, with truth, mean true value (dashed) against
    each property's value scaled to 0..1 of its tested range."""
    from matplotlib.figure import Figure

    from histoxai.plots import DPI

    targets = list(dict.fromkeys(curves["target"]))
    figure = Figure(figsize=(4.2 * max(len(targets), 1), 3.8), dpi=DPI, layout="constrained")
    colours = {p: f"C{i}" for i, p in enumerate(dict.fromkeys(curves["property"]))}
    for i, target in enumerate(targets):
        axes = figure.add_subplot(1, len(targets), i + 1)
        for prop, group in curves[curves["target"] == target].groupby("property", sort=False):
            means = group.groupby("value")[["prediction", *(["truth"] if "truth" in group else [])]].mean()
            x = means.index.to_numpy(float)
            scaled = (x - x.min()) / np.ptp(x) if np.ptp(x) > 0 else np.zeros_like(x)
            span = f"{x.min():.3g}..{x.max():.3g}"
            axes.plot(scaled, means["prediction"], "o-", color=colours[prop], label=f"{prop} ({span})")
            if "truth" in means and means["truth"].notna().all():
                axes.plot(scaled, means["truth"], "--", color=colours[prop], alpha=0.8)
        axes.set_title(f"{target}" + (" (dashed: truth)" if "truth" in curves else ""))
        axes.set_xlabel("property value, 0..1 of its tested range")
        axes.set_ylabel(f"mean predicted {target}")
        axes.legend(fontsize=8)
    return figure


def markdown(summary: pd.DataFrame) -> str:
    """The summary as a Markdown table."""
    has_truth = "true_slope" in summary.columns
    head = ["property", "target", "mean prediction per value", "slope", "standardised slope", "Spearman ρ"]
    if has_truth:
        head += ["true slope", "true standardised slope", "agreement r"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for row in summary.itertuples(index=False):
        curve = " → ".join(f"{m:.3g}" for m in row.means)
        cells = [row.property, row.target, curve, f"{row.slope:.3g}", f"{row.slope_std:.3g}",
                 f"{row.spearman:.2f}"]
        if has_truth:
            cells += [f"{row.true_slope:.3g}", f"{row.true_slope_std:.3g}", f"{row.agreement:.2f}"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"
