"""Regression metrics against independent NumPy references, degenerate cases, the per-group helper."""

import numpy as np
import pandas as pd
import pytest

from histoxai import metrics
from histoxai.errors import InputError


def reference(y, p):
    """The same quantities written another way: MSE / population variance, ddof=1 variances, corrcoef."""
    y, p = np.asarray(y, float), np.asarray(p, float)
    return {
        "r2": 1 - np.mean((y - p) ** 2) / np.var(y),
        "r2_var": 1 - np.var(y - p, ddof=1) / np.var(y, ddof=1),
        "pearson_r2": np.corrcoef(y, p)[0, 1] ** 2,
        "mae": np.abs(y - p).sum() / y.size,
        "bias": p.sum() / y.size - y.sum() / y.size,
    }


@pytest.mark.parametrize("n", [2, 3, 17, 500])
def test_every_metric_matches_the_reference(n):
    rng = np.random.default_rng(n)
    y = rng.normal(1.0, 0.3, n)
    p = 0.8 * y + rng.normal(0.1, 0.2, n)
    got = metrics.regression_metrics(y, p)
    assert got["n"] == n and got["note"] == ""
    for name, value in reference(y, p).items():
        assert got[name] == pytest.approx(value, rel=1e-12, abs=1e-12), name
    assert metrics.r2_score(y, p) == pytest.approx(got["r2"])
    assert metrics.r2_variance(y, p) == pytest.approx(got["r2_var"])
    assert metrics.pearson_r2(y, p) == pytest.approx(got["pearson_r2"])
    assert metrics.mae(y, p) == pytest.approx(got["mae"])
    assert metrics.mean_bias(y, p) == pytest.approx(got["bias"])


def test_hand_computed_values():
    y, p = [1.0, 2.0, 3.0], [1.0, 2.0, 2.0]
    got = metrics.regression_metrics(y, p)
    # SSE = 1, SST = 2; residuals (0, 0, -1): var 2/9 over var(y) 2/3; corr = 3/sqrt(12)
    assert got["r2"] == pytest.approx(0.5)
    assert got["r2_var"] == pytest.approx(2 / 3)
    assert got["pearson_r2"] == pytest.approx(0.75)
    assert got["mae"] == pytest.approx(1 / 3)
    assert got["bias"] == pytest.approx(-1 / 3)


def test_constant_shift_changes_r2_but_not_the_thesis_variant():
    y = np.array([0.3, 0.9, 1.4, 0.7, 1.1, 0.5])
    shift = 0.25
    got = metrics.regression_metrics(y, y + shift)
    sst = np.sum((y - y.mean()) ** 2)
    assert got["r2"] == pytest.approx(1 - y.size * shift**2 / sst)
    assert got["r2"] < 0.9
    assert got["r2_var"] == pytest.approx(1.0)
    assert got["pearson_r2"] == pytest.approx(1.0)
    assert got["bias"] == pytest.approx(shift)
    assert got["mae"] == pytest.approx(shift)


def test_rescaled_prediction_keeps_pearson_but_not_r2():
    y = np.array([1.0, 2.0, 4.0, 3.0])
    got = metrics.regression_metrics(y, 2 * y)
    assert got["pearson_r2"] == pytest.approx(1.0)
    assert got["r2"] == pytest.approx(-5.0)  # SSE = Σy² = 30, SST = 5
    assert got["r2_var"] == pytest.approx(0.0)  # residual -y varies exactly as much as y


def test_perfect_prediction_scores_one():
    y = np.array([0.2, 0.5, 0.1, 0.9])
    got = metrics.regression_metrics(y, y.copy())
    assert (got["r2"], got["r2_var"], got["pearson_r2"], got["mae"], got["bias"]) == (1.0, 1.0, 1.0, 0.0, 0.0)


