"""The randomisation check of Adebayo et al. (2018): maps of a model re-initialised in cascade.

From the head down to the input, every block of the backbone (`backbone_blocks`, top first) is
re-initialised in turn and added to what is already random; after the head and after each measured
block the maps of the subset are recomputed and compared with the trained model's, patch by patch:
- signed rho: Spearman rank correlation of the raw maps (a sign flip gives -1);
- absolute rho: Spearman rank correlation of |map| (a sign flip gives +1);
- SSIM: structural similarity (Wang et al. 2004: Gaussian window sigma 1.5, K1 0.01, K2 0.03) of the
  maps' |values| min-max normalised to [0, 1].
A comparison with a constant or all-NaN map (before or after) is undefined: NaN, never a pass.
State after the last stage (every weight random): "undefined" when any patch's comparison is
undefined, "fails" when the mean signed rho's magnitude or the mean absolute rho is >=
RANDOMIZATION_FLAG (the maps still follow the same pixels: they do not depend on what the model
learned), else "passes". SSIM is reported beside them, not used by the state.
"""

from __future__ import annotations

import re
from collections.abc import Callable

import numpy as np

RANDOMIZATION_FLAG = 0.5
SSIM_SIGMA, SSIM_K1, SSIM_K2 = 1.5, 0.01, 0.03
STATES = ("passes", "fails", "undefined")
_INITIALIZERS = {"depthwise_kernel": "depthwise_initializer", "pointwise_kernel": "pointwise_initializer"}
_BLOCK_PATTERNS = [re.compile(p) for p in (
    r"^(block\d+[a-z])_", r"^(conv\d+_block\d+)_", r"^(block_\d+)_", r"^(expanded_conv_\d+)_",
    r"^(.*_stage_\d+_block_\d+)_", r"^conv_(?:dw|pw)_(\d+)", r"^(top)_")]


def backbone_blocks(model) -> list[list]:
    """Weighted non-head layers grouped into blocks by their names, top block first."""
    from histoxai.model import is_head_layer

    blocks: list[list] = []
    last_key = None
    for layer in reversed(model.layers):
        if not layer.weights or is_head_layer(model, layer):
            continue
        key = next((m.group(1) for p in _BLOCK_PATTERNS if (m := p.match(layer.name))),
                   re.sub(r"_(bn|BN)$", "", layer.name))
        if key != last_key:
            blocks.append([])
            last_key = key
        blocks[-1].append(layer)
    return blocks


def randomize_layers(layers, seed: int) -> None:
    """Re-initialise the layers' weights with their own initializers (seeded); a weight without one
    gets normal noise of the trained values' mean and standard deviation."""
    rng = np.random.default_rng(seed)
    for i, layer in enumerate(layers):
        values = []
        for j, variable in enumerate(layer.weights):
            base = variable.name.split("/")[-1]
            initializer = getattr(layer, _INITIALIZERS.get(base, f"{base}_initializer"), None)
            if initializer is None and base == "kernel":  # DepthwiseConv2D names its kernel "kernel"
                initializer = getattr(layer, "depthwise_initializer", None)
            trained = np.asarray(variable.numpy())
            if initializer is not None:
                config = initializer.get_config()
                if "seed" in config:
                    config["seed"] = seed * 7919 + i * 31 + j
                    initializer = initializer.__class__.from_config(config)
                values.append(np.asarray(initializer(trained.shape, "float32")))
            else:
                values.append(rng.normal(trained.mean(), trained.std() or 1.0, trained.shape))
        layer.set_weights([v.astype(w.dtype) for v, w in zip(values, layer.get_weights(), strict=True)])


def randomization_stages(model, blocks: int = 0) -> list[tuple[str, list]]:
    """The cascade: (stage name, layers randomised so far), from the head to the input. Every block is
    randomised; blocks > 0 measures at most that many stages between the head and the last one
    (evenly spaced), 0 measures after every block. The last stage always has every weight random."""
    from histoxai.model import is_head_layer

    head = [layer for layer in model.layers if layer.weights and is_head_layer(model, layer)]
    groups = backbone_blocks(model)
    measured = set(range(1, len(groups) + 1))
    if 0 < blocks < len(groups) - 1:
        measured = {int(round(k)) for k in np.linspace(1, len(groups), blocks + 2)[1:]}
        measured.add(len(groups))
    stages = [("head", head)]
    done = list(head)
    for k, block in enumerate(groups, start=1):
        done = done + block
        if k in measured:
            last = " (to the input)" if k == len(groups) else ""
            stages.append((f"head + {k} block{'s' if k > 1 else ''} ({block[0].name}){last}", done))
    return stages


# ---- comparing two maps ----

def _finite_rows(maps: np.ndarray, absolute: bool) -> tuple[np.ndarray, np.ndarray]:
    """(B, N) float64 copies of (B, ...) maps (of |maps| with absolute) with non-finite values set to 0,
    and which rows are defined: not constant and not all non-finite."""
    values = np.asarray(maps, np.float64).reshape(len(maps), -1)
    if absolute:
        values = np.abs(values)
    defined = np.isfinite(values).any(axis=1)
    values = np.nan_to_num(values, nan=0.0, posinf=0.0, neginf=0.0)
    return values, defined & (values.max(axis=1) != values.min(axis=1))


