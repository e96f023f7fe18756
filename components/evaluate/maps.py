"""Measured, predicted and residual maps on the MR grid, as arrays (.npz) and one PNG with colour bars.

Rendered with Pillow and histoxai/colour.py, not with matplotlib (the project's plotting library,
histoxai/plots.py): the maps are images, each voxel a block of whole pixels, coloured from the fixed
anchors the review app's overlays use too, not plots with axes. Measured and predicted share one
sequential colour scale (viridis) from the 1st to the 99th percentile of both maps' values, and the residual
ŷ - y has a diverging scale (blue - white - red) symmetric about 0 up to the 99th percentile of |ŷ - y|.
Values beyond a scale take its end colour; voxels without a patch are grey.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from histoxai.colour import DIVERGING, VIRIDIS, colour_scales, colourise

BACKGROUND = (255, 255, 255)
TEXT = (20, 20, 20)
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
