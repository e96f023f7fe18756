"""The phantom's nuclei: how many per voxel, where, how big, how elongated and which way they point.

For voxel (i, j) of the MR grid at P pixels per voxel (its block: image rows iP..iP+P-1, columns
jP..jP+P-1), every random draw comes from one generator seeded by (seed, sample, i, j):

- count: n = rint(CD(i, j) * n_max) in tissue voxels (MD > 0 or ROI), else 0. summary.mat's CD
  also counts nuclei of tissue outside the MR ROI, which the phantom leaves as white background.
- position: centroid pixels on a jittered grid over the block's inner pixels (1 .. P-2), preferring
  tissue pixels that are not holes; centroid = pixel + U(0.05, 0.95). So every centroid pixel is
  unique and strictly inside its block, also for the original study's strict count rule.
- direction: theta0 = 0.5 * atan2(2 dJ_12, dJ_11 - dJ_22) + pi/2. The largest-eigenvalue
  eigenvector of the structure tensor points along the intensity gradient, i.e. across elongated
  structures, so they run along the smallest-eigenvalue eigenvector, 90 degrees from it.
- spread: the doubled angle 2 theta ~ VonMises(2 theta0, kappa) with kappa = A1^-1(min(SA, 0.95))
  (A1 = I1/I0): the expected mean resultant length of the voxel's doubled nuclear angles equals its
  SA, so orientations are uniform at SA = 0 and tighten as SA grows (SA NaN counts as 0).
- elongation: aspect a/b = (1.2 + 2.0 SA) * exp(N(0, 0.12)), at least 1.
- size: equivalent diameter d = 7.5 um * exp(N(0, 0.15)) clipped to 5..12 um (real nuclei are
  ~6-10 um; a voxel is 200 um); r = d/2 * P/200 px, b = max(r / sqrt(aspect), 1.5 px) so a nucleus
  stays >= 3 px across at small P, a = b * aspect, at most P/2 - 1 px.
- stain: haematoxylin amount h = 1.5 * exp(N(0, 0.15)).

Angles are radians in [0, pi) in image coordinates (x = column to the right, y = row downwards): the
major axis points along (cos theta, sin theta).
"""

from __future__ import annotations

import numpy as np

VOXEL_UM = 200.0  # MR voxel edge
N_MAX_REALISTIC = 250  # nuclei in a 200 um voxel of the densest tissue
COVERAGE_AT_CD1 = 0.28  # nuclear area fraction aimed at by the default n_max
MIN_SEMI_MINOR_PX = 1.5
DIAMETER_UM, DIAMETER_SIGMA, DIAMETER_RANGE_UM = 7.5, 0.15, (5.0, 12.0)
ASPECT_BASE, ASPECT_PER_SA, ASPECT_SIGMA = 1.2, 2.0, 0.12
STAIN_MEAN, STAIN_SIGMA = 1.5, 0.15
MAX_COHERENCE = 0.95
FIELDS = ("label", "voxel_row", "voxel_col", "centroid_x", "centroid_y", "semi_major", "semi_minor",
          "angle", "haematoxylin")


def semi_axes(diameter_um, aspect, pixels_per_voxel: int):
    """(a, b) in pixels for equivalent diameters (um) and aspect ratios, with the visibility clamp."""
    radius = np.asarray(diameter_um) / 2 * pixels_per_voxel / VOXEL_UM
    b = np.maximum(radius / np.sqrt(aspect), MIN_SEMI_MINOR_PX)
    a = np.minimum(b * aspect, pixels_per_voxel / 2 - 1)
    return a, np.minimum(b, a)


def reference_area_px(pixels_per_voxel: int) -> float:
    """Area of a typical nucleus (median diameter, SA = 0) at this scale."""
    a, b = semi_axes(DIAMETER_UM, ASPECT_BASE, pixels_per_voxel)
    return float(np.pi * a * b)


def max_n_max(pixels_per_voxel: int) -> int:
    """Most nuclei a block can hold: one per 2 x 2 px of its inner (P-2) x (P-2) pixels."""
    return (pixels_per_voxel - 2) ** 2 // 4


def default_n_max(pixels_per_voxel: int) -> int:
    """n_max covering ~28 % of a CD = 1 block with nuclei, at most the realistic 250 per voxel."""
    fit = round(COVERAGE_AT_CD1 * pixels_per_voxel**2 / reference_area_px(pixels_per_voxel))
    return int(max(1, min(N_MAX_REALISTIC, fit, max_n_max(pixels_per_voxel))))


def nuclei_counts(cd: np.ndarray, tissue: np.ndarray, n_max: int) -> np.ndarray:
    """Nuclei per voxel: rint(CD * n_max) in tissue, 0 elsewhere."""
    return np.where(tissue, np.rint(np.nan_to_num(cd, nan=0.0) * n_max), 0).astype(np.int64)


