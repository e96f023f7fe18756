"""Tests of phantom interventions: exact re-rendering, one property changed at a time, response curves."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from histoxai import layout
from histoxai.errors import InputError
from histoxai.matfile import open_mat
from histoxai.phantom import interventions as iv
from histoxai.phantom import nuclei as nu
from histoxai.phantom.writer import render_phantom

SAMPLE, CROP, P, N_MAX, SEED = 6, (12, 14), 32, 30, 3  # as tests/test_phantom.py: tissue in rows 8-11
OPTIONS = {"pixels_per_voxel": P, "n_max": N_MAX, "seed": SEED, "crop": CROP}
VOXELS = [(SAMPLE, 9, 4), (SAMPLE, 10, 9), (SAMPLE, 11, 12)]  # 22, 18 and 19 nuclei
IMAGE_SIZE = 24


def _voxel(row, col, **overrides):
    return iv.render_voxel(SAMPLE, row, col, **OPTIONS, overrides=overrides or None)


def _coverage(table, row, col, grow=1.3) -> np.ndarray:
    """Block pixels whose centre lies inside (slightly grown) ellipses of the table's nuclei."""
    yy, xx = np.mgrid[0:P, 0:P] + 0.5
    yy, xx = yy + row * P, xx + col * P
    covered = np.zeros((P, P), bool)
    for cx, cy, a, b, t in zip(table["centroid_x"], table["centroid_y"], table["semi_major"],
                               table["semi_minor"], table["angle"], strict=True):
        u = (xx - cx) * np.cos(t) + (yy - cy) * np.sin(t)
        v = (yy - cy) * np.cos(t) - (xx - cx) * np.sin(t)
        covered |= (u / a) ** 2 + (v / b) ** 2 <= grow
    return covered


def _resultant(angles: np.ndarray) -> float:
    return float(np.abs(np.mean(np.exp(2j * angles))))


def test_no_override_reproduces_render_phantom(tmp_path):
    (uri,) = render_phantom(tmp_path / "out", [SAMPLE], **OPTIONS)
    with open_mat(Path(uri) / layout.HE_MAT) as mat:
        he = mat.read("HE")
    rows, cols = CROP
    for row in range(rows):
        for col in range(cols):  # edges, background and tissue voxels alike
            block, table = _voxel(row, col)
            np.testing.assert_array_equal(block, he[row * P:(row + 1) * P, col * P:(col + 1) * P])
            assert block.dtype == np.uint8 and block.shape == (P, P, 3)
    expected = nu.nuclei_counts(iv._renderer(None, SAMPLE, CROP, P, N_MAX, SEED).maps.cd,
                                iv._renderer(None, SAMPLE, CROP, P, N_MAX, SEED).maps.tissue, N_MAX)
    assert [_voxel(r, c)[1]["voxel_row"].size for _, r, c in VOXELS] == [expected[r, c] for _, r, c in VOXELS]


def test_no_override_reproduces_blocks_across_a_grain_tile_edge(tmp_path):
    # 48 px voxels over 44 columns: the band's 2048 px grain tiles split voxel column 42
    size, crop = 48, (12, 44)
    (uri,) = render_phantom(tmp_path / "out", [SAMPLE], pixels_per_voxel=size, seed=1, crop=crop)
    with open_mat(Path(uri) / layout.HE_MAT) as mat:
        he = mat.read("HE")
    for row in (8, 10, 11):
        for col in (41, 42, 43):
            block, _ = iv.render_voxel(SAMPLE, row, col, pixels_per_voxel=size, seed=1, crop=crop)
            np.testing.assert_array_equal(block, he[row * size:(row + 1) * size, col * size:(col + 1) * size])


def test_count_changes_only_the_count():
    _, row, col = VOXELS[0]
    base_image, base = _voxel(row, col)
    n = base["voxel_row"].size
    more_image, more = _voxel(row, col, count=n + 12)
    assert more["voxel_row"].size == n + 12
    for field in nu.FIELDS:  # the first n nuclei are the same nuclei
        np.testing.assert_array_equal(more[field][:n], base[field][:n])
    pixels = set(zip(np.floor(more["centroid_y"]).astype(int), np.floor(more["centroid_x"]).astype(int),
                     strict=True))
    assert len(pixels) == n + 12  # every centroid pixel is still unique
    changed = (more_image != base_image).any(axis=2)
    added = {k: v[n:] for k, v in more.items()}
    assert changed.any() and not (changed & ~_coverage(added, row, col)).any()

    fewer_image, fewer = _voxel(row, col, count=n - 8)
    for field in nu.FIELDS:
        np.testing.assert_array_equal(fewer[field], base[field][:n - 8])
    changed = (fewer_image != base_image).any(axis=2)
    removed = {k: v[n - 8:] for k, v in base.items()}
    assert changed.any() and not (changed & ~_coverage(removed, row, col)).any()
    assert _voxel(row, col, count_factor=2.0)[1]["voxel_row"].size == 2 * n
    np.testing.assert_array_equal(_voxel(row, col, count=n)[0], base_image)


