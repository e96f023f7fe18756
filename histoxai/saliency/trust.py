"""Whether saliency maps can be trusted: NaN/blank shares, nuclei masks, deletion/insertion, randomisation.

- Quality: per target x method x setting x score, the share of maps with non-finite values and of
  blank maps (no contrast), over every map of the run.
- Phantom truth (CC maps of phantom samples, `phantom_dir` given): relevance mass inside the true
  nuclei mask (positive relevance in the mask / all positive relevance) and relevance rank accuracy
  (share of the K most relevant pixels that lie in the mask, K = mask pixels), each beside its
  random baseline, the mask's area share. The mask is the voxel's block of the slide-resolution
  label image (block = floor(slide size / grid), as ingest cuts it), resized to the map's size
  (Pillow bilinear) and thresholded at 0.5. Per-map values join the maps table.
- Faithfulness (a subset of `patches` patches): deletion and insertion curves. Pixels are ranked by
  relevance (NaN last); deletion replaces the top fraction f by a blurred copy of the image (Gaussian,
  sigma = size / 10), insertion puts the top fraction of the image onto the blurred copy, for
  f = 0, 1/steps, ..., 1. A curve is the score's change from its start (S(f) - S(image) for deletion,
  S(f) - S(blurred) for insertion) in units of the score's standard deviation over all explained
  patches (from ŷ and y of the maps table), so
  targets of any scale compare; a lower deletion AUC (the score falls fast) and a higher insertion
  AUC mean a more faithful map. A random pixel order is the reference.
- Sanity (Adebayo et al. 2018): on the same subset, the head and then the top `randomize_blocks`
  backbone blocks are re-initialised in cascade; the maps are recomputed and compared with the
  trained model's by Spearman rank correlation of |map|. A method whose correlation after the last
  stage is still >= RANDOMIZATION_FLAG is flagged: its maps do not depend on what the model learned.
"""

from __future__ import annotations

import json
import re

import numpy as np

from histoxai import layout, storage
from histoxai.errors import InputError

RANDOMIZATION_FLAG = 0.5
BLUR_FRACTION = 0.1  # sigma of the deletion/insertion reference blur, as a share of the image size
_INITIALIZERS = {"depthwise_kernel": "depthwise_initializer", "pointwise_kernel": "pointwise_initializer"}
_BLOCK_PATTERNS = [re.compile(p) for p in (
    r"^(block\d+[a-z])_", r"^(conv\d+_block\d+)_", r"^(block_\d+)_", r"^(expanded_conv_\d+)_",
    r"^(.*_stage_\d+_block_\d+)_", r"^conv_(?:dw|pw)_(\d+)", r"^(top)_")]


# ---- quality ----

def quality(table):
    """NaN and blank shares per target x method x setting x score."""
    grouped = table.assign(has_nan=table["map_nan_fraction"] > 0).groupby(
        ["target", "method", "setting", "score"], sort=False)
    return grouped.agg(maps=("map_id", "size"), nan_maps=("has_nan", "mean"),
                       blank_maps=("map_blank", "mean")).reset_index()


# ---- phantom nuclei masks ----

def phantom_masks(phantom_dir: str, patches, size: int) -> dict[tuple, np.ndarray]:
    """(sample, row, col) -> bool (size, size) nuclei mask, for the patches whose sample folder under
    phantom_dir holds the phantom truth."""
    import h5py
    from PIL import Image

    masks = {}
    for sample, rows in patches.groupby("sample"):
        folder = storage.join(phantom_dir, str(sample))
        if not storage.exists(storage.join(folder, layout.TRUTH_TARGETS)):
            continue
        truth = json.loads(storage.read_text(storage.join(folder, layout.TRUTH_TARGETS)))
        (height, width), (grid_rows, grid_cols) = truth["image_shape"], truth["grid"]
        block_h, block_w = height // grid_rows, width // grid_cols
        with storage.local_copy(storage.join(folder, layout.TRUTH_LABELS)) as path, h5py.File(path) as h5:
            labels = h5["labels"]
            for row, col in zip(rows["row"], rows["col"], strict=True):
                block = labels[row * block_h:(row + 1) * block_h, col * block_w:(col + 1) * block_w] > 0
                resized = Image.fromarray(block.astype(np.float32)).resize((size, size),
                                                                           Image.Resampling.BILINEAR)
                masks[(sample, int(row), int(col))] = np.asarray(resized) > 0.5
    if not masks:
        raise InputError(f"--phantom-dir {phantom_dir}: no sample folder with {layout.TRUTH_TARGETS} for "
                         f"samples {sorted(set(patches['sample']))}; expected the phantom's output folder")
    return masks


