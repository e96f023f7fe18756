"""One reader over the slides prediction takes: the dataset's sample folders and whole-slide image files.

A `Slide` gives the level-0 size, the microns per pixel (when known), level-0 pixels by row bands,
a low-resolution image for the tissue detector and, for sample folders, the tissue mask and the MR
grid. Memory stays bounded by one band: nothing reads a whole level-0 image.

- A sample folder of the dataset layout (histoxai.layout: coreg_fine/ver1/HE.mat, optional HE_mask.mat
  and MR.mat) is read as ingestion reads it: HE.mat by row bands through histoxai.matfile. With MR.mat
  the voxel grid is MR.MD's grid and each voxel's block is floor(slide size / grid size) pixels, exactly
  ingestion's blocks, so predictions line up voxel by voxel with the measured maps. HE.mat carries no
  microns-per-pixel value (the data README gives only an approximate 0.5 µm/px, and the phantom renders
  at any scale), so without MR.mat the caller must give one (--mpp).
- Any other path is a whole-slide image read with OpenSlide: Aperio SVS, Hamamatsu NDPI/VMS, MIRAX,
  Leica SCN, Ventana BIF, Philips TIFF, DICOM and generic tiled pyramidal TIFF, the formats pathology
  labs scan to (tiffslide reads only the TIFF-based ones, not MIRAX or NDPI), and the field's standard
  reader. The pixel size comes from the `openslide.mpp-x` / `openslide.mpp-y` properties, else from
  the caller. OpenSlide opens only local files, so a gs:// slide is first downloaded to a temporary
  folder (a MIRAX .mrxs with its data folder of the same name). A generic TIFF's pyramid levels are its
  successive tiled pages (OpenSlide does not read SubIFDs).

Every problem (missing file, unknown format, no pixel size, damaged tile) is one InputError naming the
slide as the user gave it.
"""

from __future__ import annotations

import contextlib
import math
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import numpy as np

from histoxai import layout, storage
from histoxai.errors import InputError

COLUMN_CHUNK = 8192  # level-0 columns per OpenSlide read: bounds its RGBA buffer on very wide slides
THUMBNAIL_BAND_PIXELS = 1 << 24  # pixels read per band while reducing a level to the thumbnail
_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")


@dataclass(frozen=True)
class Grid:
    """The voxel grid over a slide: voxel (i, j) is level-0 rows i*bh:(i+1)*bh, columns j*bw:(j+1)*bw."""

    shape: tuple[int, int]
    block: tuple[int, int]
    source: str  # what fixed it: "MR.mat" or "voxel size"


