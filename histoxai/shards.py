"""Patch image shards: TFRecord files whose records are encoded images, one patch per record.

Written without TensorFlow (ingestion runs in the slim image). Read one record at a time by byte offset:
tf.data's parallel calls read local shards so (`read_local_record`), the app and the explain step local
or gs:// ones (`read_record`). The files stay TFRecords, which TensorFlow's own reader also reads.
A record holds only the encoded image; labels and keys live in the Parquet manifest, which gives
each patch's shard, record index and byte offset.

Encodings (the manifest names each patch's): 'zlib' (the default) is the bare pixel buffer as a zlib
stream (RFC 1950), deflated by ISA-L (the `isal` package) at its level 2 and inflated by it too: lossless,
and any zlib inflater reads it; per patch ISA-L deflates about three times as fast as zlib's own level 1,
for about 5 % more bytes, and inflates faster, releasing the GIL, so decoding threads use every core
(docs/steps.md, shard format; `make bench` measures both).
'png' and 'jpeg' are image files (JPEG is lossy); 'raw' is the bare buffer, fastest and largest.
"""

from __future__ import annotations

import io
import os
import struct

import numpy as np
from isal import isal_zlib

ENCODINGS = ("zlib", "png", "jpeg", "raw")
ZLIB_LEVEL = 2  # ISA-L's levels run 0-3; 2 is as fast as 0 and 1 here and the smallest of the three
_MASK_DELTA = 0xA282EAD8


def _masked_crc(data: bytes) -> int:
    import google_crc32c

    crc = google_crc32c.value(data)
    return (((crc >> 15) | (crc << 17)) + _MASK_DELTA) & 0xFFFFFFFF


def encode_image(image: np.ndarray, encoding: str, jpeg_quality: int = 95) -> bytes:
    """uint8 H x W x 3 -> bytes in the given encoding (see the module's docstring)."""
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"expected uint8 HxWx3 image, got {image.dtype} {image.shape}")
    if encoding == "raw":
        return np.ascontiguousarray(image).tobytes()
    if encoding == "zlib":
        return isal_zlib.compress(np.ascontiguousarray(image).tobytes(), ZLIB_LEVEL)
    from PIL import Image

    buf = io.BytesIO()
    if encoding == "png":
        Image.fromarray(image).save(buf, format="PNG", compress_level=1)
    elif encoding == "jpeg":
        Image.fromarray(image).save(buf, format="JPEG", quality=jpeg_quality, subsampling=0)
    else:
        raise ValueError(f"unknown encoding {encoding!r}; expected one of {ENCODINGS}")
    return buf.getvalue()


def inflate(payload: bytes) -> bytes:
    """A 'zlib' record's pixel bytes; ValueError (naming zlib) when the payload is not a zlib stream."""
    try:
        return isal_zlib.decompress(payload)
    except isal_zlib.error as err:
        raise ValueError(f"zlib record does not inflate: {err}") from None


def decode_image(data: bytes, encoding: str, size: int) -> np.ndarray:
    """Inverse of encode_image (NumPy/Pillow; TensorFlow readers use tf.io instead)."""
    if encoding == "raw":
        return np.frombuffer(data, dtype=np.uint8).reshape(size, size, 3)
    if encoding == "zlib":
        return np.frombuffer(inflate(data), dtype=np.uint8).reshape(size, size, 3)
    from PIL import Image

    return np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))


class ShardWriter:
    """Appends records to one TFRecord file; `append` returns (record index, byte offset)."""

    def __init__(self, path: str | os.PathLike):
        self._fh = open(path, "wb")
        self._count = 0

    def append(self, payload: bytes) -> tuple[int, int]:
        offset = self._fh.tell()
        length = struct.pack("<Q", len(payload))
        self._fh.write(length)
        self._fh.write(struct.pack("<I", _masked_crc(length)))
        self._fh.write(payload)
        self._fh.write(struct.pack("<I", _masked_crc(payload)))
        index = self._count
        self._count += 1
        return index, offset

    @property
    def count(self) -> int:
        return self._count

    def close(self) -> None:
        self._fh.close()

    def __enter__(self) -> ShardWriter:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def parse_record(blob: bytes, uri: str = "<record>") -> bytes:
    """The payload of one framed record (the bytes from its offset on), CRC-checked."""
    (length,) = struct.unpack("<Q", blob[:8])
    payload = blob[12:12 + length]
    stored_crc = blob[12 + length:16 + length]
    intact = len(payload) == length and len(stored_crc) == 4
    if not intact or struct.unpack("<I", stored_crc)[0] != _masked_crc(payload):
        raise ValueError(f"{uri}: corrupt record (length or checksum mismatch)")
    return payload


