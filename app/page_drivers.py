"""What drives the prediction page: the answers of `explain --nuclei` for one model and target (response
curves, relevance per nuclear property, concept sensitivity) and one patch's nuclei coloured by the
relevance a map gives them."""

from __future__ import annotations

import numpy as np
import pandas as pd
import streamlit as st
from matplotlib.figure import Figure

from histoxai import artifacts, plots
from histoxai.app import cache, controls, data, render, runs, settings
from histoxai.errors import InputError
from histoxai.manifest import natural_key
from histoxai.phantom.nuclei import VOXEL_UM

TTL_S = 600
ASK = "the run did not ask for it (`histoxai explain --nuclei`; pipeline parameter `explain_nuclei`)"
RELEVANCE = {"signed": ("relevance_mean", "mean relevance over the nucleus"),
             "positive": ("positive_mean", "mean positive relevance over the nucleus")}
CONCEPT_COLUMNS = ("layer", "concept", "n_patches", "r2", "effect", "effect_low", "effect_high",
                   "sensitivity", "tcav", "p_corrected", "direction", "verdict")
NUCLEUS_SIZE = (5.6, 4.6)


@st.cache_data(ttl=TTL_S, show_spinner=False)
def outputs(explain_uri: str, root: str) -> dict:
    return data.drivers_outputs(explain_uri, root)


@st.cache_data(ttl=TTL_S, max_entries=4, show_spinner="Reading the nuclei table…")
def nuclei_table(explain_uri: str, root: str) -> pd.DataFrame | None:
    return data.read_nuclei(explain_uri, root)


@st.cache_data(ttl=TTL_S, show_spinner=False)
def response_png(explain_uri: str, root: str, target: str) -> bytes | None:
    """The response curves of one target, drawn from response_curves.parquet."""
    from histoxai.phantom.interventions import response_figure

    curves = outputs(explain_uri, root).get(artifacts.RESPONSE_CURVES)
    if curves is None or "target" not in curves.columns:
        return None
    curves = curves[curves["target"].astype(str) == target]
    return plots.png(response_figure(curves)) if len(curves) else None


@st.cache_data(ttl=TTL_S, show_spinner=False)
def drivers_png(explain_uri: str, root: str, target: str, kind: str) -> bytes | None:
    found = outputs(explain_uri, root).get(artifacts.NUCLEI_DRIVERS)
    if found is None or "target" not in found.columns:
        return None
    found = found[found["target"].astype(str) == target]
    return plots.png(plots.drivers_figure(found, kind=kind)) if len(found) else None


@st.cache_data(max_entries=32, show_spinner=False)
def patch_labels(sample_dir: str, row: int, col: int, size: int) -> np.ndarray:
    from histoxai.saliency.nuclei import patch_nuclei

    return patch_nuclei(sample_dir, row, col, size)[0]


def _norm(values: np.ndarray, signed: bool):
    from matplotlib import colormaps
    from matplotlib.colors import Normalize

    finite = values[np.isfinite(values)]
    if signed:
        limit = float(np.abs(finite).max()) if finite.size and np.abs(finite).max() > 0 else 1.0
        return Normalize(-limit, limit), colormaps["RdBu_r"]
    low, high = (float(finite.min()), float(finite.max())) if finite.size else (0.0, 1.0)
    return Normalize(low, high if high > low else low + 1e-12), colormaps["viridis"]


