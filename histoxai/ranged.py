"""A read-only file object over a gs:// object (or a local file), read by byte ranges through a small
block cache: h5py opens a remote MATLAB v7.3 file through it and reads headers, shapes and small
variables without downloading the slide."""

from __future__ import annotations

import io
from collections import OrderedDict

from histoxai import storage
from histoxai.errors import InputError

BLOCK = 1 << 20  # bytes per ranged request
CACHED_BLOCKS = 16  # at most 16 MiB held


class RangedFile(io.RawIOBase):
    """Seekable reads of `uri`; on gs:// every read is pinned to the generation seen at open, so an
    object replaced while it is read fails instead of mixing two versions."""

    def __init__(self, uri: str):
        super().__init__()
        self.name = str(uri)
        self.size, self._generation = storage.stat(self.name)
        if self.size is None:
            raise InputError(f"{self.name}: file not found")
        self._position = 0
        self._blocks: OrderedDict[int, bytes] = OrderedDict()

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._position

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._position, io.SEEK_END: self.size}[whence]
        self._position = max(0, base + offset)
        return self._position

    def _block(self, index: int) -> bytes:
        if index in self._blocks:
            self._blocks.move_to_end(index)
            return self._blocks[index]
        start = index * BLOCK
        data = storage.read_range(self.name, start, min(BLOCK, self.size - start),
                                  generation=self._generation)
        self._blocks[index] = data
        if len(self._blocks) > CACHED_BLOCKS:
            self._blocks.popitem(last=False)
        return data

    def readinto(self, buffer) -> int:
        view = memoryview(buffer).cast("B")
        done = 0
        while done < len(view) and self._position < self.size:
            index, offset = divmod(self._position, BLOCK)
            block = self._block(index)
            take = min(len(view) - done, len(block) - offset)
            view[done:done + take] = block[offset:offset + take]
            done += take
            self._position += take
        return done
