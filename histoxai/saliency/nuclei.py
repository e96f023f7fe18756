"""The nuclei of a patch and what they are like, for asking which nuclei a saliency map points at.

The thesis left open which nuclear properties drive the MD and FA predictions. This module finds the
nuclei of a patch and measures them; histoxai/saliency/nucleus_relevance.py sets those measures beside
the relevance a map gives each nucleus.

- The nuclei of a patch (voxel (row, col) of a sample folder, at map size S): from the phantom truth
  when the folder holds it (phantom_truth/nuclei_labels.h5, block of the voxel resized to S x S by
  nearest neighbour, labels kept; outline "mask"), else from the QuPath detections (a disc of the
  detection's area at its centroid, drawn at S x S; outline "disc"). The voxel's block is ingestion's:
  floor(slide size / MR grid) pixels per axis. Both are sampled at pixel centres, so a nucleus smaller
  than a map pixel may hold no map pixel and then is not in the patch.
- Properties: area (slide px² and µm²; the MR voxel is 200 µm, so µm/px = 200 / block), elongation
  (semi-major / semi-minor) and orientation (radians in [0, pi), x = column, y = row) where the outline
  is known (NaN for discs), the distance to the nearest nucleus and the mean distance to the 3 nearest,
  the local density (nuclei within 25 µm per mm²), all among the nuclei of the same patch, and the
  haematoxylin amount where known.
"""

from __future__ import annotations

import contextlib
import functools
import io
import json
from dataclasses import dataclass

import numpy as np

from histoxai import layout, storage
from histoxai.errors import InputError
from histoxai.phantom.nuclei import VOXEL_UM

DENSITY_RADIUS_UM = 25.0
NEIGHBOURS = 3
PROPERTIES = ("area_um2", "elongation", "orientation", "nn_distance_um", "nn3_distance_um", "density_per_mm2",
              "haematoxylin")
TRUTH_COLUMNS = ("label", "centroid_x", "centroid_y", "semi_major", "semi_minor", "angle", "haematoxylin")
# QuPath area columns and their unit: the phantom writes px², QuPath's own export names µm²
AREA_COLUMNS = {"Nucleus_Area_px2": "px2", "Nucleus: Area µm^2": "um2", "Nucleus: Area": "um2"}
STAIN_COLUMNS = ("Hematoxylin_OD_mean", "Nucleus: Hematoxylin OD mean")


@dataclass(frozen=True)
class _Source:
    """Where a sample's nuclei come from, with the voxel grid over its slide."""

    uri: str
    outline: str
    grid: tuple[int, int]
    block: tuple[int, int]
    nuclei: object  # DataFrame indexed by label: centroid_x, centroid_y, area_px, semi_major, ...
    labels_uri: str | None

    @property
    def um_per_px(self) -> tuple[float, float]:
        """µm per slide pixel along rows (y) and columns (x)."""
        return VOXEL_UM / self.block[0], VOXEL_UM / self.block[1]


# ---- reading a sample ----

@contextlib.contextmanager
def _open_h5(uri: str):
    """An HDF5 file (local, or gs:// read by byte ranges, so a big label image is not downloaded)."""
    import h5py

    with contextlib.ExitStack() as stack:
        if storage.is_gcs(uri):
            from histoxai.ranged import RangedFile

            handle = stack.enter_context(contextlib.closing(RangedFile(uri)))
        else:
            handle = str(stack.enter_context(storage.local_copy(uri)))
        try:
            h5 = stack.enter_context(h5py.File(handle, "r"))
        except OSError as err:
            raise InputError(f"{uri}: not a readable HDF5 file ({err}); expected the phantom's label "
                             "image") from err
        yield h5


