"""Patch image shards: TFRecord files whose records are encoded images, one patch per record.

Written without TensorFlow (ingestion runs in the slim image); read by `tf.data.TFRecordDataset`
for training, and one record at a time by byte offset (local or gs://) for the app and explain step.
A record holds only the encoded image; labels and keys live in the Parquet manifest, which gives
each patch's shard, record index and byte offset.
"""

from __future__ import annotations

import io
import os
import struct

import numpy as np

ENCODINGS = ("png", "jpeg", "raw")
_MASK_DELTA = 0xA282EAD8


def _masked_crc(data: bytes) -> int:
    import google_crc32c

    crc = google_crc32c.value(data)
    return (((crc >> 15) | (crc << 17)) + _MASK_DELTA) & 0xFFFFFFFF


def encode_image(image: np.ndarray, encoding: str, jpeg_quality: int = 95) -> bytes:
    """uint8 H x W x 3 -> bytes in the given encoding ('raw' is the bare pixel buffer)."""
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"expected uint8 HxWx3 image, got {image.dtype} {image.shape}")
    if encoding == "raw":
        return np.ascontiguousarray(image).tobytes()
    from PIL import Image

    buf = io.BytesIO()
    if encoding == "png":
        Image.fromarray(image).save(buf, format="PNG", compress_level=1)
    elif encoding == "jpeg":
        Image.fromarray(image).save(buf, format="JPEG", quality=jpeg_quality, subsampling=0)
    else:
        raise ValueError(f"unknown encoding {encoding!r}; expected one of {ENCODINGS}")
    return buf.getvalue()


def decode_image(data: bytes, encoding: str, size: int) -> np.ndarray:
    """Inverse of encode_image (NumPy/Pillow; TensorFlow readers use tf.io instead)."""
    if encoding == "raw":
        return np.frombuffer(data, dtype=np.uint8).reshape(size, size, 3)
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


def iter_records(path: str | os.PathLike):
    """All payloads of a local shard, in order."""
    with open(path, "rb") as fh:
        while head := fh.read(8):
            (length,) = struct.unpack("<Q", head)
            yield parse_record(head + fh.read(length + 8), str(path))
