"""Structure anisotropy (SA) per MR voxel, computed from the slide's pixels while it streams by in row bands.

The recipe is the original study's (its MATLAB `get_J_from_histo` and `downsample_SA_to_dSA`):
grey = mean(R, G, B); gradients D_x, D_y by a 9-tap x-weighted Gaussian (sigma 1 px); a tissue mask M
that drops large bright areas (grey > 230 smoothed and thresholded at 0.9, then widened twice by
smoothing and thresholding at 0.1); J_ab = G * (D_a D_b M) with a 51-tap Gaussian of sigma 30 px;
J averaged over each voxel's block; SA = (l1 - l2) / (l1 + l2) of that 2 x 2 tensor.

Three changes keep it streamable and cheap (a 30k x 30k px slide must not need its full-resolution J):
- Everything after the gradient products runs on a grid `downsample` times coarser (default 4): the
  products and the bright-pixel indicator are averaged over downsample x downsample cells, the sigma-30
  smoothings run there with sigma and window divided by `downsample`, and the tissue mask is decided
  per cell. With downsample=1 the result equals the full-resolution recipe.
- Smoothing and voxel averaging are both linear, so the voxel tensor is Wr @ (M * Q) @ Wc.T with small
  weight matrices (a voxel's box smeared by the Gaussian); each coarse row is added as soon as its
  mask is known, and no smoothed image is ever held.
- The gradient products enter the cell means from every other row only (`row_step` 2): the voxel
  tensor is a mean over ~10^5 pixels, and this cuts the full-resolution work 2.5x. Measured against
  all rows: median |change in SA| 0.001 on a striped test slide, 0.002-0.003 (max 0.015) on phantom
  slides; every fourth row aliases fine stripes (median 0.006, max 0.16).
Gradients replicate the edge pixel at the slide's border (the original zero-padded, which invents a
strong edge along the border); the sigma-30 smoothings zero-pad as the original's `convn(..., 'same')`.
"""

from __future__ import annotations

import math
from concurrent.futures import Executor, Future

import numpy as np

GRADIENT_SIGMA = 1.0  # px (original: fspecial 9 x 9, sigma 1)
GRADIENT_RADIUS = 4
TENSOR_SIGMA = 30.0  # px (original: fspecial 51 x 51, sigma 30), also used for the tissue mask
TENSOR_RADIUS = 25
BRIGHT_GREY_SUM = 3 * 230  # grey = mean(RGB) > 230  <=>  R + G + B > 690
MASK_CORE, MASK_GROW = 0.9, 0.1
DOWNSAMPLE = 4
ROW_STEP = 2
_SUB_BAND = 128  # full-resolution rows per gradient pass: bounds the float temporaries


def gradient_kernels() -> tuple[np.ndarray, np.ndarray]:
    """(smoothing, derivative) 1-D kernels: the original's 9 x 9 kernel is their outer product."""
    t = np.arange(-GRADIENT_RADIUS, GRADIENT_RADIUS + 1, dtype=np.float64)
    smooth = np.exp(-t**2 / (2 * GRADIENT_SIGMA**2))
    smooth /= smooth.sum()
    return smooth.astype(np.float32), (t / GRADIENT_RADIUS * smooth).astype(np.float32)


def tensor_kernel(downsample: int) -> np.ndarray:
    """The sigma-30 px Gaussian window sampled on the coarse grid (normalised like fspecial)."""
    radius = max(1, round(TENSOR_RADIUS / downsample)) if downsample > 1 else TENSOR_RADIUS
    t = np.arange(-radius, radius + 1, dtype=np.float64) * downsample
    kernel = np.exp(-t**2 / (2 * TENSOR_SIGMA**2))
    return kernel / kernel.sum()


def voxel_weights(n_voxels: int, block: int, size: int, downsample: int, kernel: np.ndarray) -> np.ndarray:
    """(n_voxels x coarse cells) weights: mean over voxel block of the zero-padded smoothing, per axis."""
    n_cells = math.ceil(size / downsample)
    starts = np.arange(n_cells) * downsample
    ends = np.minimum(starts + downsample, size)
    weights = np.zeros((n_voxels, n_cells))
    radius = len(kernel) // 2  # a full convolution, centred: also right when the kernel is the longer
    for v in range(n_voxels):
        lo, hi = v * block, (v + 1) * block
        overlap = np.clip(np.minimum(ends, hi) - np.maximum(starts, lo), 0, None)
        # a coarse cell stands for its pixels, so each pixel of the block weighs 1/block
        weights[v] = np.convolve(overlap / block, kernel)[radius:radius + n_cells]
    return weights