def read_record(uri: str, offset: int) -> bytes:
    """One record's payload by byte offset, local or gs:// (two small reads)."""
    from histoxai import storage

    head = storage.read_range(uri, offset, 8)
    (length,) = struct.unpack("<Q", head)
    return parse_record(head + storage.read_range(uri, offset + 8, length + 8), uri)


def read_local_record(path: str | bytes, offset: int) -> bytes:
    """One record's payload from a local shard by byte offset, both checksums verified (three preads:
    no read-ahead, so tf.data's parallel calls read records in any order). ValueError when the record
    is not intact there; a length field that points past the file's end is refused before it is read."""
    if offset < 0:  # os.pread would raise OSError: a manifest's offset is data, not a programming error
        raise ValueError(f"record offset {offset} of {os.fsdecode(path)} is negative")
    fd = os.open(path, os.O_RDONLY)
    try:
        head = os.pread(fd, 12, offset)
        if len(head) < 12 or struct.unpack("<I", head[8:])[0] != _masked_crc(head[:8]):
            raise ValueError(f"record framing at byte {offset} of {os.fsdecode(path)} fails its checksum")
        (length,) = struct.unpack("<Q", head[:8])
        if offset + 16 + length > os.fstat(fd).st_size:
            raise ValueError(f"record at byte {offset} of {os.fsdecode(path)} runs past the shard's end")
        payload = os.pread(fd, length, offset + 12)
        stored = os.pread(fd, 4, offset + 12 + length)
    finally:
        os.close(fd)
    if struct.unpack("<I", stored)[0] != _masked_crc(payload):
        raise ValueError(f"record data at byte {offset} of {os.fsdecode(path)} fails its checksum")
    return payload


def iter_records(path: str | os.PathLike):
    """All payloads of a local shard, in order."""
    with open(path, "rb") as fh:
        size = os.fstat(fh.fileno()).st_size
        while head := fh.read(8):
            (length,) = struct.unpack("<Q", head)
            left = size - fh.tell()  # a forged length is not allocated: parse_record finds it short
            yield parse_record(head + fh.read(min(length + 8, left)), str(path))


def find_damage(path: str | os.PathLike, count: int, offsets: dict[int, int] | None = None
                ) -> tuple[int, int, str] | None:
    """The first damaged record among a local shard's first `count` records, read as TFRecordDataset
    reads them: (record index, byte offset, what is wrong), or None when they are intact (and start at
    the byte offsets the manifest gives, where `offsets` maps record index -> offset)."""
    offsets = offsets or {}
    offset = 0
    with open(path, "rb") as fh:
        size = os.fstat(fh.fileno()).st_size
        for index in range(count):
            if index in offsets and offsets[index] != offset:
                return index, offset, f"it starts at byte {offset}, the manifest says {offsets[index]}"
            head = fh.read(12)
            if len(head) < 12:
                return index, offset, f"the shard ends at byte {offset}, before its record {count - 1}"
            if struct.unpack("<I", head[8:])[0] != _masked_crc(head[:8]):
                return index, offset, "its length field fails its checksum"
            (length,) = struct.unpack("<Q", head[:8])
            if offset + 16 + length > size:  # checked before reading: a forged length is not allocated
                return index, offset, "the shard ends inside this record (truncated)"
            body = fh.read(length + 4)
            if len(body) < length + 4:
                return index, offset, "the shard ends inside this record (truncated)"
            if struct.unpack("<I", body[length:])[0] != _masked_crc(body[:length]):
                return index, offset, "its data fails its checksum"
            offset += 16 + length
    return None


def undecodable(payload: bytes, encoding: str, size: int) -> str | None:
    """Why a record's payload is not a size x size patch in `encoding`, or None when it is one."""
    try:
        image = decode_image(payload, encoding, size)
    except Exception as err:  # Pillow raises several types for damaged data
        return f"not a readable {encoding} image ({type(err).__name__})"
    if image.shape != (size, size, 3):
        return f"a {image.shape[1]} x {image.shape[0]} image, not {size} x {size}"
    return None
