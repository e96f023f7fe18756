"""The original study's map-level baselines (Brabec et al. 2023), computed from its summary.mat.

Three comparison figures, as in the study's own scripts (Step_e_Manuscript_figures of
jan-brabec/microimaging_vs_histology_in_meningeomas):

quadratic   per sample, target ~ a·x² + b·x + c with x = cell density CD (for MD) or structure
            anisotropy SA (for FAIP; and for FA, which our models predict). x is smoothed with a 5x5
            Gaussian (sigma 0.5 voxel) inside the ROI, fitted on a random 80 % of the ROI voxels and
            scored on the other 20 % (ceil(0.2 n) test voxels, as the study's predict_map), repeated
            `repeats` times; each metric is the median over repeats, with R²'s 25th/75th percentiles.
cnn_brabec2023
            the study's per-sample CNN (EfficientNetV2, one model per sample, random voxel split),
            scored on its stored test set. In sMD_CNN / sFAIP_CNN, `measured` and `predicted` are the
            test-set vectors; `I_measured` / `I_pred` are the same values on the MR grid for every
            voxel the CNN saw (train, val and test; 2 where it saw none), and `I_test_ind` marks the
            test voxels, so I_measured[I_test_ind] and `measured` hold the same values (checked here).
across-tumour
            per tumour, the ROI means of smoothed CD / SA and of MD / FAIP / FA; across the 16 tumours,
            the squared Pearson correlation of feature mean vs target mean (the study's
            calc_R2_from_corr_coeff).

ROI: the study scored these on `sROI`, the voxels where both CNNs have a value (its eroded patch ROI)
reduced to the largest connected component, so that regression and CNN compare on the same tissue.
Other ROI variants in the file can be chosen. Difference from the study's code: it zeroed voxels
outside the ROI (and NaNs) before smoothing, which pulls border voxels towards 0; here the smoothing is
a normalised convolution (sum of w·x over valid neighbours / sum of w), so only valid ROI voxels
contribute, and a NaN feature voxel (SA is NaN in a few ROI voxels of samples 3, 4 and 14) is filled
from its neighbours. Voxels left without a finite feature or target are left out and counted.
"""

from __future__ import annotations

import json
import math
import zlib
from collections import Counter
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from histoxai import artifacts, outputs
from histoxai.components.evaluate.params import BUNDLED, DEFAULTS, ROI_CHOICES
from histoxai.errors import InputError
from histoxai.metrics import METRIC_LABELS, METRICS, markdown_table, pearson_r, regression_metrics
from histoxai.summary import BUNDLED_SUMMARY as SUMMARY_PATH
from histoxai.summary import SummaryFile

BUNDLED_SUMMARY = str(SUMMARY_PATH)
STUDY_PAIRS = (("CD", "MD"), ("SA", "FAIP"))  # the study's regressions
PAIRS = (*STUDY_PAIRS, ("SA", "FA"))  # FA too: it is what our models predict
CNN_VARIABLES = {"MD": "sMD_CNN", "FAIP": "sFAIP_CNN"}
QUADRATIC, CNN = "quadratic", "cnn_brabec2023"
SMOOTH_SIZE, SMOOTH_SIGMA, TEST_FRACTION = 5, 0.5, 0.2
MIN_VOXELS = 4  # 3 to fit a quadratic, 1 to score
ROW_COLUMNS = ("sample", "baseline", "feature", "target", "roi", "n", "n_voxels", "repeats", "r2",
               "r2_q25", "r2_q75", "r2_var", "pearson_r2", "mae", "bias", "coef_a", "coef_b", "coef_c",
               "note")
_FLOATS = ("r2", "r2_q25", "r2_q75", "r2_var", "pearson_r2", "mae", "bias", "coef_a", "coef_b", "coef_c")


@dataclass
class SampleMaps:
    """One sample's maps on its MR grid (MATLAB orientation) and the study's CNN test vectors."""

    sample: str
    maps: dict[str, np.ndarray]  # MD, FA, FAIP, CD, SA (float64, NaN where missing)
    roi: np.ndarray  # bool
    cnn: dict[str, dict[str, np.ndarray]] = field(default_factory=dict)  # target -> measured, predicted, ...


