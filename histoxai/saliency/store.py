"""Saliency map storage: raw maps as float16 in chunk files plus a Parquet table, read one map at a time.

An explain output folder (local or gs://) holds:
  maps.parquet        one row per map (patch x target x method x setting x score): the patch, y, ŷ,
                      Δ, rΔ, map statistics and where the map lies (the LOCATION columns)
  maps/part-00000.f16 maps back to back, little-endian float16, row-major (zlib saved only 5-25 %
                      on real maps, so they are not compressed)
A map is read with one ranged read of its bytes (`storage.read_range`), so the review app can show any
patch without fetching a whole chunk. Readers use `open_maps(run_uri)`:

    maps = open_maps("gs://bucket/run/explain")
    row = maps.table.query("target == 'CC' and method == 'smoothgrad'").index[0]
    raw = maps.read(row)          # float32 (H, W), raw values: not stretched

Maps are stored raw, each scaled by a power of two 2**map_exponent chosen so that its largest
magnitude sits in [2**14, 2**15): float16 alone would flush gradients of order 1e-6 (common for
SmoothGrad of MD) to zero or to a few bits. Scaling by a power of two is exact, so `read` returns
float16 precision (relative error <= 2**-11) at any magnitude, as float32. Display normalisation is
a separate, explicit step (`minmax`, `display_range` + `normalize`), never applied to stored maps.
"""

from __future__ import annotations

import io
import math
import os
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from histoxai import artifacts, storage
from histoxai.errors import InputError

if TYPE_CHECKING:
    import pandas as pd

MAPS_DIR = "maps"
CODEC = "f16le"
LOCATION = ("map_file", "map_offset", "map_nbytes", "map_height", "map_width", "map_exponent", "map_codec")
TOP_EXPONENT = 14  # the largest |value| of a stored map lies in [2**14, 2**15) (float16 max ~ 2**16)


def map_exponent(raw: np.ndarray) -> int:
    """The power of two that scales a map's largest finite magnitude into [2**14, 2**15); 0 if none."""
    finite = np.abs(raw[np.isfinite(raw)])
    peak = float(finite.max()) if finite.size else 0.0
    return math.frexp(peak)[1] - 1 - TOP_EXPONENT if peak > 0 else 0


def encode_map(raw: np.ndarray) -> tuple[bytes, int]:
    """float32 map -> (float16 bytes, exponent)."""
    raw = np.asarray(raw, np.float32)
    exponent = map_exponent(raw)
    return np.ldexp(raw, -exponent).astype("<f2").tobytes(), exponent


def decode_map(data: bytes, height: int, width: int, exponent: int) -> np.ndarray:
    values = np.frombuffer(data, dtype="<f2").reshape(height, width)
    return np.ldexp(values.astype(np.float32), exponent)


class MapWriter:
    """Appends maps to maps/part-NNNNN.f16 files under a local folder (a new file past chunk_bytes)."""

    def __init__(self, folder: str | os.PathLike, *, chunk_bytes: int = 64 << 20):
        self.folder = Path(folder) / MAPS_DIR
        self.folder.mkdir(parents=True, exist_ok=True)
        self.chunk_bytes = chunk_bytes
        self._part = -1
        self._fh = None
        self._name = ""

    def append(self, raw: np.ndarray) -> dict:
        """Store one (H, W) map; returns its LOCATION columns."""
        if raw.ndim != 2:
            raise ValueError(f"expected a 2-D map, got shape {raw.shape}")
        data, exponent = encode_map(raw)
        if self._fh is None or self._fh.tell() + len(data) > self.chunk_bytes and self._fh.tell():
            self._open_next()
        offset = self._fh.tell()
        self._fh.write(data)
        return {"map_file": self._name, "map_offset": offset, "map_nbytes": len(data),
                "map_height": raw.shape[0], "map_width": raw.shape[1], "map_exponent": exponent,
                "map_codec": CODEC}

    def _open_next(self) -> None:
        self.close()
        self._part += 1
        self._name = f"{MAPS_DIR}/part-{self._part:05d}.f16"
        self._fh = open(self.folder.parent / self._name, "wb")

    def close(self) -> None:
        if self._fh is not None:
            self._fh.close()
            self._fh = None

    def __enter__(self) -> MapWriter:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def write_table(frame, path: str | os.PathLike) -> None:
    buf = io.BytesIO()
    frame.to_parquet(buf, index=False)
    storage.write_bytes(path, buf.getvalue())


