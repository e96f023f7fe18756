"""Whether saliency maps can be trusted: NaN/blank shares, nuclei masks and deletion/insertion curves.

- Quality: per target x method x setting x score, the share of maps with non-finite values and of
  blank maps (no contrast), over every map of the run.
- Phantom truth (CC maps of phantom samples, `phantom_dir` given; MD, FA and FAIP maps too, on
  |map|, when the phantom's targets were derived from the rendered nuclei: `mask_targets`): relevance
  mass inside the true nuclei mask (positive relevance in the mask / all positive relevance) and
  relevance rank accuracy (share of the K most relevant pixels in the mask, K = mask pixels; pixels
  tied with the K-th value count by the share of their tie group that fits in the top K, so neither
  measure depends on where tied pixels sit), each beside its random baseline, the mask's area share.
  The mask is the voxel's block of the slide-resolution label image (block = floor(slide size /
  grid), as ingest cuts it), resized to the map's size (Pillow bilinear) and thresholded at 0.5.
- Faithfulness: deletion and insertion curves. Pixels are ranked by relevance (NaN last, ties broken
  by a seeded random order); deletion replaces the top fraction f by a blurred copy of the image
  (Gaussian, sigma = size / 10), insertion puts the top fraction of the image onto the blurred copy,
  for f = 0, 1/steps, ..., 1. A curve is the score's change from its start (S(f) - S(image) for
  deletion, S(f) - S(blurred) for insertion) in units of the score's standard deviation over all
  explained patches, so targets of any scale compare; a lower deletion AUC (the score falls fast) and
  a higher insertion AUC mean a more faithful map.
The controls every measure is compared with are in `controls`; the randomisation check (Adebayo et
al. 2018) in `randomization`.
"""

from __future__ import annotations

import json

import numpy as np

from histoxai import layout, storage
from histoxai.errors import InputError

DERIVED_MASK_TARGETS = ("CC", "MD", "FA", "FAIP")
BLUR_FRACTION = 0.1  # sigma of the deletion/insertion reference blur, as a share of the image size


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


def mask_targets(phantom_dir: str, samples) -> tuple[str, ...]:
    """The targets whose evidence lies in the nuclei pixels of these phantom samples: CC always; MD, FA
    and FAIP too when every sample was rendered with `--targets derived` (MD from the nuclei's count and
    area, FA and FAIP from their orientation coherence: properties of the nuclei pixels)."""
    modes = set()
    for sample in samples:
        path = storage.join(phantom_dir, str(sample), layout.TRUTH_TARGETS)
        if storage.exists(path):
            modes.add(json.loads(storage.read_text(path)).get("mode", "real"))
    return DERIVED_MASK_TARGETS if modes == {"derived"} else ("CC",)


def relevance_for(target: str, raw: np.ndarray) -> np.ndarray:
    """The map the mask measures score: CC maps as they are (positive relevance: evidence for more
    nuclei); maps of derived MD/FA as |map|, since the nuclei carry evidence both ways there (more
    nuclei lower the derived MD, larger ones raise it)."""
    return np.asarray(raw) if target == "CC" else np.abs(raw)


def mask_measures(raw: np.ndarray, mask: np.ndarray) -> tuple[float, float, float]:
    """(relevance mass in mask, rank accuracy, mask area share); relevance = positive part of the map.
    Rank accuracy counts pixels tied with the K-th largest relevance by the share of their tie group
    that fits in the top K. A map without positive relevance ranks nothing: NaN for both measures."""
    finite = np.nan_to_num(np.asarray(raw, np.float64), nan=0.0, posinf=0.0, neginf=0.0)
    relevance = np.clip(finite, 0, None).ravel()
    inside = np.asarray(mask, bool).ravel()
    if relevance.shape != inside.shape:
        raise InputError(f"map of shape {np.shape(raw)} and mask of shape {np.shape(mask)}: expected the "
                         "same shape")
    count, total = int(inside.sum()), relevance.sum()
    area = count / inside.size
    if count == 0 or total <= 0:
        return np.nan, np.nan, area
    threshold = np.partition(relevance, relevance.size - count)[relevance.size - count]  # K-th largest
    above, tied = relevance > threshold, relevance == threshold
    share = (count - above.sum()) / tied.sum()  # of the tie group that fits in the top K
    hits = (inside & above).sum() + share * (inside & tied).sum()
    return float(relevance[inside].sum() / total), float(hits / count), area


# ---- deletion / insertion ----

def _ranks(maps: np.ndarray, seed: int = 0) -> np.ndarray:
    """Per map, pixel indices from most to least relevant (NaN last); tied pixels in a seeded random
    order, not in raster order."""
    flat = np.nan_to_num(np.asarray(maps).reshape(len(maps), -1).astype(np.float64), nan=-np.inf)
    tiebreak = np.random.default_rng(seed).random(flat.shape)
    return np.stack([np.lexsort((t, -f)) for f, t in zip(flat, tiebreak, strict=True)])


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