@dataclass
class Slide:
    """An open slide; `read_band(start, stop, left, right)` gives level-0 rows [start, stop) and
    columns [left, right) (right None: to the edge) as uint8 RGB."""

    uri: str
    slide_id: str
    kind: str  # "dataset layout" or "whole-slide image (FORMAT)"
    size: tuple[int, int]  # level-0 height, width in pixels
    mpp: tuple[float, float] | None  # µm per pixel along rows (y) and columns (x); None: unknown
    mpp_source: str
    read_band: Callable[..., np.ndarray]
    # (target downsample) -> (RGB image, level-0 pixels per image pixel along y and x)
    low_resolution: Callable[[float], tuple[np.ndarray, tuple[float, float]]]
    mask_band: Callable[[int, int], np.ndarray] | None = None  # HE_mask rows (1 = tissue), if any
    mr_grid: tuple[int, int] | None = None
    properties: dict[str, str] = field(default_factory=dict)

    def grid(self, voxel_um: float) -> Grid:
        """MR.mat's grid when the slide has one, else voxels of voxel_um at the slide's pixel size."""
        height, width = self.size
        if self.mr_grid is not None:
            rows, cols = self.mr_grid
            return Grid((rows, cols), (height // rows, width // cols), "MR.mat")
        if self.mpp is None:
            raise InputError(f"{self.uri}: no microns-per-pixel metadata; pass --mpp")
        block = (max(1, round(voxel_um / self.mpp[0])), max(1, round(voxel_um / self.mpp[1])))
        shape = (height // block[0], width // block[1])
        if min(shape) < 1:
            raise InputError(f"{self.uri}: {height} x {width} px is smaller than one voxel of "
                             f"{voxel_um:g} µm "
                             f"({block[0]} x {block[1]} px at {self.mpp[1]:g} µm/px); expected a larger "
                             "slide or a smaller --voxel-um")
        return Grid(shape, block, "voxel size")


def slide_id(uri: str) -> str:
    """A name for the slide's output folder: the sample folder's name or the file's stem, made safe."""
    name = str(uri).rstrip("/").rsplit("/", 1)[-1]
    stem = name.rsplit(".", 1)[0] if "." in name.lstrip(".") else name
    safe = _UNSAFE.sub("_", stem).strip("._-")[:64]
    return safe or "slide"


def is_sample_folder(uri: str) -> bool:
    return storage.exists(storage.join(uri, layout.HE_MAT))


# Whole-slide files OpenSlide reads, by suffix (a folder of slides is listed by these)
WHOLE_SLIDE_SUFFIXES = (".svs", ".ndpi", ".mrxs", ".scn", ".bif", ".vms", ".vmu", ".svslide", ".tif", ".tiff")


def find_slides(folder: str) -> list[str]:
    """The slides directly in `folder` (local or gs://): whole-slide files by suffix and sample folders
    (those holding the dataset layout's HE.mat), sorted; one InputError when there is none."""
    base = str(folder).rstrip("/")
    found, samples = set(), set()
    he_suffix = "/" + layout.HE_MAT
    for uri in storage.list_files(base):
        relative = uri[len(base) + 1:]
        if "/" not in relative and relative.lower().endswith(WHOLE_SLIDE_SUFFIXES):
            found.add(uri)
        elif relative.endswith(he_suffix) and relative.count("/") == he_suffix.count("/"):
            samples.add(storage.join(base, relative.split("/", 1)[0]))
    if not found | samples:
        raise InputError(f"{folder}: no slides; expected whole-slide files "
                         f"({', '.join(WHOLE_SLIDE_SUFFIXES)}) or sample folders with {layout.HE_MAT}")
    return sorted(found | samples)


def reduce_rows(read_rows: Callable[[int, int], np.ndarray], height: int, width: int,
                factor: int) -> np.ndarray:
    """An image (H x W or H x W x C) read by row bands and averaged over factor x factor pixels (edges
    beyond a whole factor dropped), as float32: a low-resolution copy that never holds more than one band."""
    out_h, out_w = max(1, height // factor), max(1, width // factor)
    factor_h, factor_w = min(factor, height), min(factor, width)
    band_rows = factor_h * max(1, THUMBNAIL_BAND_PIXELS // max(1, width * factor_h))
    image = None
    for top in range(0, out_h * factor_h, band_rows):
        stop = min(top + band_rows, out_h * factor_h)
        band = np.asarray(read_rows(top, stop))[:, : out_w * factor_w].astype(np.float32)
        rows = (stop - top) // factor_h
        band = band.reshape(rows, factor_h, out_w, factor_w, *band.shape[2:]).mean(axis=(1, 3))
        if image is None:
            image = np.empty((out_h, out_w, *band.shape[2:]), np.float32)
        image[top // factor_h: top // factor_h + rows] = band
    return image


def _reduced_rgb(read_rows: Callable[[int, int], np.ndarray], height: int, width: int,
                 factor: int) -> np.ndarray:
    return np.round(reduce_rows(read_rows, height, width, factor)[..., :3]).astype(np.uint8)


def _check_mpp(mpp: float) -> float:
    if not (mpp >= 0 and math.isfinite(mpp)):
        raise InputError(f"--mpp {mpp}: expected a positive number of µm per pixel (0: from the slide)")
    return mpp


@contextlib.contextmanager
def open_slide(uri: str, *, mpp: float = 0.0) -> Iterator[Slide]:
    """A sample folder or a whole-slide file (local or gs://), open for as long as the block runs.
    mpp (µm per pixel) is used where the slide has no such metadata; 0 means none given."""
    uri = str(uri).rstrip("/")
    _check_mpp(mpp)
    sample_folder = is_sample_folder(uri)
    if not sample_folder and not storage.exists(uri):
        raise InputError(f"{uri}: slide not found; expected a whole-slide image file or a sample folder "
                         f"with {layout.HE_MAT}")
    with contextlib.ExitStack() as stack:
        if sample_folder:
            yield _open_sample_folder(stack, uri, mpp)
        elif not storage.is_gcs(uri) and storage.exists(uri) and not _is_file(uri):
            raise InputError(f"{uri}: a folder without {layout.HE_MAT}; expected a whole-slide image file or "
                             "a sample folder of the dataset layout")
        else:
            yield _open_whole_slide(stack, uri, mpp)


def _is_file(uri: str) -> bool:
    from pathlib import Path

    return Path(uri).is_file()


# ---- the dataset layout ----

def _open_sample_folder(stack: contextlib.ExitStack, uri: str, mpp: float) -> Slide:
    from histoxai.matfile import open_mat

    def open_file(rel: str):
        file_uri = storage.join(uri, rel)
        local = stack.enter_context(storage.local_copy(file_uri))
        try:
            return file_uri, stack.enter_context(open_mat(local))
        except InputError as err:
            raise InputError(str(err).replace(str(local), file_uri)) from err

    he_uri, he = open_file(layout.HE_MAT)
    shape = he.shape("HE")
    if len(shape) != 3 or shape[2] != 3:
        raise InputError(f"{he_uri}: HE has shape {shape}; expected an RGB image H x W x 3")
    if he.read_rows("HE", 0, 1).dtype != np.uint8:
        raise InputError(f"{he_uri}: HE is {he.read_rows('HE', 0, 1).dtype}; expected uint8 RGB")
    height, width = int(shape[0]), int(shape[1])

    mr_grid = None
    if storage.exists(storage.join(uri, layout.MR_MAT)):
        mr_uri, mr = open_file(layout.MR_MAT)
        try:
            md = mr.read_struct("MR")["MD"]
        except KeyError:
            raise InputError(f"{mr_uri}: struct MR has no field MD; expected the MR maps") from None
        mr_grid = tuple(int(n) for n in np.shape(md))
        if len(mr_grid) != 2 or min(mr_grid) < 1 or mr_grid[0] > height or mr_grid[1] > width:
            raise InputError(f"{mr_uri}: MR.MD has shape {mr_grid}; expected a 2-D grid no larger than HE "
                             f"({height} x {width} px)")

    mask_band = None
    if storage.exists(storage.join(uri, layout.HE_MASK_MAT)):
        mask_uri, mask = open_file(layout.HE_MASK_MAT)
        if tuple(mask.shape("HE_mask")) != (height, width):
            raise InputError(f"{mask_uri}: HE_mask has shape {tuple(mask.shape('HE_mask'))}; "
                             f"expected {(height, width)}, the shape of HE in HE.mat")

        def mask_band(start: int, stop: int) -> np.ndarray:
            return mask.read_rows("HE_mask", start, stop)

    def read_band(start: int, stop: int, left: int = 0, right: int | None = None) -> np.ndarray:
        return np.asarray(he.read_rows("HE", start, stop))[:, left:right]

    def low_resolution(downsample: float) -> tuple[np.ndarray, tuple[float, float]]:
        factor = max(1, int(downsample))
        return _reduced_rgb(read_band, height, width, factor), (factor, factor)

    given = (mpp, mpp) if mpp else None
    return Slide(uri=uri, slide_id=slide_id(uri), kind="dataset layout", size=(height, width), mpp=given,
                 mpp_source="--mpp" if given else "none", read_band=read_band,
                 low_resolution=low_resolution, mask_band=mask_band, mr_grid=mr_grid)


# ---- whole-slide images (OpenSlide) ----

def _local_slide(stack: contextlib.ExitStack, uri: str) -> str:
    """A local path OpenSlide can open: gs:// slides are downloaded (MIRAX with its data folder)."""
    if not storage.is_gcs(uri):
        return uri
    from histoxai.outputs import scratch_dir

    folder = stack.enter_context(scratch_dir("slide"))
    name = uri.rsplit("/", 1)[-1]
    storage.download_file(uri, folder / name)
    if name.lower().endswith(".mrxs"):
        data = uri[: -len(".mrxs")]
        for file in storage.list_files(data):
            storage.download_file(file, folder / name[: -len(".mrxs")] / file[len(data) + 1:])
    return str(folder / name)


def _openslide_mpp(properties, uri: str, mpp: float) -> tuple[tuple[float, float] | None, str]:
    values = []
    for key in ("openslide.mpp-y", "openslide.mpp-x"):
        try:
            value = float(properties.get(key, "nan"))
        except ValueError:
            value = math.nan
        values.append(value)
    if all(math.isfinite(v) and v > 0 for v in values):
        return (values[0], values[1]), "slide metadata"
    if mpp:
        return (mpp, mpp), "--mpp"
    raise InputError(f"{uri}: no microns-per-pixel metadata; pass --mpp")


def _open_whole_slide(stack: contextlib.ExitStack, uri: str, mpp: float) -> Slide:
    import openslide

    local = _local_slide(stack, uri)
    try:
        handle = openslide.OpenSlide(local)
    except openslide.OpenSlideUnsupportedFormatError:
        raise InputError(f"{uri}: not a slide format OpenSlide reads; expected a whole-slide image (.svs, "
                         ".ndpi, .mrxs, .scn, .bif, tiled pyramidal .tif) or a sample folder with "
                         f"{layout.HE_MAT}") from None
    except (openslide.OpenSlideError, OSError) as err:
        raise InputError(f"{uri}: cannot open the slide ({err}); "
                         "expected an intact whole-slide image") from None
    stack.callback(handle.close)
    width, height = handle.dimensions
    vendor = handle.properties.get("openslide.vendor", "unknown")
    pixel_size, mpp_source = _openslide_mpp(handle.properties, uri, mpp)
    background = handle.properties.get("openslide.background-color", "FFFFFF")
    try:
        fill = np.array([int(background[i:i + 2], 16) for i in (0, 2, 4)], np.float32)
    except ValueError:
        fill = np.full(3, 255, np.float32)

    def read_level(level: int, start: int, stop: int, first: int, last: int) -> np.ndarray:
        scale = handle.level_downsamples[level]
        band = np.empty((stop - start, last - first, 3), np.uint8)
        for left in range(first, last, COLUMN_CHUNK):
            size = (min(COLUMN_CHUNK, last - left), stop - start)
            # OpenSlide takes the region's origin in level-0 pixels and its size in level pixels
            origin = (int(round(left * scale)), int(round(start * scale)))
            try:
                rgba = np.asarray(handle.read_region(origin, level, size))
            except openslide.OpenSlideError as err:
                raise InputError(f"{uri}: cannot read level {level} rows {start}-{stop} ({err}); expected "
                                 "intact image tiles (a damaged file?)") from None
            if (rgba[..., 3] == 255).all():
                band[:, left - first:left - first + size[0]] = rgba[..., :3]
                continue
            alpha = rgba[..., 3:4].astype(np.float32) / 255
            # transparent = no scanned data there: show the slide's background colour
            rgb = rgba[..., :3] * alpha + fill * (1 - alpha)
            band[:, left - first:left - first + size[0]] = np.round(rgb).astype(np.uint8)
        return band

    def read_band(start: int, stop: int, left: int = 0, right: int | None = None) -> np.ndarray:
        return read_level(0, start, stop, left, width if right is None else min(right, width))

    def low_resolution(downsample: float) -> tuple[np.ndarray, tuple[float, float]]:
        level = handle.get_best_level_for_downsample(max(1.0, downsample))
        level_width, level_height = handle.level_dimensions[level]
        factor = max(1, int(downsample / handle.level_downsamples[level]))
        image = _reduced_rgb(lambda a, b: read_level(level, a, b, 0, level_width), level_height,
                             level_width, factor)
        return image, (factor * height / level_height, factor * width / level_width)

    return Slide(uri=uri, slide_id=slide_id(uri), kind=f"whole-slide image ({vendor})", size=(height, width),
                 mpp=pixel_size, mpp_source=mpp_source, read_band=read_band, low_resolution=low_resolution,
                 properties={"vendor": vendor, "levels": str(handle.level_count)})
