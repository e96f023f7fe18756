"""Colour scales: the one table of colour maps and the one mapping of values to colours.

Rendered with NumPy, not with matplotlib (the project's plotting library, histoxai/plots.py): this
colours map images pixel by pixel, it draws no plot, and its fixed anchor tables (sampled from
matplotlib's maps) give the evaluate step's map images and the review app's overlays the same colours
whatever matplotlib version is installed. Values beyond a scale take its end colour; NaN is grey.
"""

from __future__ import annotations

import functools

import numpy as np

# Colour map anchors, interpolated linearly: viridis, and ColorBrewer RdBu reversed (negative = blue).
VIRIDIS = ("#440154", "#482475", "#414487", "#355f8d", "#2a788e", "#21918c", "#22a884", "#44bf70",
           "#7ad151", "#bddf26", "#fde725")
DIVERGING = ("#2166ac", "#4393c3", "#92c5de", "#d1e5f0", "#f7f7f7", "#fddbc7", "#f4a582", "#d6604d",
             "#b2182b")
NO_PATCH = (200, 200, 200)
PERCENTILES = (1.0, 99.0)  # a shared scale spans these percentiles of the values
# Colour map anchors (interpolated linearly), sampled at 0, 0.1, ..., 1 from matplotlib's maps.
COLOUR_MAPS = {
    "viridis": VIRIDIS,
    "magma": ("#000004", "#140e36", "#3b0f70", "#641a80", "#8c2981", "#b73779", "#de4968", "#f7705c",
              "#fe9f6d", "#fecf92", "#fcfdbf"),
    "inferno": ("#000004", "#160b39", "#420a68", "#6a176e", "#932667", "#bc3754", "#dd513a", "#f37819",
                "#fca50a", "#f6d746", "#fcffa4"),
    "jet": ("#00007f", "#0000ff", "#007fff", "#00ffff", "#7fff7f", "#ffff00", "#ff7f00", "#ff0000",
            "#7f0000"),
    "gray": ("#000000", "#ffffff"),
}


def colour_scales(arrays: dict[str, np.ndarray]) -> dict[str, tuple[float, float]]:
    """(low, high) of the shared measured/predicted scale and of the symmetric residual scale."""
    values = np.concatenate([arrays["measured"].ravel(), arrays["predicted"].ravel()])
    values = values[np.isfinite(values)]
    low, high = (np.percentile(values, PERCENTILES) if values.size else (0.0, 1.0))
    if not high > low:  # constant maps: widen so the one value sits mid-scale
        half = max(abs(float(low)) * 0.05, 1e-6)
        low, high = low - half, high + half
    residual = np.abs(arrays["residual"][np.isfinite(arrays["residual"])])
    limit = float(np.percentile(residual, PERCENTILES[1])) if residual.size else 0.0
    limit = limit if limit > 0 else 1e-6
    return {"value": (float(low), float(high)), "residual": (-limit, limit)}


def _rgb(hex_colours) -> np.ndarray:
    return np.array([[int(h[i:i + 2], 16) for i in (1, 3, 5)] for h in hex_colours], dtype=np.float64)


def colourise(values: np.ndarray, low: float, high: float, anchors) -> np.ndarray:
    """uint8 RGB image: values mapped linearly onto the anchors between low and high; NaN -> NO_PATCH."""
    table = _rgb(anchors)
    t = np.clip((np.nan_to_num(values, nan=low) - low) / (high - low), 0.0, 1.0) * (len(table) - 1)
    index = np.minimum(t.astype(int), len(table) - 2)
    frac = (t - index)[..., None]
    rgb = table[index] * (1 - frac) + table[index + 1] * frac
    rgb[~np.isfinite(values)] = NO_PATCH
    return np.round(rgb).astype(np.uint8)


@functools.cache
def colour_table(colour_map: str) -> np.ndarray:
    """(256, 3) float32 colours of a colour map, by `colourise` at 256 evenly spaced values."""
    return colourise(np.linspace(0.0, 1.0, 256), 0.0, 1.0, COLOUR_MAPS[colour_map]).astype(np.float32)
