"""Render the phantom's H&E image band by band (one band = one row of MR voxels = P image rows).

Memory stays bounded by a few bands whatever the slide size: a band needs its own tissue mask and
holes plus the nuclei of the voxel rows above and below (nuclei may cross block borders).

- Tissue: the voxel tissue map (MD > 0 or ROI) interpolated bilinearly between voxel centres,
  plus smooth value noise (amplitudes summing to < 0.5), thresholded at 0.5: boundaries are not
  blocky, yet every tissue voxel's centre is tissue and every other voxel's centre is background.
- Holes: 4 % of tissue voxels get one white elliptical hole inside their block.
- Colour: Beer-Lambert mixing of haematoxylin and eosin (Macenko's reference stain vectors):
  RGB = 255 exp(-(h H + e E + 0.02)); stroma gets eosin with stain variation (value noise at
  ~60 um and ~8 um, per-pixel grain) and a trace of haematoxylin; nuclei get their own amount of
  haematoxylin, darker towards the rim, with chromatin grain; background and holes stay near white.
- Nuclei: see histoxai.phantom.nuclei. Where nuclei overlap, the later (higher label) wins, but
  every nucleus keeps its centroid pixel, so the label image holds every label.
- One voxel: `PhantomRenderer.block` renders the same pixels from its 3 x 3 voxel neighbourhood only
  (pixel work is a pure function of position; the grain is drawn per whole tile), optionally with that
  voxel's nuclei replaced (histoxai.phantom.interventions).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from histoxai.phantom import nuclei as nu
from histoxai.phantom.summary import SampleMaps

HAEMATOXYLIN_OD = (0.5626, 0.7201, 0.4062)  # optical density per unit stain (R, G, B), Macenko's
EOSIN_OD = (0.2159, 0.8012, 0.5581)  # reference H&E stain vectors
BLANK_OD = 0.02
HOLE_FRACTION = 0.04
TISSUE_NOISE = ((2.5, 0.22), (8.0, 0.10))  # (noise spacing = P / this, amplitude)
NOISE_LOW, NOISE_MID, NOISE_FINE = 0, 1, 2  # stroma noise layers; tissue noise layers follow
RASTER_CHUNK = 2048  # nuclei rasterised at once
TILE_COLUMNS = 2048  # pixel work runs on tiles this wide: arrays of a few MB stay in cache
WORKERS = min(4, os.cpu_count() or 1)  # tiles run in threads (numpy releases the GIL)


@dataclass
class Band:
    """One rendered voxel row: image rows [row * P, row * P + P)."""

    row: int
    rgb: np.ndarray  # (P, W, 3) uint8
    tissue: np.ndarray  # (P, W) bool: the HE_mask band (holes are inside the tissue outline)
    labels: np.ndarray  # (P, W) uint32 nuclei labels, 0 = none
    nuclei: dict[str, np.ndarray]  # this voxel row's nuclei


class VoxelNuclei(Protocol):
    """Makes one voxel's nuclei table in place of nuclei.voxel_nuclei: (its generator, after the
    hole draw; its rint(CD * n_max) count; its P x P tissue-and-not-hole mask) -> table."""

    def __call__(self, rng: np.random.Generator, count: int,
                 allowed: np.ndarray) -> dict[str, np.ndarray]: ...


@dataclass
class _Layout:
    tissue: np.ndarray
    holes: np.ndarray
    nuclei: dict[str, np.ndarray]


def _hash_uniform(key: int, iy: np.ndarray, ix: np.ndarray) -> np.ndarray:
    """A uniform [0, 1) value per lattice point (splitmix64 of its coordinates and the key)."""
    h = (iy.astype(np.uint64) * np.uint64(0x9E3779B97F4A7C15)) ^ (
        ix.astype(np.uint64) * np.uint64(0xC2B2AE3D27D4EB4F)) ^ np.uint64(key)
    h ^= h >> np.uint64(30)
    h *= np.uint64(0xBF58476D1CE4E5B9)
    h ^= h >> np.uint64(27)
    h *= np.uint64(0x94D049BB133111EB)
    h ^= h >> np.uint64(31)
    return (h >> np.uint64(40)).astype(np.float32) / np.float32(2**24)


def _axis_weights(start: int, length: int, spacing: float, offset: float = 0.0):
    """Lattice index and smooth fractional weight for pixel centres start .. start+length-1."""
    pos = (np.arange(start, start + length) + 0.5) / spacing - offset
    index = np.floor(pos).astype(np.int64)
    frac = (pos - index).astype(np.float32)
    return index, frac


def _lerp_columns(rows: np.ndarray, index: np.ndarray, frac: np.ndarray) -> np.ndarray:
    """rows[:, index] * (1 - frac) + rows[:, index + 1] * frac, with two takes and no big temporaries."""
    out = np.take(rows, index, axis=1)
    step = np.take(np.diff(rows, axis=1), np.minimum(index, rows.shape[1] - 2), axis=1)
    step *= frac
    out += step
    return out


def value_noise(key: int, y0: int, height: int, x0: int, width: int, spacing: float) -> np.ndarray:
    """Smooth noise in [-1, 1] on a lattice of `spacing` px over rows y0.. and columns x0..; a pure
    function of pixel position, so bands and tiles rendered separately join without seams."""
    iy, fy = _axis_weights(y0, height, spacing)
    ix, fx = _axis_weights(x0, width, spacing)
    fy, fx = fy * fy * (3 - 2 * fy), fx * fx * (3 - 2 * fx)  # smoothstep: no lattice creases
    ly, lx = np.arange(iy[0], iy[-1] + 2), np.arange(ix[0], ix[-1] + 2)
    lattice = _hash_uniform(key, ly[:, None], lx[None, :]) * 2 - 1
    rows = lattice[iy - ly[0]] * (1 - fy)[:, None] + lattice[iy - ly[0] + 1] * fy[:, None]
    return _lerp_columns(rows, ix - lx[0], fx)


def _bilinear_voxels(grid: np.ndarray, y0: int, height: int, x0: int, width: int, size: int) -> np.ndarray:
    """A voxel map interpolated between voxel centres to a pixel window (edges clamped)."""
    iy, fy = _axis_weights(y0, height, size, offset=0.5)
    ix, fx = _axis_weights(x0, width, size, offset=0.5)
    rmax = grid.shape[0] - 1
    rows = (grid[np.clip(iy, 0, rmax)] * (1 - fy)[:, None] + grid[np.clip(iy + 1, 0, rmax)] * fy[:, None])
    padded = np.concatenate([rows[:, :1], rows, rows[:, -1:]], axis=1)  # clamp the edges
    return _lerp_columns(padded, ix + 1, fx)


def _stamp_hole(rng: np.random.Generator, holes: np.ndarray, size: int) -> None:
    """One white elliptical hole drawn inside a block."""
    minor = max(2.0, rng.uniform(0.08, 0.2) * size)
    major = minor * rng.uniform(1.0, 1.6)
    angle = rng.uniform(0, np.pi)
    lo, hi = major + 1, size - major - 1
    cy, cx = (rng.uniform(lo, hi, 2) if hi > lo else np.full(2, size / 2))
    yy, xx = np.mgrid[0:size, 0:size] + 0.5
    u = (xx - cx) * np.cos(angle) + (yy - cy) * np.sin(angle)
    v = -(xx - cx) * np.sin(angle) + (yy - cy) * np.cos(angle)
    holes |= (u / major) ** 2 + (v / minor) ** 2 <= 1


class PhantomRenderer:
    """Renders one sample's maps, band by band, deterministically from (seed, sample)."""

    def __init__(self, maps: SampleMaps, pixels_per_voxel: int, n_max: int, seed: int):
        self.maps, self.size, self.n_max, self.seed = maps, pixels_per_voxel, n_max, seed
        self.rows, self.cols = maps.shape
        self.width = self.cols * pixels_per_voxel
        self.tissue_voxels = maps.tissue
        self.counts = nu.nuclei_counts(maps.cd, self.tissue_voxels, n_max)
        self.direction = nu.structure_direction(maps.dj11, maps.dj12, maps.dj22)
        self.sa = np.nan_to_num(maps.dsa, nan=0.0)
        stain = nu.stream(seed, maps.sample, nu.STREAM_STAIN)
        self.eosin_scale = 0.45 * float(np.exp(stain.normal(0, 0.08)))  # slide-to-slide stain variation
        self.haem_scale = float(np.exp(stain.normal(0, 0.08)))
        keys = np.random.SeedSequence([seed, maps.sample, nu.STREAM_NOISE]).generate_state(8, np.uint64)
        self._keys = [int(k) for k in keys]
        self._next_label = 1
        self._pool: ThreadPoolExecutor | None = None
        self.span = (0, self.width)  # the image columns a band covers: all, except in `block`
        self._replaced: tuple[tuple[int, int], VoxelNuclei] | None = None

    def _tiled(self, work: Callable[[int, int], None]) -> None:
        """Run work(x0, x1) over column tiles of the band (cut to the span), in parallel; tiles write
        disjoint slices."""
        lo, hi = self.span
        tiles = [(max(x0, lo), min(x0 + TILE_COLUMNS, self.width, hi))
                 for x0 in range(0, self.width, TILE_COLUMNS) if lo < x0 + TILE_COLUMNS and x0 < hi]
        if self._pool is None:
            for x0, x1 in tiles:
                work(x0, x1)
            return
        for future in [self._pool.submit(work, x0, x1) for x0, x1 in tiles]:
            future.result()

    def _px(self, micrometres: float) -> float:
        return max(2.0, micrometres * self.size / nu.VOXEL_UM)

    def _layout(self, row: int) -> _Layout:
        """Tissue mask, holes and nuclei of one voxel row (labels continue from the row above)."""
        size, y0, (lo, hi) = self.size, row * self.size, self.span
        voxels = self.tissue_voxels.astype(np.float32)
        tissue = np.empty((size, hi - lo), bool)

        def tissue_tile(x0: int, x1: int) -> None:
            field = _bilinear_voxels(voxels, y0, size, x0, x1 - x0, size)
            for layer, (divisor, amplitude) in enumerate(TISSUE_NOISE):
                key = self._keys[3 + layer]
                field += amplitude * value_noise(key, y0, size, x0, x1 - x0, max(2.0, size / divisor))
            np.greater(field, 0.5, out=tissue[:, x0 - lo:x1 - lo])

        self._tiled(tissue_tile)
        holes = np.zeros_like(tissue)
        tables = []
        for col in np.flatnonzero(self.tissue_voxels[row, lo // size:hi // size]) + lo // size:
            rng = nu.voxel_rng(self.seed, self.maps.sample, row, int(col))
            block = slice(col * size - lo, col * size + size - lo)
            if rng.random() < HOLE_FRACTION:
                _stamp_hole(rng, holes[:, block], size)
            count = int(self.counts[row, col])
            if self._replaced is not None and self._replaced[0] == (row, int(col)):
                table = self._replaced[1](rng, count, tissue[:, block] & ~holes[:, block])
                count = int(table["voxel_row"].size)
            elif count:
                table = nu.voxel_nuclei(rng, count, tissue[:, block] & ~holes[:, block], row, int(col),
                                        size, float(self.direction[row, col]), float(self.sa[row, col]))
            if count:
                table["label"] = np.arange(self._next_label, self._next_label + count, dtype=np.uint32)
                self._next_label += count
                tables.append(table)
        return _Layout(tissue, holes, nu.concat(tables))

    def bands(self) -> Iterator[Band]:
        """Every band, top to bottom (a generator: one band in memory at a time, plus neighbours)."""
        self._pool = ThreadPoolExecutor(WORKERS)
        try:
            above, here = None, self._layout(0)
            for row in range(self.rows):
                below = self._layout(row + 1) if row + 1 < self.rows else None
                yield self._render(row, above, here, below)
                above, here = here, below
        finally:
            self._pool.shutdown()
            self._pool = None

    def block(self, row: int, col: int, nuclei: VoxelNuclei | None = None):
        """Voxel (row, col)'s P x P x 3 block as `bands` renders it, and its nuclei table (labels local
        to the block's 3 x 3 voxel neighbourhood). Nuclei reach at most half a block into a neighbour,
        so the 3 x 3 voxels around it decide every pixel. `nuclei` replaces this voxel's nuclei."""
        size = self.size
        lo, hi = max(col - 1, 0), min(col + 2, self.cols)
        self.span, self._replaced, self._next_label = (lo * size, hi * size), None, 1
        if nuclei is not None:
            self._replaced = ((row, col), nuclei)
        try:
            layouts = [self._layout(r) if 0 <= r < self.rows else None for r in (row - 1, row, row + 1)]
            band = self._render(row, *layouts)
        finally:
            self.span, self._replaced, self._next_label = (0, self.width), None, 1
        x0 = (col - lo) * size
        own = band.nuclei["voxel_col"] == col
        return band.rgb[:, x0:x0 + size].copy(), {k: v[own] for k, v in band.nuclei.items()}

    def _render(self, row: int, above, here: _Layout, below) -> Band:
        (lo, hi), size, y0 = self.span, self.size, row * self.size
        width = hi - lo
        near = nu.concat([layout.nuclei for layout in (above, here, below) if layout is not None])
        reach = near["semi_major"]
        crosses = (near["centroid_y"] + reach > y0) & (near["centroid_y"] - reach < y0 + size)
        labels = np.zeros(size * width, np.uint32)
        rim = np.zeros(size * width, np.float32)
        self._rasterize({k: v[crosses] for k, v in near.items()}, y0, labels, rim)
        # Every nucleus keeps its centroid pixel, so no label vanishes under a later one.
        own = here.nuclei
        centre = (np.floor(own["centroid_y"]).astype(np.int64) - y0) * width + np.floor(
            own["centroid_x"]).astype(np.int64) - lo
        labels[centre], rim[centre] = own["label"], 0.0
        labels, rim = labels.reshape(size, width), rim.reshape(size, width)
        rgb = self._colour(row, here, labels, rim, near)
        return Band(row=row, rgb=rgb, tissue=here.tissue, labels=labels, nuclei=own)

    def _rasterize(self, nuc: dict[str, np.ndarray], y0: int, labels: np.ndarray, rim: np.ndarray) -> None:
        """Draw ellipses into a flat band: per pixel the highest label covering it wins (later
        nuclei overwrite earlier ones, independent of drawing order); `rim` gets the winner's
        normalised radius^2 (0 at the centre, 1 at the edge)."""
        if nuc["label"].size == 0:
            return
        size, (lo, hi) = self.size, self.span
        width = hi - lo
        half = int(np.ceil(nuc["semi_major"].max())) + 1
        offsets = np.arange(-half, half + 1)
        hits = []
        for start in range(0, nuc["label"].size, RASTER_CHUNK):
            part = {k: v[start:start + RASTER_CHUNK] for k, v in nuc.items()}
            cy, cx = part["centroid_y"], part["centroid_x"]
            r = np.floor(cy).astype(np.int64)[:, None, None] + offsets[None, :, None]
            c = np.floor(cx).astype(np.int64)[:, None, None] + offsets[None, None, :]
            dy = (r + 0.5 - cy[:, None, None]).astype(np.float32)
            dx = (c + 0.5 - cx[:, None, None]).astype(np.float32)
            cos = np.cos(part["angle"]).astype(np.float32)[:, None, None]
            sin = np.sin(part["angle"]).astype(np.float32)[:, None, None]
            a = part["semi_major"].astype(np.float32)[:, None, None]
            b = part["semi_minor"].astype(np.float32)[:, None, None]
            q = ((dx * cos + dy * sin) / a) ** 2 + ((dy * cos - dx * sin) / b) ** 2
            inside = (q <= 1) & (r >= y0) & (r < y0 + size) & (c >= lo) & (c < hi)
            index = np.broadcast_to((r - y0) * width + c - lo, q.shape)[inside]
            label = np.broadcast_to(part["label"][:, None, None], q.shape)[inside]
            np.maximum.at(labels, index, label)
            hits.append((index, label, q[inside]))
        for index, label, q in hits:
            won = labels[index] == label
            rim[index[won]] = q[won]

    def _colour(self, row: int, here: _Layout, labels: np.ndarray, rim: np.ndarray, near) -> np.ndarray:
        lut = np.zeros(int(near["label"].max(initial=0)) + 1, np.float32)
        lut[near["label"]] = near["haematoxylin"] * self.haem_scale
        lo, hi = self.span
        rgb = np.empty((self.size, hi - lo, 3), np.uint8)
        stroma = here.tissue & ~here.holes
        self._tiled(lambda x0, x1: self._colour_tile(
            row, x0, x1, stroma[:, x0 - lo:x1 - lo], labels[:, x0 - lo:x1 - lo], rim[:, x0 - lo:x1 - lo], lut,
            rgb[:, x0 - lo:x1 - lo]))
        return rgb

    def _colour_tile(self, row: int, x0: int, x1: int, stroma, labels, rim, lut, rgb) -> None:
        """Stain amounts per pixel -> RGB for one tile (in-place arithmetic, few temporaries)."""
        size, width, y0 = self.size, x1 - x0, row * self.size
        tile = x0 - x0 % TILE_COLUMNS  # the grain is drawn per whole tile of the full band
        rng = nu.stream(self.seed, self.maps.sample, nu.STREAM_BAND, row, tile)
        grain = rng.random((size, min(tile + TILE_COLUMNS, self.width) - tile), np.float32)
        grain = grain[:, x0 - tile:x1 - tile]
        grain -= 0.5
        grain *= np.float32(np.sqrt(12))  # uniform grain with unit variance
        eosin = value_noise(self._keys[NOISE_MID], y0, size, x0, width, self._px(8))
        eosin *= 0.25
        eosin += 0.15 * value_noise(self._keys[NOISE_LOW], y0, size, x0, width, self._px(60))
        eosin += 0.08 * grain
        eosin += 1
        eosin *= self.eosin_scale
        haem = value_noise(self._keys[NOISE_FINE], y0, size, x0, width, self._px(3))
        nucleus = np.nonzero(labels)
        amount = lut[labels[nucleus]] * (0.8 + 0.35 * rim[nucleus])  # chromatin gathers at the rim
        amount *= 1 + 0.2 * haem[nucleus] + 0.1 * grain[nucleus]
        haem *= 0.5
        haem += 1
        haem *= self.haem_scale * 0.07  # a trace of haematoxylin in the stroma
        np.copyto(eosin, 0.02, where=~stroma)
        np.copyto(haem, 0.004, where=~stroma)
        haem[nucleus] = amount
        eosin[nucleus] *= 0.6
        grain *= 2.0  # sensor noise, in grey levels
        od = np.empty_like(haem)
        for channel in range(3):
            np.multiply(haem, HAEMATOXYLIN_OD[channel], out=od)
            od += eosin * np.float32(EOSIN_OD[channel])
            od += BLANK_OD
            np.negative(od, out=od)
            np.exp(od, out=od)
            od *= 255
            od += grain
            np.clip(od, 0, 255, out=od)
            rgb[..., channel] = od