def _mat_shape(uri: str, name: str, field: str | None = None) -> tuple[int, ...]:
    """The shape of a .mat variable (or of a struct's field), read by ranges from gs:// v7.3 files."""
    from histoxai.matfile import HDF5_SIGNATURE, open_mat

    with contextlib.ExitStack() as stack:
        if not storage.exists(uri):
            raise InputError(f"{uri}: not found; expected it to give the voxel grid of the QuPath detections")
        mat = None
        if storage.is_gcs(uri):
            from histoxai.ranged import RangedFile

            handle = stack.enter_context(contextlib.closing(RangedFile(uri)))
            handle.seek(512)
            if handle.read(8) == HDF5_SIGNATURE:
                mat = stack.enter_context(open_mat(uri, handle))
        if mat is None:
            mat = stack.enter_context(open_mat(stack.enter_context(storage.local_copy(uri))))
        if field is None:
            return tuple(int(n) for n in mat.shape(name))
        struct = mat.read_struct(name)
        if field not in struct:
            raise InputError(f"{uri}: struct {name} has no field {field}; expected the MR maps")
        return tuple(int(n) for n in np.shape(struct[field]))


def _grid(uri: str, image_shape, grid) -> tuple[tuple[int, int], tuple[int, int]]:
    try:
        (height, width), (rows, cols) = (int(n) for n in image_shape[:2]), (int(n) for n in grid)
    except (TypeError, ValueError) as err:
        raise InputError(f"{uri}: image shape {image_shape} or grid {grid} unreadable; expected two "
                         "pairs of positive integers") from err
    if min(rows, cols) < 1 or height < rows or width < cols:
        raise InputError(f"{uri}: grid {rows} x {cols} does not fit a {height} x {width} px slide; expected "
                         "at least one pixel per voxel")
    return (rows, cols), (height // rows, width // cols)


def _truth_source(uri: str):
    import pandas as pd

    paths = {rel: storage.join(uri, rel) for rel in (layout.TRUTH_TARGETS, layout.TRUTH_LABELS,
                                                      layout.TRUTH_NUCLEI)}
    for rel, path in paths.items():
        if not storage.exists(path):
            raise InputError(f"{path}: not found; expected {rel} beside the rest of {uri}/phantom_truth")
    try:
        record = json.loads(storage.read_text(paths[layout.TRUTH_TARGETS]))
        grid, block = _grid(paths[layout.TRUTH_TARGETS], record["image_shape"], record["grid"])
    except (ValueError, KeyError, TypeError) as err:
        raise InputError(f"{paths[layout.TRUTH_TARGETS]}: not a phantom truth record ({err}); expected JSON "
                         "with image_shape and grid") from err
    table = storage.read_parquet(paths[layout.TRUTH_NUCLEI], "the phantom's nuclei table")
    missing = [c for c in TRUTH_COLUMNS if c not in table.columns]
    if missing:
        raise InputError(f"{paths[layout.TRUTH_NUCLEI]}: lacks columns {missing}; expected the phantom's "
                         "nuclei table")
    nuclei = pd.DataFrame({c: table[c].to_numpy(np.float64) for c in TRUTH_COLUMNS[1:]},
                          index=pd.Index(table["label"].to_numpy(np.int64), name="label"))
    nuclei["area_px"] = np.pi * nuclei["semi_major"] * nuclei["semi_minor"]
    return _Source(uri, "mask", grid, block, nuclei, paths[layout.TRUTH_LABELS])


def _detections_source(uri: str):
    import pandas as pd

    tsv = storage.join(uri, layout.NUCLEI_TSV)
    try:
        table = pd.read_csv(io.BytesIO(storage.read_bytes(tsv)), sep="\t")
    except (pd.errors.EmptyDataError, pd.errors.ParserError, UnicodeDecodeError) as err:
        raise InputError(f"{tsv}: not a readable tab-separated table ({err}); expected QuPath "
                         "measurements") from err
    area = next((c for c in AREA_COLUMNS if c in table.columns), None)
    missing = [c for c in (layout.CENTROID_X, layout.CENTROID_Y) if c not in table.columns]
    if missing or area is None:
        raise InputError(f"{tsv}: lacks column(s) {', '.join(missing + ([] if area else ['an area']))}; "
                         "expected QuPath measurements with centroids in px and one of "
                         f"{', '.join(AREA_COLUMNS)}")
    values = table[[layout.CENTROID_X, layout.CENTROID_Y, area]].apply(pd.to_numeric, errors="coerce")
    if not np.isfinite(values.to_numpy(np.float64)).all():
        raise InputError(f"{tsv}: non-numeric or missing centroid or area values; expected numbers in "
                         f"{layout.CENTROID_X}, {layout.CENTROID_Y} and {area}")
    grid, block = _grid(uri, _mat_shape(storage.join(uri, layout.HE_MAT), "HE"),
                        _mat_shape(storage.join(uri, layout.MR_MAT), "MR", "MD"))
    stain = next((c for c in STAIN_COLUMNS if c in table.columns), None)
    um2_per_px = (VOXEL_UM / block[0]) * (VOXEL_UM / block[1])
    area_px = values[area].to_numpy(np.float64) / (um2_per_px if AREA_COLUMNS[area] == "um2" else 1.0)
    nan = np.full(len(table), np.nan)
    nuclei = pd.DataFrame({
        "centroid_x": values[layout.CENTROID_X].to_numpy(np.float64),
        "centroid_y": values[layout.CENTROID_Y].to_numpy(np.float64),
        "semi_major": nan, "semi_minor": nan, "angle": nan,
        "haematoxylin": pd.to_numeric(table[stain], errors="coerce").to_numpy(np.float64) if stain else nan,
        "area_px": area_px}, index=pd.Index(np.arange(1, len(table) + 1), name="label"))
    return _Source(uri, "disc", grid, block, nuclei, None)


@functools.lru_cache(maxsize=16)
def _source(uri: str) -> _Source:
    """A sample's nuclei source, read once per sample: the phantom truth first, else QuPath detections."""
    truth = [rel for rel in (layout.TRUTH_TARGETS, layout.TRUTH_LABELS, layout.TRUTH_NUCLEI)
             if storage.exists(storage.join(uri, rel))]
    if truth:
        return _truth_source(uri)
    if storage.exists(storage.join(uri, layout.NUCLEI_TSV)):
        return _detections_source(uri)
    raise InputError(f"{uri}: neither {layout.TRUTH_LABELS} nor {layout.NUCLEI_TSV}; expected a sample "
                     "folder with the phantom truth or QuPath detections")


# ---- the nuclei of a patch ----

def _pixel_centres(start: int, length: int, size: int) -> np.ndarray:
    """Slide coordinates of the centres of `size` map pixels over [start, start + length)."""
    return start + (np.arange(size) + 0.5) * length / size


def _mask_labels(source: _Source, row: int, col: int, size: int) -> np.ndarray:
    bh, bw = source.block
    with _open_h5(source.labels_uri) as h5:
        try:
            block = np.asarray(h5["labels"][row * bh:(row + 1) * bh, col * bw:(col + 1) * bw])
        except (KeyError, OSError, ValueError) as err:
            raise InputError(f"{source.labels_uri}: cannot read dataset 'labels' ({err}); expected the "
                             "phantom's uint32 label image") from err
    if block.shape != (bh, bw):
        raise InputError(f"{source.labels_uri}: the block of voxel ({row}, {col}) is {block.shape}; expected "
                         f"{(bh, bw)} (the label image is smaller than its truth record says)")
    # nearest neighbour at pixel centres: labels stay labels (no blending of two nuclei into a third)
    rows = np.minimum(np.floor(_pixel_centres(0, bh, size)).astype(int), bh - 1)
    cols = np.minimum(np.floor(_pixel_centres(0, bw, size)).astype(int), bw - 1)
    return block[np.ix_(rows, cols)].astype(np.int64)


def _disc_labels(source: _Source, row: int, col: int, size: int) -> np.ndarray:
    nuclei = source.nuclei
    bh, bw = source.block
    radius = np.sqrt(np.clip(nuclei["area_px"].to_numpy(), 0, None) / np.pi)
    cx, cy = nuclei["centroid_x"].to_numpy(), nuclei["centroid_y"].to_numpy()
    reach = radius.max(initial=0.0)
    near = np.flatnonzero((cx > col * bw - reach) & (cx < (col + 1) * bw + reach)
                          & (cy > row * bh - reach) & (cy < (row + 1) * bh + reach))
    ys, xs = _pixel_centres(row * bh, bh, size), _pixel_centres(col * bw, bw, size)
    labels = np.zeros((size, size), np.int64)
    best = np.full((size, size), np.inf)
    for i in near:  # a few hundred discs at most per block; overlaps go to the closer centroid
        top, bottom = np.searchsorted(ys, cy[i] - radius[i]), np.searchsorted(ys, cy[i] + radius[i], "right")
        left, right = np.searchsorted(xs, cx[i] - radius[i]), np.searchsorted(xs, cx[i] + radius[i], "right")
        d2 = (ys[top:bottom, None] - cy[i]) ** 2 + (xs[None, left:right] - cx[i]) ** 2
        take = (d2 <= radius[i] ** 2) & (d2 < best[top:bottom, left:right])
        labels[top:bottom, left:right][take] = nuclei.index[i]
        best[top:bottom, left:right][take] = d2[take]
    return labels


def nucleus_properties(nuclei, um_per_px: tuple[float, float]):
    """Per-nucleus properties of a set of nuclei (one patch): a DataFrame with label, centroid_x/y and
    area_px (slide px), optionally semi_major, semi_minor, angle, haematoxylin (NaN: unknown), and µm per
    slide pixel (y, x). Neighbour distances and density count only the nuclei given."""
    import pandas as pd
    from scipy.spatial import cKDTree

    uy, ux = um_per_px
    frame = nuclei.reset_index() if "label" not in nuclei.columns else nuclei.reset_index(drop=True)
    count = len(frame)
    column = {c: frame[c].to_numpy(np.float64) if c in frame.columns else np.full(count, np.nan)
              for c in ("semi_major", "semi_minor", "angle", "haematoxylin")}
    points = np.column_stack([frame["centroid_x"].to_numpy(np.float64) * ux,
                              frame["centroid_y"].to_numpy(np.float64) * uy])
    nn = np.full(count, np.nan)
    nn3 = np.full(count, np.nan)
    density = np.zeros(count)
    if count > 1:
        tree = cKDTree(points)
        k = min(NEIGHBOURS, count - 1) + 1  # the first hit is the nucleus itself
        distances, _ = tree.query(points, k=k)
        nn = distances[:, 1]
        if k == NEIGHBOURS + 1:
            nn3 = distances[:, 1:].mean(axis=1)
        within = tree.query_ball_point(points, DENSITY_RADIUS_UM, return_length=True) - 1
        density = within / (np.pi * DENSITY_RADIUS_UM**2) * 1e6  # per mm²
    with np.errstate(invalid="ignore", divide="ignore"):
        elongation = column["semi_major"] / column["semi_minor"]
    area = frame["area_px"].to_numpy(np.float64)
    return pd.DataFrame({
        "label": frame["label"].to_numpy(np.int64), "centroid_x": frame["centroid_x"].to_numpy(np.float64),
        "centroid_y": frame["centroid_y"].to_numpy(np.float64), "area_px": area, "area_um2": area * ux * uy,
        "elongation": elongation, "orientation": np.mod(column["angle"], np.pi),
        "nn_distance_um": nn, "nn3_distance_um": nn3, "density_per_mm2": density,
        "haematoxylin": column["haematoxylin"]})


def patch_nuclei(sample_dir: str, row: int, col: int, size: int):
    """(labels, props) of the patch of voxel (row, col) of a sample folder at map size `size`: labels an
    int32 (size, size) image (0 = no nucleus), props one row per nucleus in it (`nucleus_properties`
    plus outline "mask" or "disc")."""
    source = _source(str(sample_dir).rstrip("/"))
    if not isinstance(size, int | np.integer) or size < 1:
        raise InputError(f"map size {size!r}: expected a positive integer")
    rows, cols = source.grid
    if not (0 <= int(row) < rows and 0 <= int(col) < cols):
        raise InputError(f"{source.uri}: voxel ({row}, {col}) is outside the {rows} x {cols} grid; expected "
                         "a patch of this sample")
    make = _mask_labels if source.outline == "mask" else _disc_labels
    labels = make(source, int(row), int(col), int(size))
    present = np.unique(labels)
    present = present[present > 0]
    known = source.nuclei.index  # pandas keeps its hash table: a sort of every label per patch took 0.1 s
    unknown = present[known.get_indexer(present) < 0] if known.is_unique else np.setdiff1d(present, known)
    if unknown.size:
        raise InputError(f"{source.labels_uri}: labels {unknown[:5].tolist()} are not in "
                         f"{layout.TRUTH_NUCLEI}; expected one table row per label")
    props = nucleus_properties(source.nuclei.loc[present], source.um_per_px)
    props.insert(1, "outline", source.outline)
    return labels.astype(np.int32), props
