"""Regression metrics for measured vs predicted values, with defined results for degenerate inputs.

Definitions (y = measured, ŷ = predicted, n values, e = ŷ - y):
  r2          1 - SSE/SST, SSE = Σ(y - ŷ)², SST = Σ(y - ȳ)². The standard coefficient of
              determination (sklearn's r2_score, the original study's calc_R2). It punishes a constant
              shift: ŷ = y + k scores 1 - n·k²/SST. Can be any value <= 1.
  r2_var      1 - var(y - ŷ)/var(y). The thesis's variant (its eq. 3.2). The residual's mean is
              removed, so a constant shift is ignored: ŷ = y + k scores 1. Can be any value <= 1.
  pearson_r2  squared Pearson correlation of y and ŷ, in [0, 1]; ignores any linear rescaling of ŷ.
  mae         mean |ŷ - y|.
  bias        mean(ŷ - y): positive when the prediction runs high.

Degenerate inputs give None (JSON null, Parquet null, pandas <NA>), never NaN, and a `note` saying why:
  n = 0             every metric None.
  n = 1             r2, r2_var, pearson_r2 None (a single value has no variance); mae and bias defined.
  constant y        r2, r2_var, pearson_r2 None (SST = 0: there is no variation to explain).
  constant ŷ        pearson_r2 None (the correlation is 0/0); r2 and r2_var are defined.
Non-finite values are not metrics' business: they raise InputError (`metrics_by_group` can leave out
rows whose measured value is missing, e.g. a sample without an FAIP map, and says so in the note).
`markdown_table` renders None as "n/a" so a reader sees an undefined value, not a number.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from histoxai.errors import InputError

METRICS = ("r2", "r2_var", "pearson_r2", "mae", "bias")
METRIC_LABELS = {
    "r2": "R² = 1 - SSE/SST (standard)",
    "r2_var": "R²var = 1 - var(y - ŷ)/var(y) (the thesis's, ignores a constant shift)",
    "pearson_r2": "Pearson r²",
    "mae": "MAE = mean |ŷ - y|",
    "bias": "bias = mean(ŷ - y)",
}
NOTE_EMPTY = "no values (n = 0): every metric undefined"
NOTE_SINGLE = "one value (n = 1): R², R²var and Pearson r² undefined (no variance)"
NOTE_CONSTANT_TARGET = "constant measured values (SST = 0): R², R²var and Pearson r² undefined"
NOTE_CONSTANT_PREDICTION = "constant prediction: Pearson r² undefined"


def _pair(y_true, y_pred) -> tuple[np.ndarray, np.ndarray]:
    y = np.asarray(y_true, dtype=np.float64).ravel()
    p = np.asarray(y_pred, dtype=np.float64).ravel()
    if y.shape != p.shape:
        raise InputError(f"measured ({y.size} values) and predicted ({p.size} values) differ in length; "
                         "expected one prediction per measured value")
    for name, values in (("measured", y), ("predicted", p)):
        bad = int(np.count_nonzero(~np.isfinite(values)))
        if bad:
            raise InputError(f"{name} values: {bad} of {values.size} are NaN or infinite; "
                             "expected finite numbers")
    return y, p


def _is_constant(values: np.ndarray) -> bool:
    # Exact test: the mean of equal floats can differ from them in the last bit, so SST of a
    # constant array is not always exactly 0.
    return values.size > 0 and values.max() == values.min()


def r2_score(y_true, y_pred) -> float | None:
    """Standard R² = 1 - SSE/SST; None when SST = 0 (fewer than 2 values or constant measured values)."""
    y, p = _pair(y_true, y_pred)
    if y.size < 2 or _is_constant(y):
        return None
    sse = float(np.sum((y - p) ** 2))
    sst = float(np.sum((y - y.mean()) ** 2))
    return 1.0 - sse / sst


def r2_variance(y_true, y_pred) -> float | None:
    """The thesis's R² = 1 - var(y - ŷ)/var(y) (population variances); ignores a constant shift.
    None when var(y) = 0."""
    y, p = _pair(y_true, y_pred)
    if y.size < 2 or _is_constant(y):
        return None
    return 1.0 - float(np.var(y - p)) / float(np.var(y))


def pearson_r(y_true, y_pred) -> float | None:
    """Pearson correlation of y and ŷ in [-1, 1]; None when either is constant or n < 2."""
    y, p = _pair(y_true, y_pred)
    if y.size < 2 or _is_constant(y) or _is_constant(p):
        return None
    dy, dp = y - y.mean(), p - p.mean()
    r = float(np.sum(dy * dp) / math.sqrt(float(np.sum(dy * dy)) * float(np.sum(dp * dp))))
    return min(1.0, max(-1.0, r))


def pearson_r2(y_true, y_pred) -> float | None:
    """Squared Pearson correlation in [0, 1]; None when either side is constant or n < 2."""
    r = pearson_r(y_true, y_pred)
    return None if r is None else r * r


def mae(y_true, y_pred) -> float | None:
    """Mean absolute error mean |ŷ - y|; None when n = 0."""
    y, p = _pair(y_true, y_pred)
    return float(np.mean(np.abs(p - y))) if y.size else None


def mean_bias(y_true, y_pred) -> float | None:
    """Mean signed error mean(ŷ - y) (positive: predictions too high); None when n = 0."""
    y, p = _pair(y_true, y_pred)
    return float(np.mean(p - y)) if y.size else None


def regression_metrics(y_true, y_pred) -> dict:
    """All metrics for one (measured, predicted) pair.

    Returns {"n", "r2", "r2_var", "pearson_r2", "mae", "bias", "note"}: floats or None (undefined,
    see the module docstring), and note = "" or the reason(s) some value is None.
    """
    y, p = _pair(y_true, y_pred)
    out = {"n": int(y.size), "r2": r2_score(y, p), "r2_var": r2_variance(y, p),
           "pearson_r2": pearson_r2(y, p), "mae": mae(y, p), "bias": mean_bias(y, p)}
    if y.size == 0:
        note = NOTE_EMPTY
    elif y.size == 1:
        note = NOTE_SINGLE
    elif _is_constant(y):
        note = NOTE_CONSTANT_TARGET
    elif _is_constant(p):
        note = NOTE_CONSTANT_PREDICTION
    else:
        note = ""
    out["note"] = note
    return out


def metrics_by_group(frame, by: str | Sequence[str], measured: str, predicted: str, *,
                     drop_missing_measured: bool = True):
    """`regression_metrics` per group of a DataFrame (e.g. by ["sample", "split"] or ["sample", "target"]).

    Returns one row per group: the `by` columns, n, the METRICS (pandas nullable Float64: undefined
    values are <NA>, null in Parquet) and note. Rows whose measured value is NaN (a target a sample
    does not have) are left out when drop_missing_measured, and the note counts them; a NaN
    prediction always raises InputError, since it means the model, not the data, failed.
    """
    import pandas as pd

    keys = [by] if isinstance(by, str) else list(by)
    missing = [c for c in [*keys, measured, predicted] if c not in frame.columns]
    if missing:
        raise InputError(f"metrics table lacks columns {missing}; found {list(frame.columns)}")
    rows = []
    for group, part in frame.groupby(keys, sort=True, dropna=False):
        group = group if isinstance(group, tuple) else (group,)
        y = part[measured].to_numpy(dtype=np.float64)
        p = part[predicted].to_numpy(dtype=np.float64)
        keep = np.isfinite(y) if drop_missing_measured else np.ones(y.size, dtype=bool)
        try:
            row = regression_metrics(y[keep], p[keep])
        except InputError as err:
            label = ", ".join(f"{k}={v}" for k, v in zip(keys, group, strict=True))
            raise InputError(f"group {label} ({measured} vs {predicted}): {err}") from err
        dropped = int(keep.size - keep.sum())
        if dropped:
            extra = f"{dropped} row{'s' if dropped > 1 else ''} without a measured {measured} left out"
            row["note"] = f"{extra}; {row['note']}" if row["note"] else extra
        rows.append({**dict(zip(keys, group, strict=True)), **row})
    columns = [*keys, "n", *METRICS, "note"]
    table = pd.DataFrame(rows, columns=columns)
    return table.astype({"n": "int64", **{m: "Float64" for m in METRICS}})


def format_value(value, digits: int = 3) -> str:
    """A table cell: None / NaN / <NA> as 'n/a', floats with `digits` decimals."""
    import pandas as pd

    if value is None or value is pd.NA or (isinstance(value, (float, np.floating)) and math.isnan(value)):
        return "n/a"
    if isinstance(value, (float, np.floating)):
        return f"{value:.{digits}f}"
    return str(value)


def markdown_table(frame, digits: int = 3) -> str:
    """A DataFrame as a GitHub Markdown table; undefined metric values show as 'n/a'."""
    header = [str(c) for c in frame.columns]
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    for row in frame.itertuples(index=False):
        cells = [format_value(v, digits).replace("|", "\\|") for v in row]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"