def structure_direction(dj11, dj12, dj22) -> np.ndarray:
    """Direction (radians, [0, pi)) along which structures run: the smallest-eigenvalue eigenvector.

    0.5 * atan2(2 J12, J11 - J22) is the largest-eigenvalue eigenvector, the gradient direction; the
    structures that make the gradient lie across it.
    """
    gradient = 0.5 * np.arctan2(2 * np.nan_to_num(dj12), np.nan_to_num(dj11) - np.nan_to_num(dj22))
    return np.mod(gradient + np.pi / 2, np.pi)


def kappa_for_coherence(coherence) -> np.ndarray:
    """Von Mises concentration whose mean resultant length is `coherence` (Best & Fisher's A1^-1)."""
    r = np.clip(np.nan_to_num(np.asarray(coherence, dtype=np.float64)), 0.0, MAX_COHERENCE)
    with np.errstate(divide="ignore"):  # np.where evaluates every branch, also 1/0 at r = 0
        return np.where(r < 0.53, 2 * r + r**3 + 5 * r**5 / 6,
                        np.where(r < 0.85, -0.4 + 1.39 * r + 0.43 / (1 - r), 1 / (r**3 - 4 * r**2 + 3 * r)))


# Random streams, keyed (seed, sample, kind, *index) with a fixed length per kind: SeedSequence
# ignores trailing zeros ([s, n, 0] seeds like [s, n]), so kinds differ at position 2, not by length.
STREAM_VOXEL, STREAM_BAND, STREAM_STAIN, STREAM_NOISE = 0, 1, 2, 3
STREAM_INTERVENTION = 4  # nuclei added by histoxai.phantom.interventions


def stream(seed: int, sample: int, kind: int, *index: int) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence([seed, sample, kind, *index]))


def voxel_rng(seed: int, sample: int, row: int, col: int) -> np.random.Generator:
    """The one generator behind everything random in voxel (row, col)."""
    return stream(seed, sample, STREAM_VOXEL, row, col)


