"""Open and validate one sample folder for ingestion: MR maps, slide and mask geometry, nuclei centroids.

Every problem becomes one InputError that names the file (as the user gave it, local or gs://) and
the field, before any patch is cut. The slide and its full-resolution mask stay on disk (h5py reads
them by row bands); only the small MR-grid maps and the centroids are loaded.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Iterator
from dataclasses import dataclass, field

import numpy as np

from histoxai import layout, storage
from histoxai.errors import InputError
from histoxai.matfile import HDF5_SIGNATURE, MatFile, open_mat

REQUIRED_MR_FIELDS = ("MD", "FA", "ROI")
OPTIONAL_MR_FIELDS = ("FAIP",)  # absent in some real samples: the FAIP column is then NaN
SAMPLE_ID_MAX = 64  # it names shard files, job ids and Vertex AI display names (at most 128 characters)
_SAMPLE_ID = re.compile(rf"^[A-Za-z0-9][A-Za-z0-9._-]{{0,{SAMPLE_ID_MAX - 1}}}$")
# Plausible values on ROI voxels, to catch damaged files: MD in um^2/ms (= 10^-3 mm^2/s; free water at
# body temperature diffuses at about 3, so tissue stays below 4; values stored in mm^2/s are far below 4
# too), FA in [0, 1]. In-plane FA is not bounded by 1 in the study's maps (up to 1.09 in the bundled
# summary.mat, samples 3, 5 and 10), so its bound only catches values no fit gives.
PLAUSIBLE = {"MD": (0.0, 4.0), "FA": (0.0, 1.0), "FAIP": (0.0, 1.5)}
_LAYOUT_HINT = ("(the dataset layout: coreg_fine/ver1/{MR,HE,HE_mask}.mat, "
                "cell_density/QuPath/measurements.tsv)")


@dataclass
class Sample:
    """What ingestion needs from one sample; `he` and `he_mask` are open files read by row bands."""

    sample_dir: str
    files: dict[str, str]  # layout name -> URI as given (for messages and the report)
    maps: dict[str, np.ndarray]  # MD, FA, FAIP (all NaN if absent), ROI on the MR grid, float64
    faip_present: bool
    dhe_mask: np.ndarray  # MR grid
    he_shape: tuple[int, int]
    centroids: np.ndarray  # (n, 2): x = column, y = row, in slide pixels
    he: MatFile
    he_mask: MatFile
    mat_versions: dict[str, str] = field(default_factory=dict)

    @property
    def grid(self) -> tuple[int, int]:
        return self.maps["MD"].shape

    @property
    def block(self) -> tuple[int, int]:
        """Pixels per voxel along rows and columns: floor(slide size / grid size)."""
        return self.he_shape[0] // self.grid[0], self.he_shape[1] // self.grid[1]


def sample_name(sample_dir: str) -> str:
    """The sample id from the folder name (checked: it names the shard files)."""
    name = str(sample_dir).rstrip("/").rsplit("/", 1)[-1]
    return check_sample_id(name, f"{sample_dir}: folder name")


def check_sample_id(sample_id: str, what: str = "--sample-id") -> str:
    if not _SAMPLE_ID.match(sample_id or ""):
        text = sample_id or ""
        shown = repr(text) if len(text) <= 80 else f"{text[:40]!r}... ({len(text)} characters)"
        raise InputError(f"{what} {shown} is not a usable sample id; expected 1 to {SAMPLE_ID_MAX} "
                         "letters, digits, '.', '_' or '-' (it names the shard files and the runs)")
    return sample_id


@contextlib.contextmanager
def _named(uri: str, local) -> Iterator[None]:
    """Re-raise InputErrors about a downloaded copy under the name the user gave."""
    try:
        yield
    except InputError as err:
        text = str(err)
        if str(local) != uri:
            text = text.replace(str(local), uri)
        raise InputError(text) from err


def _fetch(stack: contextlib.ExitStack, sample_dir: str, rel: str) -> tuple[str, object]:
    uri = storage.join(sample_dir, rel)
    if not storage.exists(uri):
        raise InputError(f"{uri}: file not found; expected {rel} inside the sample folder {_LAYOUT_HINT}")
    return uri, stack.enter_context(storage.local_copy(uri))


def _open(stack: contextlib.ExitStack, uri: str, local) -> MatFile:
    with _named(uri, local):
        return stack.enter_context(open_mat(local))


def _open_slide(stack: contextlib.ExitStack, sample_dir: str, rel: str, ranged: bool) -> tuple[str, MatFile]:
    """A slide or mask file, opened in place by ranged reads when `ranged` and it is a v7.3 file on
    gs:// (headers, shapes and small variables cost a few requests), else downloaded as ingestion does."""
    uri = storage.join(sample_dir, rel)
    if ranged and storage.is_gcs(uri) and storage.exists(uri):
        from histoxai.ranged import RangedFile

        handle = stack.enter_context(contextlib.closing(RangedFile(uri)))
        handle.seek(512)
        if handle.read(8) == HDF5_SIGNATURE:
            return uri, stack.enter_context(open_mat(uri, handle))
    uri, local = _fetch(stack, sample_dir, rel)
    return uri, _open(stack, uri, local)


