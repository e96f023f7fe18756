"""Multiple Targets page: one patch with the overlays of every target (MD, FA, CC, ...) side by side."""

import pandas as pd
import streamlit as st

from histoxai.app import controls, data, render, tiles


def best_row(rows: pd.DataFrame, selection: data.Selection) -> pd.Series:
    """Of one target's maps of a patch: the selection's model, method, setting and score where it can."""
    for column in ("model", "method", "setting", "score"):
        narrowed = rows[rows[column] == getattr(selection, column)]
        rows = narrowed if len(narrowed) else rows
    return rows.iloc[0]


def main() -> None:
    config, run, loaded, selection, draw_histograms, display, view = controls.map_page(grid=False)
    table = loaded.table

    st.title("Multiple Targets")
    number = controls.focus(table, view)
    maps = table[table["patch"] == number]
    frame = pd.DataFrame([best_row(maps[maps["target"] == target], selection)
                          for target in controls.ordered_targets(maps["target"].unique())])
    first = frame.iloc[0]
    st.subheader(f"Patch #{number}: sample {first['sample']}, voxel ({first['row']}, {first['col']})")
    images = tiles.pictures(frame.iloc[:1], run, config.root, display, with_maps=False) + \
        tiles.pictures(frame, run, config.root, display)
    captions = ["patch"] + [f"{r['target']} · {tiles.method_label(r)} · {render.tile_title(r)}"
                            for _, r in frame.iterrows()]
    tiles.draw_grid(images, captions, columns=max(len(captions), 3))
    draw_histograms()


if __name__ == "__main__":
    main()