def nuclei_figure(patch: np.ndarray, nuclei: pd.DataFrame, column: str, voxel: tuple[int, int],
                  labels: np.ndarray | None = None, title: str = "") -> Figure:
    """The patch with each nucleus drawn in the colour of its `column` value (black: no value): the
    outline of its label (labels: the patch-sized label image), else a circle of its area at its
    centroid (slide pixels; the patch is the voxel's block, whose size the µm² per px² give)."""
    from matplotlib.cm import ScalarMappable
    from matplotlib.patches import Circle

    size = patch.shape[0]
    values = nuclei[column].to_numpy(dtype=float)
    norm, colours = _norm(values, signed=column == "relevance_mean")
    figure = Figure(figsize=NUCLEUS_SIZE, dpi=plots.DPI, layout="constrained")
    axes = figure.add_subplot()
    axes.imshow(patch, interpolation="nearest")
    value_of = dict(zip(nuclei["label"].astype(int), values, strict=True))
    if labels is not None:
        drawn = np.zeros((*labels.shape, 4))
        for label in np.unique(labels[labels > 0]):
            value = value_of.get(int(label), np.nan)
            colour = colours(norm(value)) if np.isfinite(value) else (0.0, 0.0, 0.0, 1.0)
            drawn[render.outline(labels == label)] = colour
        axes.imshow(drawn, interpolation="nearest")
    else:
        with np.errstate(invalid="ignore", divide="ignore"):
            um_per_px = np.sqrt(nuclei["area_um2"].to_numpy(float) / nuclei["area_px"].to_numpy(float))
        um_per_px = um_per_px[np.isfinite(um_per_px) & (um_per_px > 0)]
        block = VOXEL_UM / float(np.median(um_per_px)) if um_per_px.size else float(size)
        row, col = voxel
        for record, value in zip(nuclei.to_dict("records"), values, strict=True):
            x = (record["centroid_x"] - col * block) / block * size - 0.5
            y = (record["centroid_y"] - row * block) / block * size - 0.5
            radius = np.sqrt(max(float(record["area_px"]), 0.0) / np.pi) / block * size
            if np.isfinite([x, y, radius]).all():
                axes.add_patch(Circle((x, y), radius, fill=False, linewidth=1.5,
                                      edgecolor=colours(norm(value)) if np.isfinite(value) else "black"))
    axes.set(xlim=(-0.5, size - 0.5), ylim=(size - 0.5, -0.5), title=title)
    axes.set_axis_off()
    figure.colorbar(ScalarMappable(norm, colours), ax=axes, label=column)
    return figure


def _map_label(method: tuple[str, str, str]) -> str:
    """'method:setting · score' of a (method, setting, score)."""
    return method[0] + (f":{method[1]}" if method[1] else "") + (f" · {method[2]}" if method[2] else "")


def _choose(label: str, options: list, key: str, **kwargs):
    """A selectbox in the main area that keeps its value across pages."""
    controls.init_state(key, options[0], lambda value: value in options)
    return st.selectbox(label, options, key=key, **kwargs)


def _patch_image(loaded: cache.Run, key: tuple, run: str, root: str) -> np.ndarray | None:
    for frame in (loaded.manifests, loaded.table):
        if len(frame) and all(c in frame.columns for c in data.PATCH_LOCATION):
            rows = frame[(frame["sample"].astype(str) == key[0]) & (frame["row"] == key[1])
                         & (frame["col"] == key[2])]
            if len(rows):
                return cache.tiles(((*data.patch_location(rows.iloc[0]), None, None),), run, root)[0][0]
    return None


def patch_viewer(table: pd.DataFrame | None, target: str, kind: str, loaded: cache.Run, run: str,
                 root: str) -> None:
    """One patch with its nuclei coloured by one map's relevance per nucleus."""
    st.subheader("Nuclei of one patch")
    if table is None:
        st.info(f"No {artifacts.NUCLEI_TABLE} in this explain output: {ASK}.")
        return
    rows = table[table["target"].astype(str) == target] if "target" in table.columns else table.iloc[0:0]
    if rows.empty:
        st.info(f"{artifacts.NUCLEI_TABLE} holds no nuclei for {target}.")
        return
    keys = sorted({(str(s), int(r), int(c)) for s, r, c in zip(rows["sample"], rows["row"], rows["col"],
                                                                strict=True)},
                  key=lambda k: (natural_key(k[0]), k[1], k[2]))
    left, right = st.columns(2)
    with left:
        key = _choose("Patch", keys, controls.KEEP + "drivers_patch",
                      format_func=lambda k: f"sample {k[0]} · voxel ({k[1]}, {k[2]})")
    chosen = rows[(rows["sample"] == key[0]) & (rows["row"] == key[1]) & (rows["col"] == key[2])]
    chosen = chosen.assign(**{c: chosen[c].fillna("").astype(str) for c in ("setting", "score")
                              if c in chosen.columns})
    maps = sorted({tuple(r) for r in chosen.reindex(columns=["method", "setting", "score"]).fillna("")
                   .astype(str).itertuples(index=False)})
    with right:
        method = _choose("Map (method)", maps, controls.KEEP + "drivers_map", format_func=_map_label)
    nuclei = chosen[(chosen["method"] == method[0]) & (chosen.get("setting", "") == method[1])
                    & (chosen.get("score", "") == method[2])].drop_duplicates("label")
    column = RELEVANCE[kind][0]
    patch = _patch_image(loaded, key, run, root)
    note = ""
    if patch is None:
        patch = np.full((256, 256, 3), 235, np.uint8)
        note = "The patch's image is not in this run's manifests: drawn on grey. "
    labels = None
    outline = str(nuclei["outline"].iat[0]) if "outline" in nuclei.columns and len(nuclei) else "disc"
    if outline == "mask":
        sample_dir = data.phantom_sample(loaded.index.phantom, key[0], root)
        try:
            labels = patch_labels(sample_dir, key[1], key[2], patch.shape[0]) if sample_dir else None
        except InputError as err:
            note += f"The phantom's label image could not be read ({' '.join(str(err).split())}). "
        if labels is None:
            note += (f"Circles of each nucleus's area at its centroid: the phantom truth of sample {key[0]} "
                     "is not under this run, so its outlines cannot be drawn.")
        else:
            note += "Outlines of the phantom's nuclei (its label image)."
    else:
        note += "Circles of each nucleus's area at its centroid (detected nuclei: no outlines known)."
    title = f"{target} · {_map_label(method)}"
    st.image(plots.png(nuclei_figure(patch, nuclei, column, key[1:], labels, title)),
             caption=f"{len(nuclei)} nuclei coloured by their {RELEVANCE[kind][1]} (black: none). {note}")


