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
    if not storage.is_gcs(uri) and os.path.isfile(uri) and not uri.endswith(".parquet"):
        raise InputError(f"{uri}: a file, not a manifest; expected {artifacts.MANIFEST} (or a .parquet "
                         "manifest) or a folder holding one, as `histoxai ingest` writes")
    if not uri.endswith(".parquet"):
        uri = storage.join(uri, artifacts.MANIFEST)
    if not storage.is_gcs(uri) and os.path.isdir(uri):
        raise InputError(f"{uri}: a folder; expected a Parquet manifest file")
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
    frame.attrs["uri"] = uri  # the file read, for messages that name it
    return frame


def _column_problem(column: str, values: pd.Series) -> str | None:
    """What is wrong with one manifest column's values (None: nothing), as 'expected ...'."""
    from histoxai.shards import ENCODINGS

    types = pd.api.types
    if column in ("row", "col", "index", "offset", "patch_size"):
        if not types.is_integer_dtype(values) or types.is_bool_dtype(values):
            return f"is {values.dtype}; expected integers"
        low = 1 if column == "patch_size" else 0
        if (values < low).any():
            return f"holds {int(values.min())}; expected integers >= {low}"
    elif column in TARGETS + FEATURES:
        if not types.is_numeric_dtype(values) or types.is_bool_dtype(values):
            return f"is {values.dtype}; expected numbers"
    elif column == "encoding":
        unknown = sorted(set(values.astype(str)) - set(ENCODINGS))
        if unknown:
            return f"holds {unknown}; expected one of {list(ENCODINGS)}"
    elif not values.map(lambda v: isinstance(v, str) and v != "").all():
        return f"is {values.dtype} with empty or non-text values; expected text"
    return None


def check_columns(frame: pd.DataFrame, uri: str, columns=COLUMNS) -> None:
    """Every column ingest writes is there with its type: else one InputError naming the file and column."""
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        more = f" (and {missing[1:]})" if missing[1:] else ""
        raise InputError(f"{uri}: manifest lacks column {missing[0]!r}{more}; expected the columns "
                         f"`histoxai ingest` writes: {', '.join(columns)}")
    for column in columns:
        problem = _column_problem(column, frame[column])
        if problem:
            raise InputError(f"{uri}: manifest column {column!r} {problem} (as `histoxai ingest` writes)")


def write_manifest(frame: pd.DataFrame, uri: str | os.PathLike) -> None:
    buf = io.BytesIO()
    frame.to_parquet(buf, index=False)
    storage.write_bytes(uri, buf.getvalue())