def cell_means(image: np.ndarray, downsample: int, rows_per_cell: int | None = None) -> np.ndarray:
    """Mean over cells of rows_per_cell (default downsample) rows x downsample columns; partial cells
    at the bottom/right edge average what exists."""
    f = downsample
    fr = rows_per_cell or f
    rows, cols = image.shape
    n_r, n_c = -(-rows // fr), -(-cols // f)
    # strided slice sums: much faster than a reshape-reduce over short axes
    by_rows = np.zeros((n_r, cols), np.float32)
    for k in range(min(fr, rows)):
        part = image[k::fr]
        by_rows[: len(part)] += part
    out = np.zeros((n_r, n_c))
    for k in range(min(f, cols)):
        part = by_rows[:, k::f]
        out[:, : part.shape[1]] += part
    row_counts = np.minimum(fr, rows - np.arange(n_r) * fr)
    col_counts = np.minimum(f, cols - np.arange(n_c) * f)
    return out / np.outer(row_counts, col_counts)


def _correlate_valid(image: np.ndarray, kernel: np.ndarray, antisymmetric: bool, axis: int,
                     step: int = 1) -> np.ndarray:
    """Correlate along one axis, keeping only outputs whose taps all lie inside `image` (every
    `step`-th output along axis 0).

    Plain NumPy slices: whole rows are contiguous, and pairing the taps of the (anti)symmetric
    kernel halves the multiplications (as fast as scipy.ndimage along columns, faster along rows).
    """
    r = len(kernel) // 2
    n = image.shape[axis] - 2 * r

    def part(offset: int) -> np.ndarray:
        return image[offset:offset + n:step] if axis == 0 else image[:, offset:offset + n]

    out = np.zeros_like(part(r)) if antisymmetric else part(r) * kernel[r]
    pair = np.empty_like(out)
    combine = np.subtract if antisymmetric else np.add
    for t in range(1, r + 1):
        combine(part(r + t), part(r - t), out=pair)
        pair *= kernel[r + t]
        out += pair
    return out


def gradient_products(grey: np.ndarray, downsample: int, row_step: int = 1) -> np.ndarray:
    """(3, cells) means of D_x D_x, D_x D_y, D_y D_y over downsample^2 cells (from every row_step-th
    row), for the rows of `grey` less GRADIENT_RADIUS at each end (the caller pads those)."""
    smooth_k, deriv_k = gradient_kernels()
    edge = ((0, 0), (GRADIENT_RADIUS, GRADIENT_RADIUS))  # replicate the slide's left and right columns
    along_rows = np.pad(_correlate_valid(grey, smooth_k, False, 0, row_step), edge, mode="edge")
    deriv_rows = np.pad(_correlate_valid(grey, deriv_k, True, 0, row_step), edge, mode="edge")
    dx = _correlate_valid(along_rows, deriv_k, True, axis=1)
    dy = _correlate_valid(deriv_rows, smooth_k, False, axis=1)
    per_cell = downsample // row_step
    return np.stack([cell_means(p, downsample, per_cell) for p in (dx * dx, dx * dy, dy * dy)])


def _smooth(image: np.ndarray, kernel: np.ndarray) -> np.ndarray:
    from scipy import ndimage

    out = ndimage.correlate1d(image, kernel, axis=0, mode="constant")
    return ndimage.correlate1d(out, kernel, axis=1, mode="constant")


def tissue_mask(bright: np.ndarray, kernel: np.ndarray) -> np.ndarray:
    """The original's mask: True where the pixel (cell) is not in or next to a large bright area."""
    core = _smooth(bright, kernel) > MASK_CORE
    grown = _smooth(core.astype(np.float64), kernel) > MASK_GROW
    grown = _smooth(grown.astype(np.float64), kernel) > MASK_GROW
    return ~grown


def masked_tensor_rows(bright: np.ndarray, offset: int, kernel: np.ndarray, products: np.ndarray,
                       rows_w: np.ndarray, col_w: np.ndarray) -> np.ndarray:
    """(3, voxel rows, voxel cols): what coarse rows [offset, offset + len(products[0])) of the bright
    window add to the voxel tensors, with their tissue mask decided from the whole window."""
    mask = tissue_mask(bright, kernel)[offset: offset + products.shape[1]]
    return np.stack([rows_w @ ((products[ab] * mask) @ col_w.T) for ab in range(3)])


def anisotropy(tensor: np.ndarray) -> np.ndarray:
    """SA = (l1 - l2) / (l1 + l2) of [[J11, J12], [J12, J22]]; NaN where the tensor is zero."""
    j11, j12, j22 = tensor
    trace = j11 + j22
    with np.errstate(invalid="ignore", divide="ignore"):
        sa = np.sqrt((j11 - j22) ** 2 + 4 * j12**2) / trace
    return np.where(trace > 0, sa, np.nan)


class StructureStream:
    """Feed the slide's rows in order (`feed`), then `finish` gives SA per voxel (`tensor` holds J).

    Only rows up to `rows_needed` influence the grid's voxels; feeding may stop there.
    Holds a few hundred full-resolution rows at most, whatever the slide's size.
    With a `pool`, each band's gradient products and then its masked contribution to the tensors (all
    but the grey conversion) run on its threads while the caller goes on; each joins at the next feed
    (or at `finish`), in order, so at most one band is in flight and the result is the same, to the
    bit, with or without a pool.
    """

    def __init__(self, he_shape: tuple[int, int], grid: tuple[int, int], block: tuple[int, int],
                 downsample: int = DOWNSAMPLE, row_step: int = ROW_STEP, pool: Executor | None = None):
        self.height, self.width = he_shape
        if downsample % row_step:
            raise ValueError(f"row_step {row_step} must divide downsample {downsample}")
        self.f = downsample
        self.row_step = row_step
        self._kernel = tensor_kernel(downsample)
        self._mask_halo = 3 * (len(self._kernel) // 2)  # three smoothings decide the mask
        self._row_w = voxel_weights(grid[0], block[0], self.height, downsample, self._kernel)
        self._col_w = voxel_weights(grid[1], block[1], self.width, downsample, self._kernel)
        self._last_cell = int(np.flatnonzero(self._row_w.any(axis=0)).max())
        self.rows_needed = min(self.height,
                               (self._last_cell + self._mask_halo + 1) * downsample + GRADIENT_RADIUS)
        self.tensor = np.zeros((3, *grid))  # voxel means of J11, J12, J22 (grey in R + G + B units)
        n_cols = math.ceil(self.width / downsample)
        self._fed = 0
        self._grey = np.empty((0, self.width), np.float32)  # full-res rows [_grey_start, _fed)
        self._grey_start = 0
        self._bright_pending = np.empty((0, self.width), bool)  # rows not yet a whole coarse row
        self._bright = np.empty((0, n_cols))  # coarse rows [_bright_start, ...) of the bright fraction
        self._bright_start = 0
        self._grad_done = 0  # full-res rows whose gradient products are computed
        self._products = np.empty((3, 0, n_cols))  # coarse rows [_added, ...) whose products are known
        self._in_flight: list[Future] = []  # then those being computed, up to _grad_done / f
        self._additions: list[Future] = []  # contributions to `tensor` being computed, in row order
        self._pool = pool
        self._added = 0  # coarse rows already added into the voxel tensors

    def feed(self, rgb: np.ndarray) -> None:
        """The next rows of the slide, uint8 (n, width, 3), any memory layout."""
        if rgb.ndim != 3 or rgb.shape[1:] != (self.width, 3):
            raise ValueError(f"expected rows of shape (n, {self.width}, 3), got {rgb.shape}")
        # rgb may be a strided view (h5py's transposed band): the channel sum is written in row order
        # directly, the one copy of the band at a third of its bytes
        grey_sum = np.add(rgb[..., 0], rgb[..., 1], dtype=np.uint16, order="C")
        grey_sum += rgb[..., 2]
        self._fed += len(rgb)
        at_end = self._fed >= self.height
        pending = np.concatenate([self._bright_pending, grey_sum > BRIGHT_GREY_SUM])
        complete = len(pending) if at_end else len(pending) // self.f * self.f
        if complete:
            self._bright = np.concatenate([self._bright, cell_means(pending[:complete], self.f)])
        self._bright_pending = pending[complete:]
        # gradients of R + G + B: 3x those of the mean, which SA, a ratio, does not see
        self._grey = np.concatenate([self._grey, grey_sum.astype(np.float32)])
        self._advance(at_end)

    def _advance(self, at_end: bool) -> None:
        grad_end = self.height if at_end else (self._fed - GRADIENT_RADIUS) // self.f * self.f
        step = self.f * max(1, _SUB_BAND // self.f)
        earlier = len(self._in_flight)
        for start in range(self._grad_done, grad_end, step):
            grey = self._padded_grey(start, min(grad_end, start + step))
            self._in_flight.append(self._submit(gradient_products, grey, self.f, self.row_step))
        self._grad_done = max(self._grad_done, grad_end)
        keep_from = max(0, self._grad_done - GRADIENT_RADIUS)
        self._grey = self._grey[keep_from - self._grey_start:]
        self._grey_start = keep_from
        # this band's products join at the next feed, unless this is the last band or nothing runs aside
        last = at_end or self._pool is None
        self._collect(len(self._in_flight) if last else earlier)
        added_before = len(self._additions)
        self._add_known(at_end)
        self._apply(len(self._additions) if last else added_before)

    def _submit(self, function, *args) -> Future:
        if self._pool is not None:
            return self._pool.submit(function, *args)
        done: Future = Future()
        done.set_result(function(*args))
        return done

    def _apply(self, count: int) -> None:
        """Add the first `count` contributions in flight (waiting for them) into the tensors, in order."""
        for future in self._additions[:count]:
            self.tensor += future.result()
        del self._additions[:count]

    def _collect(self, count: int) -> None:
        """Append the first `count` bands in flight (waiting for them) to the known products."""
        if count:
            ready = [future.result() for future in self._in_flight[:count]]
            self._products = np.concatenate([self._products, *ready], axis=1)
            del self._in_flight[:count]

    def _add_known(self, at_end: bool) -> None:
        known = self._bright_start + len(self._bright)
        mask_end = known if at_end else known - self._mask_halo
        mask_end = min(mask_end, self._added + self._products.shape[1])
        if mask_end > self._added:
            self._add_rows(mask_end, known)

    def _padded_grey(self, start: int, stop: int) -> np.ndarray:
        """Grey rows [start - r, stop + r), replicating the edge row beyond the slide's top or bottom."""
        r = GRADIENT_RADIUS
        lo, hi = max(0, start - r), min(self._fed, stop + r)
        grey = self._grey[lo - self._grey_start: hi - self._grey_start]
        if lo > start - r or hi < stop + r:
            grey = np.pad(grey, ((lo - (start - r), stop + r - hi), (0, 0)), mode="edge")
        return grey

    def _add_rows(self, stop: int, known: int) -> None:
        """Decide the mask for coarse rows [_added, stop) and add M * Q into the voxel tensors."""
        start = self._added
        window_lo = max(0, start - self._mask_halo)
        bright = self._bright[window_lo - self._bright_start: known - self._bright_start]
        count = stop - start
        # the arguments are views of arrays this stream only replaces, never writes: safe on a thread
        self._additions.append(self._submit(masked_tensor_rows, bright, start - window_lo, self._kernel,
                                            self._products[:, :count], self._row_w[:, start:stop],
                                            self._col_w))
        self._products = self._products[:, count:]
        self._added = stop
        drop = max(0, stop - self._mask_halo) - self._bright_start
        if drop > 0:
            self._bright = self._bright[drop:]
            self._bright_start += drop

    def finish(self) -> np.ndarray:
        """SA per voxel (NaN where the tensor is zero, e.g. a voxel deep in a blank area)."""
        self._collect(len(self._in_flight))
        self._add_known(self._fed >= self.height)
        self._apply(len(self._additions))
        if self._fed < self.rows_needed or self._added <= self._last_cell:
            raise ValueError(f"only {self._fed} of the {self.rows_needed} rows that SA needs were fed")
        return anisotropy(self.tensor)
