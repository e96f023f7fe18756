"""Named storage layouts (chunk shape, compression) of v7.3 MAT-file images and a copier between them.

- rows: the phantom's own layout, uncompressed chunks one band tall (ingestion's row-by-row order).
- matlab: what `save -v7.3` does by default. MATLAB compresses with deflate (level 3, as h5dump shows
  on MATLAB-written files) and picks chunk shapes itself; MathWorks does not document the rule and
  users report small chunks chosen without regard to how the data is read. We emulate it with HDF5's
  usual automatic chunking (h5py's heuristic: a few tens to hundreds of KiB, e.g. 1 x 225 x 450 for a
  14,400 px RGB slide), which is no friendlier to row bands than MATLAB's.
- tiles: deflate, 256 x 256 px tiles with all channels. - strips: deflate, 64 px wide strips, one
  channel, spanning the whole height (the worst case for row bands). - contiguous: no chunks at all.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

LAYOUTS = ("rows", "matlab", "tiles", "strips", "contiguous")
PHANTOM_LAYOUTS = ("rows", "matlab")  # what `histoxai phantom --mat-layout` offers
DEFAULT_PHANTOM_LAYOUT = "rows"
MATLAB_DEFLATE = 3
ROWS_PER_CHUNK = 64  # `rows` when no band height is given
MIN_BYTES = 4096  # smaller variables are copied as they are
_SLAB = 128 * 2**20  # bytes copied per write while re-chunking


def storage_options(layout: str, shape: tuple[int, ...], itemsize: int,
                    rows_per_chunk: int | None = None) -> dict:
    """h5py create_dataset options for an array of HDF5 `shape` (channels, W, H) or (W, H)."""
    if layout not in LAYOUTS:
        raise ValueError(f"layout {layout!r}: expected one of {', '.join(LAYOUTS)}")
    gzip = {"compression": "gzip", "compression_opts": MATLAB_DEFLATE}
    lead, (width, height) = tuple(shape[:-2]), shape[-2:]
    if layout == "contiguous":
        return {"chunks": None}
    if layout == "rows":
        columns = -(-width // -(-width // 4096))  # equal chunks, at most 4096 px wide
        return {"chunks": (*lead, columns, min(height, rows_per_chunk or ROWS_PER_CHUNK))}
    if layout == "matlab":
        from h5py._hl.filters import guess_chunk

        return {"chunks": guess_chunk(tuple(shape), None, itemsize), **gzip}
    if layout == "tiles":
        return {"chunks": (*lead, min(width, 256), min(height, 256)), **gzip}
    return {"chunks": (*(1 for _ in lead), min(width, 64), height), **gzip}  # strips


def _slabs(shape: tuple[int, ...], chunks: tuple[int, ...] | None, itemsize: int):
    """Index tuples covering the array in slabs of whole chunks, each at most about _SLAB bytes."""
    width, height = shape[-2:]
    row_bytes = math.prod(shape[:-1]) * itemsize
    if chunks and chunks[-1] * row_bytes <= _SLAB:  # bands of whole chunk rows
        step = chunks[-1] * max(1, _SLAB // (chunks[-1] * row_bytes))
        return [(..., slice(r, min(r + step, height))) for r in range(0, height, step)]
    unit = chunks[-2] if chunks else 1  # else column groups of whole chunk columns, all rows
    column_bytes = math.prod(shape[:-2]) * height * itemsize
    step = unit * max(1, _SLAB // (unit * column_bytes))
    return [(..., slice(x, min(x + step, width)), slice(None)) for x in range(0, width, step)]


def relayout(src: str | os.PathLike, dst: str | os.PathLike, layout: str,
             rows_per_chunk: int | None = None) -> None:
    """Copy v7.3 file `src` to `dst`, storing its 2-D and 3-D arrays (>= MIN_BYTES) in `layout`.

    Everything else (other variables, attributes, MATLAB's 512-byte header) is kept as it is; each new
    chunk is written whole, once.
    """
    import h5py

    with h5py.File(src, "r") as source, \
            h5py.File(dst, "w", userblock_size=512, libver="earliest") as target:
        for name, node in source.items():
            if not hasattr(node, "shape") or node.ndim not in (2, 3) or node.nbytes < MIN_BYTES:
                source.copy(node, target, name=name)
                continue
            options = storage_options(layout, node.shape, node.dtype.itemsize, rows_per_chunk)
            copy = target.create_dataset(name, shape=node.shape, dtype=node.dtype, track_times=False,
                                         **options)
            for key, value in node.attrs.items():
                copy.attrs[key] = value
            for index in _slabs(node.shape, copy.chunks, node.dtype.itemsize):
                copy[index] = node[index]
    with open(src, "rb") as fh:
        header = fh.read(512)
    with open(dst, "r+b") as fh:
        fh.write(header)


def relayout_in_place(path: str | os.PathLike, layout: str, rows_per_chunk: int | None = None) -> None:
    """`relayout` a file onto itself (through a temporary file beside it, renamed over it)."""
    path = Path(path)
    temporary = path.with_name(f".{path.name}.relayout")
    try:
        relayout(path, temporary, layout, rows_per_chunk)
        os.replace(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)
