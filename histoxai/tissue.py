"""Tissue detection on a low-resolution slide image, for slides that come without a tissue mask.

H&E-stained tissue is coloured (pink to purple) and the glass around it is white or grey, so the HSV
saturation S = (max - min) / max of a pixel separates them: Otsu's threshold on the saturation
histogram (the cut that maximises the between-class variance), never below MIN_SATURATION so that an
empty slide's noise does not become tissue. The raw mask is then cleaned up with scipy.ndimage:
an opening removes specks and thin dust lines, a closing bridges narrow cracks, holes smaller than
`min_area` pixels are filled (nuclei-free lumen stays out only when it is large, like the gaps
between tissue pieces), and components smaller than `min_area` are dropped.

`voxel_fractions` turns the mask into the tissue share of each voxel block; prediction keeps a
voxel when that share is at least MIN_TISSUE_FRACTION (half of its block).
"""

from __future__ import annotations

import numpy as np

MIN_SATURATION = 0.05  # glass, dust and scanner noise stay below this; stained tissue is far above
MIN_TISSUE_FRACTION = 0.5  # a voxel is tissue when at least half of its block is
HISTOGRAM_BINS = 256


def saturation(rgb: np.ndarray) -> np.ndarray:
    """HSV saturation in [0, 1] of an H x W x 3 uint8 image (0 where the pixel is black)."""
    rgb = rgb.astype(np.float32)
    high, low = rgb.max(axis=2), rgb.min(axis=2)
    return np.divide(high - low, high, out=np.zeros_like(high), where=high > 0)


def otsu_threshold(values: np.ndarray, bins: int = HISTOGRAM_BINS) -> float:
    """Otsu's threshold of values in [0, 1]: the bin edge that maximises the between-class variance."""
    counts, edges = np.histogram(values, bins=bins, range=(0.0, 1.0))
    centres = (edges[:-1] + edges[1:]) / 2
    weight_low = np.cumsum(counts)[:-1]
    weight_high = counts.sum() - weight_low
    sums = np.cumsum(counts * centres)[:-1]
    with np.errstate(divide="ignore", invalid="ignore"):
        mean_low = sums / weight_low
        mean_high = (sums[-1] + counts[-1] * centres[-1] - sums) / weight_high
        between = weight_low * weight_high * (mean_low - mean_high) ** 2
    between = np.nan_to_num(between, nan=-1.0)
    return float(edges[1:-1][int(np.argmax(between))]) if between.max() > 0 else 1.0


def _small_components(mask: np.ndarray, min_area: int) -> np.ndarray:
    from scipy import ndimage

    labels, count = ndimage.label(mask)
    if count == 0:
        return np.zeros_like(mask)
    areas = np.bincount(labels.ravel(), minlength=count + 1)
    small = areas < min_area
    small[0] = False  # label 0 is the other class
    return small[labels]


def detect_tissue(rgb: np.ndarray, *, min_area: int = 64, smoothing: int = 1) -> np.ndarray:
    """Bool mask (True = tissue) of an H x W x 3 uint8 low-resolution slide image.

    `smoothing` is the number of 3 x 3 iterations of the opening and of the closing; `min_area` (in
    pixels of this image) is the smallest tissue piece kept and the largest hole filled.
    """
    from scipy import ndimage

    sat = saturation(rgb)
    mask = sat > max(otsu_threshold(sat), MIN_SATURATION)
    if smoothing:
        # border_value=1 for the closing: tissue cut by the image edge is not eaten from the edge in
        mask = ndimage.binary_opening(mask, iterations=smoothing)
        mask = ndimage.binary_closing(mask, iterations=smoothing, border_value=1) | mask
    holes = ~mask
    mask |= _small_components(holes, min_area) & ~_touches_border(holes)
    mask &= ~_small_components(mask, min_area)
    return mask


def _touches_border(mask: np.ndarray) -> np.ndarray:
    """Per pixel: True where its component of `mask` reaches the image border (open background)."""
    from scipy import ndimage

    labels, count = ndimage.label(mask)
    edge = np.unique(np.concatenate([labels[0], labels[-1], labels[:, 0], labels[:, -1]]))
    touching = np.zeros(count + 1, bool)
    touching[edge] = True
    touching[0] = False
    return touching[labels]


def voxel_fractions(mask: np.ndarray, scale: tuple[float, float], grid: tuple[int, int],
                    block: tuple[int, int]) -> np.ndarray:
    """The tissue share of each voxel block, from a mask whose pixel (y, x) covers level-0 pixels
    [y * scale[0], (y + 1) * scale[0]) x [x * scale[1], ...): each mask pixel counts for the voxel that
    holds its centre; a voxel smaller than one mask pixel takes the pixel at its own centre."""
    (rows, cols), (bh, bw) = grid, block
    centre_y = (np.arange(mask.shape[0]) + 0.5) * scale[0]
    centre_x = (np.arange(mask.shape[1]) + 0.5) * scale[1]
    vy, vx = (centre_y // bh).astype(np.int64), (centre_x // bw).astype(np.int64)
    inside_y, inside_x = vy < rows, vx < cols
    sub = mask[np.ix_(inside_y, inside_x)]
    index = (vy[inside_y][:, None] * cols + vx[inside_x][None, :]).ravel()
    total = np.bincount(index, minlength=rows * cols)
    tissue = np.bincount(index, weights=sub.ravel().astype(np.float64), minlength=rows * cols)
    fractions = np.divide(tissue, total, out=np.zeros(rows * cols), where=total > 0).reshape(rows, cols)
    empty = (total == 0).reshape(rows, cols)
    if empty.any():
        ii, jj = np.nonzero(empty)
        y = np.minimum(((ii + 0.5) * bh / scale[0]).astype(np.int64), mask.shape[0] - 1)
        x = np.minimum(((jj + 0.5) * bw / scale[1]).astype(np.int64), mask.shape[1] - 1)
        fractions[ii, jj] = mask[y, x]
    return fractions


def tissue_voxels(fractions: np.ndarray) -> np.ndarray:
    return fractions >= MIN_TISSUE_FRACTION
