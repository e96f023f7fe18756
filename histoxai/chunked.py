"""Row-band reads of a big HDF5 array that decompress each stored chunk about once, whatever its layout.

A v7.3 slide is stored (3, W, H) in HDF5 order (MATLAB's H x W x 3 reversed), so a band of MATLAB rows
is a slab of the last HDF5 axis. Callers read bands top to bottom; what that costs depends on how the
writer chunked the array:
- chunks short along H (the phantom's voxel-row chunks, HDF5's or MATLAB's small automatic chunks,
  square tiles): `StripCache` reads whole chunk-aligned row strips (one read per strip, so each chunk
  is decompressed once) and keeps the decoded strip that the next band continues into;
- chunks spanning many bands (whole-height strips), a contiguous array (a band there is H-strided, so
  every band would touch the whole file), or any file read through byte ranges (gs://: a 16 MiB block
  cache cannot hold a strip whose chunks lie all over the file): `ScratchRows` decodes each chunk once,
  in file order, into a local unlinked scratch file laid out so that a band is one plain read per
  column group, and serves bands from it with pread (no memmap: its pages would count as resident).
Chunks compressed by deflate alone (MATLAB's and h5py's gzip) are read raw and inflated by a pool of
threads with ISA-L (the `isal` package; it releases the GIL for the whole call, where CPython's zlib
scaled to 1.1x on two threads here), so decompression uses every core instead of HDF5's one thread.
"""

from __future__ import annotations

import contextlib
import itertools
import math
import os
import tempfile
from collections import deque
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor

import numpy as np
from h5py._objects import phil
from isal import isal_zlib

from histoxai.errors import InputError

STRIP_BUDGET = 192 * 2**20  # bytes of decoded rows a StripCache may hold for one chunk strip
SCRATCH_PIECE = 32 * 2**20  # contiguous arrays: bytes copied into the scratch file per read


def _deflate_only(ds) -> bool:
    """Whether every stored chunk is plain deflate (or, when its filter mask says so, stored raw)."""
    if not ds.chunks or ds.compression != "gzip":
        return False
    return ds.id.get_create_plist().get_nfilters() == 1  # no shuffle, checksum or scale-offset filter


def decoded_chunks(ds, origins: list[tuple[int, ...]]) -> Iterator[np.ndarray]:
    """The chunks at `origins` (HDF5 chunk offsets), decoded and clipped to the array, in that order."""
    # Only this thread calls HDF5, even for a dataset's shape or dtype: h5py's HDF5 is not built
    # thread-safe, and such calls from the inflating threads failed at random ("no VOL object wrap
    # context", a double free). h5py serialises its own calls with its lock `phil`, but the h5py pinned
    # here (3.14) runs read_direct_chunk without it (h5py PR 2764 adds it): taken here, so that another
    # thread's h5py call (any other reader's, a collected h5py object's) cannot run inside HDF5 with this
    # read, which then failed or crashed the process (tests/test_chunk_layouts.py)
    chunks, shape, dtype = ds.chunks, ds.shape, ds.dtype

    def extent(origin) -> tuple[slice, ...]:  # edge chunks are stored whole: clip them to the array
        return tuple(slice(0, min(c, n - o)) for c, n, o in zip(chunks, shape, origin, strict=True))

    if not _deflate_only(ds):
        for origin in origins:
            yield ds[tuple(slice(o, o + s.stop) for o, s in zip(origin, extent(origin), strict=True))]
        return

    def inflate(raw: bytes, mask: int, origin) -> np.ndarray:
        # bit 0 of the filter mask set: HDF5 skipped deflate for this chunk
        data = raw if mask & 1 else isal_zlib.decompress(raw)
        return np.frombuffer(data, dtype).reshape(chunks)[extent(origin)]

    def fill(origin) -> Future:  # a chunk never written (MATLAB leaves some) reads as the fill value
        done: Future = Future()
        done.set_result(np.full(tuple(e.stop for e in extent(origin)), ds.fillvalue, dtype))
        return done

    workers = max(1, len(os.sched_getaffinity(0)))
    with ThreadPoolExecutor(workers) as pool:
        pending: deque = deque()
        for origin in origins:
            with phil:
                stored = ds.id.get_chunk_info_by_coord(origin).byte_offset is not None
                if stored:
                    mask, raw = ds.id.read_direct_chunk(origin)  # HDF5 reads the bytes; threads inflate
            pending.append(pool.submit(inflate, raw, mask, origin) if stored else fill(origin))
            if len(pending) > 2 * workers:  # a few chunks in flight: memory stays at a few chunks
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()


def _clamp(start: int, stop: int, height: int) -> tuple[int, int]:
    stop = max(0, min(stop, height))
    return max(0, min(start, stop)), stop


