"""Main page: the run's outputs, models and their configs, learning curves, measured vs predicted, the
Table 4.1 report, the trust report, links."""

import re

import pandas as pd
import streamlit as st

from histoxai import artifacts, storage
from histoxai.app import cache, controls, figures, runs, settings

PAGES = (("page_single_target.py", "Single Target", "a grid of patches with one method's overlay"),
         ("page_multiple_targets.py", "Multiple Targets", "one patch, the maps of every target"),
         ("page_multiple_methods.py", "Multiple Methods", "one patch, every method and setting"),
         ("page_sample_maps.py", "Sample Maps", "measured, predicted and residual maps; click a voxel"),
         ("page_drivers.py", "What drives the prediction",
          "nuclear properties by per-nucleus relevance, concepts and phantom interventions"))
_IMAGE_LINE = re.compile(r"^!\[.*\]\(.*\)\s*$", re.MULTILINE)


def _text(uri: str, root: str, what: str) -> str | None:
    path = runs.ensure_within(root, uri, what=what)
    return storage.read_text(path) if storage.exists(path) else None


def outputs_table(index: runs.RunIndex) -> pd.DataFrame:
    kinds = (("explain", "saliency maps"), ("evaluate", "evaluation"), ("models", "trained model"),
             ("split", "split manifest"), ("ingest", "ingested sample"), ("phantom", "phantom truth"))
    return pd.DataFrame([{"output": label, "folder": index.label(uri)}
                         for kind, label in kinds for uri in getattr(index, kind)])


def maps_summary(table: pd.DataFrame) -> pd.DataFrame:
    grouped = table.groupby(["model", "target", "method", "setting", "score"], sort=False)
    summary = grouped.agg(maps=("map_id", "size"), patches=("patch", "nunique"),
                          samples=("sample", lambda s: ", ".join(sorted(set(s)))))
    return summary.reset_index()


def main() -> None:
    config = settings.from_env()
    run, loaded = controls.open_run(config)
    index = loaded.index
    st.title("histoxai review")
    st.write("Saliency maps of CNNs that predict diffusion-MRI MD and FA and the nuclei count CC from H&E "
             "patches, for review beside the models' errors and the measures of whether a map can be "
             "trusted.")
    left, right = st.columns([4, 1])
    left.caption(f"Run: {run}")
    if right.button("Reload run", help="Read the run's tables again (after new outputs were written)"):
        cache.clear()
        st.rerun()
    if index.empty:
        st.warning(f"No pipeline outputs below {run}: looked for {', '.join(artifacts.MARKERS.values())} "
                   f"up to {runs.MAX_DEPTH} folders down.")
        return

    st.subheader("Pages")
    for path, title, what in PAGES:
        st.page_link(path, label=f"{title}: {what}")

    st.subheader("Outputs")
    st.dataframe(outputs_table(index), hide_index=True)
    if not loaded.table.empty:
        st.subheader("Saliency maps")
        st.dataframe(maps_summary(loaded.table), hide_index=True)

    if index.models:
        st.subheader("Models")
        for folder in index.models:
            with st.expander(index.label(folder)):
                for name, language in ((artifacts.MODEL_CONFIG, "yaml"), (artifacts.TRAIN_METRICS, "json")):
                    text = _text(storage.join(folder, name), config.root, what="model file")
                    if text is not None:
                        st.caption(name)
                        st.code(text, language=language)

    figures.show(index, config.root)

    for folder in index.evaluate:
        report = _text(storage.join(folder, artifacts.REPORT_MARKDOWN), config.root, what="evaluation report")
        if report is not None:
            st.subheader(f"Evaluation report ({index.label(folder)})")
            with st.expander("Table 4.1 and the other metrics", expanded=True):
                st.markdown(_IMAGE_LINE.sub("", report).replace("\n\n\n", "\n\n"))
                st.page_link("page_sample_maps.py", label="The maps, with a click-through to the patches")

    for folder in index.explain:
        report = _text(storage.join(folder, artifacts.TRUST_REPORT), config.root, what="trust report")
        if report is not None:
            st.subheader(f"Trust report ({index.label(folder)})")
            with st.expander("Whether the maps can be trusted", expanded=False):
                st.markdown(report)


if __name__ == "__main__":
    main()
