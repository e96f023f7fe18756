"""The patches the evaluate step scores: split tables and ingest manifests read into one frame, which
samples took part in training, and each sample's MR grid (for the maps)."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass

import pandas as pd

from histoxai import artifacts, storage
from histoxai.errors import InputError
from histoxai.manifest import natural_key
from histoxai.prediction import read_patches

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
    frame = read_patches(uris)
    samples = sorted(frame["sample"].unique(), key=natural_key)
    training = sorted(frame.loc[frame["split"].isin(TRAINING_SPLITS), "sample"].unique(), key=natural_key)
    grids, notes = {}, {}
    for sample, rows in frame.groupby("sample", sort=False):
        grids[sample], note = _sample_grid(rows, sample)
        if note:
            notes[sample] = note
    return EvalData(frame=frame, samples=samples, training_samples=training, grids=grids, grid_notes=notes,
                    inputs=[str(u) for u in uris])
