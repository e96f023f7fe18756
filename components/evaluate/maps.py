"""Measured, predicted and residual maps on the MR grid, as arrays (.npz) and one PNG with colour bars.

Rendered with Pillow (matplotlib is not a dependency): measured and predicted share one sequential
colour scale (viridis) from the 1st to the 99th percentile of both maps' values, and the residual
ŷ - y has a diverging scale (blue - white - red) symmetric about 0 up to the 99th percentile of |ŷ - y|.
Values beyond a scale take its end colour; voxels without a patch are grey.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

# Colour map anchors, interpolated linearly: viridis, and ColorBrewer RdBu reversed (negative = blue).
VIRIDIS = ("#440154", "#482475", "#414487", "#355f8d", "#2a788e", "#21918c", "#22a884", "#44bf70",
           "#7ad151", "#bddf26", "#fde725")
DIVERGING = ("#2166ac", "#4393c3", "#92c5de", "#d1e5f0", "#f7f7f7", "#fddbc7", "#f4a582", "#d6604d",
             "#b2182b")
NO_PATCH = (200, 200, 200)
BACKGROUND = (255, 255, 255)
TEXT = (20, 20, 20)
PERCENTILES = (1.0, 99.0)
PANEL_PX = 300  # longest side of one map panel
BAR_WIDTH, PAD, FONT_SIZE = 14, 12, 13


def grid_maps(predictions, grid: tuple[int, int], target: str) -> dict[str, np.ndarray]:
    """measured, predicted, residual (ŷ - y) as float64 grids (rows x cols), NaN where there is no patch
    (and, for measured and residual, where the patch has no measured value)."""
    from histoxai.components.evaluate.evaluate import measured_column, predicted_column

    rows = predictions["row"].to_numpy()
    cols = predictions["col"].to_numpy()
    out = {}
    for name, column in (("measured", measured_column(target)), ("predicted", predicted_column(target))):
        values = np.full(grid, np.nan)
        values[rows, cols] = predictions[column].to_numpy(dtype=np.float64)
        out[name] = values
    out["residual"] = out["predicted"] - out["measured"]
    return out


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


def _label(value: float) -> str:
    return f"{value:.3g}"


def render_png(arrays: dict[str, np.ndarray], scales: dict, title: str) -> bytes:
    """Three panels (measured | predicted | residual), a colour bar after the 2nd and the 3rd, a title."""
    import io

    from PIL import Image, ImageDraw, ImageFont

    font = ImageFont.load_default(size=FONT_SIZE)
    rows, cols = arrays["measured"].shape
    scale = max(1, PANEL_PX // max(rows, cols))  # whole pixels per voxel: crisp voxel edges
    width, height = cols * scale, rows * scale
    label_width = max(int(font.getlength(_label(v))) for s in scales.values() for v in (*s, sum(s) / 2))
    bar_block = BAR_WIDTH + 4 + label_width + PAD
    top = PAD + 2 * (FONT_SIZE + 6)
    canvas = Image.new("RGB", (PAD + 3 * (width + PAD) + 2 * bar_block, top + height + PAD), BACKGROUND)
    draw = ImageDraw.Draw(canvas)
    draw.text((PAD, PAD), title, fill=TEXT, font=font)
    panels = (("measured", "value", VIRIDIS, False), ("predicted", "value", VIRIDIS, True),
              ("residual", "residual", DIVERGING, True))
    # Plain words: Pillow's built-in font has no glyph for ŷ.
    headings = {"measured": "measured", "predicted": "predicted",
                "residual": "residual = predicted - measured"}
    x = PAD
    for name, scale_name, anchors, with_bar in panels:
        low, high = scales[scale_name]
        image = Image.fromarray(colourise(arrays[name], low, high, anchors))
        canvas.paste(image.resize((width, height), Image.NEAREST), (x, top))
        draw.text((x, top - FONT_SIZE - 6), headings[name], fill=TEXT, font=font)
        x += width + PAD // 2
        if with_bar:
            ramp = np.linspace(high, low, height)[:, None].repeat(BAR_WIDTH, axis=1)
            canvas.paste(Image.fromarray(colourise(ramp, low, high, anchors)), (x, top))
            draw.rectangle((x, top, x + BAR_WIDTH - 1, top + height - 1), outline=TEXT)
            for value, y in ((high, top), ((low + high) / 2, top + height // 2), (low, top + height - 1)):
                draw.line((x + BAR_WIDTH, y, x + BAR_WIDTH + 3, y), fill=TEXT)
                draw.text((x + BAR_WIDTH + 5, y), _label(value), fill=TEXT, font=font, anchor="lm")
            x += bar_block
        x += PAD // 2
    buffer = io.BytesIO()
    canvas.save(buffer, format="PNG", optimize=True)
    return buffer.getvalue()


def write_maps(arrays: dict[str, np.ndarray], stem: Path, *, title: str) -> dict:
    """stem.npz (measured, predicted, residual, value_scale, residual_scale) and stem.png;
    returns the colour scales."""
    stem = Path(stem)
    stem.parent.mkdir(parents=True, exist_ok=True)
    scales = colour_scales(arrays)
    np.savez_compressed(stem.with_suffix(".npz"), **arrays, value_scale=np.array(scales["value"]),
                        residual_scale=np.array(scales["residual"]))
    stem.with_suffix(".png").write_bytes(render_png(arrays, scales, title))
    return scales