def _read_mr(mat: MatFile, uri: str) -> tuple[dict[str, np.ndarray], bool]:
    struct = mat.read_struct("MR")
    missing = [f for f in REQUIRED_MR_FIELDS if f not in struct]
    if missing:
        raise InputError(f"{uri}: struct MR lacks field(s) {', '.join(missing)} "
                         f"(found: {', '.join(sorted(struct)) or 'none'}); expected MD, FA and ROI maps")
    grid = np.shape(struct["MD"])
    if len(grid) != 2 or min(grid) < 1:
        raise InputError(f"{uri}: MR.MD has shape {grid}; expected a 2-D map on the MR grid")
    maps = {}
    for name in REQUIRED_MR_FIELDS + OPTIONAL_MR_FIELDS:
        if name not in struct:
            continue
        value = np.asarray(struct[name], dtype=np.float64)
        if value.shape != grid:
            raise InputError(f"{uri}: MR.{name} has shape {value.shape}; "
                             f"expected {grid}, the MR grid of MR.MD")
        maps[name] = value
    faip_present = "FAIP" in maps
    if not faip_present:
        maps["FAIP"] = np.full(grid, np.nan)
    for name in ("MD", "FA"):
        if not np.isfinite(maps[name]).any():
            raise InputError(f"{uri}: MR.{name} is NaN (or infinite) at every voxel; "
                             "expected measured values")
    if not (maps["ROI"] == 1).any():
        raise InputError(f"{uri}: MR.ROI has no voxel equal to 1 (empty ROI); expected the tumour ROI")
    check_ranges(maps, uri)
    return maps, faip_present


def check_ranges(maps: dict[str, np.ndarray], uri: str) -> None:
    """InputError naming the first map with a value outside PLAUSIBLE on an ROI voxel."""
    roi = maps["ROI"] == 1
    for name, (low, high) in PLAUSIBLE.items():
        values = maps[name][roi & np.isfinite(maps[name])]
        wrong = values[(values < low) | (values > high)]
        if wrong.size:
            unit = " um^2/ms (10^-3 mm^2/s)" if name == "MD" else ""
            raise InputError(f"{uri}: MR.{name} is {wrong[0]:.4g} at {wrong.size} ROI voxel(s); expected "
                             f"{low:g} to {high:g}{unit}, the physical range (a damaged file?)")


