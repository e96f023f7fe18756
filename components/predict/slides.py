"""Predict MD, FA, CC (whatever the model was trained on) from histology alone, voxel by voxel.

`predict_slides(slides, model, out)` opens each slide (histoxai.slides: a sample folder of the dataset
layout or a whole-slide image), lays the voxel grid over it (MR.mat's grid when the sample has one,
else voxels of `voxel_um` at the slide's µm per pixel), decides which voxels are tissue (HE_mask.mat
as ingestion uses it: the whole block inside the mask; otherwise histoxai.tissue's detector: at least
half of the block), and feeds the model each tissue voxel's block resized to the model's input with
histoxai.patches.resize_block, the resize ingestion stores patches with. The model sees float32
0-255 pixels, as histoxai.dataset.patch_dataset gives them (its preprocessing is inside the model).
When a run's patch size equals the model's input size (the usual case) these are the pixels
`histoxai evaluate` predicts from; otherwise evaluate's patches were resized twice.

The slide is read one voxel row at a time (a second thread reads and resizes the next row while the
model runs), so memory stays bounded by one row of blocks plus one batch. The outputs (OUT/<slide id>/)
are written by components/predict/outputs.py; OUT is published whole, prediction.json last.
"""

from __future__ import annotations

import contextlib
import math
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from histoxai import artifacts, outputs, storage, tissue
from histoxai.components.predict import outputs as written
from histoxai.components.predict.params import DEFAULTS
from histoxai.errors import InputError
from histoxai.patches import resize_block
from histoxai.slides import Grid, Slide, open_slide, reduce_rows

REGISTRY_PREFIX = "registry:"
VOXELS_PER_THUMBNAIL_SIDE = 8  # detector pixels along each side of a voxel


@dataclass
class Predictor:
    """The loaded model with what its outputs mean."""

    net: object
    targets: tuple[str, ...]
    source: str  # the folder or registry reference it came from
    version: dict = field(default_factory=dict)

    @property
    def image_size(self) -> int:
        return int(self.net.input_shape[1])


def _check_input(net, source: str) -> None:
    shape = tuple(net.input_shape)
    if len(shape) != 4 or shape[1] is None or shape[1] != shape[2] or shape[3] != 3:
        raise InputError(f"--model {source}: the model takes input {shape}; expected square RGB patches "
                         "(None, S, S, 3) as `histoxai train` builds them")


def open_predictor(model: str, stack: contextlib.ExitStack, registry: str = "") -> Predictor:
    """A training output folder (model.keras, config.yaml) or `registry:NAME@VERSION|ALIAS` from the
    registry at `registry`, fetched into a scratch folder that lives as long as `stack`."""
    from histoxai.config import load_config
    from histoxai.model import load_model

    version = {}
    folder = model.rstrip("/")
    if model.startswith(REGISTRY_PREFIX):
        from histoxai.model_registry import CHAMPION, open_registry, parse_reference

        if not registry:
            raise InputError(f"--model {model}: a registry reference needs --registry LOCATION "
                             "(a folder, gs:// URI or vertex://PROJECT/REGION)")
        name, which = parse_reference(model[len(REGISTRY_PREFIX):])
        models = open_registry(registry)
        entry = models.get(name, which or CHAMPION)
        folder = str(stack.enter_context(outputs.scratch_dir("model")))
        models.fetch(entry, Path(folder))
        version = {"registry": registry, "name": entry.name, "version": entry.version}
    for file in (artifacts.MODEL_FILE, artifacts.MODEL_CONFIG):
        if not storage.exists(storage.join(folder, file)):
            raise InputError(f"--model {model}: no {file}; expected a training output folder "
                             f"(`histoxai train`) or registry:NAME@VERSION with --registry")
    config = load_config(storage.join(folder, artifacts.MODEL_CONFIG))
    net = load_model(storage.join(folder, artifacts.MODEL_FILE))
    _check_input(net, model)
    missing = [t for t in config.targets if t not in net.output_names]
    if not config.targets or missing:
        raise InputError(f"--model {model}: config.yaml's targets {list(config.targets)} are not all outputs "
                         f"of model.keras ({list(net.output_names)}); expected one output per target")
    return Predictor(net=net, targets=tuple(config.targets), source=model, version=version)


@dataclass
class SlideTissue:
    voxels: np.ndarray  # bool, grid shape
    image: np.ndarray  # bool pixel mask at low resolution (what tissue.png shows)
    source: str  # "HE_mask.mat" or "detector"


