"""Multiple Methods page: one patch and target, every method and setting side by side, with trust measures."""

import streamlit as st

from histoxai.app import controls, data, render, tiles


def main() -> None:
    config, run, loaded, selection, draw_histograms, display, view = controls.map_page(grid=False)
    table = loaded.table

    st.title(f"Multiple Methods: {selection.target}")
    number = controls.focus(table, view)
    maps = table[(table["patch"] == number) & (table["target"] == selection.target)
                 & (table["model"] == selection.model)]
    if maps.empty:
        st.info(f"Patch #{number} has no {selection.target} maps of model {selection.model}.")
        draw_histograms()
        return
    scored = maps[maps["score"] == selection.score]
    maps = (scored if len(scored) else maps).sort_values(["method", "setting", "score"])
    first = maps.iloc[0]
    st.subheader(f"Patch #{number}: sample {first['sample']}, voxel ({first['row']}, {first['col']})")
    st.caption(render.tile_title(first) + f" · model {selection.model}")
    images = tiles.pictures(maps.iloc[:1], run, config.root, display, with_maps=False) + \
        tiles.pictures(maps, run, config.root, display)
    captions = ["patch"] + [tiles.method_label(r) + ("" if r["score"] == selection.score else
                                                     f" · score {r['score']}") for _, r in maps.iterrows()]
    columns = min(len(images), 4)
    for start in range(0, len(images), columns):
        cells = st.columns(columns)
        for offset, cell in enumerate(cells[:len(images) - start]):
            i = start + offset
            cell.image(images[i], caption=captions[i], width="stretch", output_format=tiles.TILE_FORMAT)
            if i:
                row = maps.iloc[i - 1]
                for line in tiles.trust_lines(loaded.trust, tuple(row[c] for c in data.GROUP)):
                    cell.caption(line)
    draw_histograms()


if __name__ == "__main__":
    main()