def load_summary(uri: str, roi: str = "sROI") -> list[SampleMaps]:
    """Every sample of the study's summary.mat (local or gs://); samples are named '1', '2', ...

    Raises InputError naming the file and the variable when it is missing, unreadable or inconsistent.
    """
    if roi not in ROI_CHOICES:
        raise InputError(f"roi {roi!r}: expected one of {', '.join(ROI_CHOICES)}")
    summary = SummaryFile(uri)
    names = ["sMR", "sCD", "sHd", *CNN_VARIABLES.values()] + ([] if roi == "ROI" else [roi])
    expected = "the study's summary.mat with sMR, sCD, sHd, sMD_CNN, sFAIP_CNN and sROI"
    cells = {name: summary.cells(name, expected) for name in names}
    counts = {name: len(c) for name, c in cells.items()}
    if len(set(counts.values())) != 1:
        raise InputError(f"{uri}: variables hold different numbers of samples {counts}; "
                         "expected one cell per sample in each")
    samples = []
    for i in range(counts["sMR"]):
        label = f"sample {i + 1}"
        mr = cells["sMR"][i]
        maps = {t: summary.field(mr, t, f"sMR{{{i + 1}}}") for t in ("MD", "FA", "FAIP")}
        maps["CD"] = np.asarray(cells["sCD"][i])
        maps["SA"] = summary.field(cells["sHd"][i], "dSA", f"sHd{{{i + 1}}}")
        mask = summary.field(mr, "ROI", f"sMR{{{i + 1}}}") if roi == "ROI" else np.asarray(cells[roi][i])
        shape = maps["MD"].shape
        for name, arr in [*maps.items(), (roi, mask)]:
            if arr.shape != shape or arr.ndim != 2 or arr.dtype.kind not in "biuf":
                raise InputError(f"{uri}: {label}: {name} is {arr.dtype} {arr.shape}; expected a numeric "
                                 f"map of the MR grid's shape {shape}")
        cnn = {}
        for target, var in CNN_VARIABLES.items():
            cell, where = cells[var][i], f"{var}{{{i + 1}}}"
            cnn[target] = {f: summary.field(cell, f, where).astype(np.float64).ravel()
                           for f in ("measured", "predicted")}
            cnn[target]["I_measured"] = summary.field(cell, "I_measured", where).astype(np.float64)
            cnn[target]["I_test_ind"] = summary.field(cell, "I_test_ind", where) > 0
        samples.append(SampleMaps(str(i + 1), {k: v.astype(np.float64) for k, v in maps.items()},
                                  mask > 0, cnn))
    return samples


def gaussian_kernel(size: int = SMOOTH_SIZE, sigma: float = SMOOTH_SIGMA) -> np.ndarray:
    """A size x size Gaussian summing to 1 (MATLAB's fspecial('gaussian', size, sigma))."""
    half = (size - 1) / 2
    axis = np.arange(size) - half
    kernel = np.exp(-(axis[:, None] ** 2 + axis[None, :] ** 2) / (2 * sigma**2))
    return kernel / kernel.sum()


def smooth_in_roi(values: np.ndarray, roi: np.ndarray, *, size: int = SMOOTH_SIZE,
                  sigma: float = SMOOTH_SIGMA) -> np.ndarray:
    """Gaussian smoothing by normalised convolution over the valid (ROI and finite) voxels only.

    Each ROI voxel gets Σ w·x / Σ w over its valid neighbours, so nothing outside the ROI leaks in and
    a constant map stays constant up to the border. Outside the ROI, and where no neighbour is valid: NaN.
    """
    from scipy import ndimage

    values = np.asarray(values, dtype=np.float64)
    valid = np.asarray(roi, dtype=bool) & np.isfinite(values)
    kernel = gaussian_kernel(size, sigma)
    weighted = ndimage.correlate(np.where(valid, values, 0.0), kernel, mode="constant", cval=0.0)
    weights = ndimage.correlate(valid.astype(np.float64), kernel, mode="constant", cval=0.0)
    out = np.full(values.shape, np.nan)
    inside = np.asarray(roi, dtype=bool) & (weights > 0)
    out[inside] = weighted[inside] / weights[inside]
    return out


