"""Pictures for the review app: saliency overlays on patches, nuclei outlines, tile titles and small charts.

Maps are normalised for display only here, by the explain store's functions (per map `minmax`, or a
dataset-wide range with `normalize`); colours come from histoxai.colour.
"""

from __future__ import annotations

import math

import numpy as np

from histoxai.colour import DIVERGING, VIRIDIS, colour_table
from histoxai.saliency import store

NORMALISATIONS = ("dataset percentile", "per map (min-max)")
OUTLINE_COLOUR = np.array([255, 255, 255], np.uint8)


def normalise(raw: np.ndarray, mode: str, value_range: tuple[float, float] | None) -> np.ndarray:
    """[0, 1] values (NaN stays NaN): per map min-max, or the given dataset-wide range."""
    if mode == NORMALISATIONS[1] or value_range is None:
        return store.minmax(raw)
    return store.normalize(raw, value_range)


def _resize(values: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Bilinear resize of a float map to (height, width); NaN pixels stay NaN (nearest)."""
    if values.shape == size:
        return values
    from PIL import Image

    finite = np.isfinite(values)
    smooth = Image.fromarray(np.where(finite, values, 0).astype(np.float32))
    out = np.asarray(smooth.resize(size[::-1], Image.Resampling.BILINEAR))
    if finite.all():
        return out
    holes = np.asarray(Image.fromarray(~finite).resize(size[::-1], Image.Resampling.NEAREST))
    return np.where(holes, np.nan, out)


def overlay(patch: np.ndarray, unit_map: np.ndarray | None, colour_map: str, alpha: float,
            outline: np.ndarray | None = None) -> np.ndarray:
    """The patch with the [0, 1] map blended over it at `alpha` (none where the map is NaN), and the
    outline pixels (bool, patch-sized) drawn on top."""
    out = patch.astype(np.float32)
    if unit_map is not None:
        values = _resize(np.asarray(unit_map, np.float32), patch.shape[:2])
        finite = np.isfinite(values)
        levels = np.rint(np.clip(np.where(finite, values, 0), 0, 1) * 255).astype(np.uint8)
        colours = colour_table(colour_map)[levels]
        weight = np.where(finite, np.float32(alpha), np.float32(0))[..., None]
        out += (colours - out) * weight
    out = np.rint(out).astype(np.uint8)
    if outline is not None:
        out[outline] = OUTLINE_COLOUR
    return out


def outline(mask: np.ndarray) -> np.ndarray:
    """The boundary pixels of a bool mask (the mask minus its erosion)."""
    from scipy.ndimage import binary_erosion

    return mask & ~binary_erosion(mask, border_value=0)


def _number(value: float, digits: int = 3) -> str:
    return "n/a" if value is None or not math.isfinite(value) else f"{value:.{digits}g}"


def tile_title(row) -> str:
    """The thesis's tile title: index, y, ŷ, Δ, rΔ."""
    rdelta = row["rdelta"]
    rdelta_text = "n/a" if not math.isfinite(rdelta) else f"{rdelta:+.1f} %"
    delta = row["delta"]
    delta_text = "n/a" if not math.isfinite(delta) else f"{delta:+.3g}"
    return (f"#{int(row['patch'])} · y {_number(row['y'])} · ŷ {_number(row['y_hat'])} · "
            f"Δ {delta_text} · rΔ {rdelta_text}")


HISTOGRAM_PX = (520, 110)  # drawn at about twice the sidebar's width, for sharp lines
HISTOGRAM_COLOURS = {"chosen": (76, 120, 168), "other": (207, 216, 227), "text": (60, 60, 60)}


def histogram(values: np.ndarray, bounds: tuple[float, float] | None = None, bins: int = 30) -> np.ndarray:
    """A small bar chart (RGB image) of the values' histogram, the bars in the chosen range dark, the lowest
    and highest value and the count under it. Drawn here with Pillow, so that a page of tiles needs no
    chart library in the browser (loading one delayed the first grid by about a second)."""
    from PIL import Image, ImageDraw, ImageFont

    values = values[np.isfinite(values)]
    if values.size:
        counts, edges = np.histogram(values, bins=bins)
    else:
        counts, edges = np.zeros(bins, int), np.linspace(0.0, 1.0, bins + 1)
    width, height = HISTOGRAM_PX
    font = ImageFont.load_default(size=20)
    plot_height = height - 28
    canvas = Image.new("RGB", (width, height), (255, 255, 255))
    draw = ImageDraw.Draw(canvas)
    peak = max(int(counts.max()), 1)
    step = width / bins
    for i, count in enumerate(counts):
        chosen = bounds is None or (edges[i + 1] >= bounds[0] and edges[i] <= bounds[1])
        top = plot_height - round(plot_height * count / peak)
        if count:
            draw.rectangle((round(i * step) + 1, top, round((i + 1) * step) - 1, plot_height),
                           fill=HISTOGRAM_COLOURS["chosen" if chosen else "other"])
    draw.line((0, plot_height, width, plot_height), fill=HISTOGRAM_COLOURS["text"], width=1)
    text = HISTOGRAM_COLOURS["text"]
    draw.text((6, height - 2), f"{edges[0]:.4g}", fill=text, font=font, anchor="lb")
    draw.text((width // 2, height - 2), f"n = {values.size}", fill=text, font=font, anchor="mb")
    draw.text((width - 6, height - 2), f"{edges[-1]:.4g}", fill=text, font=font, anchor="rb")
    return np.asarray(canvas)


VOXEL_SELECTION = "voxel"


def grid_chart(values: np.ndarray, title: str, diverging: bool, scale: tuple[float, float] | None):
    """(data, Vega-Lite spec) of a clickable heat map of a map on the MR grid (rows down, columns across);
    a click selects a voxel (the selection named VOXEL_SELECTION)."""
    import pandas as pd

    rows, cols = np.nonzero(np.isfinite(values))
    frame = pd.DataFrame({"row": rows, "col": cols, "value": values[rows, cols]})
    colour_scale = {"range": list(DIVERGING if diverging else VIRIDIS), "clamp": True}
    if scale is not None:
        colour_scale["domain"] = list(scale)
    height = max(200, min(560, 6 * values.shape[0]))
    hidden = {"labels": False, "ticks": False}
    spec = {"title": title, "height": height, "width": round(height * values.shape[1] / values.shape[0]),
            "params": [{"name": VOXEL_SELECTION, "select": {"type": "point", "fields": ["row", "col"],
                                                            "on": "click"}}],
            "mark": {"type": "rect"},
            "encoding": {
                "x": {"field": "col", "type": "ordinal", "title": "column", "axis": hidden,
                      "scale": {"domain": list(range(values.shape[1]))}},
                "y": {"field": "row", "type": "ordinal", "title": "row", "axis": hidden,
                      "scale": {"domain": list(range(values.shape[0]))}},
                "color": {"field": "value", "type": "quantitative", "scale": colour_scale},
                "opacity": {"condition": {"param": VOXEL_SELECTION, "value": 1.0, "empty": True},
                            "value": 0.5},
                "tooltip": [{"field": "row", "type": "ordinal"}, {"field": "col", "type": "ordinal"},
                            {"field": "value", "type": "quantitative", "format": ".4g"}]}}
    return frame, spec