def _check_slide(he: MatFile, uri: str, grid: tuple[int, int]) -> tuple[int, int]:
    shape = he.shape("HE")
    if len(shape) != 3 or shape[2] != 3:
        raise InputError(f"{uri}: HE has shape {shape}; expected an RGB image H x W x 3")
    dtype = he.dtype("HE")  # from the header: a probe read could unpack a whole-height chunk
    if dtype != np.uint8:
        raise InputError(f"{uri}: HE is {dtype}; expected uint8 RGB")
    if shape[0] < grid[0] or shape[1] < grid[1]:
        raise InputError(f"{uri}: HE is {shape[0]} x {shape[1]} px, smaller than the MR grid "
                         f"{grid[0]} x {grid[1]} voxels of MR.mat; expected at least one pixel per voxel")
    return shape[0], shape[1]


def _check_masks(mask: MatFile, uri: str, he_shape: tuple[int, int], grid: tuple[int, int]) -> np.ndarray:
    shape = mask.shape("HE_mask")
    if tuple(shape) != he_shape:
        raise InputError(f"{uri}: HE_mask has shape {tuple(shape)}; "
                         f"expected {he_shape}, the shape of HE in HE.mat")
    dhe = np.asarray(mask.read("dHE_mask"), dtype=np.float64)
    if dhe.shape != grid:
        raise InputError(f"{uri}: dHE_mask has shape {dhe.shape}; expected {grid}, the MR grid of MR.mat")
    return dhe


def read_centroids(path, uri: str) -> np.ndarray:
    """(n, 2) float array of (x = column, y = row) from a QuPath measurements table."""
    import pandas as pd

    columns = [layout.CENTROID_X, layout.CENTROID_Y]
    try:
        header = pd.read_csv(path, sep="\t", nrows=0).columns
    except (pd.errors.EmptyDataError, pd.errors.ParserError, UnicodeDecodeError) as err:
        raise InputError(f"{uri}: not a readable tab-separated table ({err})") from err
    missing = [c for c in columns if c not in header]
    if missing:
        shown = ", ".join(list(header)[:8]) + (", ..." if len(header) > 8 else "")
        raise InputError(f"{uri}: column(s) {', '.join(missing)} missing (found: {shown}); "
                         "expected QuPath measurements with centroids in pixels")
    try:
        table = pd.read_csv(path, sep="\t", usecols=columns)
        values = table[columns].apply(pd.to_numeric, errors="coerce").to_numpy(np.float64)
    except (pd.errors.ParserError, UnicodeDecodeError, ValueError) as err:
        raise InputError(f"{uri}: cannot read columns {', '.join(columns)} ({err})") from err
    bad = ~np.isfinite(values).all(axis=1)
    if bad.any():
        row = int(np.flatnonzero(bad)[0]) + 2  # 1-based, after the header line
        raise InputError(f"{uri}: {int(bad.sum())} row(s) with a missing or non-numeric centroid "
                         f"(first at line {row}); expected numbers in {', '.join(columns)}")
    return values


@contextlib.contextmanager
def open_sample(sample_dir: str, *, ranged: bool = False) -> Iterator[Sample]:
    """Validate a sample folder (local or gs://) and keep its slide files open for streaming; `ranged`
    reads gs:// v7.3 slides in place (for checks) instead of downloading them (for streaming)."""
    sample_dir = str(sample_dir).rstrip("/")
    if not storage.is_gcs(sample_dir) and not storage.exists(sample_dir):
        raise InputError(f"{sample_dir}: sample folder not found")
    with contextlib.ExitStack() as stack:
        files, versions = {}, {}
        mr_uri, mr_local = _fetch(stack, sample_dir, layout.MR_MAT)
        mr = _open(stack, mr_uri, mr_local)
        with _named(mr_uri, mr_local):
            maps, faip_present = _read_mr(mr, mr_uri)
        grid = maps["MD"].shape

        he_uri, he = _open_slide(stack, sample_dir, layout.HE_MAT, ranged)
        with _named(he_uri, he.path):
            he_shape = _check_slide(he, he_uri, grid)

        mask_uri, mask = _open_slide(stack, sample_dir, layout.HE_MASK_MAT, ranged)
        with _named(mask_uri, mask.path):
            dhe = _check_masks(mask, mask_uri, he_shape, grid)

        tsv_uri, tsv_local = _fetch(stack, sample_dir, layout.NUCLEI_TSV)
        centroids = read_centroids(tsv_local, tsv_uri)

        for name, uri, mat in ((layout.MR_MAT, mr_uri, mr), (layout.HE_MAT, he_uri, he),
                               (layout.HE_MASK_MAT, mask_uri, mask)):
            files[name] = uri
            versions[name] = mat.version
        files[layout.NUCLEI_TSV] = tsv_uri
        yield Sample(sample_dir=sample_dir, files=files, maps=maps, faip_present=faip_present, dhe_mask=dhe,
                     he_shape=he_shape, centroids=centroids, he=he, he_mask=mask, mat_versions=versions)


