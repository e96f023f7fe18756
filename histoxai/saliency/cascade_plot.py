"""The randomisation cascade as a PNG: rank correlation per stage and method, one panel per target.

Drawn with matplotlib, the project's one plotting library (see histoxai/plots.py): the same
`Figure` without pyplot, Agg canvas, fixed dpi and no metadata (`plots.png`), so the same cascade gives
the same bytes, and axes, ticks, legend and text layout come from the library rather than from pixel
arithmetic. `cascade_figure` builds the Figure (tests read its axes); `cascade_png` renders it.
"""

from __future__ import annotations

import numpy as np
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Patch

from histoxai.plots import DPI, png

PANEL_SIZE = (7.0, 2.8)  # inches per target panel: 700 x 280 pixels at DPI
LINE_HEIGHT = 0.2  # inches per line of the stage list under the panels
BAND_COLOUR = "#e6f4e6"
Y_TICKS = (-1.0, -0.5, 0.0, 0.5, 1.0)


def _finite(part, column: str) -> tuple[np.ndarray, np.ndarray]:
    """(stage numbers, values) of one column where the value is finite (undefined stages are left out)."""
    x = part["stage_number"].to_numpy(dtype=float)
    y = part[column].to_numpy(dtype=float)
    keep = np.isfinite(y)
    return x[keep], y[keep]


def cascade_figure(cascade) -> Figure:
    """A cascade table (columns target, method, stage, stage_number, signed_rho, abs_rho) drawn per
    target: absolute rho as solid lines with dots, signed rho as open squares only, one colour per
    method, y from -1 to 1, the RANDOMIZATION_FLAG band (|rho| below it passes) shaded, stage numbers on
    the x axis and the stages listed under the panels. The lines are labelled '<method>: |rho|' and
    '<method>: signed rho'."""
    from histoxai.saliency.randomization import RANDOMIZATION_FLAG

    targets = list(dict.fromkeys(cascade["target"]))
    methods = list(dict.fromkeys(cascade["method"]))
    stages = cascade.drop_duplicates("stage_number").sort_values("stage_number")
    if not targets:
        figure = Figure(figsize=PANEL_SIZE, dpi=DPI, layout="constrained")
        axes = figure.add_subplot()
        axes.set_axis_off()
        axes.text(0.5, 0.5, "no cascade records", ha="center", va="center", fontsize=14, color="#666",
                  transform=axes.transAxes)
        return figure
    count = max(int(stages["stage_number"].max()) + 1, 2)
    listing = [f"stage {int(n)}: {name} randomised"
               for n, name in zip(stages["stage_number"], stages["stage"], strict=True)]
    height = PANEL_SIZE[1] * len(targets) + LINE_HEIGHT * (len(listing) + 1)
    figure = Figure(figsize=(PANEL_SIZE[0], height), dpi=DPI, layout="constrained")
    panels = figure.subplots(len(targets), 1, squeeze=False, sharex=True)[:, 0]
    for axes, target in zip(panels, targets, strict=True):
        axes.axhspan(-RANDOMIZATION_FLAG, RANDOMIZATION_FLAG, color=BAND_COLOUR, linewidth=0, zorder=0)
        rows = cascade[cascade["target"] == target]
        for m, method in enumerate(methods):
            colour = f"C{m % 10}"
            part = rows[rows["method"] == method].sort_values("stage_number", kind="stable")
            axes.plot(*_finite(part, "abs_rho"), color=colour, linewidth=2, marker="o", markersize=5,
                      label=f"{method}: |rho|")
            axes.plot(*_finite(part, "signed_rho"), color=colour, linestyle="none", marker="s",
                      markersize=6, fillstyle="none", label=f"{method}: signed rho")
        axes.set(xlim=(-0.2, count - 0.8), ylim=(-1.05, 1.05), yticks=Y_TICKS, ylabel="rho",
                 xticks=range(count))
        axes.set_title(f"{target}: rank correlation with the trained model's maps", fontsize=10, loc="left")
        axes.grid(alpha=0.3)
    panels[-1].set_xlabel("stage (layers randomised, listed below)")
    handles = [Line2D([], [], color=f"C{m % 10}", linewidth=2, marker="o", markersize=5, label=str(method))
               for m, method in enumerate(methods)]
    handles += [Line2D([], [], color="#444", linewidth=2, marker="o", markersize=5, label="|map| rho"),
                Line2D([], [], color="#444", linestyle="none", marker="s", fillstyle="none",
                       label="signed rho"),
                Patch(color=BAND_COLOUR, label=f"|rho| < {RANDOMIZATION_FLAG} (passes)")]
    figure.legend(handles=handles, loc="outside right upper", fontsize=8)
    figure.supxlabel("\n".join(listing), x=0.01, ha="left", multialignment="left", fontsize=9)
    return figure


def cascade_png(cascade) -> bytes:
    """PNG of a cascade table (see `cascade_figure`)."""
    return png(cascade_figure(cascade))