def mask_measures(raw: np.ndarray, mask: np.ndarray) -> tuple[float, float, float]:
    """(relevance mass in mask, rank accuracy, mask area share); relevance = positive part of the map.
    A map without positive relevance ranks nothing: NaN for both measures."""
    finite = np.nan_to_num(raw.astype(np.float64), nan=0.0, posinf=0.0, neginf=0.0)
    relevance = np.clip(finite, 0, None).ravel()
    inside = mask.ravel()
    count, total = int(inside.sum()), relevance.sum()
    area = count / inside.size
    if count == 0 or total <= 0:
        return np.nan, np.nan, area
    top = np.argpartition(-relevance, count - 1)[:count]
    return float(relevance[inside].sum() / total), float(inside[top].mean()), area


# ---- deletion / insertion ----

def _ranks(maps: np.ndarray) -> np.ndarray:
    """Per map, pixel indices from most to least relevant (NaN last)."""
    flat = np.nan_to_num(maps.reshape(len(maps), -1).astype(np.float64), nan=-np.inf)
    return np.argsort(-flat, axis=1, kind="stable")


def perturbation_curves(saliency, images: np.ndarray, blurred: np.ndarray, order: np.ndarray, target: str,
                        score, references: np.ndarray, steps: int, spread: float) -> dict[str, np.ndarray]:
    """Deletion and insertion curves (B, steps + 1) for pixel orders (B, H*W): the score's change from
    the curve's start (the image for deletion, the blurred image for insertion) divided by `spread`
    (the score's standard deviation over the explained patches: comparable across targets, and,
    unlike dividing by S(image) - S(blurred) per patch, stable when that gap is small)."""
    import tensorflow as tf

    batch, height, width, _ = images.shape
    fractions = np.linspace(0, 1, steps + 1)
    counts = np.rint(fractions * height * width).astype(int)
    rank = np.empty_like(order)
    np.put_along_axis(rank, order, np.arange(order.shape[1])[None], axis=1)
    curves = {}
    for kind in ("deletion", "insertion"):
        values = np.empty((batch, steps + 1))
        for i, count in enumerate(counts):
            top = (rank < count).reshape(batch, height, width, 1)
            mixed = np.where(top, blurred, images) if kind == "deletion" else np.where(top, images, blurred)
            y = saliency.predict(mixed.astype(np.float32), target)
            values[:, i] = score(tf.constant(y, tf.float32), tf.constant(references, tf.float32)).numpy()
        curves[kind] = values
    return {k: (v - v[:, :1]) / (spread or 1.0) for k, v in curves.items()}


def blur(images: np.ndarray) -> np.ndarray:
    from scipy.ndimage import gaussian_filter

    sigma = BLUR_FRACTION * images.shape[1]
    return np.stack([gaussian_filter(im, sigma=(sigma, sigma, 0), mode="reflect") for im in images])


def auc(curves: np.ndarray) -> np.ndarray:
    """Area under each curve over f in [0, 1] (trapezoid)."""
    return np.trapezoid(curves, dx=1.0 / (curves.shape[1] - 1), axis=1)


# ---- model randomisation ----

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


def spearman(first: np.ndarray, second: np.ndarray) -> float:
    """Rank correlation of |map| values; NaN when either map is constant."""
    from scipy.stats import rankdata

    a, b = (rankdata(np.abs(np.nan_to_num(m.ravel(), nan=0.0))) for m in (first, second))
    if a.std() == 0 or b.std() == 0:
        return np.nan
    return float(np.corrcoef(a, b)[0, 1])


def randomization_stages(model, blocks: int) -> list[tuple[str, list]]:
    """Cascade: (stage name, layers randomised so far)."""
    from histoxai.model import is_head_layer

    head = [layer for layer in model.layers if layer.weights and is_head_layer(model, layer)]
    stages = [("head", head)]
    for k, block in enumerate(backbone_blocks(model)[:blocks], start=1):
        stages.append((f"head + {k} block{'s' if k > 1 else ''} ({block[0].name})", stages[-1][1] + block))
    return stages