def spearman_rows(first: np.ndarray, second: np.ndarray, *, absolute: bool = False) -> np.ndarray:
    """spearman() of each pair of (B, ...) maps, all at once (a per-map loop was about twice as slow)."""
    from scipy.stats import rankdata

    (a, defined_a), (b, defined_b) = _finite_rows(first, absolute), _finite_rows(second, absolute)
    rho = np.full(len(a), np.nan)
    rows = defined_a & defined_b
    if rows.any():
        ranks_a, ranks_b = rankdata(a[rows], axis=1), rankdata(b[rows], axis=1)
        ranks_a -= ranks_a.mean(axis=1, keepdims=True)
        ranks_b -= ranks_b.mean(axis=1, keepdims=True)
        rho[rows] = np.clip((ranks_a * ranks_b).sum(axis=1)
                            / np.sqrt((ranks_a**2).sum(axis=1) * (ranks_b**2).sum(axis=1)), -1.0, 1.0)
    return rho


def spearman(first: np.ndarray, second: np.ndarray, *, absolute: bool = False) -> float:
    """Rank correlation of the maps' values (of |values| with absolute=True); NaN when either map is
    constant or holds no finite value."""
    return float(spearman_rows(np.asarray(first)[None], np.asarray(second)[None], absolute=absolute)[0])


def ssim_rows(first: np.ndarray, second: np.ndarray) -> np.ndarray:
    """ssim() of each pair of (B, H, W) maps, all at once (the filter runs over each map's own axes)."""
    from scipy.ndimage import gaussian_filter

    first, second = np.asarray(first), np.asarray(second)
    (a, defined_a), (b, defined_b) = _finite_rows(first, True), _finite_rows(second, True)
    result = np.full(len(a), np.nan)
    rows = defined_a & defined_b
    if not rows.any():
        return result
    a, b = (m[rows].reshape(-1, *first.shape[1:]) for m in (a, b))
    a, b = ((m - m.min(axis=(1, 2), keepdims=True)) / np.ptp(m, axis=(1, 2), keepdims=True) for m in (a, b))
    c1, c2 = SSIM_K1**2, SSIM_K2**2  # data range 1

    def smooth(x):
        return gaussian_filter(x, SSIM_SIGMA, mode="reflect", axes=(1, 2))

    mu_a, mu_b = smooth(a), smooth(b)
    var_a, var_b = smooth(a * a) - mu_a**2, smooth(b * b) - mu_b**2
    cov = smooth(a * b) - mu_a * mu_b
    index = ((2 * mu_a * mu_b + c1) * (2 * cov + c2)) / ((mu_a**2 + mu_b**2 + c1) * (var_a + var_b + c2))
    result[rows] = index.mean(axis=(1, 2))
    return result


def ssim(first: np.ndarray, second: np.ndarray) -> float:
    """Mean SSIM of |map| min-max normalised to [0, 1]; NaN when either map is constant."""
    return float(ssim_rows(np.asarray(first)[None], np.asarray(second)[None])[0])


def compare(before: np.ndarray, after: np.ndarray) -> dict[str, float]:
    """Mean signed rho, absolute rho and SSIM over the patches of (B, H, W) maps, and the share of
    patches whose comparison is undefined (a constant or all-NaN map before or after)."""
    if len(before) != len(after):
        raise ValueError(f"compare: {len(before)} maps before, {len(after)} after; expected as many")
    signed = spearman_rows(before, after)
    absolute = spearman_rows(before, after, absolute=True)
    similarity = ssim_rows(before, after)
    undefined = ~(np.isfinite(signed) & np.isfinite(absolute) & np.isfinite(similarity))

    def mean(values):
        return float(np.nanmean(values)) if np.isfinite(values).any() else np.nan

    return {"signed_rho": mean(signed), "abs_rho": mean(absolute), "ssim": mean(similarity),
            "undefined": float(undefined.mean()) if len(undefined) else 1.0}


def state(result: dict[str, float]) -> str:
    """'undefined', 'fails' or 'passes' for the comparison after the last stage (see the module)."""
    values = (result["signed_rho"], result["abs_rho"])
    if result["undefined"] > 0 or not np.isfinite(values).all():
        return "undefined"
    return "fails" if max(abs(values[0]), values[1]) >= RANDOMIZATION_FLAG else "passes"


def cascade(model, stages: list[tuple[str, list]], compute: Callable, trained: dict, seed: int):
    """Runs the cascade on a copy of `model`: after each stage, compute(copy, last) returns
    {key: (B, H, W) maps} (last: True at the last stage), each compared with trained[key].
    Returns (one record per stage and key, the last stage's maps)."""
    import keras

    copy = keras.models.clone_model(model)
    copy.set_weights(model.get_weights())
    records, maps, done = [], {}, 0
    for number, (name, layers) in enumerate(stages):
        randomize_layers([copy.get_layer(layer.name) for layer in layers[done:]], seed + done)
        done = len(layers)
        maps = compute(copy, number == len(stages) - 1)
        for key, after in maps.items():
            records.append({"key": key, "stage": name, "stage_number": number,
                            **compare(trained[key], after)})
    return records, maps