def read_table(run_uri: str) -> pd.DataFrame:
    """The maps table of an explain output folder, indexed by map_id."""

    uri = storage.join(run_uri, artifacts.MAPS_TABLE)
    frame = storage.read_parquet(uri, "the maps table of `histoxai explain`")
    missing = [c for c in ("map_id", *LOCATION) if c not in frame.columns]
    if missing:
        raise InputError(f"{uri}: lacks columns {missing}; expected the maps table of `histoxai explain`")
    return frame.set_index("map_id", drop=False).rename_axis(None)


class MapReader:
    """The maps of one explain output: `.table` (DataFrame indexed by map_id) and `.read(map_id)`."""

    def __init__(self, run_uri: str, table):
        self.run_uri = str(run_uri).rstrip("/")
        self.table = table

    def read(self, map_id: int) -> np.ndarray:
        """One raw map, float32 (H, W), exactly as stored (float16 precision); one ranged read."""
        try:
            row = self.table.loc[int(map_id)]
        except KeyError as err:
            raise InputError(f"{self.run_uri}: no map with map_id {map_id}") from err
        uri = storage.join(self.run_uri, row["map_file"])
        data = storage.read_range(uri, int(row["map_offset"]), int(row["map_nbytes"]))
        try:
            return decode_map(data, int(row["map_height"]), int(row["map_width"]), int(row["map_exponent"]))
        except ValueError as err:
            raise InputError(f"{uri}: map {map_id} at byte {row['map_offset']} is corrupt ({err})") from err

    def read_many(self, map_ids) -> np.ndarray:
        """Several maps of one size, stacked (N, H, W)."""
        return np.stack([self.read(i) for i in map_ids])


def open_maps(run_uri: str | os.PathLike) -> MapReader:
    """A reader for the maps of an explain output folder, local or gs://."""
    run_uri = str(run_uri)
    return MapReader(run_uri, read_table(run_uri))


def resize_maps(maps: np.ndarray, size: int | None, method: str = "area") -> np.ndarray:
    """(N, H, W) maps resized to (N, size, size) ('area' to store downsampled, 'bilinear' to upsample)."""
    if size is None or size == maps.shape[1]:
        return maps
    import tensorflow as tf

    resized = tf.image.resize(np.asarray(maps, np.float32)[..., None], (size, size), method=method)
    return resized.numpy()[..., 0]


# ---- display normalisation: explicit, never baked into stored maps ----

def minmax(raw: np.ndarray) -> np.ndarray:
    """Per-map min-max to [0, 1], as tf-keras-vis and the thesis did (stretches weak maps to full range);
    a constant map becomes 0, NaN stays NaN."""
    finite = np.asarray(raw, np.float32)[np.isfinite(raw)]
    if not finite.size:
        return np.asarray(raw, np.float32).copy()
    return normalize(raw, (float(finite.min()), float(finite.max())))


def display_range(maps, *, percentiles: tuple[float, float] = (1.0, 99.0)) -> tuple[float, float]:
    """A range shared by many maps (e.g. one method and target over the test set): the given
    percentiles of all their finite values. `maps` is an array (N, H, W) or an iterable of maps."""
    values = np.concatenate([np.asarray(m, np.float32).ravel() for m in maps])
    values = values[np.isfinite(values)]
    if not values.size:
        return 0.0, 0.0
    low, high = np.percentile(values, percentiles)
    return float(low), float(high)


def normalize(raw: np.ndarray, value_range: tuple[float, float]) -> np.ndarray:
    """Map values to [0, 1] by a given (low, high), clipped; NaN stays NaN."""
    low, high = value_range
    span = high - low
    out = (np.asarray(raw, np.float32) - low) / span if span > 0 else np.zeros_like(raw, np.float32)
    return np.clip(out, 0.0, 1.0)
