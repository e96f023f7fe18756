"""Concept sensitivity: do nuclear properties (density, size, elongation, orientation coherence) move a
model's prediction, which way, and how surely.

Per patch the concept values come from a per-nucleus table (`patch_concepts`; `phantom_nuclei` reads
the phantom's true nuclei). For each layer, target and concept, `concept_sensitivity` follows
regression concept vectors (Graziani, Andrearczyk and Müller, iMIMIC 2018; "Concept attribution",
Computers in Biology and Medicine 2020): a ridge regression of the standardised concept on the layer's
spatially averaged activations, whose held-out R² says whether the layer encodes the concept at all.
The concept vector is p = cov(activations, concept), the way the activations move when the concept
rises by one SD (the regression's "pattern", Haufe et al., NeuroImage 2014; also the ridge direction
under a strong penalty). The ridge weights themselves (the published RCV) cancel each other when
channels are collinear: on this module's test model (4 channels, |r| > 0.99) their sensitivity to
nuclei density changed sign between splits (95 % interval -12.5 to 23.2) while p's stayed positive.
They are reported as rcv_sensitivity, for comparison.

Per patch x and target t, the effect is grad ŷ_t(x) · p (target units per SD of the concept; which
gradient, see `concepts_stats`), the sensitivity grad ŷ_t(x) · p / |p|, and the TCAV score the
fraction of patches where it is positive (Kim et al. 2018). Everything is fitted on a training part and
measured on held-out patches, over `repeats` random splits (95 % percentile intervals over the splits).
Significance: the mean effect is set against random concepts, the concept's values permuted across the
patches, each fitted on one split in the same way; the two-sided empirical p-value is
Bonferroni-corrected over concepts x targets x layers. A random concept on one split varies more than
the concept's average over all splits, so the test errs on the cautious side. The verdict "moves the
prediction" needs a corrected p below alpha and a held-out R² of at least `r2_floor`: a concept the
layer does not encode has R² near 0, and its vector no meaning.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence

import numpy as np
import pandas as pd

from histoxai.errors import InputError
from histoxai.saliency.concepts_stats import SplitFit, layer_gradients, split_statistics

KEYS = ("sample", "row", "col")
# per-nucleus columns that are positions or identities, not properties to average
NOT_PROPERTIES = {"label", "x", "y", "voxel_row", "voxel_col", "semi_major", "semi_minor"}
MIN_PATCHES = 10  # patches with a value a concept needs before it is fitted at all
MOVES, NOT_ENCODED, NO_EFFECT = "moves the prediction", "not encoded in this layer", "no significant effect"
STATS = ("effect", "sensitivity", "tcav", "rcv")  # per split, see concepts_stats.split_statistics
COLUMNS = ["target", "layer", "concept", "n_patches", "r2", "r2_low", "r2_high", "effect", "effect_low",
           "effect_high", "sensitivity", "sensitivity_low", "sensitivity_high", "tcav", "tcav_low",
           "tcav_high", "rcv_sensitivity", "random_tcav", "random_sd", "p_value", "p_corrected", "direction",
           "verdict"]


# ---- concept values per patch ----

def phantom_nuclei(sample_dir: str | os.PathLike) -> pd.DataFrame:
    """The phantom's true nuclei of one sample folder as a per-nucleus table: sample (the folder's
    name), row, col (the MR voxel), area (pi a b, px²), elongation (a / b), orientation (radians), and
    the stain amount haematoxylin where the phantom wrote it."""
    from histoxai import layout, storage

    uri = storage.join(sample_dir, layout.TRUTH_NUCLEI)
    truth = storage.read_parquet(uri, "the phantom's per-nucleus truth table")
    missing = {"voxel_row", "voxel_col", "semi_major", "semi_minor", "angle"} - set(truth.columns)
    if missing:
        raise InputError(f"{uri}: missing columns {sorted(missing)}; expected the phantom's nuclei table")
    a, b = truth["semi_major"].to_numpy(float), truth["semi_minor"].to_numpy(float)
    frame = pd.DataFrame({
        "sample": os.path.basename(str(sample_dir).rstrip("/")),
        "row": truth["voxel_row"].to_numpy(np.int64), "col": truth["voxel_col"].to_numpy(np.int64),
        "area": np.pi * a * b, "elongation": np.divide(a, b, out=np.full(a.shape, np.nan), where=b > 0),
        "orientation": truth["angle"].to_numpy(float)})
    if "haematoxylin" in truth.columns:
        frame["haematoxylin"] = truth["haematoxylin"].to_numpy(float)
    return frame


def _check_keys(frame: pd.DataFrame, name: str) -> None:
    if not isinstance(frame, pd.DataFrame):
        raise InputError(f"{name}: a {type(frame).__name__}; expected a pandas DataFrame")
    missing = [k for k in KEYS if k not in frame.columns]
    if missing:
        raise InputError(f"{name}: missing columns {missing}; expected sample, row, col per patch")


def _numeric(column: pd.Series) -> bool:
    return pd.api.types.is_numeric_dtype(column) and not pd.api.types.is_bool_dtype(column)


def patch_concepts(nuclei: pd.DataFrame, patches: pd.DataFrame | None = None) -> pd.DataFrame:
    """Concept values per patch (sample, row, col) from a per-nucleus table.

    density: nuclei in the patch; size: mean area; elongation: mean of the column of that name (NaN
    values skipped); coherence: mean resultant length of the doubled orientations,
    |mean(exp(2i angle))|, NaN below two nuclei (one nucleus is trivially coherent); every other
    numeric property column: its mean (positions, labels and centroids are skipped). With `patches`
    (sample, row, col), the rows follow that table, and a patch without nuclei has density 0 and NaN
    elsewhere.
    """
    _check_keys(nuclei, "nuclei")
    frame = nuclei.assign(sample=nuclei["sample"].astype(str))
    groups = frame.groupby(list(KEYS), sort=True)
    out = groups.size().rename("density").to_frame()
    if "area" in frame.columns:
        out["size"] = groups["area"].mean()
    if "elongation" in frame.columns:
        out["elongation"] = groups["elongation"].mean()
    if "orientation" in frame.columns:
        doubled = 2 * frame["orientation"].to_numpy(float)
        parts = frame[list(KEYS)].assign(c=np.cos(doubled), s=np.sin(doubled))
        parts = parts.groupby(list(KEYS), sort=True).agg(c=("c", "mean"), s=("s", "mean"), n=("c", "count"))
        out["coherence"] = np.where(parts["n"] >= 2, np.hypot(parts["c"], parts["s"]), np.nan)
    used = {*KEYS, "area", "elongation", "orientation", *NOT_PROPERTIES}
    for name in frame.columns:
        if name not in used and not str(name).startswith("centroid") and _numeric(frame[name]):
            out[name] = groups[name].mean()
    out = out.reset_index()
    if patches is None:
        return out
    _check_keys(patches, "patches")
    keys = patches[list(KEYS)].assign(sample=patches["sample"].astype(str))
    merged = keys.merge(out, on=list(KEYS), how="left", validate="many_to_one")
    merged["density"] = merged["density"].fillna(0).astype(np.int64)
    return merged


# ---- sensitivity ----

def default_layers(model) -> list[str]:
    """The CAM layer and the backbone's middle stage (`histoxai.model.BACKBONE_SPECS`) of a histoxai
    model; the CAM layer alone when the stage is missing."""
    from histoxai.model import BACKBONE_SPECS, cam_layer_name

    names = {layer.name for layer in model.layers}
    spec = BACKBONE_SPECS.get(model.name.removeprefix("histoxai_"))
    if spec is not None and spec.cam_layer in names:
        stage = spec.stages.split("+")[-1]
        return [spec.cam_layer, stage] if stage in names else [spec.cam_layer]
    try:
        return [cam_layer_name(model)]
    except ValueError:
        raise InputError(f"model {model.name}: no layers given and not a histoxai model; expected "
                         "layers=[...] naming the layers to read") from None


def _concept_columns(concepts, count: int) -> list[str]:
    if not isinstance(concepts, pd.DataFrame):
        raise InputError(f"concepts: a {type(concepts).__name__}; expected a pandas DataFrame")
    if len(concepts) != count:
        raise InputError(f"concepts: {len(concepts)} rows for {count} images; expected one row per image, "
                         "in the images' order")
    columns = [c for c in concepts.columns if c not in KEYS and _numeric(concepts[c])]
    if not columns:
        raise InputError("concepts: no numeric concept columns; expected e.g. density, size, elongation")
    return columns


def _check_images(model, images) -> np.ndarray:
    images = np.asarray(images)
    if images.ndim != 4 or images.shape[-1] != 3 or len(images) == 0:
        raise InputError(f"images: shape {images.shape}; expected (N, H, W, 3) with N > 0")
    expected = tuple(model.input_shape[1:3])
    if None not in expected and tuple(images.shape[1:3]) != expected:
        raise InputError(f"images: {images.shape[1]} x {images.shape[2]} px; expected {expected[0]} x "
                         f"{expected[1]} px, the model's input")
    return images.astype(np.float32, copy=False)


def _splits(count: int, repeats: int, held_out: float, seed: int) -> list[tuple[np.ndarray, np.ndarray]]:
    rng = np.random.default_rng(np.random.SeedSequence([seed, 0]))
    n_test = min(count - 3, max(2, round(held_out * count)))
    out = []
    for _ in range(repeats):
        order = rng.permutation(count)
        out.append((np.sort(order[n_test:]), np.sort(order[:n_test])))
    return out


def _p_value(observed: float, null: np.ndarray) -> float:
    null = null[np.isfinite(null)]
    if not np.isfinite(observed) or null.size == 0:
        return np.nan
    tail = min((null >= observed).sum(), (null <= observed).sum())
    return min(1.0, 2 * (1 + tail) / (null.size + 1))


def concept_sensitivity(model, images: np.ndarray, concepts: pd.DataFrame, targets: Sequence[str] | str,
                        layers: list[str] | None = None, repeats: int = 20, seed: int = 0, *,
                        randoms: int | None = None, r2_floor: float = 0.1, alpha: float = 0.05,
                        held_out: float = 0.3, batch_size: int = 32) -> pd.DataFrame:
    """One row per target x layer x concept (columns `COLUMNS`): held-out R² of the concept regression,
    mean effect, sensitivity and TCAV score (each with a 95 % interval over `repeats` splits), the
    ridge direction's sensitivity, the random concepts' mean TCAV score and the spread of their mean
    effect, p-value and its Bonferroni correction, direction (raises / lowers / none) and verdict.

    images: (N, H, W, 3) as the model takes them; concepts: one row per image, same order, every
    numeric column but sample/row/col a concept (NaN: unknown for that patch). randoms: random concepts
    per concept (default: enough that the corrected p-value can reach alpha / 2).
    """
    images = _check_images(model, images)
    columns = _concept_columns(concepts, len(images))
    targets = [targets] if isinstance(targets, str) else list(targets)
    if not targets:
        raise InputError("targets: none given; expected the model's outputs to test, e.g. ['CC']")
    layers = default_layers(model) if layers is None else list(layers)
    if not layers:
        raise InputError("layers: an empty list; expected layer names, or None for the defaults")
    if int(repeats) < 2:
        raise InputError(f"repeats {repeats}: expected at least 2 random splits")
    if not 0 < held_out < 1 or len(images) < MIN_PATCHES:
        raise InputError(f"{len(images)} images, held_out {held_out}: expected at least {MIN_PATCHES} "
                         "images and a held-out fraction between 0 and 1")
    tests = len(columns) * len(targets) * len(layers)
    randoms = int(randoms) if randoms is not None else max(100, math.ceil(4 * tests / alpha))
    gradients = layer_gradients(model, images, layers, targets, batch_size=batch_size)
    splits = _splits(len(images), int(repeats), held_out, seed)
    values = {c: concepts[c].to_numpy(np.float64) for c in columns}
    rows = []
    for layer in layers:
        results = _layer_results(gradients[layer], values, splits, randoms, seed)
        for target in targets:
            for concept in columns:
                rows.append(_row(target, layer, concept, results[concept], tests, alpha, r2_floor))
    table = pd.DataFrame(rows, columns=COLUMNS)
    table.attrs.update(repeats=int(repeats), randoms=randoms, tests=tests, alpha=alpha, r2_floor=r2_floor)
    return table


def _layer_results(layer_data, values: dict[str, np.ndarray], splits, randoms: int, seed: int) -> dict:
    """Per concept: n_patches, and per split the observed and random statistics, or a reason."""
    activations, gradients = layer_data
    prepared, results = {}, {}
    for index, (concept, y) in enumerate(values.items()):
        finite = np.isfinite(y)
        spread = y[finite].std() if finite.any() else 0.0
        if finite.sum() < MIN_PATCHES or spread == 0:
            reason = "constant" if finite.sum() >= MIN_PATCHES else f"under {MIN_PATCHES} patches"
            results[concept] = {"reason": reason, "n": int(finite.sum())}
            continue
        prepared[concept] = (index, finite, np.where(finite, (y - y[finite].mean()) / spread, np.nan))
        results[concept] = {"n": int(finite.sum()), "r2": [],
                            "obs": {t: {k: [] for k in STATS} for t in gradients},
                            "null": {t: {"effect": [], "tcav": []} for t in gradients}}
    for r, (train_all, test_all) in enumerate(splits):
        fits: dict[bytes, SplitFit | None] = {}
        for concept, (index, finite, z) in prepared.items():
            key = finite.tobytes()
            train, test = train_all[finite[train_all]], test_all[finite[test_all]]
            if key not in fits:
                fits[key] = SplitFit(activations, train, test) if len(train) >= 3 and len(test) >= 2 else None
            if fits[key] is None:
                continue
            rng = np.random.default_rng(np.random.SeedSequence([seed, 1, index, r]))
            own = (randoms - r + len(splits) - 1) // len(splits)  # random concepts j with j % repeats == r
            shuffled = np.tile(z[:, None], (1, 1 + own))
            shuffled[finite, 1:] = rng.permuted(np.tile(z[finite][:, None], (1, own)), axis=0)
            stats = split_statistics(fits[key], shuffled[train], shuffled[test], gradients)
            found = results[concept]
            found["r2"].append(stats["r2"][0])
            for t in gradients:
                for name in STATS:
                    found["obs"][t][name].append(stats[t][name][0])
                for name in ("effect", "tcav"):
                    found["null"][t][name].extend(stats[t][name][1:])
    return results


def _interval(values) -> tuple[float, float, float]:
    values = np.asarray(values, float)
    values = values[np.isfinite(values)]
    if not values.size:
        return np.nan, np.nan, np.nan
    low, high = np.percentile(values, [2.5, 97.5])
    return float(values.mean()), float(low), float(high)


def _row(target: str, layer: str, concept: str, found: dict, tests: int, alpha: float, r2_floor: float):
    base = {"target": target, "layer": layer, "concept": concept, "n_patches": found["n"]}
    if "reason" in found or not found["r2"]:
        reason = found.get("reason", "too few patches per split")
        return {**base, "direction": "none", "verdict": f"undefined ({reason})"}
    values = {"r2": _interval(found["r2"])}
    values.update({name: _interval(found["obs"][target][name]) for name in STATS})
    null_effect = np.asarray(found["null"][target]["effect"], float)
    null_tcav = np.asarray(found["null"][target]["tcav"], float)
    effect = values["effect"][0]
    p = _p_value(effect, null_effect)
    corrected = min(1.0, p * tests) if np.isfinite(p) else np.nan
    if not values["r2"][0] >= r2_floor:
        verdict = NOT_ENCODED
    elif corrected < alpha:
        verdict = MOVES
    else:
        verdict = NO_EFFECT
    direction = ("raises" if effect > 0 else "lowers") if verdict == MOVES else "none"
    finite_null = null_effect[np.isfinite(null_effect)]
    for name in ("r2", "effect", "sensitivity", "tcav"):
        base[name], base[f"{name}_low"], base[f"{name}_high"] = values[name]
    return {**base, "rcv_sensitivity": values["rcv"][0],
            "random_tcav": float(np.nanmean(null_tcav)) if np.isfinite(null_tcav).any() else np.nan,
            "random_sd": float(finite_null.std()) if finite_null.size else np.nan,
            "p_value": p, "p_corrected": corrected, "direction": direction, "verdict": verdict}


def _number(value) -> str:
    return "–" if value is None or not np.isfinite(value) else f"{value:.3g}"


def markdown(table: pd.DataFrame) -> str:
    """The table as Markdown: one line per target x layer x concept, then what the columns mean."""
    missing = [c for c in COLUMNS if c not in table.columns]
    if missing:
        raise InputError(f"table: missing columns {missing}; expected the output of concept_sensitivity")
    lines = ["| target | layer | concept | held-out R² | effect per SD [95 % CI] | sensitivity [95 % CI] | "
             "TCAV [95 % CI] | random TCAV | p (corrected) | direction | verdict |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for row in table.itertuples(index=False):
        lines.append(
            f"| {row.target} | {row.layer} | {row.concept} | {_number(row.r2)} | "
            f"{_number(row.effect)} [{_number(row.effect_low)}, {_number(row.effect_high)}] | "
            f"{_number(row.sensitivity)} [{_number(row.sensitivity_low)}, {_number(row.sensitivity_high)}] | "
            f"{_number(row.tcav)} [{_number(row.tcav_low)}, {_number(row.tcav_high)}] | "
            f"{_number(row.random_tcav)} | {_number(row.p_value)} ({_number(row.p_corrected)}) | "
            f"{row.direction} | {row.verdict} |")
    attrs = table.attrs
    lines += ["", "Effect: change of the prediction when the concept rises by one SD, through the layer's "
              "mean activation moving as it does with the concept in the data (its local linear "
              "approximation); sensitivity: the same per unit move along that direction; TCAV: fraction "
              f"of held-out patches where it is positive; intervals over {attrs.get('repeats', '?')} "
              f"splits. p: two-sided, against {attrs.get('randoms', '?')} random (permuted) concepts, "
              f"Bonferroni over {attrs.get('tests', '?')} tests. 'Moves the prediction' needs corrected p < "
              f"{attrs.get('alpha', 0.05)} and held-out R² ≥ {attrs.get('r2_floor', 0.1)}."]
    return "\n".join(lines) + "\n"