def main() -> None:
    config = settings.from_env()
    run, loaded = controls.open_run(config)
    index = loaded.index
    st.title("What drives the prediction")
    if not index.explain:
        st.info("This run has no explain output (maps.parquet from `histoxai explain`).")
        return
    source = controls.pick("Model (explain output)", index.explain, controls.KEEP + "drivers_explain",
                           format_func=lambda u: f"{loaded.names.get(u, '')} ({index.label(u)})")
    runs.ensure_within(config.root, source, what="explain output")
    found = outputs(source, config.root)
    table = nuclei_table(source, config.root)
    if not found and table is None:
        st.info(f"{index.label(source)} holds none of the outputs of `histoxai explain --nuclei` "
                f"({artifacts.DRIVERS_REPORT}, {artifacts.NUCLEI_DRIVERS}, ...): {ASK}.")
        return
    frames = [f for f in (*found.values(), table) if isinstance(f, pd.DataFrame) and "target" in f.columns]
    targets = controls.ordered_targets({str(t) for f in frames for t in f["target"].unique()})
    if not targets:
        st.info("The explain output's tables name no target.")
        return
    target = controls.pick("Target", targets, controls.KEEP + "drivers_target")
    kind = controls.pick("Relevance", list(RELEVANCE), controls.KEEP + "drivers_kind",
                         help="signed: the map's mean over a nucleus; positive: the mean of its "
                              "positive part")
    if artifacts.DRIVERS_REPORT in found:
        with st.expander("The three answers and whether they agree (drivers.md)"):
            st.markdown(found[artifacts.DRIVERS_REPORT])

    st.subheader("Interventions: response curves")
    png = response_png(source, config.root, target) or found.get(artifacts.RESPONSE_PLOT)
    if png:
        st.image(png, caption="Mean prediction as one nuclear property of the phantom is changed, the rest "
                              "kept (dashed: the true value)")
    else:
        st.info(f"No {artifacts.RESPONSE_CURVES} for {target}: interventions run on phantom samples only, "
                f"or {ASK}.")

    st.subheader("Relevance per nuclear property")
    png = drivers_png(source, config.root, target, kind) or found.get(artifacts.DRIVERS_PLOT)
    if png:
        st.image(png, caption="Within-map rank correlation (rho) of each nucleus's relevance with its "
                              "property, 95 % CI; pale: not a driver; markers: the input-only controls")
    else:
        st.info(f"No {artifacts.NUCLEI_DRIVERS} for {target}: {ASK}.")

    st.subheader("Concept sensitivity")
    concepts = found.get(artifacts.CONCEPTS_TABLE)
    if concepts is not None and "target" in concepts.columns:
        rows = concepts[concepts["target"].astype(str) == target]
        st.dataframe(rows[[c for c in CONCEPT_COLUMNS if c in rows.columns]], hide_index=True)
        st.caption("effect: change of the prediction per SD of the concept (95 % interval over splits); "
                   "p against random concepts, corrected over all tests; r2: how well the layer encodes "
                   "the concept (held-out).")
    else:
        st.info(f"No {artifacts.CONCEPTS_TABLE}: {ASK}.")

    patch_viewer(table, target, kind, loaded, run, config.root)


if __name__ == "__main__":
    main()