def find_tissue(slide: Slide, grid: Grid) -> SlideTissue:
    """Tissue voxels: from HE_mask (every block pixel inside, as ingestion) or from the detector."""
    downsample = max(1.0, min(grid.block) / VOXELS_PER_THUMBNAIL_SIDE)
    if slide.mask_band is not None:
        (rows, cols), (bh, bw) = grid.shape, grid.block
        voxels = np.zeros(grid.shape, bool)
        for i in range(rows):
            band = slide.mask_band(i * bh, (i + 1) * bh)[:, : cols * bw] == 1
            voxels[i] = band.reshape(bh, cols, bw).all(axis=(0, 2))
        factor = max(1, int(downsample))
        image = reduce_rows(slide.mask_band, *slide.size, factor) >= 0.5
        return SlideTissue(voxels, image, "HE_mask.mat")
    rgb, scale = slide.low_resolution(downsample)
    mask = tissue.detect_tissue(rgb, min_area=max(4, VOXELS_PER_THUMBNAIL_SIDE ** 2 // 2))
    fractions = tissue.voxel_fractions(mask, scale, grid.shape, grid.block)
    return SlideTissue(tissue.tissue_voxels(fractions), mask, "detector")


def _row_patches(slide: Slide, grid: Grid, row: int, columns: np.ndarray, size: int) -> np.ndarray:
    """The tissue blocks of one voxel row as model input: n x size x size x 3 float32, 0-255."""
    bh, bw = grid.block
    patches = np.empty((len(columns), size, size, 3), np.float32)
    if not len(columns):
        return patches
    # only the span from the first to the last tissue block: wide slides are mostly glass
    left = int(columns[0]) * bw
    band = slide.read_band(row * bh, (row + 1) * bh, left, (int(columns[-1]) + 1) * bw)
    for k, j in enumerate(columns):
        patches[k] = resize_block(band[:, j * bw - left:(j + 1) * bw - left], size)
    return patches


def predict_grid(slide: Slide, grid: Grid, voxels: np.ndarray, predictor: Predictor, *, batch_size: int,
                 progress: bool = True) -> dict[str, np.ndarray]:
    """Per target a float32 map on the grid, NaN where `voxels` is False."""
    from tqdm import tqdm

    maps = {t: np.full(grid.shape, np.nan, np.float32) for t in predictor.targets}
    pending: list[tuple[np.ndarray, np.ndarray]] = []  # (patches, flat voxel indices) not yet predicted

    def flush(final: bool) -> None:
        while pending and (final or sum(len(p) for p, _ in pending) >= batch_size):
            images = np.concatenate([p for p, _ in pending])
            where = np.concatenate([w for _, w in pending])
            now, later = slice(0, batch_size), slice(batch_size, None)
            pending[:] = [(images[later], where[later])] if len(images) > batch_size else []
            result = predictor.net.predict_on_batch(images[now])
            if not isinstance(result, dict):
                listed = result if isinstance(result, list) else [result]
                result = dict(zip(predictor.net.output_names, listed, strict=True))
            for target in predictor.targets:
                maps[target].reshape(-1)[where[now]] = np.asarray(result[target], np.float32).reshape(-1)

    rows, cols = grid.shape
    wanted = [np.flatnonzero(voxels[i]) for i in range(rows)]
    size = predictor.image_size
    with ThreadPoolExecutor(1) as reader:
        ahead = reader.submit(_row_patches, slide, grid, 0, wanted[0], size) if rows else None
        for i in tqdm(range(rows), desc=f"predict {slide.slide_id}", unit="voxel row", disable=not progress):
            patches = ahead.result()
            if i + 1 < rows:
                ahead = reader.submit(_row_patches, slide, grid, i + 1, wanted[i + 1], size)
            if len(patches):
                pending.append((patches, i * cols + wanted[i]))
                flush(final=False)
        flush(final=True)
    return maps


def _check_settings(slides: list[str], voxel_um: float, mpp: float, batch_size: int) -> None:
    if not slides:
        raise InputError("SLIDE: none given; expected one or more whole-slide files or sample folders")
    if not (voxel_um > 0 and math.isfinite(voxel_um)):
        raise InputError(f"--voxel-um {voxel_um}: expected a positive voxel side in µm")
    if not (mpp >= 0 and math.isfinite(mpp)):
        raise InputError(f"--mpp {mpp}: expected a positive number of µm per pixel (0: from the slide)")
    if batch_size < 1:
        raise InputError(f"--batch-size {batch_size}: expected at least 1")


def _unique_ids(slides: list[str]) -> list[str]:
    from histoxai.slides import slide_id

    ids, seen = [], {}
    for uri in slides:
        base = slide_id(uri)
        seen[base] = seen.get(base, 0) + 1
        ids.append(base if seen[base] == 1 else f"{base}-{seen[base]}")
    return ids


def predict_slides(slides: list[str], model: str, out: str, *, voxel_um: float = DEFAULTS.voxel_um,
                   mpp: float = DEFAULTS.mpp, batch_size: int = DEFAULTS.batch_size, overwrite: bool = False,
                   progress: bool = True, registry: str = "") -> dict:
    """Predict maps for each slide into OUT/<slide id>/ (local or gs://); returns what prediction.json
    holds. Every slide is checked (it opens, has a pixel size or a grid) before the model loads; any
    InputError leaves OUT as it was."""
    _check_settings(list(slides), voxel_um, mpp, batch_size)
    for uri in slides:  # fail on a wrong slide before TensorFlow loads (gs:// slides: no second download)
        if storage.is_gcs(uri):
            continue
        with open_slide(uri, mpp=mpp) as slide:
            slide.grid(voxel_um)
    settings = {"model": model, "registry": registry or None, "voxel_um": voxel_um, "mpp": mpp or None,
                "batch_size": batch_size}
    started = time.perf_counter()
    results = []
    with outputs.staged(out, overwrite=overwrite, commit_last=written.PREDICTION_INFO) as stage, \
            contextlib.ExitStack() as stack:
        predictor = open_predictor(model, stack, registry)
        for uri, name in zip(slides, _unique_ids(list(slides)), strict=True):
            with open_slide(uri, mpp=mpp) as slide:
                slide_started = time.perf_counter()
                grid = slide.grid(voxel_um)
                found = find_tissue(slide, grid)
                if not found.voxels.any():
                    raise InputError(f"{uri}: no tissue voxel ({found.source}); expected stained tissue "
                                     "covering at least one voxel")
                maps = predict_grid(slide, grid, found.voxels, predictor, batch_size=batch_size,
                                    progress=progress)
                seconds = time.perf_counter() - slide_started
                results.append(written.write_slide(stage / name, slide, grid, found, maps, predictor,
                                                   settings, seconds))
        info = {"settings": settings, "model": {"source": model, "targets": list(predictor.targets),
                                                "input_size": predictor.image_size, **predictor.version},
                "slides": results, "seconds": round(time.perf_counter() - started, 3)}
        written.write_json(stage / written.PREDICTION_INFO, info)
    return info
