"""Streamlit caches over the app's data layer, keyed on URIs: a run's tables once, patches a page at a time.

A run's tables are shared by all sessions (`st.cache_resource`; treated as read-only); the pictures of
a page, display ranges and masks are cached per distinct request (`st.cache_data`), so paging back and
forth reads nothing twice. "Reload run" on the Main page clears them.
"""

from __future__ import annotations

import dataclasses

import pandas as pd
import streamlit as st

from histoxai.app import data, runs
from histoxai.saliency import store

TABLE_TTL_S = 600


@dataclasses.dataclass
class Run:
    """One run's outputs, loaded: where they are, the maps table, the trust table and the map readers."""

    index: runs.RunIndex
    readers: dict[str, store.MapReader]
    names: dict[str, str]
    table: pd.DataFrame
    trust: pd.DataFrame
    manifests: pd.DataFrame


@st.cache_resource(ttl=TABLE_TTL_S, show_spinner="Reading the run's tables…")
def load_run(run: str, root: str) -> Run:
    """The run's tables, each file checked against root before it is read."""
    index = runs.discover(run)
    readers = {uri: data.open_maps(uri, root) for uri in index.explain}
    names = data.model_names(index.explain, index.label, root)
    manifests = data.load_manifests(index, root)
    return Run(index=index, readers=readers, names=names, table=data.maps_table(readers, names, manifests),
               trust=data.trust_table(index.explain, names, root), manifests=manifests)


@st.cache_data(max_entries=64, show_spinner=False)
def tiles(keys: tuple, run: str, root: str) -> list:
    """(patch, raw map or None) per (shard_uri, offset, encoding, patch_size, source, map_id)."""
    return data.read_tiles(list(keys), load_run(run, root).readers, root)


@st.cache_data(max_entries=256, show_spinner=False)
def display_range(run: str, root: str, group: tuple) -> tuple[float, float]:
    """Dataset-wide display range of one model x target x method x setting x score (data.GROUP)."""
    loaded = load_run(run, root)
    return data.display_range(loaded.readers, data.group_rows(loaded.table, data.Selection(*group)), root)


@st.cache_data(max_entries=64, show_spinner=False)
def nuclei_masks(run: str, root: str, keys: tuple, size: int) -> dict:
    return data.nuclei_masks(load_run(run, root).index.phantom, list(keys), size, root)


@st.cache_data(max_entries=64, show_spinner=False)
def grid_maps(uri: str, root: str) -> dict:
    return data.read_grid_maps(uri, root)


@st.cache_data(ttl=TABLE_TTL_S, show_spinner=False)
def evaluate_maps(uri: str) -> pd.DataFrame:
    return data.evaluate_maps(uri)


def clear() -> None:
    load_run.clear()
    st.cache_data.clear()