def test_coherence_changes_the_spread_not_the_count():
    _, row, col = VOXELS[1]
    _, base = _voxel(row, col)
    sa = float(iv._renderer(None, SAMPLE, CROP, P, N_MAX, SEED).sa[row, col])
    loose, tight = _voxel(row, col, coherence=0.0)[1], _voxel(row, col, coherence=0.95)[1]
    for field in ("centroid_x", "centroid_y", "semi_major", "semi_minor", "haematoxylin"):
        np.testing.assert_array_equal(loose[field], base[field])
        np.testing.assert_array_equal(tight[field], base[field])
    assert _resultant(tight["angle"]) > 0.85 > _resultant(base["angle"]) > _resultant(loose["angle"])
    np.testing.assert_array_equal(_voxel(row, col, coherence=sa)[1]["angle"], base["angle"])
    # at 32 px per 200 um voxel the 1.5 px semi-minor floor hides diameters below ~20 um
    bigger, longer = _voxel(row, col, size=30.0)[1], _voxel(row, col, elongation=3.0)[1]
    area, base_area = bigger["semi_minor"] * bigger["semi_major"], base["semi_minor"] * base["semi_major"]
    assert (area >= base_area).all() and area.mean() > 1.2 * base_area.mean()
    np.testing.assert_array_equal(_voxel(row, col, size=5.0)[1]["semi_minor"], base["semi_minor"])
    assert np.median(longer["semi_major"] / longer["semi_minor"]) > 2.5
    np.testing.assert_array_equal(longer["angle"], base["angle"])


def _nuclei_counter(image_size: int):
    """Fixed weights: per pixel a steep sigmoid of (140 - mean RGB) marks haematoxylin-dark pixels; the
    output is their fraction times 100."""
    import keras

    images = keras.Input((image_size, image_size, 3))
    dark = keras.layers.Conv2D(1, 1, activation="sigmoid", name="dark")(images)
    fraction = keras.layers.GlobalAveragePooling2D()(dark)
    count = keras.layers.Dense(1, name="CC")(fraction)
    model = keras.Model(images, {"CC": count})
    steep = 0.3
    model.get_layer("dark").set_weights([np.full((1, 1, 3, 1), -steep / 3, np.float32),
                                         np.array([140 * steep], np.float32)])
    model.get_layer("CC").set_weights([np.array([[100.0]], np.float32), np.zeros(1, np.float32)])
    return model


@pytest.fixture(scope="module")
def curves():
    properties = {"count": [4, 12, 24, 40, 60], "coherence": [0.0, 0.3, 0.6, 0.9],
                  "size": [7.5, 20.0, 30.0]}
    predict = iv.keras_predictor(_nuclei_counter(IMAGE_SIZE))
    return iv.response_curves(predict, VOXELS, properties, pixels_per_voxel=P, image_size=IMAGE_SIZE,
                              seed=SEED, n_max=N_MAX, crop=CROP, derived=True)


def test_a_nuclei_counter_responds_to_count_not_coherence(curves):
    assert len(curves) == 3 * (5 + 4 + 3) and set(curves["target"]) == {"CC"}
    assert {"property", "value", "target", "voxel", "prediction", "truth"} <= set(curves.columns)
    summary = iv.summarise(curves).set_index("property")
    count, coherence = summary.loc["count"], summary.loc["coherence"]
    assert count["spearman"] > 0.9 and count["slope"] > 0
    assert abs(coherence["slope_std"]) < 0.1 * count["slope_std"]
    assert count["agreement"] > 0.95  # the counter's curve follows the true count's
    assert summary.loc["size", "slope"] > 0  # bigger nuclei: more dark pixels, same count
    assert summary.loc["size", "true_slope"] == 0  # CC is the count


def test_truth_moves_as_derived_targets_say():
    properties = {"count": [5, 20, 45], "coherence": [0.0, 0.5, 0.95], "size": [7.5, 20.0, 30.0]}
    curves = iv.response_curves(lambda x: {"MD": np.zeros(len(x)), "FA": np.zeros(len(x))}, VOXELS,
                                properties, pixels_per_voxel=P, image_size=P, seed=SEED, n_max=N_MAX,
                                crop=CROP, derived=True)
    truth = iv.summarise(curves).set_index(["property", "target"])["true_slope"]
    # MD = clip(2.1 - 1.5 n / n_max + 0.5 (A / A_ref - 1)): falls by ~1.5 / n_max per added nucleus
    assert truth["count", "MD"] == pytest.approx(-1.5 / N_MAX, rel=0.25)
    assert truth["size", "MD"] > 0 and truth["coherence", "MD"] == pytest.approx(0, abs=1e-12)
    assert truth["coherence", "FA"] > 0.5  # FA = 0.05 + 0.85 C, C the nuclei's doubled-angle coherence
    _, row, col = VOXELS[2]
    table = _voxel(row, col, count=45)[1]
    assert iv.voxel_truth(table, N_MAX, P)["CC"] == 45
    expected_md = 2.1 - 1.5 * 45 / N_MAX + 0.5 * (np.mean(np.pi * table["semi_major"] * table["semi_minor"])
                                                  / nu.reference_area_px(P) - 1)
    assert iv.voxel_truth(table, N_MAX, P)["MD"] == pytest.approx(np.clip(expected_md, 0.1, 3.0))


def test_figure_and_markdown(curves):
    figure = iv.response_figure(curves)
    (axes,) = figure.axes
    assert len([line for line in axes.lines if line.get_linestyle() == "-"]) == 3
    assert len([line for line in axes.lines if line.get_linestyle() == "--"]) == 3
    assert axes.get_title().startswith("CC")
    text = iv.markdown(iv.summarise(curves))
    assert text.startswith("| property | target |") and text.count("\n") == 2 + 3


@pytest.mark.parametrize(("overrides", "where", "message"), [
    ({"colour": 1}, (9, 4), "expected one of count"),
    ({"count": 10_000}, (9, 4), "expected an integer from 0 to"),
    ({"coherence": 1.5}, (9, 4), "from 0 to 0.95"),
    ({"count": 3}, (0, 0), "holds no tissue"),
    (None, (12, 0), "grid is 12 x 14"),
])
def test_bad_requests_raise_input_error(overrides, where, message):
    with pytest.raises(InputError, match=message):
        iv.render_voxel(SAMPLE, *where, **OPTIONS, overrides=overrides)
