"""The trust report's pages: a verdict per method and target, each measure beside its controls, a legend."""

from __future__ import annotations

import base64
import html

import numpy as np

from histoxai import artifacts
from histoxai.saliency.controls import CONTROLS, MEASURES
from histoxai.saliency.randomization import RANDOMIZATION_FLAG

# written beside trust.md by the explain step; read by no other step
MEASURE_NAMES = {"mask_mass": "mask mass", "mask_rank_accuracy": "rank accuracy",
                 "deletion_auc": "deletion AUC", "insertion_auc": "insertion AUC"}
LEGEND = [
    "Verdict: a method earns trust for a target only when its maps beat every control on every measure "
    "below and pass the randomisation check; otherwise the controls it does not beat are named.",
    "Controls: random (random values: for the mask measures the nuclei's area share, for deletion/"
    "insertion a random pixel order); darkness (255 - mean RGB of the patch, no model); edges (Sobel "
    "gradient magnitude of the grey patch, no model); randomised model (the same method on the model "
    "with every weight re-initialised).",
    "Mask mass: the share (0 to 1) of the map's positive relevance that falls on the true nuclei "
    "(phantom: CC maps; MD/FA maps by |map| when the phantom's targets are derived from the nuclei); "
    "higher is better.",
    "Rank accuracy: the share (0 to 1) of the map's K most relevant pixels that lie on nuclei, K = the "
    "nuclei's pixel count, tied pixels counted by share; higher is better.",
    "Deletion AUC: mean change of the score as the most relevant pixels are blurred away, in standard "
    "deviations of the score over the explained patches; lower (more negative) is better.",
    "Insertion AUC: mean change of the score as the most relevant pixels are put onto a blurred copy, "
    "same unit; higher is better.",
    "Randomisation: rank correlation (-1 to 1) and SSIM (-1 to 1) between the maps of the trained and "
    "the fully randomised model (signed rho on the raw maps, magnitude rho on |map|); passes when both "
    f"|signed rho| and magnitude rho are below {RANDOMIZATION_FLAG} after the last stage, "
    "undefined (never a pass) when a map is constant or NaN.",
]


def _label(row) -> str:
    return f"{row['method']}:{row['setting']}" if row["setting"] else str(row["method"])


def headline(measures):
    """One row per target x method x setting x score: verdict, randomisation state, NaN and blank shares."""
    import pandas as pd

    columns = {"target": "target", "method": "method", "score": "score", "verdict": "verdict",
               "randomization": "randomisation", "randomization_signed_rho": "signed rho",
               "randomization_abs_rho": "magnitude rho", "randomization_ssim": "SSIM",
               "nan_maps": "NaN share", "blank_maps": "blank share"}
    frame = measures.assign(method=[_label(r) for _, r in measures.iterrows()])
    return pd.DataFrame({label: frame[c] for c, label in columns.items() if c in frame.columns})


def comparison(measures):
    """Long table: per target, method, score and measure, the method's value and each control's."""
    import pandas as pd

    rows = []
    for _, row in measures.iterrows():
        for measure in MEASURES:
            values = {label: row.get(f"{control}_{measure}", np.nan) for control, label in CONTROLS.items()}
            if not np.isfinite([row.get(measure, np.nan), *values.values()]).any():
                continue  # not measured for this target (e.g. no nuclei masks)
            rows.append({"target": row["target"], "method": _label(row), "score": row["score"],
                         "measure": MEASURE_NAMES[measure], "method value": row.get(measure, np.nan),
                         **values})
    return pd.DataFrame(rows)


def markdown(measures, notes: list[str]) -> str:
    from histoxai.metrics import markdown_table

    text = "# Saliency trust report\n\n" + "\n".join(f"- {n}" for n in notes) + "\n\n"
    text += "## Verdicts\n\n" + markdown_table(headline(measures)) + "\n"
    compared = comparison(measures)
    if not compared.empty:
        text += "## Each measure beside its controls\n\n" + markdown_table(compared) + "\n"
    text += (f"Randomisation cascade per stage: {artifacts.TRUST_CASCADE} and the plot "
             f"{artifacts.TRUST_CASCADE_PLOT}.\n\n")
    return text + "## Legend\n\n" + "\n".join(f"- {line}" for line in LEGEND) + "\n"


def html_page(measures, notes: list[str], png: bytes | None = None) -> str:
    def table(frame):
        return frame.to_html(index=False, float_format=lambda v: f"{v:.3f}", na_rep="n/a")

    items = "".join(f"<li>{html.escape(n)}</li>" for n in notes)
    compared = comparison(measures)
    plot = "" if png is None else (
        "<h2>Randomisation cascade</h2><img alt=\"randomisation cascade\" "
        f"src=\"data:image/png;base64,{base64.b64encode(png).decode()}\">")
    legend = "".join(f"<li>{html.escape(line)}</li>" for line in LEGEND)
    return ("<!DOCTYPE html><html><head><meta charset=\"utf-8\"><title>Saliency trust report</title>"
            "<style>body{font-family:sans-serif;margin:2em}table{border-collapse:collapse;font-size:13px}"
            "td,th{border:1px solid #ccc;padding:3px 6px;text-align:right}</style></head><body>"
            f"<h1>Saliency trust report</h1><ul>{items}</ul><h2>Verdicts</h2>{table(headline(measures))}"
            + ("" if compared.empty else f"<h2>Each measure beside its controls</h2>{table(compared)}")
            + f"{plot}<h2>Legend</h2><ul>{legend}</ul></body></html>\n")
