"""The patch manifest: one Parquet row per patch, the contract between ingest, split, train and later steps.

Columns written by ingest (one manifest per sample):
  sample (str), row, col (int: the MR voxel), shard (str: shard path relative to the manifest's
  folder), index (int: record number in the shard), offset (int: byte offset of the record),
  encoding (str: png | jpeg | raw), patch_size (int: S of the S x S patch),
  targets MD, FA, FAIP (float, NaN where a sample has no FAIP map), CC (float: nuclei centroids in
  the block), features CD (CC / the sample's max CC), SA (structure anisotropy of the block).
`read_manifest` adds shard_uri (the shard's absolute path or gs:// URI).
Split adds: split (str: train | val | test | heldout | gap).
"""

from __future__ import annotations

import io
import os

import pandas as pd

from histoxai import artifacts, storage
from histoxai.errors import InputError

TARGETS = ("MD", "FA", "FAIP", "CC")
FEATURES = ("CD", "SA")
KEY = ("sample", "row", "col")
LOCATION = ("shard", "index", "offset", "encoding", "patch_size")
COLUMNS = KEY + LOCATION + TARGETS + FEATURES
SPLITS = ("train", "val", "test", "heldout", "gap")


def natural_key(sample: str) -> tuple:
    """Sort sample ids numerically where they are numbers ('2' before '10')."""
    return (0, int(sample), "") if sample.isdigit() else (1, 0, sample)


def read_manifest(uri: str | os.PathLike) -> pd.DataFrame:
    """A manifest (file, or folder holding manifest.parquet), with shard_uri resolved."""
    uri = str(uri)
    if not uri.endswith(".parquet"):
        uri = storage.join(uri, artifacts.MANIFEST)
    frame = storage.read_parquet(uri, "a patch manifest written by `histoxai ingest`")
    missing = [c for c in KEY + LOCATION if c not in frame.columns]
    if missing:
        raise InputError(f"{uri}: manifest lacks columns {missing}; expected the output of `histoxai ingest`")
    if "shard_uri" not in frame.columns:
        base = uri.rsplit("/", 1)[0]
        if not storage.is_gcs(base):
            base = os.path.abspath(base)
        frame["shard_uri"] = [storage.join(base, s) for s in frame["shard"]]
    frame["sample"] = frame["sample"].astype(str)
    return frame


def write_manifest(frame: pd.DataFrame, uri: str | os.PathLike) -> None:
    buf = io.BytesIO()
    frame.to_parquet(buf, index=False)
    storage.write_bytes(uri, buf.getvalue())