def fit_quadratic(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Least-squares (a, b, c) of y = a·x² + b·x + c (minimum-norm when x has under 3 distinct values)."""
    x = np.asarray(x, dtype=np.float64)
    design = np.column_stack([x * x, x, np.ones_like(x)])
    coef, *_ = np.linalg.lstsq(design, np.asarray(y, dtype=np.float64), rcond=None)
    return coef


def _quantile(values: list, q: float) -> float | None:
    defined = [v for v in values if v is not None]
    return float(np.quantile(defined, q)) if defined else None


def quadratic_baseline(feature: np.ndarray, target: np.ndarray, roi: np.ndarray, *, repeats: int,
                       rng: np.random.Generator, test_fraction: float = TEST_FRACTION) -> dict:
    """The study's quadratic regression on one sample: smooth `feature` in the ROI, then `repeats`
    random 80/20 splits of the valid ROI voxels; returns the row's numbers (medians over repeats)."""
    x_map = smooth_in_roi(feature, roi)
    target = np.asarray(target, dtype=np.float64)
    roi = np.asarray(roi, dtype=bool)
    valid = roi & np.isfinite(x_map) & np.isfinite(target)
    x, y = x_map[valid], target[valid]
    n_voxels, n_left_out = int(valid.sum()), int(roi.sum() - valid.sum())
    row = {"n_voxels": n_voxels, "repeats": repeats, "n": 0, **{k: None for k in _FLOATS}}
    filled = int(np.count_nonzero(roi & ~np.isfinite(np.asarray(feature, dtype=np.float64)) & valid))
    notes = [f"{filled} ROI voxels without a feature value filled from their neighbours"] if filled else []
    if n_left_out:
        notes.append(f"{n_left_out} ROI voxels without a finite feature or target left out")
    if n_voxels < MIN_VOXELS:
        notes.append(f"only {n_voxels} usable ROI voxels; a quadratic fit and a test voxel "
                     f"need at least {MIN_VOXELS}: not scored")
        return {**row, "note": "; ".join(notes)}
    n_test = min(n_voxels - 3, max(1, math.ceil(n_voxels * test_fraction)))
    per_repeat, coefs, repeat_notes = [], [], Counter()
    for _ in range(repeats):
        order = rng.permutation(n_voxels)
        test, train = order[:n_test], order[n_test:]
        coef = fit_quadratic(x[train], y[train])
        scores = regression_metrics(y[test], np.polyval(coef, x[test]))
        per_repeat.append(scores)
        coefs.append(coef)
        if scores["note"]:
            repeat_notes[scores["note"]] += 1
    for metric in METRICS:
        row[metric] = _quantile([s[metric] for s in per_repeat], 0.5)
    row["r2_q25"] = _quantile([s["r2"] for s in per_repeat], 0.25)
    row["r2_q75"] = _quantile([s["r2"] for s in per_repeat], 0.75)
    row["coef_a"], row["coef_b"], row["coef_c"] = (float(v) for v in np.median(coefs, axis=0))
    row["n"] = n_test
    notes += [f"{text} (in {count} of {repeats} repeats)" for text, count in repeat_notes.items()]
    return {**row, "note": "; ".join(notes)}


def cnn_baseline(cnn: dict[str, np.ndarray]) -> dict:
    """The study's per-sample CNN on its test set (the `measured` / `predicted` vectors)."""
    scores = regression_metrics(cnn["measured"], cnn["predicted"])
    notes = [scores.pop("note")] if scores["note"] else []
    on_grid = np.sort(cnn["I_measured"][cnn["I_test_ind"]])
    if on_grid.size != scores["n"] or not np.allclose(on_grid, np.sort(cnn["measured"]), atol=1e-6):
        notes.append(f"the test vector ({scores['n']} values) differs from I_measured at the "
                     f"{on_grid.size} I_test_ind voxels")
    row = {k: None for k in _FLOATS}
    row.update({k: v for k, v in scores.items() if k != "note"})
    return {**row, "n_voxels": int(np.count_nonzero(cnn["I_measured"] != 2)), "repeats": 0,
            "note": "; ".join(notes)}


def per_sample_baselines(samples: list[SampleMaps], *, roi: str, repeats: int = 100, seed: int = 0,
                         progress: bool = True) -> pd.DataFrame:
    """The tidy table: one row per sample x baseline x target (columns ROW_COLUMNS)."""
    from tqdm import tqdm

    if repeats < 1:
        raise InputError(f"repeats {repeats}: expected at least 1 random 80/20 split")
    if seed < 0:
        raise InputError(f"seed {seed}: expected an integer >= 0")
    rows = []
    for sample in tqdm(samples, desc="baselines", unit="sample", disable=not progress):
        for pair_index, (feature, target) in enumerate(PAIRS):
            # One generator per (seed, sample, pair): a figure does not depend on which others ran.
            rng = np.random.default_rng([seed, zlib.crc32(sample.sample.encode()), pair_index])
            row = quadratic_baseline(sample.maps[feature], sample.maps[target], sample.roi,
                                     repeats=repeats, rng=rng)
            rows.append({"sample": sample.sample, "baseline": QUADRATIC, "feature": feature,
                         "target": target, "roi": roi, **row})
        for target, cnn in sample.cnn.items():
            rows.append({"sample": sample.sample, "baseline": CNN, "feature": "H&E patch",
                         "target": target, "roi": "study test set", **cnn_baseline(cnn)})
    table = pd.DataFrame(rows, columns=list(ROW_COLUMNS))
    return table.astype({"n": "int64", "n_voxels": "int64", "repeats": "int64",
                         **{c: "Float64" for c in _FLOATS}})


def tumour_means(samples: list[SampleMaps]) -> pd.DataFrame:
    """Per sample, the ROI means of smoothed CD and SA and of MD, FAIP, FA (finite voxels only)."""
    rows = []
    for sample in samples:
        row = {"sample": sample.sample}
        for name in ("CD", "SA", "MD", "FAIP", "FA"):
            values = sample.maps[name]
            values = smooth_in_roi(values, sample.roi) if name in ("CD", "SA") else values
            inside = values[sample.roi & np.isfinite(values)]
            row[name] = float(inside.mean()) if inside.size else None
        rows.append(row)
    return pd.DataFrame(rows).astype({n: "Float64" for n in ("CD", "SA", "MD", "FAIP", "FA")})


def across_tumour(means: pd.DataFrame) -> pd.DataFrame:
    """Across tumours: squared Pearson correlation (and the line) of feature mean vs target mean."""
    rows = []
    for feature, target in PAIRS:
        pair = means[[feature, target]].dropna()
        x, y = pair[feature].to_numpy(np.float64), pair[target].to_numpy(np.float64)
        r = pearson_r(x, y)
        slope, intercept = (np.polyfit(x, y, 1) if r is not None else (None, None))
        rows.append({"feature": feature, "target": target, "n_samples": len(pair),
                     "pearson_r": r, "pearson_r2": None if r is None else r * r,
                     "slope": None if slope is None else float(slope),
                     "intercept": None if intercept is None else float(intercept),
                     "note": "" if r is not None else "fewer than 2 samples or a constant mean: r undefined"})
    floats = ("pearson_r", "pearson_r2", "slope", "intercept")
    return pd.DataFrame(rows).astype({c: "Float64" for c in floats})


def summary_table(per_sample: pd.DataFrame) -> pd.DataFrame:
    """Samples as rows, each baseline x target's R² and R²var as columns, and a median row."""
    labels = {(QUADRATIC, "MD"): "MD~CD", (QUADRATIC, "FAIP"): "FAIP~SA", (QUADRATIC, "FA"): "FA~SA",
              (CNN, "MD"): "MD CNN", (CNN, "FAIP"): "FAIP CNN"}
    out = pd.DataFrame({"sample": pd.unique(per_sample["sample"])})
    for (baseline, target), label in labels.items():
        part = per_sample[(per_sample["baseline"] == baseline) & (per_sample["target"] == target)]
        part = part.set_index("sample")
        for metric, suffix in (("r2", "R²"), ("r2_var", "R²var")):
            out[f"{label} {suffix}"] = out["sample"].map(part[metric]).astype("Float64")
    medians = {c: out[c].median() for c in out.columns if c != "sample"}
    return pd.concat([out, pd.DataFrame([{"sample": "median", **medians}])], ignore_index=True)


def _records(frame: pd.DataFrame) -> list[dict]:
    """JSON-ready rows: <NA> becomes null."""
    def clean(value):
        return None if value is pd.NA or (isinstance(value, float) and math.isnan(value)) else value

    return [{k: clean(v) for k, v in row.items()} for row in frame.astype(object).to_dict("records")]


def summary_path(baseline_summary: str) -> str | None:
    """The summary.mat a baseline setting names: BUNDLED -> the shipped copy, "" -> None (no baselines)."""
    return BUNDLED_SUMMARY if baseline_summary == BUNDLED else (baseline_summary or None)


def compute_baselines(summary: str = BUNDLED_SUMMARY, *, roi: str = DEFAULTS.baseline_roi,
                      repeats: int = DEFAULTS.baseline_repeats, seed: int = DEFAULTS.seed,
                      progress: bool = True) -> dict:
    """Everything `histoxai baseline` reports: {"per_sample", "across_tumour", "tumour_means",
    "summary"} DataFrames and "settings"."""
    samples = load_summary(summary, roi)
    per_sample = per_sample_baselines(samples, roi=roi, repeats=repeats, seed=seed, progress=progress)
    means = tumour_means(samples)
    return {"per_sample": per_sample, "summary": summary_table(per_sample), "tumour_means": means,
            "across_tumour": across_tumour(means),
            "settings": {"summary": str(summary), "roi": roi, "repeats": repeats, "seed": seed,
                         "test_fraction": TEST_FRACTION,
                         "smoothing": f"{SMOOTH_SIZE}x{SMOOTH_SIZE} Gaussian, sigma {SMOOTH_SIGMA} voxel, "
                                      "normalised convolution inside the ROI"}}


def to_markdown(result: dict, *, full: bool = True) -> str:
    """The report: per-sample summary, across-tumour table, (full) the tidy table and definitions."""
    s = result["settings"]
    parts = [f"## Per-sample baselines (test R², median of {s['repeats']} random 80/20 splits for the "
             f"regressions; ROI {s['roi']}, seed {s['seed']})\n", markdown_table(result["summary"]),
             "\n## Across tumours (squared Pearson correlation of per-tumour ROI means)\n",
             markdown_table(result["across_tumour"])]
    if full:
        parts += ["\n## All rows\n", markdown_table(result["per_sample"]), "\n## Definitions\n",
                  *(f"- {k}: {v}\n" for k, v in METRIC_LABELS.items()),
                  f"- smoothing: {s['smoothing']}\n", f"- summary.mat: {s['summary']}\n"]
    return "".join(parts)


def write_baselines(result: dict, out: str, *, overwrite: bool = False) -> None:
    """OUT/baseline.parquet (the tidy table), baseline.md and baseline.json (everything), local or gs://."""
    info = {"settings": result["settings"], "definitions": METRIC_LABELS,
            **{k: _records(result[k]) for k in ("per_sample", "across_tumour", "tumour_means", "summary")}}
    with outputs.staged(out, overwrite=overwrite, commit_last=artifacts.BASELINE_TABLE) as stage:
        (stage / artifacts.BASELINE_INFO).write_text(json.dumps(info, indent=2, ensure_ascii=False) + "\n")
        (stage / artifacts.BASELINE_REPORT).write_text(to_markdown(result))
        result["per_sample"].to_parquet(stage / artifacts.BASELINE_TABLE, index=False)
