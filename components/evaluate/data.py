"""The patches the evaluate step scores: split tables and ingest manifests read into one frame, which
samples took part in training, and each sample's MR grid (for the maps)."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass

import pandas as pd

from histoxai import artifacts, storage
from histoxai.errors import InputError
from histoxai.manifest import KEY, SPLITS, natural_key, read_manifest

TRAINING_SPLITS = ("train", "val", "test", "gap")  # a sample with any of these took part in training


@dataclass
class EvalData:
    """Every patch to score (manifest columns + split), which samples trained, and each sample's MR grid."""

    frame: pd.DataFrame
    samples: list[str]
    training_samples: list[str]
    grids: dict[str, tuple[int, int]]
    grid_notes: dict[str, str]
    inputs: list[str]


def _input_file(uri: str) -> str:
    if uri.endswith(".parquet"):
        return uri
    for name in (artifacts.SPLIT_TABLE, artifacts.MANIFEST):
        if storage.exists(storage.join(uri, name)):
            return storage.join(uri, name)
    raise InputError(f"{uri}: neither {artifacts.SPLIT_TABLE} nor {artifacts.MANIFEST} found; expected a "
                     "split folder (`histoxai split`) or an ingest output folder (`histoxai ingest`)")


def _sample_grid(rows: pd.DataFrame, sample: str) -> tuple[tuple[int, int], str]:
    """The MR grid from ingest.json beside the sample's manifest; else the patches' bounding box."""
    first = rows.iloc[0]
    base = str(first["shard_uri"])[: -len(str(first["shard"]))].rstrip("/")
    extent = (int(rows["row"].max()) + 1, int(rows["col"].max()) + 1)
    info_uri = storage.join(base, artifacts.INGEST_INFO)
    if not storage.exists(info_uri):
        return extent, (f"sample {sample}: no {artifacts.INGEST_INFO} beside its manifest; maps span the "
                        f"patches' extent {extent[0]} x {extent[1]} from voxel 0, 0")
    try:
        grid = tuple(int(v) for v in json.loads(storage.read_text(info_uri))["grid"])
    except (json.JSONDecodeError, KeyError, TypeError, ValueError) as err:
        raise InputError(f"{info_uri}: no readable 'grid' [rows, cols] ({err})") from err
    if len(grid) != 2 or grid[0] < extent[0] or grid[1] < extent[1]:
        raise InputError(f"{info_uri}: grid {list(grid)} does not hold sample {sample}'s patches (they "
                         f"reach row {extent[0] - 1}, col {extent[1] - 1}); expected the manifest's own "
                         f"{artifacts.INGEST_INFO}")
    return grid, ""


def read_data(uris: Sequence[str]) -> EvalData:
    """Patches of one or more inputs; a sample may come from one input only. Rows without a split
    (plain ingest manifests) are 'heldout'."""
    if not uris:
        raise InputError("--data: none given; expected a split folder or ingest manifests")
    frames, owner = [], {}
    for uri in (str(u) for u in uris):
        path = _input_file(uri)
        frame = read_manifest(path)
        if frame.empty:
            raise InputError(f"{path}: no patches (an empty manifest); expected at least one patch")
        if "split" not in frame.columns:
            frame["split"] = "heldout"
        unknown = sorted(set(frame["split"].astype(str)) - set(SPLITS))
        if unknown:
            raise InputError(f"{path}: column 'split' holds {unknown}; expected values among {list(SPLITS)}")
        for sample in frame["sample"].unique():
            if sample in owner:
                raise InputError(f"sample {sample!r} is in both {owner[sample]} and {path}; "
                                 "give each sample once (the split already holds every sample it split)")
            owner[sample] = path
        frames.append(frame)
    frame = pd.concat(frames, ignore_index=True)
    if frame.duplicated(list(KEY)).any():
        first = frame[frame.duplicated(list(KEY), keep=False)].iloc[0]
        raise InputError(f"{owner[first['sample']]}: voxel row {first['row']}, col {first['col']} of sample "
                         f"{first['sample']} is listed more than once; expected one patch per voxel")
    samples = sorted(frame["sample"].unique(), key=natural_key)
    training = sorted(frame.loc[frame["split"].isin(TRAINING_SPLITS), "sample"].unique(), key=natural_key)
    grids, notes = {}, {}
    for sample, rows in frame.groupby("sample", sort=False):
        grids[sample], note = _sample_grid(rows, sample)
        if note:
            notes[sample] = note
    return EvalData(frame=frame, samples=samples, training_samples=training, grids=grids, grid_notes=notes,
                    inputs=[str(u) for u in uris])