@contextlib.contextmanager
def read_errors_named(sample: Sample) -> Iterator[None]:
    """While streaming, name the user's URI in read errors from a downloaded slide or mask copy."""
    with contextlib.ExitStack() as stack:
        for rel, mat in ((layout.HE_MAT, sample.he), (layout.HE_MASK_MAT, sample.he_mask)):
            stack.enter_context(_named(sample.files[rel], mat.path))
        yield


_MAT_HEADERS = (b"MATLAB 5.0 MAT-file", b"MATLAB 7.3 MAT-file")


def _check_mat_header(uri: str) -> None:
    head = storage.read_range(uri, 0, 520)
    if not head.startswith(_MAT_HEADERS):
        raise InputError(f"{uri}: not a MATLAB file (its header does not start with 'MATLAB 5.0 MAT-file' "
                         "or 'MATLAB 7.3 MAT-file'); expected the .mat file of the dataset layout")
    if head.startswith(_MAT_HEADERS[1]) and head[512:520] != HDF5_SIGNATURE:
        raise InputError(f"{uri}: a MATLAB 7.3 header without its HDF5 part (truncated upload?); "
                         "expected a complete v7.3 file")


def _check_table_header(uri: str) -> None:
    first_line = storage.read_range(uri, 0, 1 << 16).split(b"\n", 1)[0].rstrip(b"\r")
    try:
        header = first_line.decode("utf-8").split("\t")
    except UnicodeDecodeError as err:
        raise InputError(f"{uri}: not a readable tab-separated table ({err})") from err
    missing = [c for c in (layout.CENTROID_X, layout.CENTROID_Y) if c not in header]
    if missing:
        raise InputError(f"{uri}: column(s) {', '.join(missing)} missing from the header line; "
                         "expected QuPath measurements with centroids in pixels")


def check_upload(sample_dir: str) -> dict[str, int]:
    """Check an uploaded sample folder with ingestion's own checks, without downloading a v7.3 slide.

    Every file of the layout must exist and be non-empty and carry its header; then `open_sample`
    validates it as ingestion does (MR maps and their ranges, slide type and shape, masks on the slide
    and MR grids, the nuclei table), reading v7.3 slides in place by ranges (HDF5 also refuses a file
    shorter than it says it is). Returns each file's size in bytes.
    """
    sample_dir = str(sample_dir).rstrip("/")
    sizes = {}
    for rel in (layout.MR_MAT, layout.HE_MAT, layout.HE_MASK_MAT, layout.NUCLEI_TSV):
        uri = storage.join(sample_dir, rel)
        size = storage.size(uri)
        if not size:
            state = "file not found" if size is None else "empty file"
            raise InputError(f"{uri}: {state}; expected {rel} inside the sample folder {_LAYOUT_HINT}")
        sizes[rel] = size
    for rel in (layout.MR_MAT, layout.HE_MAT, layout.HE_MASK_MAT):
        _check_mat_header(storage.join(sample_dir, rel))
    _check_table_header(storage.join(sample_dir, layout.NUCLEI_TSV))
    with open_sample(sample_dir, ranged=True):
        pass
    return sizes
