"""What the predict step writes per slide: maps (.npz, .png, tiled .tif), the voxel table, the tissue
mask, a summary page and the settings.

OUT/<slide id>/
  <T>.npz              `prediction`: float32 map on the voxel grid, NaN outside tissue; `block_px`, `mpp`
  <T>.png              the map with a colour bar (histoxai.plots.map_figure)
  <T>.tif              the map in the slide's geometry: each voxel's value over its whole block, float32,
                       tiled 256 x 256, zlib with the floating-point predictor (constant blocks shrink to
                       almost nothing), resolution tags in µm per pixel; written tile row by tile row.
                       Slides over TIFF_MAX_PIXELS are written at an integer downsample instead, recorded
                       in the resolution tags and the ImageDescription (`downsample`)
  predictions.parquet  row, col, x, y (the block's top-left in level-0 pixels), one column per target
  tissue.png           the tissue mask at low resolution (white = tissue)
  summary.md, .html    slide, size, pixel size, grid, model, counts, min/mean/max per target, the maps
  prediction.json      settings, grid, counts, per-target statistics
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np

from histoxai import plots, sections
from histoxai.slides import Grid, Slide

PREDICTION_INFO = "prediction.json"
PREDICTIONS_TABLE, TISSUE_IMAGE = "predictions.parquet", "tissue.png"
SUMMARY_MARKDOWN, SUMMARY_HTML = "summary.md", "summary.html"
TIFF_TILE = 256
TIFF_MAX_PIXELS = 1 << 32  # about 65,000 px square: beyond this the full-size map takes too long to write
UNITS = {"MD": "MD (µm²/ms)", "FA": "FA", "FAIP": "in-plane FA", "CC": "nuclei per voxel",
         "CD": "cell density (relative)", "SA": "structure anisotropy"}


def write_json(path: Path, data: dict) -> None:
    path.write_text(json.dumps(data, indent=2, allow_nan=False) + "\n")


def tiff_downsample(size: tuple[int, int]) -> int:
    return max(1, math.ceil(math.sqrt(size[0] * size[1] / TIFF_MAX_PIXELS)))


def write_map_tiff(path: Path, values: np.ndarray, slide: Slide, grid: Grid) -> int:
    """The voxel map painted over each block in the slide's geometry (or a downsample of it); returns
    the downsample. Tiles are made one at a time, so memory stays at one tile."""
    import tifffile

    factor = tiff_downsample(slide.size)
    height, width = -(-slide.size[0] // factor), -(-slide.size[1] // factor)
    (rows, cols), (bh, bw) = grid.shape, grid.block
    padded = np.full((rows + 1, cols + 1), np.nan, np.float32)  # the last row/column: beyond the grid
    padded[:rows, :cols] = values

    def tiles():
        for top in range(0, height, TIFF_TILE):
            i = np.minimum((np.arange(top, top + TIFF_TILE) * factor) // bh, rows)
            for left in range(0, width, TIFF_TILE):
                j = np.minimum((np.arange(left, left + TIFF_TILE) * factor) // bw, cols)
                yield padded[np.ix_(i, j)]

    description = json.dumps({"slide": slide.uri, "downsample": factor, "block_px": list(grid.block)})
    options = {}
    if slide.mpp is not None:  # pixels per centimetre, as TIFF records it
        options = {"resolution": (1e4 / (slide.mpp[1] * factor), 1e4 / (slide.mpp[0] * factor)),
                   "resolutionunit": "CENTIMETER"}
    tifffile.imwrite(path, tiles(), shape=(height, width), dtype=np.float32, tile=(TIFF_TILE, TIFF_TILE),
                     compression="zlib", predictor=True, description=description, metadata=None, **options)
    return factor


def _stats(values: np.ndarray) -> dict:
    finite = values[np.isfinite(values)]
    if not finite.size:
        return {"min": None, "mean": None, "max": None}
    return {"min": float(finite.min()), "mean": float(finite.mean()), "max": float(finite.max())}


def _table(maps: dict[str, np.ndarray], voxels: np.ndarray, grid: Grid):
    import pandas as pd

    rows, cols = np.nonzero(voxels)
    frame = pd.DataFrame({"row": rows.astype(np.int64), "col": cols.astype(np.int64),
                          "x": (cols * grid.block[1]).astype(np.int64),
                          "y": (rows * grid.block[0]).astype(np.int64)})
    for target, values in maps.items():
        frame[target] = values[rows, cols].astype(np.float32)
    return frame


def write_slide(folder: Path, slide: Slide, grid: Grid, found, maps: dict[str, np.ndarray], predictor,
                settings: dict, seconds: float) -> dict:
    """Every output of one slide into `folder`; returns the slide's entry of prediction.json."""
    from PIL import Image

    folder.mkdir(parents=True)
    downsample = 1
    for target, values in maps.items():
        np.savez_compressed(folder / f"{target}.npz", prediction=values, block_px=np.array(grid.block),
                            mpp=np.array(slide.mpp if slide.mpp else (np.nan, np.nan)))
        (folder / f"{target}.png").write_bytes(
            plots.predicted_map(values, f"{slide.slide_id}: predicted {target}", UNITS.get(target, target)))
        downsample = write_map_tiff(folder / f"{target}.tif", values, slide, grid)
    _table(maps, found.voxels, grid).to_parquet(folder / PREDICTIONS_TABLE, index=False)
    Image.fromarray(found.image.astype(np.uint8) * 255).save(folder / TISSUE_IMAGE)
    info = {
        "slide": slide.uri, "id": folder.name, "kind": slide.kind, "size_px": list(slide.size),
        "mpp": list(slide.mpp) if slide.mpp else None, "mpp_source": slide.mpp_source,
        "grid": list(grid.shape), "block_px": list(grid.block), "grid_source": grid.source,
        "voxel_um": ([round(b * m, 3) for b, m in zip(grid.block, slide.mpp, strict=True)]
                     if slide.mpp else None),
        "tissue_source": found.source, "voxels": int(found.voxels.size),
        "predicted": int(found.voxels.sum()), "tiff_downsample": downsample,
        "targets": {t: _stats(v) for t, v in maps.items()}, "seconds": round(seconds, 3),
        "patches_per_s": round(int(found.voxels.sum()) / seconds, 1) if seconds > 0 else None,
    }
    write_json(folder / PREDICTION_INFO, {**info, "settings": settings,
                                          "model": {"source": predictor.source, **predictor.version}})
    parts = _summary(info, predictor)
    (folder / SUMMARY_MARKDOWN).write_text(sections.render_markdown(parts))
    (folder / SUMMARY_HTML).write_text(sections.render_html(parts, f"Prediction: {folder.name}", folder))
    return info