def _centroid_pixels(rng, count: int, allowed: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """`count` distinct pixels of a P x P block on a jittered grid, allowed pixels first."""
    size = allowed.shape[0]
    if count == 0:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    cells = int(np.ceil(np.sqrt(count)))
    edges = np.rint(np.linspace(1, size - 1, cells + 1)).astype(np.int64)  # >= 1 px per cell
    order = rng.permutation(cells * cells)
    lo_y, hi_y = edges[order // cells], edges[order // cells + 1]
    lo_x, hi_x = edges[order % cells], edges[order % cells + 1]
    tries = 4  # a few draws per cell to find a tissue pixel; cells without one come last
    ys = rng.integers(lo_y, hi_y, size=(tries, order.size))
    xs = rng.integers(lo_x, hi_x, size=(tries, order.size))
    ok = allowed[ys, xs]
    first = np.argmax(ok, axis=0)
    ys, xs = ys[first, np.arange(order.size)], xs[first, np.arange(order.size)]
    take = np.argsort(~ok.any(axis=0), kind="stable")[:count]
    return ys[take], xs[take]


def voxel_draws(rng, count: int, allowed: np.ndarray, direction: float, sa: float) -> dict[str, np.ndarray]:
    """The random draws behind one voxel's nuclei, in the generator's order: centroid pixels (block
    coordinates), sub-pixel offsets, doubled angles, then standard normals for aspect, size and stain."""
    pixel_y, pixel_x = _centroid_pixels(rng, count, allowed)
    draws = {"pixel_y": pixel_y, "pixel_x": pixel_x}
    draws["offset_y"] = rng.uniform(0.05, 0.95, count)
    draws["offset_x"] = rng.uniform(0.05, 0.95, count)
    kappa = float(kappa_for_coherence(float(np.nan_to_num(sa))))
    draws["doubled"] = rng.vonmises(2 * direction, kappa, count)
    for name in ("aspect_z", "diameter_z", "stain_z"):
        draws[name] = rng.standard_normal(count)
    return draws


def nuclei_from_draws(draws: dict[str, np.ndarray], row: int, col: int, pixels_per_voxel: int, sa: float, *,
                      aspect_median: float | None = None,
                      diameter_scale: float = 1.0) -> dict[str, np.ndarray]:
    """A voxel's nuclei (all fields but label) from its draws; aspect_median replaces 1.2 + 2.0 SA and
    diameter_scale multiplies every diameter (both keep each nucleus's own deviation)."""
    size, count = pixels_per_voxel, draws["pixel_y"].size
    cy = row * size + draws["pixel_y"] + draws["offset_y"]
    cx = col * size + draws["pixel_x"] + draws["offset_x"]
    angle = np.mod(draws["doubled"] / 2, np.pi)
    if aspect_median is None:
        aspect_median = ASPECT_BASE + ASPECT_PER_SA * float(np.nan_to_num(sa))
    aspect = np.maximum(1.0, aspect_median * np.exp(ASPECT_SIGMA * draws["aspect_z"]))
    diameter = np.clip(DIAMETER_UM * np.exp(DIAMETER_SIGMA * draws["diameter_z"]), *DIAMETER_RANGE_UM)
    a, b = semi_axes(diameter * diameter_scale, aspect, size)
    stain = STAIN_MEAN * np.exp(STAIN_SIGMA * draws["stain_z"])
    return {"voxel_row": np.full(count, row, np.int32), "voxel_col": np.full(count, col, np.int32),
            "centroid_x": cx, "centroid_y": cy, "semi_major": a, "semi_minor": b, "angle": angle,
            "haematoxylin": stain}


def voxel_nuclei(rng, count: int, allowed: np.ndarray, row: int, col: int, pixels_per_voxel: int,
                 direction: float, sa: float) -> dict[str, np.ndarray]:
    """The nuclei of one voxel (all fields but label), centroids in image pixel coordinates."""
    draws = voxel_draws(rng, count, allowed, direction, sa)
    return nuclei_from_draws(draws, row, col, pixels_per_voxel, sa)


def concat(tables: list[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """Join nucleus tables field by field (an empty list gives an empty table)."""
    dtypes = {"label": np.uint32, "voxel_row": np.int32, "voxel_col": np.int32}
    return {f: np.concatenate([t[f] for t in tables]).astype(dtypes.get(f, np.float64))
            if tables else np.zeros(0, dtypes.get(f, np.float64)) for f in FIELDS}


# Derived targets: known functions of the rendered nuclei (mode "derived").
DERIVED_MD = {"intercept": 2.1, "per_density": -1.5, "per_relative_area": 0.5, "clip": [0.1, 3.0]}
DERIVED_FA = {"intercept": 0.05, "per_coherence": 0.85}
DERIVED_FORMULA = {
    "MD": "clip(2.1 - 1.5 * n / n_max + 0.5 * (A / A_ref - 1), 0.1, 3.0)",
    "FA": "0.05 + 0.85 * C",
    "FAIP": "same as FA",
    "where": "n = nuclei whose centroid lies in the voxel's block; A = their mean area pi*a*b in px^2 "
             "(A / A_ref = 1 when n = 0); A_ref = reference_area_px; C = |mean(exp(2i*angle))| "
             "over the voxel's nuclei when n >= 2, else 0. Tissue voxels only; elsewhere the real "
             "values (MD = FA = 0) stay.",
}


def voxel_features(table: dict[str, np.ndarray], shape: tuple[int, int]):
    """Per-voxel nuclei count, mean area (px^2, NaN if none) and doubled-angle coherence (0 if n < 2)."""
    flat = table["voxel_row"].astype(np.int64) * shape[1] + table["voxel_col"]
    cells = shape[0] * shape[1]
    count = np.bincount(flat, minlength=cells).astype(np.float64)
    area = np.bincount(flat, np.pi * table["semi_major"] * table["semi_minor"], minlength=cells)
    cos2 = np.bincount(flat, np.cos(2 * table["angle"]), minlength=cells)
    sin2 = np.bincount(flat, np.sin(2 * table["angle"]), minlength=cells)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean_area = area / count
        coherence = np.where(count >= 2, np.hypot(cos2, sin2) / count, 0.0)
    return count.reshape(shape), mean_area.reshape(shape), np.nan_to_num(coherence).reshape(shape)


def derived_targets(table, tissue: np.ndarray, n_max: int, pixels_per_voxel: int,
                    mr: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """MD, FA and FAIP made from the rendered nuclei (DERIVED_FORMULA); other fields unchanged."""
    count, mean_area, coherence = voxel_features(table, tissue.shape)
    relative_area = np.where(count > 0, mean_area / reference_area_px(pixels_per_voxel), 1.0)
    md = np.clip(DERIVED_MD["intercept"] + DERIVED_MD["per_density"] * count / n_max
                 + DERIVED_MD["per_relative_area"] * (relative_area - 1), *DERIVED_MD["clip"])
    fa = DERIVED_FA["intercept"] + DERIVED_FA["per_coherence"] * coherence
    out = dict(mr)
    out["MD"] = np.where(tissue, md, mr["MD"])
    out["FA"] = np.where(tissue, fa, mr["FA"])
    out["FAIP"] = np.where(tissue, fa, mr["FAIP"])
    return out
