"""The randomisation cascade as a PNG drawn with Pillow: rank correlation per stage and method, per target."""

from __future__ import annotations

import io

import numpy as np

PALETTE = [(31, 119, 180), (214, 39, 40), (44, 160, 44), (148, 103, 189), (255, 127, 14), (23, 190, 207),
           (140, 86, 75), (227, 119, 194), (127, 127, 127), (188, 189, 34)]
PANEL_W, PANEL_H, MARGIN, LEGEND_ROW = 520, 260, 48, 16


def cascade_png(cascade) -> bytes:
    """PNG of a cascade table (columns target, method, stage, stage_number, signed_rho, abs_rho):
    absolute rho as solid lines with dots, signed rho as dots only, y from -1 to 1, the
    RANDOMIZATION_FLAG band marked."""
    from PIL import Image, ImageDraw

    from histoxai.saliency.randomization import RANDOMIZATION_FLAG

    targets = list(dict.fromkeys(cascade["target"]))
    methods = list(dict.fromkeys(cascade["method"]))
    stages = cascade.drop_duplicates("stage_number").sort_values("stage_number")
    count = max(int(stages["stage_number"].max()) + 1, 2)
    legend = (len(methods) + len(stages) + 3) * LEGEND_ROW
    width, height = PANEL_W + 2 * MARGIN, len(targets) * (PANEL_H + MARGIN) + MARGIN + legend
    image = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(image)

    def point(top, number, value):
        x = MARGIN + number / (count - 1) * PANEL_W
        return x, top + (1 - value) / 2 * PANEL_H

    for index, target in enumerate(targets):
        top = MARGIN + index * (PANEL_H + MARGIN)
        draw.text((MARGIN, top - 30), f"{target}: rank correlation with the trained model's maps",
                  fill="black")
        draw.rectangle([MARGIN, top, MARGIN + PANEL_W, top + PANEL_H], outline="black")
        band = [point(top, 0, RANDOMIZATION_FLAG)[1], point(top, 0, -RANDOMIZATION_FLAG)[1]]
        draw.rectangle([MARGIN + 1, band[0], MARGIN + PANEL_W - 1, band[1]], fill=(238, 248, 238))
        for value in (1, 0.5, 0, -0.5, -1):
            y = point(top, 0, value)[1]
            draw.line([MARGIN - 4, y, MARGIN, y], fill="black")
            draw.text((4, y - 6), f"{value:+.1f}", fill="black")
        for number in range(count):
            x = point(top, number, 0)[0]
            draw.line([x, top + PANEL_H, x, top + PANEL_H + 4], fill="black")
            draw.text((x - 3, top + PANEL_H + 6), str(number), fill="black")
        rows = cascade[cascade["target"] == target]
        for m, method in enumerate(methods):
            colour = PALETTE[m % len(PALETTE)]
            part = rows[rows["method"] == method].sort_values("stage_number")
            for column, joined in (("abs_rho", True), ("signed_rho", False)):
                points = [point(top, n, v) for n, v in zip(part["stage_number"], part[column], strict=True)
                          if np.isfinite(v)]
                if joined and len(points) > 1:
                    draw.line(points, fill=colour, width=2)
                for x, y in points:
                    box = [x - 3, y - 3, x + 3, y + 3]
                    draw.ellipse(box, fill=colour) if joined else draw.rectangle(box, outline=colour)
    y = MARGIN + len(targets) * (PANEL_H + MARGIN) - 20
    draw.text((MARGIN, y), "line + dot: |map| rho; square: signed rho; green band: "
                           f"|rho| < {RANDOMIZATION_FLAG} (passes)", fill="black")
    for m, method in enumerate(methods):
        y += LEGEND_ROW
        draw.rectangle([MARGIN, y + 3, MARGIN + 10, y + 13], fill=PALETTE[m % len(PALETTE)])
        draw.text((MARGIN + 16, y + 2), str(method), fill="black")
    y += LEGEND_ROW
    for number, name in zip(stages["stage_number"], stages["stage"], strict=True):
        y += LEGEND_ROW
        draw.text((MARGIN, y), f"stage {int(number)}: {name} randomised", fill="black")
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()