def _summary(info: dict, predictor) -> list[tuple[str, object]]:
    import pandas as pd

    mpp = (f"{info['mpp'][1]:g} x {info['mpp'][0]:g} µm/px (x, y; {info['mpp_source']})" if info["mpp"]
           else "unknown (the grid comes from MR.mat)")
    voxel = f"{info['voxel_um'][1]:g} x {info['voxel_um'][0]:g} µm" if info["voxel_um"] else "unknown"
    facts = [
        f"slide: {info['slide']} ({info['kind']})",
        f"size: {info['size_px'][1]} x {info['size_px'][0]} px (width x height); pixel size: {mpp}",
        f"grid: {info['grid'][0]} x {info['grid'][1]} voxels (from {info['grid_source']}) of "
        f"{info['block_px'][0]} x {info['block_px'][1]} px; voxel: {voxel}",
        f"model: {predictor.source}; input {predictor.image_size} px; targets {', '.join(predictor.targets)}",
        f"tissue ({info['tissue_source']}): {info['predicted']} of {info['voxels']} voxels predicted",
        f"time: {info['seconds']:g} s ({info['patches_per_s']} patches/s, read and predicted)",
    ]
    table = pd.DataFrame([{"target": t, **{k: (f"{v:.4g}" if v is not None else "n/a") for k, v in s.items()}}
                          for t, s in info["targets"].items()])
    parts = [("h1", f"Prediction: {info['id']}"), ("list", facts), ("h2", "Predicted values (tissue voxels)"),
             ("table", table), ("h2", "Maps")]
    parts += [("image", (f"predicted {t}", f"{t}.png")) for t in info["targets"]]
    parts += [("image", ("tissue mask (white = tissue)", TISSUE_IMAGE))]
    return parts
