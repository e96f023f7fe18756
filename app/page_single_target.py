"""Single Target page: a grid of patches with one method's overlay for one target, filtered, sorted, paged."""

import hashlib

import streamlit as st

from histoxai.app import controls, data, render, tiles


def main() -> None:
    config, run, loaded, selection, draw_histograms, display, view = controls.map_page()

    st.title(f"Single Target: {selection.target}")
    group = tuple(getattr(selection, c) for c in data.GROUP)
    st.caption(f"model {selection.model} · {selection.method}"
               + (f" ({selection.setting})" if selection.setting else "") + f" · score {selection.score}")
    for line in tiles.trust_lines(loaded.trust, group):
        st.caption(line)
    if view.empty:
        st.info("No patches pass the filters.")
        draw_histograms()
        return
    pages = data.page_count(len(view), display.per_page)
    grid = st.container()
    # a new selection starts again at page 1
    state = hashlib.blake2b(repr((selection, display.per_page)).encode(), digest_size=6).hexdigest()
    page = st.pagination(pages, key=f"page-{state}") if pages > 1 else 1
    rows = data.page_of(view, page, display.per_page)
    with grid:
        st.caption(f"{len(view)} patches pass the filters · page {page} of {pages}")
        pressed = tiles.draw_grid(tiles.pictures(rows, run, config.root, display),
                                  [render.tile_title(r) for _, r in rows.iterrows()], display.columns,
                                  rows["patch"].tolist())
    draw_histograms()
    if pressed is not None:
        st.session_state[controls.PATCH_KEY] = pressed
        st.switch_page("page_multiple_targets.py")


if __name__ == "__main__":
    main()
