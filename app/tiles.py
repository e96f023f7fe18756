"""Tiles for the review app's pages: a page of patches with their overlays, read through the cache and drawn
in a grid, and the trust measures of a method in a few words."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import streamlit as st

from histoxai.app import cache, data, render
from histoxai.app.controls import Display

TILE_FORMAT = "JPEG"  # a few ms per tile to encode, against tens for PNG at 360 px


def tile_keys(rows: pd.DataFrame, with_maps: bool = True) -> tuple:
    return tuple((str(r.shard_uri), int(r.offset), str(r.encoding), int(r.patch_size),
                  str(r.source) if with_maps else None, int(r.map_id) if with_maps else None)
                 for r in rows.itertuples(index=False))


def pictures(rows: pd.DataFrame, run: str, root: str, display: Display, with_maps: bool = True) -> list:
    """The overlays for the rows (maps of any groups), normalised as the display asks."""
    read = cache.tiles(tile_keys(rows, with_maps), run, root)
    masks = {}
    if display.outlines and len(rows):
        keys = tuple((str(s), int(r), int(c)) for s, r, c in zip(rows["sample"], rows["row"], rows["col"],
                                                                  strict=True))
        masks = cache.nuclei_masks(run, root, tuple(dict.fromkeys(keys)), int(rows["patch_size"].iat[0]))
    out = []
    for (patch, raw), row in zip(read, rows.itertuples(index=False), strict=True):
        unit = None
        if raw is not None:
            value_range = None
            if display.normalisation == render.NORMALISATIONS[0]:
                value_range = cache.display_range(run, root, tuple(getattr(row, c) for c in data.GROUP))
            unit = render.normalise(raw, display.normalisation, value_range)
        mask = masks.get((str(row.sample), int(row.row), int(row.col)))
        edge = render.outline(mask) if mask is not None and mask.shape == patch.shape[:2] else None
        out.append(render.overlay(patch, unit, display.colour_map, display.alpha, edge))
    return out


def draw_grid(images: list, captions: list[str], columns: int, patches: list[int] | None = None,
              key: str = "grid") -> int | None:
    """Images in rows of `columns`, each with its caption; with patch numbers, an Inspect button under
    each. Returns the patch whose button was pressed."""
    pressed = None
    for start in range(0, len(images), columns):
        cells = st.columns(columns)
        for offset, cell in enumerate(cells[:len(images) - start]):
            i = start + offset
            cell.image(images[i], caption=captions[i], width="stretch", output_format=TILE_FORMAT)
            if patches is not None and cell.button("Inspect", key=f"{key}-{i}-{patches[i]}", type="tertiary",
                                                   help="Open this patch on the Multiple Targets page"):
                pressed = patches[i]
    return pressed


def _fmt(value) -> str:
    try:
        value = float(value)
    except (TypeError, ValueError):
        return str(value)
    return "n/a" if not math.isfinite(value) else f"{value:.3g}"


def trust_lines(trust: pd.DataFrame, group: tuple) -> list[str]:
    """The trust measures of one model x target x method x setting x score, as short lines."""
    if trust.empty:
        return []
    mask = np.ones(len(trust), bool)
    for column, value in zip(data.GROUP, group, strict=True):
        if column in trust.columns:
            mask &= (trust[column] == value).to_numpy()
    if not mask.any():
        return []
    row = trust[mask].iloc[0]
    lines = []
    if isinstance(row.get("verdict"), str):  # beside every control: random, darkness, edges, random weights
        lines.append(f"verdict: {row['verdict']}")
    lines.append(f"NaN maps {_fmt(row.get('nan_maps'))} · blank maps {_fmt(row.get('blank_maps'))}")
    if "deletion_auc" in row and pd.notna(row["deletion_auc"]):
        lines.append(f"deletion AUC {_fmt(row['deletion_auc'])} "
                     f"(random {_fmt(row.get('random_deletion_auc'))})"
                     f" · insertion AUC {_fmt(row['insertion_auc'])} "
                     f"(random {_fmt(row.get('random_insertion_auc'))})")
    rho = [c for c in row.index if str(c).startswith("rho: ")]
    if rho:
        state = row.get("randomization")  # passes, fails (maps barely change with random weights), undefined
        if not isinstance(state, str):  # a run written before the state column
            state = "fails" if bool(row.get("randomization_flag")) else "passes"
        flag = "" if state == "passes" else f" ⚠ check {state}"
        lines.append(f"randomisation ρ ({rho[-1][5:]}) {_fmt(row[rho[-1]])}{flag}")
    if "mask_mass" in row and pd.notna(row["mask_mass"]):
        lines.append(f"relevance in nuclei {_fmt(row['mask_mass'])} · rank accuracy "
                     f"{_fmt(row['mask_rank_accuracy'])} (nuclei area {_fmt(row['mask_area'])})")
    return lines


def method_label(row) -> str:
    return f"{row['method']}" + (f" ({row['setting']})" if row["setting"] else "")