@pytest.mark.parametrize(("y", "p", "defined", "note"), [
    ([], [], set(), metrics.NOTE_EMPTY),
    ([0.7], [0.5], {"mae", "bias"}, metrics.NOTE_SINGLE),
    ([0.1] * 3, [0.1, 0.2, 0.3], {"mae", "bias"}, metrics.NOTE_CONSTANT_TARGET),
    ([0.1, 0.2, 0.3], [0.2] * 3, {"r2", "r2_var", "mae", "bias"}, metrics.NOTE_CONSTANT_PREDICTION),
])
def test_degenerate_inputs_give_none_and_a_note(y, p, defined, note):
    got = metrics.regression_metrics(y, p)
    assert got["n"] == len(y) and got["note"] == note
    for name in metrics.METRICS:
        value = got[name]
        if name in defined:
            assert isinstance(value, float) and np.isfinite(value), name
        else:
            assert value is None, name


def test_constant_prediction_values():
    got = metrics.regression_metrics([0.1, 0.2, 0.3], [0.2, 0.2, 0.2])
    assert got["r2"] == pytest.approx(0.0)  # predicting the mean explains nothing
    assert got["r2_var"] == pytest.approx(0.0)
    assert metrics.pearson_r([0.1, 0.2, 0.3], [0.2, 0.2, 0.2]) is None


def test_bad_inputs_raise_input_error():
    with pytest.raises(InputError, match=r"measured \(3 values\) and predicted \(2 values\)"):
        metrics.regression_metrics([1, 2, 3], [1, 2])
    with pytest.raises(InputError, match="predicted values: 1 of 3 are NaN"):
        metrics.regression_metrics([1, 2, 3], [1, np.nan, 3])
    with pytest.raises(InputError, match="measured values: 1 of 2 are NaN or infinite"):
        metrics.r2_score([np.inf, 1], [1, 2])


def test_metrics_by_group():
    frame = pd.DataFrame({
        "sample": ["3", "3", "3", "3", "5", "5", "7"],
        "target": ["MD"] * 7,
        "y": [1.0, 2.0, 3.0, 4.0, 2.0, np.nan, 5.0],
        "y_pred": [1.5, 2.5, 3.5, 4.5, 2.0, 9.0, 4.0],
    })
    table = metrics.metrics_by_group(frame, ["sample", "target"], "y", "y_pred")
    assert list(table.columns) == ["sample", "target", "n", *metrics.METRICS, "note"]
    assert list(table["sample"]) == ["3", "5", "7"]
    assert table["r2"].dtype == "Float64"
    first = table.iloc[0]
    expected = reference([1, 2, 3, 4], [1.5, 2.5, 3.5, 4.5])
    assert first["n"] == 4 and first["note"] == ""
    assert first["r2"] == pytest.approx(expected["r2"])
    assert first["r2_var"] == pytest.approx(1.0)
    second = table.iloc[1]  # the NaN measured row is left out and counted
    assert second["n"] == 1 and pd.isna(second["r2"]) and second["mae"] == 0.0
    assert second["note"] == f"1 row without a measured y left out; {metrics.NOTE_SINGLE}"
    assert table.iloc[2]["bias"] == pytest.approx(-1.0)
    single_key = metrics.metrics_by_group(frame, "target", "y", "y_pred")
    assert single_key["n"].tolist() == [6]


def test_metrics_by_group_refuses_nan_predictions_and_missing_columns():
    frame = pd.DataFrame({"sample": ["1", "1"], "y": [1.0, 2.0], "y_pred": [1.0, np.nan]})
    with pytest.raises(InputError, match=r"group sample=1 \(y vs y_pred\): predicted values: 1 of 2"):
        metrics.metrics_by_group(frame, "sample", "y", "y_pred")
    with pytest.raises(InputError, match=r"lacks columns \['split'\]"):
        metrics.metrics_by_group(frame, ["sample", "split"], "y", "y_pred")


def test_markdown_table_shows_undefined_values_as_na():
    frame = pd.DataFrame({"sample": ["1", "2"], "r2": pd.array([0.12345, None], dtype="Float64"),
                          "n": [5, 1], "note": ["", "a|b"]})
    text = metrics.markdown_table(frame, digits=2)
    assert text.splitlines() == ["| sample | r2 | n | note |", "|---|---|---|---|",
                                 "| 1 | 0.12 | 5 |  |", "| 2 | n/a | 1 | a\\|b |"]
    assert metrics.format_value(float("nan")) == "n/a" and metrics.format_value(None) == "n/a"
