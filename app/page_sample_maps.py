"""Sample Maps page: measured, predicted and residual maps on the MR grid; click a voxel to see its patch."""

import numpy as np
import streamlit as st

from histoxai.app import cache, controls, render, settings, tiles
from histoxai.colour import colour_scales
from histoxai.manifest import natural_key

KINDS = ("measured", "predicted", "residual")


def pick_voxel(event, shape: tuple[int, int]) -> tuple[int, int]:
    """The voxel from a click on the chart (when it changed) or from the row and column boxes."""
    picked = (event.selection.get(render.VOXEL_SELECTION) or [None])[0] if event is not None else None
    if picked and picked != st.session_state.get("_last_voxel_pick"):
        st.session_state["_last_voxel_pick"] = picked
        st.session_state[controls.KEEP + "voxel_row"] = int(picked["row"])
        st.session_state[controls.KEEP + "voxel_col"] = int(picked["col"])
    for axis, size in zip(("row", "col"), shape, strict=True):
        key = f"{controls.KEEP}voxel_{axis}"
        controls.init_state(key, size // 2, lambda value, n=size: 0 <= value < n)
    left, right = st.columns(2)
    row = left.number_input("Row", 0, shape[0] - 1, key=controls.KEEP + "voxel_row")
    col = right.number_input("Column", 0, shape[1] - 1, key=controls.KEEP + "voxel_col")
    return int(row), int(col)


def main() -> None:
    config = settings.from_env()
    run, loaded = controls.open_run(config)
    index = loaded.index
    st.title("Sample Maps")
    if not index.evaluate:
        st.info("This run has no evaluate output (evaluation.parquet from `histoxai evaluate`).")
        return
    evaluate = controls.pick("Evaluation", index.evaluate, controls.KEEP + "evaluate",
                                format_func=index.label) if len(index.evaluate) > 1 else index.evaluate[0]
    available = cache.evaluate_maps(evaluate)
    if available.empty:
        st.info(f"{index.label(evaluate)} holds no maps/<model>/<sample>/<target>.npz.")
        return
    model = controls.pick("Model", sorted(available["model"].unique()), controls.KEEP + "maps_model")
    available = available[available["model"] == model]
    target = controls.pick("Target", controls.ordered_targets(available["target"].unique()),
                              controls.KEEP + "maps_target")
    available = available[available["target"] == target]
    sample = controls.pick("Sample", sorted(available["sample"].unique(), key=natural_key),
                              controls.KEEP + "maps_sample")
    kind = controls.pick("Map", KINDS, controls.KEEP + "maps_kind")
    display = controls.display(bool(index.phantom), grid=False)

    arrays = cache.grid_maps(available[available["sample"] == sample]["uri"].iat[0], config.root)
    scales = colour_scales(arrays)
    frame, spec = render.grid_chart(arrays[kind], f"{target} {kind} · sample {sample} · model {model}",
                                    diverging=kind == "residual",
                                    scale=scales["residual" if kind == "residual" else "value"])
    event = st.vega_lite_chart(frame, spec, on_select="rerun", selection_mode=render.VOXEL_SELECTION,
                               key=f"voxels-{model}-{target}-{sample}-{kind}", width="content")
    row, col = pick_voxel(event, arrays["measured"].shape)
    values = {k: float(arrays[k][row, col]) for k in KINDS}
    st.caption(" · ".join(f"{k} {v:.4g}" if np.isfinite(v) else f"{k} n/a" for k, v in values.items()))

    manifests = loaded.manifests
    located = manifests[(manifests["sample"] == sample) & (manifests["row"] == row)
                        & (manifests["col"] == col)] if len(manifests) else manifests
    if located.empty:
        st.info(f"No patch at voxel ({row}, {col}) of sample {sample}.")
        return
    table = loaded.table
    maps = table[(table["sample"] == sample) & (table["row"] == row) & (table["col"] == col)
                 & (table["target"] == target)].sort_values(["model", "method", "setting", "score"]) \
        if len(table) else table
    patch = tiles.pictures(located.iloc[:1], run, config.root, display,
                           with_maps=False)
    images = patch + (tiles.pictures(maps, run, config.root, display) if len(maps) else [])
    captions = [f"patch, voxel ({row}, {col})"] + [
        f"{r['model']} · {tiles.method_label(r)} · score {r['score']}" for _, r in maps.iterrows()]
    tiles.draw_grid(images, captions, columns=min(max(len(images), 3), 6))
    if len(maps):
        if st.button("Open this patch on Multiple Targets"):
            st.session_state[controls.PATCH_KEY] = int(maps["patch"].iat[0])
            st.switch_page("page_multiple_targets.py")
    else:
        st.caption("No saliency maps were computed for this patch (explain covers the test set and chosen "
                   "samples).")


if __name__ == "__main__":
    main()