class StripCache:
    """Bands served from decoded, chunk-aligned row strips; rows that the next band shares are kept."""

    strategy = "strips"

    def __init__(self, ds):
        self._ds = ds
        self._rows_per_chunk = ds.chunks[-1]
        self._columns = math.prod(-(-n // c) for n, c in zip(ds.shape[:-1], ds.chunks[:-1], strict=True))
        self._lo = self._hi = 0
        self._block = np.empty(ds.shape[:-1] + (0,), ds.dtype)
        self.chunks_read = 0  # chunks this reader asked HDF5 to decode

    def rows(self, start: int, stop: int) -> np.ndarray:
        start, stop = _clamp(start, stop, self._ds.shape[-1])
        if not (self._lo <= start and stop <= self._hi):
            self._load(start, stop)
        return self._block[..., start - self._lo: stop - self._lo].T

    def _load(self, start: int, stop: int) -> None:
        step, height = self._rows_per_chunk, self._ds.shape[-1]
        lo, hi = start // step * step, min(-(-stop // step) * step, height)
        block = np.empty(self._ds.shape[:-1] + (hi - lo,), self._ds.dtype)
        keep_lo, keep_hi = max(lo, self._lo), min(hi, self._hi)
        pieces = [(lo, hi)]
        if keep_lo < keep_hi:  # decoded rows the new strip shares with the old one: copied, not re-read
            block[..., keep_lo - lo: keep_hi - lo] = self._block[..., keep_lo - self._lo: keep_hi - self._lo]
            pieces = [(lo, keep_lo), (keep_hi, hi)]
        for a, b in pieces:  # both ends chunk-aligned: every chunk read whole, once
            if a < b and _deflate_only(self._ds):
                self._read_deflated(block, lo, a, b)
            elif a < b:
                self._ds.read_direct(block, np.s_[..., a:b], np.s_[..., a - lo: b - lo])
            self.chunks_read += self._columns * -(-(b - a) // step)
        block.flags.writeable = False  # bands are views of it
        self._block, self._lo, self._hi = block, lo, hi

    def _read_deflated(self, block: np.ndarray, lo: int, a: int, b: int) -> None:
        """Rows [a, b) into block (whose row 0 is `lo`), chunks inflated by threads."""
        ds = self._ds
        axes = [range(0, n, c) for n, c in zip(ds.shape[:-1], ds.chunks[:-1], strict=True)]
        origins = [(*lead, r) for lead in itertools.product(*axes) for r in range(a, b, ds.chunks[-1])]
        for origin, data in zip(origins, decoded_chunks(ds, origins), strict=True):
            where = tuple(slice(o, o + n) for o, n in zip(origin[:-1], data.shape[:-1], strict=True))
            block[(*where, slice(origin[-1] - lo, origin[-1] - lo + data.shape[-1]))] = data

    def close(self) -> None:
        self._block = None


class ScratchRows:
    """Bands served from a local copy written once, chunk by chunk in file order.

    Scratch layout: for each column group g (the chunk's columns [x0, x0 + w)) and each channel c, the
    H rows of that group one after another, row-major: a band is one pread per group and channel.
    """

    strategy = "scratch"

    def __init__(self, ds, label: str, folder: str):
        if ds.ndim not in (2, 3):
            raise ValueError(f"expected a 2-D or 3-D array, got {ds.ndim}-D")
        self._ds, self._label, self._folder = ds, label, folder
        self._channels = ds.shape[0] if ds.ndim == 3 else 1
        self._width, self._height = ds.shape[-2], ds.shape[-1]
        self._item = ds.dtype.itemsize
        if ds.chunks:
            self._group = ds.chunks[-2]
        else:  # contiguous: one channel's columns of every row, SCRATCH_PIECE bytes at a time
            self._group = max(1, min(self._width, SCRATCH_PIECE // max(1, self._height * self._item)))
        self._file = None
        self.chunks_read = 0

    def _selections(self) -> list[tuple[int, int, int, int, int, int]]:
        """(c0, c1, x0, x1, r0, r1) of every stored chunk (or contiguous piece), in file order."""
        ds, (width, height) = self._ds, (self._width, self._height)
        if ds.chunks:
            cc = ds.chunks[0] if ds.ndim == 3 else 1
            cw, ch = ds.chunks[-2], ds.chunks[-1]
        else:
            cc, cw, ch = 1, self._group, height
        grid = [(c, x, r) for c in range(0, self._channels, cc) for x in range(0, width, cw)
                for r in range(0, height, ch)]
        if ds.chunks:
            grid.sort(key=self._file_offsets(cc, cw, ch).get)
        return [(c, min(c + cc, self._channels), x, min(x + cw, width), r, min(r + ch, height))
                for c, x, r in grid]

    def _file_offsets(self, cc: int, cw: int, ch: int) -> dict:
        """Chunk origin -> byte offset in the file (chunks never written sort last, index order kept)."""
        offsets = {}

        def visit(info):
            origin = tuple(info.chunk_offset)
            offsets[origin if self._ds.ndim == 3 else (0, *origin)] = info.byte_offset

        with contextlib.suppress(AttributeError, RuntimeError, TypeError):  # older HDF5: index order
            self._ds.id.chunk_iter(visit)
        grid = [(c, x, r) for c in range(0, self._channels, cc) for x in range(0, self._width, cw)
                for r in range(0, self._height, ch)]
        return {key: (offsets.get(key, float("inf")), n) for n, key in enumerate(grid)}

    def _offset(self, x0: int, channel: int, row: int) -> int:
        width = min(self._group, self._width - x0)
        first = x0 * self._channels * self._height + channel * self._height * width
        return (first + row * width) * self._item

    def _build(self) -> None:
        from tqdm import tqdm

        selections = self._selections()
        self._file = tempfile.TemporaryFile(dir=self._folder)  # unlinked at once: gone even if killed
        fd = self._file.fileno()
        if self._ds.chunks:
            origins = [(c0, x0, r0) if self._ds.ndim == 3 else (x0, r0) for c0, _, x0, _, r0, _ in selections]
            pieces = decoded_chunks(self._ds, origins)
        else:  # contiguous: HDF5 reads each piece's bytes once
            pieces = (self._ds[(slice(c0, c1), slice(x0, x1), slice(r0, r1)) if self._ds.ndim == 3
                               else (slice(x0, x1), slice(r0, r1))] for c0, c1, x0, x1, r0, r1 in selections)
        bar = tqdm(zip(selections, pieces, strict=True), total=len(selections), unit="chunk",
                   desc=f"unpacking {self._label}", leave=False, disable=len(selections) < 64)
        for (c0, c1, x0, x1, r0, r1), data in bar:  # HDF5's read errors pass up as they are
            data = data.reshape(c1 - c0, x1 - x0, r1 - r0)
            self.chunks_read += 1
            try:
                for k in range(c1 - c0):
                    os.pwrite(fd, np.ascontiguousarray(data[k].T).data, self._offset(x0, c0 + k, r0))
            except OSError as err:  # only the scratch file's own writes: a full or missing disk
                raise InputError(f"{self._label}: cannot unpack it into scratch space in {self._folder} "
                                 f"({err.strerror}); expected {self._ds.nbytes / 2**30:.1f} GiB free there"
                                 ) from err

    def rows(self, start: int, stop: int) -> np.ndarray:
        start, stop = _clamp(start, stop, self._height)
        if self._file is None:
            self._build()
        n = stop - start
        out = np.empty((n, self._width, self._channels), self._ds.dtype)
        fd = self._file.fileno()
        for x0 in range(0, self._width, self._group):
            width = min(self._group, self._width - x0)
            for c in range(self._channels):
                size = n * width * self._item
                data = os.pread(fd, size, self._offset(x0, c, start))
                if len(data) != size:
                    raise InputError(f"{self._label}: scratch copy is short ({len(data)} of {size} bytes)")
                out[:, x0:x0 + width, c] = np.frombuffer(data, self._ds.dtype).reshape(n, width)
        return out if self._ds.ndim == 3 else out[..., 0]

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None


class DirectRows:
    """Bands read straight through h5py (arrays that are neither 2-D nor 3-D)."""

    strategy = "direct"
    chunks_read = 0

    def __init__(self, ds):
        self._ds = ds

    def rows(self, start: int, stop: int) -> np.ndarray:
        return np.asarray(self._ds[(slice(None),) * (self._ds.ndim - 1) + (slice(start, stop),)]).T

    def close(self) -> None:
        pass


def needs_scratch(ds, *, ranged: bool) -> bool:
    """Whether `band_reader` will serve `ds` from a scratch copy (see the module's docstring)."""
    if ds.ndim not in (2, 3):
        return False
    if ds.chunks and not ranged:
        return ds.chunks[-1] * math.prod(ds.shape[:-1]) * ds.dtype.itemsize > STRIP_BUDGET
    return True


def band_reader(ds, label: str, *, ranged: bool, folder: str | None):
    """The reader that decodes each of `ds`'s chunks about once when read in bands top to bottom.

    `ranged`: the file is read through byte ranges (gs://). `folder`: where a scratch copy goes, when
    `needs_scratch` says one is needed.
    """
    if ds.ndim not in (2, 3):  # not an image: HDF5's own partial reads
        return DirectRows(ds)
    if needs_scratch(ds, ranged=ranged):
        return ScratchRows(ds, label, folder)
    return StripCache(ds)
