"""The review app's sidebar and pickers: the run, what to show, filters with histograms, display options.

Widget values survive page switches: their keys start with KEEP and `remember_widgets` (called by the
entry script on every run) stops Streamlit from dropping them on pages that do not show them.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import NamedTuple

import numpy as np
import pandas as pd
import streamlit as st

from histoxai.app import cache, data, render, runs
from histoxai.app.settings import AppSettings
from histoxai.colour import COLOUR_MAPS
from histoxai.errors import InputError
from histoxai.manifest import TARGETS, natural_key

KEEP = "w_"
PATCH_KEY = KEEP + "patch"  # the patch shown on the single-patch pages (its number)
PAGE_SIZES = (12, 24, 48, 96)
RANGES = (("y", "y (measured)"), ("delta", "Δ = ŷ − y"), ("rdelta", "rΔ = (ŷ / y − 1) · 100 %"))


@dataclasses.dataclass(frozen=True)
class Display:
    alpha: float = 0.5
    colour_map: str = "viridis"
    normalisation: str = render.NORMALISATIONS[0]
    columns: int = 6
    per_page: int = 24
    outlines: bool = False


def remember_widgets() -> None:
    for key in list(st.session_state.keys()):
        if str(key).startswith(KEEP):
            st.session_state[key] = st.session_state[key]


def init_state(key: str, default, valid=lambda value: True) -> None:
    """Give a widget its first value through Session State (never also by argument), and replace a
    remembered value that no longer fits the options."""
    if key not in st.session_state or not valid(st.session_state[key]):
        st.session_state[key] = default


def pick(label: str, options, key: str, **kwargs):
    options = list(options)
    init_state(key, options[0], lambda value: value in options)
    return st.sidebar.selectbox(label, options, key=key, **kwargs)


def open_run(settings: AppSettings) -> tuple[str, cache.Run]:
    """The run folder chosen in the sidebar (first from the URL's ?run=, else the configured run), loaded;
    a folder outside the root is refused."""
    init_state(KEEP + "run", st.query_params.get("run", runs.relative(settings.root, settings.run)))
    text = st.sidebar.text_input("Run folder (under the root)", key=KEEP + "run",
                                 placeholder="the root itself",
                                 help=f"Relative to {runs.normalize(settings.root)}, or a full path under it")
    try:
        run = runs.resolve_run(settings.root, text)
        loaded = cache.load_run(run, settings.root)
    except InputError as err:
        st.error(str(err))
        st.stop()
    st.query_params["run"] = runs.relative(settings.root, run)
    return run, loaded


def ordered_targets(values) -> list[str]:
    values = set(values)
    return [t for t in TARGETS if t in values] + sorted(values - set(TARGETS))


def choose(table) -> data.Selection:
    """Model, target, method, the method's settings (one box per parameter that varies) and score."""
    if table.empty:
        st.info("This run has no saliency maps yet (no maps.parquet from `histoxai explain` below it).")
        st.stop()
    target = pick("Target", ordered_targets(table["target"].unique()), KEEP + "target")
    rows = table[table["target"] == target]
    models = sorted(rows["model"].unique())
    model = pick("Model", models, KEEP + "model") if len(models) > 1 else models[0]
    rows = rows[rows["model"] == model]
    method = pick("Method", sorted(rows["method"].unique()), KEEP + "method")
    rows = rows[rows["method"] == method]
    settings = sorted(rows["setting"].unique())
    params = {s: data.setting_params(s) for s in settings}
    names = list(dict.fromkeys(k for p in params.values() for k in p))
    for name in names:
        values = sorted({p.get(name, "") for p in params.values()}, key=_number_first)
        if len(values) > 1:
            chosen = pick(f"{method}: {name}", values, f"{KEEP}param_{method}_{name}")
            params = {s: p for s, p in params.items() if p.get(name, "") == chosen}
    setting = next(iter(params))
    rows = rows[rows["setting"] == setting]
    scores = sorted(rows["score"].unique())
    score = pick("Score (what the map explains)", scores, KEEP + "score") if len(scores) > 1 else scores[0]
    return data.Selection(model=model, target=target, method=method, setting=setting, score=score)


def _number_first(text: str):
    try:
        return (0, float(text), "")
    except ValueError:
        return (1, 0.0, text)


def filters(table, selection: data.Selection) -> tuple[data.Selection, Callable[[], None]]:
    """Samples, ranges of y, Δ and rΔ (each with its histogram over the rows the other filters keep, the
    chosen range shaded), and the sort order. Returns the selection and a function that draws the
    histograms into their places: call it after the page's tiles, which then come first."""
    rows = data.group_rows(table, selection)
    samples = sorted(rows["sample"].unique(), key=natural_key)
    init_state(KEEP + "samples", [], lambda value: set(value) <= set(samples))
    chosen_samples = st.sidebar.multiselect("Samples", samples, key=KEEP + "samples", placeholder="all")
    bounds, charts = {}, {}
    for column, label in RANGES:
        values = rows[column].to_numpy(np.float64)
        values = values[np.isfinite(values)]
        bounds[column] = None
        if values.size and values.min() < values.max():
            low, high = float(values.min()), float(values.max())
            key = f"{KEEP}range_{column}_{selection.model}_{selection.target}"
            init_state(key, (low, high), lambda v, lo=low, hi=high: lo <= v[0] <= v[1] <= hi)
            picked = st.sidebar.slider(label, low, high, key=key, step=(high - low) / 200, format="%.4g")
            bounds[column] = None if tuple(picked) == (low, high) else tuple(picked)
        charts[column] = st.sidebar.empty()
    init_state(KEEP + "sort", "index", lambda value: value in data.SORTS)
    sort = st.sidebar.selectbox("Sort by", list(data.SORTS), key=KEEP + "sort")
    init_state(KEEP + "descending", False)
    descending = st.sidebar.toggle("Descending", key=KEEP + "descending")
    chosen = dataclasses.replace(selection, samples=tuple(chosen_samples), y=bounds["y"],
                                 delta=bounds["delta"], rdelta=bounds["rdelta"], sort=sort,
                                 descending=descending)

    def draw_histograms() -> None:
        for column, _ in RANGES:
            others = data.select(table, dataclasses.replace(chosen, **{column: None}))
            charts[column].image(render.histogram(others[column].to_numpy(np.float64), bounds[column]),
                                 width="stretch", output_format="PNG")

    return chosen, draw_histograms


def display(has_phantom: bool, grid: bool = True) -> Display:
    """Overlay alpha, colour map, display normalisation, grid size and the nuclei outline toggle."""
    st.sidebar.divider()
    init_state(KEEP + "alpha", 0.5)
    alpha = st.sidebar.slider("Overlay alpha", 0.0, 1.0, key=KEEP + "alpha", step=0.05)
    colour_map = pick("Colour map", COLOUR_MAPS, KEEP + "colour_map")
    normalisation = st.sidebar.radio("Display normalisation", render.NORMALISATIONS, key=_radio_key(),
                                     help="Dataset percentile: the 1st-99th percentile of maps of this "
                                          "target and method, so weak maps look weak. Per map: each map "
                                          "stretched to its own min-max, as in the thesis.")
    columns, per_page = 6, 24
    if grid:
        init_state(KEEP + "columns", 6)
        columns = st.sidebar.slider("Grid columns", 2, 8, key=KEEP + "columns")
        init_state(KEEP + "per_page", 24, lambda value: value in PAGE_SIZES)
        per_page = st.sidebar.selectbox("Tiles per page", PAGE_SIZES, key=KEEP + "per_page")
    outlines = False
    if has_phantom:
        init_state(KEEP + "outlines", False)
        outlines = st.sidebar.toggle("Outline the true nuclei (phantom)", key=KEEP + "outlines")
    return Display(alpha=alpha, colour_map=colour_map, normalisation=normalisation, columns=columns,
                   per_page=per_page, outlines=outlines)


def _radio_key() -> str:
    key = KEEP + "normalisation"
    init_state(key, render.NORMALISATIONS[0], lambda value: value in render.NORMALISATIONS)
    return key


def focus(table, view) -> int:
    """The patch shown on a single-patch page (by number): remembered across pages, stepped through the
    current selection with Previous / Next."""
    order = list(dict.fromkeys(view["patch"].tolist())) or list(dict.fromkeys(table["patch"].tolist()))
    known = set(table["patch"].tolist())
    init_state(PATCH_KEY, order[0], lambda value: value in known)

    def step(offset: int) -> None:
        current = st.session_state[PATCH_KEY]
        position = order.index(current) + offset if current in order else 0
        st.session_state[PATCH_KEY] = order[position % len(order)]

    left, right, field = st.columns([1, 1, 3], vertical_alignment="bottom")
    left.button("◀ Previous", on_click=step, args=(-1,), width="stretch")
    right.button("Next ▶", on_click=step, args=(1,), width="stretch")
    number = field.number_input("Patch #", min_value=0, max_value=int(table["patch"].max()), key=PATCH_KEY)
    if number not in known:
        st.warning(f"There is no patch #{number} in this run.")
        st.stop()
    if number not in order:
        st.caption(f"Patch #{number} is outside the current filters ({len(order)} patches pass them).")
    else:
        st.caption(f"Patch {order.index(number) + 1} of {len(order)} in the current selection.")
    return int(number)


class MapPage(NamedTuple):
    """What a saliency-map page starts from: the run, its maps and the sidebar's choices."""

    config: AppSettings
    run: str
    loaded: cache.Run
    selection: data.Selection
    draw_histograms: Callable[[], None]  # call after the page's tiles
    display: Display
    view: pd.DataFrame  # the maps the filters keep, in the chosen order


def map_page(grid: bool = True) -> MapPage:
    """Open the run and draw the sidebar of a map page (Single Target, Multiple Targets, Multiple Methods)."""
    from histoxai.app import settings

    config = settings.from_env()
    run, loaded = open_run(config)
    selection, draw_histograms = filters(loaded.table, choose(loaded.table))
    shown = display(bool(loaded.index.phantom), grid=grid)
    view = data.select(loaded.table, selection)
    return MapPage(config, run, loaded, selection, draw_histograms, shown, view)
