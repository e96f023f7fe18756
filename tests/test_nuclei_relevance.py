"""Relevance per nucleus: the nuclei of a patch (phantom truth or QuPath discs), their properties, relevance
pooled per nucleus, and which properties drive a map beyond the input-only controls."""

from __future__ import annotations

import json
import shutil

import h5py
import numpy as np
import pandas as pd
import pytest

from histoxai import layout
from histoxai.errors import InputError
from histoxai.matfile import open_mat
from histoxai.saliency import nuclei, nuclei_stats
from histoxai.saliency import nucleus_relevance as relevance

SAMPLE, PIXELS, CROP = "6", 32, 12  # one voxel is one PIXELS x PIXELS map


@pytest.fixture(scope="module")
def phantom(tmp_path_factory):
    """A rendered phantom sample, its slide, and the patches with at least two nuclei."""
    from histoxai.phantom import render_phantom

    root = tmp_path_factory.mktemp("phantom")
    render_phantom(root, [int(SAMPLE)], pixels_per_voxel=PIXELS, n_max=8, crop=(CROP, CROP), seed=1)
    with open_mat(root / SAMPLE / layout.HE_MAT) as mat:
        slide = mat.read("HE")
    patches = {}
    for row in range(CROP):
        for col in range(CROP):
            labels, props = nuclei.patch_nuclei(str(root / SAMPLE), row, col, PIXELS)
            if len(props) >= 2:
                patches[(SAMPLE, row, col)] = (labels, props)
    assert len(patches) >= 20
    return root, slide, patches


def _images(slide):
    return lambda sample, row, col: slide[row * PIXELS:(row + 1) * PIXELS, col * PIXELS:(col + 1) * PIXELS]


def _maps(patches, make):
    """A maps table (one map per patch) and its reader, for maps made by make(labels, props)."""
    rows, maps = [], {}
    for i, ((sample, row, col), (labels, props)) in enumerate(patches.items()):
        maps[i] = make(labels, props)
        rows.append({"map_id": i, "sample": sample, "row": row, "col": col, "target": "CC",
                     "method": "synthetic", "setting": "", "score": "y_hat", "y": 1.0, "y_hat": 1.5})
    return pd.DataFrame(rows), maps.__getitem__


def _area_map(labels, props):
    area = np.zeros(labels.max() + 1)
    area[props["label"]] = props["area_px"]
    return area[labels].astype(np.float32)


def _one_line(err) -> str:
    message = str(err.value)
    assert "\n" not in message and message
    return message


# ---- pooling ----

def test_a_mask_map_gives_every_nucleus_mean_one_and_its_pixel_count_as_sum(phantom):
    _, _, patches = phantom
    for labels, props in list(patches.values())[:5]:
        pooled = relevance.pool_relevance((labels > 0).astype(np.float32), labels)
        ids, counts = np.unique(labels[labels > 0], return_counts=True)
        np.testing.assert_array_equal(pooled["label"], ids)
        np.testing.assert_array_equal(pooled["pixels"], counts)
        np.testing.assert_allclose(pooled["relevance_mean"], 1.0)
        np.testing.assert_allclose(pooled["relevance_sum"], counts)
        assert set(pooled["label"]) == set(props["label"])


def test_pooling_splits_signed_and_positive_relevance_and_ignores_non_finite_values():
    labels = np.array([[1, 1, 0], [2, 2, 2]])
    raw = np.array([[2.0, -4.0, 9.0], [np.nan, 1.0, 3.0]])
    pooled = relevance.pool_relevance(raw, labels).set_index("label")
    assert pooled.loc[1, ["relevance_sum", "relevance_mean", "positive_sum", "positive_mean"]].tolist() == \
        [-2.0, -1.0, 2.0, 1.0]
    assert pooled.loc[2, "relevance_sum"] == 4.0 and pooled.loc[2, "pixels"] == 3


# ---- properties on a hand-made label image ----

def _ellipse(shape, cx, cy, a, b, angle):
    y, x = np.mgrid[:shape[0], :shape[1]] + 0.5
    u = (x - cx) * np.cos(angle) + (y - cy) * np.sin(angle)
    v = -(x - cx) * np.sin(angle) + (y - cy) * np.cos(angle)
    return (u / a) ** 2 + (v / b) ** 2 <= 1


def _truth_folder(folder, labels, table, grid=(1, 1)):
    (folder / "phantom_truth").mkdir(parents=True)
    with h5py.File(folder / layout.TRUTH_LABELS, "w") as h5:
        h5["labels"] = labels.astype(np.uint32)
    table.to_parquet(folder / layout.TRUTH_NUCLEI)
    record = {"image_shape": list(labels.shape), "grid": list(grid)}
    (folder / layout.TRUTH_TARGETS).write_text(json.dumps(record))


def test_properties_of_two_hand_made_ellipses(tmp_path):
    shape = (40, 40)  # one 200 µm voxel: 5 µm per pixel
    first = _ellipse(shape, 10.5, 12.5, 6.0, 3.0, np.pi / 6)
    second = _ellipse(shape, 28.5, 25.5, 4.0, 4.0, 0.0)
    labels = np.where(first, 1, np.where(second, 2, 0))
    table = pd.DataFrame({"label": np.array([1, 2], np.uint32), "centroid_x": [10.5, 28.5],
                          "centroid_y": [12.5, 25.5], "semi_major": [6.0, 4.0], "semi_minor": [3.0, 4.0],
                          "angle": [np.pi / 6, 0.0], "haematoxylin": [1.2, 1.7]})
    _truth_folder(tmp_path / "s", labels, table)
    got, props = nuclei.patch_nuclei(str(tmp_path / "s"), 0, 0, 40)
    np.testing.assert_array_equal(got, labels)
    assert got.dtype == np.int32 and list(props["outline"]) == ["mask", "mask"]
    np.testing.assert_allclose(props["area_px"], [np.pi * 18, np.pi * 16])
    np.testing.assert_allclose(props["area_um2"], [np.pi * 18 * 25, np.pi * 16 * 25])
    np.testing.assert_allclose(props["elongation"], [2.0, 1.0])
    np.testing.assert_allclose(props["orientation"], [np.pi / 6, 0.0])
    np.testing.assert_allclose(props["nn_distance_um"], np.hypot(18, 13) * 5)
    assert props["nn3_distance_um"].isna().all()  # only one neighbour
    np.testing.assert_array_equal(props["density_per_mm2"], [0.0, 0.0])  # 111 µm apart, radius 25 µm
    # nearest neighbour at pixel centres: half the size takes every second pixel, labels unchanged
    half, _ = nuclei.patch_nuclei(str(tmp_path / "s"), 0, 0, 20)
    np.testing.assert_array_equal(half, labels[1::2, 1::2])


@pytest.mark.parametrize("table_labels", [[1, 3], [1, 3, 3]])  # a unique and a repeated label index
def test_a_label_missing_from_the_nuclei_table_is_named(tmp_path, table_labels):
    labels = np.zeros((40, 40), int)
    labels[2:6, 2:6], labels[20:24, 20:24] = 1, 2
    n = len(table_labels)
    table = pd.DataFrame({"label": np.array(table_labels, np.uint32), "centroid_x": [4.0] * n,
                          "centroid_y": [4.0] * n, "semi_major": [2.0] * n, "semi_minor": [2.0] * n,
                          "angle": [0.0] * n, "haematoxylin": [1.0] * n})
    _truth_folder(tmp_path / "s", labels, table)
    with pytest.raises(InputError, match=r"labels \[2\] are not in .*expected one table row per label"):
        nuclei.patch_nuclei(str(tmp_path / "s"), 0, 0, 40)


def test_neighbour_distances_and_density_count_the_nuclei_of_the_patch():
    frame = pd.DataFrame({"label": [1, 2, 3, 4], "centroid_x": [0.0, 3.0, 0.0, 40.0],
                          "centroid_y": [0.0, 0.0, 4.0, 0.0], "area_px": [5.0] * 4})
    props = nuclei.nucleus_properties(frame, (5.0, 5.0))
    np.testing.assert_allclose(props["nn_distance_um"], [15.0, 15.0, 20.0, 185.0])
    np.testing.assert_allclose(props["nn3_distance_um"][0], (15 + 20 + 200) / 3)
    per_mm2 = 1e6 / (np.pi * 25**2)
    np.testing.assert_allclose(props["density_per_mm2"], [2 * per_mm2, 2 * per_mm2, 2 * per_mm2, 0.0])
    assert props["elongation"].isna().all() and props["haematoxylin"].isna().all()


# ---- real layout: QuPath detections only ----

def test_a_sample_with_qupath_detections_only_gets_discs_with_the_tsv_areas(phantom, tmp_path):
    root, slide, patches = phantom
    real = tmp_path / "real"
    shutil.copytree(root / SAMPLE, real / SAMPLE)
    shutil.rmtree(real / SAMPLE / "phantom_truth")
    tsv = pd.read_csv(real / SAMPLE / layout.NUCLEI_TSV, sep="\t")
    keys = list(patches)[:6]
    rows, maps = [], {}
    for i, (sample, row, col) in enumerate(keys):
        labels, props = nuclei.patch_nuclei(str(real / SAMPLE), row, col, PIXELS)
        assert set(props["outline"]) == {"disc"} and props["elongation"].isna().all()
        np.testing.assert_allclose(props["area_px"], tsv["Nucleus_Area_px2"].to_numpy()[props["label"] - 1])
        # the discs sit where the true nuclei are: mostly the same pixels
        truth = patches[(sample, row, col)][0] > 0
        assert ((labels > 0) & truth).sum() >= 0.6 * truth.sum()
        maps[i] = (labels > 0).astype(np.float32)
        rows.append({"map_id": i, "sample": sample, "row": row, "col": col, "target": "MD", "method": "m"})
    table = relevance.nuclei_table(pd.DataFrame(rows), maps.__getitem__, str(real), images=_images(slide))
    assert set(table["outline"]) == {"disc"}
    assert set(table["method"]) == {"m", "control:darkness", "control:edges"}
    mine = table[table["method"] == "m"]
    np.testing.assert_allclose(mine["relevance_mean"], 1.0)
    np.testing.assert_allclose(mine["area_px"], tsv["Nucleus_Area_px2"].to_numpy()[mine["label"] - 1])


# ---- which properties drive a map ----

@pytest.fixture(scope="module")
def verdicts(phantom):
    root, slide, patches = phantom
    rng = np.random.default_rng(3)
    area_rows, area_read = _maps(patches, _area_map)
    random_rows, random_read = _maps(patches, lambda labels, props: rng.normal(size=labels.shape))
    random_rows = random_rows.assign(method="random", map_id=random_rows["map_id"] + 1000)
    reads = {**{i: area_read(i) for i in area_rows["map_id"]},
             **{i + 1000: random_read(i) for i in range(len(random_rows))}}
    rows = pd.concat([area_rows.assign(method="area"), random_rows], ignore_index=True)
    table = relevance.nuclei_table(rows, reads.__getitem__, lambda s: str(root / s), images=_images(slide))
    stats = nuclei_stats.property_relevance(table, seed=0)
    return table, stats, nuclei_stats.findings(stats)


def test_the_nuclei_table_has_one_row_per_nucleus_and_map(verdicts, phantom):
    table, _, _ = verdicts
    _, _, patches = phantom
    per_map = sum(len(props) for _, props in patches.values())
    assert (table["method"].value_counts() == per_map).all()  # area, random and both controls
    for column in ("map_id", "sample", "row", "col", "target", "method", "setting", "score", "y", "y_hat",
                   "label", "outline", *nuclei.PROPERTIES, "pixels", *relevance.RELEVANCE):
        assert column in table.columns
    assert (table.loc[table["method"].str.startswith("control:"), "map_id"] == -1).all()


def test_a_map_of_nucleus_area_drives_area_and_beats_the_controls(verdicts):
    _, stats, found = verdicts
    mine = found[(found["method"] == "area") & (found["kind"] == "signed")]
    row = mine[mine["property"] == "area_um2"].iloc[0]
    assert row["rho"] == pytest.approx(1.0) and row["rho_low"] == pytest.approx(1.0)
    assert row["verdict"] == "drives", row["reason"]
    assert abs(row["darkness_rho"]) < 1 and abs(row["edges_rho"]) < 1
    assert row["beta"] > 0 and row["beta_low"] > 0  # the regression agrees
    # elongation and haematoxylin do not set the area map's order beyond what area explains
    others = found[(found["method"] == "area") & found["property"].isin(["haematoxylin"])]
    assert (others["verdict"] != "drives").all()


def test_a_random_map_drives_nothing(verdicts):
    _, _, found = verdicts
    random = found[found["method"] == "random"]
    area = random[(random["property"] == "area_um2") & (random["kind"] == "signed")].iloc[0]
    assert area["rho_low"] <= 0 <= area["rho_high"] and area["verdict"] == "no evidence"
    assert (random["verdict"] != "drives").all()


def test_a_property_the_darkness_map_prefers_as_much_is_no_finding():
    row = {"rho": 0.4, "rho_low": 0.2, "rho_high": 0.6, "patches": 30, "property": "area_um2"}
    verdict, reason = nuclei_stats._verdict(row, {"darkness": 0.5, "edges": 0.1})
    assert verdict == "not beyond controls" and "darkness" in reason
    assert nuclei_stats._verdict(row, {"darkness": -0.3, "edges": 0.1})[0] == "drives"
    assert nuclei_stats._verdict(row, {})[0] == "untested"


def test_the_regression_finds_the_property_behind_relevance_and_skips_restated_ones():
    rng = np.random.default_rng(0)
    patches, per = 30, 8
    area = rng.lognormal(3, 0.3, patches * per)
    table = pd.DataFrame({
        "sample": "1", "row": np.repeat(np.arange(patches), per), "col": 0, "target": "MD", "method": "m",
        "area_um2": area, "elongation": 2 * area + 1, "haematoxylin": rng.normal(size=patches * per),
        # a bright or dim map per patch (between-patch offsets) plus a within-patch preference for area
        "relevance_mean": 10 * np.repeat(rng.normal(size=patches), per) + area
        + rng.normal(0, 3, patches * per),
    }).assign(positive_mean=lambda f: f["relevance_mean"].clip(lower=0))
    stats = nuclei_stats.property_relevance(table, properties=["area_um2", "elongation", "haematoxylin"])
    signed = stats[stats["kind"] == "signed"].set_index("property")
    assert signed.loc["area_um2", "beta_low"] > 0 and signed.loc["area_um2", "rho_low"] > 0
    assert np.isnan(signed.loc["elongation", "beta"])  # restates area: no beta of its own
    assert signed.loc["elongation", "rho"] == pytest.approx(signed.loc["area_um2", "rho"])
    assert signed.loc["haematoxylin", "beta_low"] < 0 < signed.loc["haematoxylin", "beta_high"]
    assert signed.loc["haematoxylin", "rho_low"] < 0 < signed.loc["haematoxylin", "rho_high"]


def test_the_bootstrap_is_seeded_and_resamples_patches(verdicts):
    table, stats, _ = verdicts
    again = nuclei_stats.property_relevance(table, seed=0)
    pd.testing.assert_frame_equal(stats, again)
    other = nuclei_stats.property_relevance(table, seed=1)
    random = (other["method"] == "random") & other["rho_low"].notna()
    assert not np.allclose(stats.loc[random, "rho_low"], other.loc[random, "rho_low"])
    assert (stats["patches"] <= len(table[["sample", "row", "col"]].drop_duplicates())).all()


def test_the_report_section_names_the_drivers(verdicts):
    _, stats, found = verdicts
    text = nuclei_stats.markdown(stats, found)
    assert text.startswith("## Which nuclear properties drive the maps")
    assert "- CC area (signed): rho +1.00" in text
    assert text.count("\n| CC |") == len(found)


# ---- bad inputs ----

def test_damaged_or_missing_inputs_give_one_line(phantom, tmp_path):
    root, _, _ = phantom
    with pytest.raises(InputError) as err:
        nuclei.patch_nuclei(str(tmp_path / "nothing"), 0, 0, 8)
    assert "nothing" in _one_line(err)

    broken = tmp_path / "broken"
    shutil.copytree(root / SAMPLE, broken)
    (broken / layout.TRUTH_LABELS).write_bytes(b"not an hdf5 file")
    with pytest.raises(InputError) as err:
        nuclei.patch_nuclei(str(broken), 9, 9, PIXELS)
    assert layout.TRUTH_LABELS in _one_line(err)

    with pytest.raises(InputError) as err:
        nuclei.patch_nuclei(str(root / SAMPLE), CROP, 0, PIXELS)
    assert "outside" in _one_line(err)

    no_area = tmp_path / "no_area"
    shutil.copytree(root / SAMPLE, no_area)
    shutil.rmtree(no_area / "phantom_truth")
    tsv = pd.read_csv(no_area / layout.NUCLEI_TSV, sep="\t").drop(columns="Nucleus_Area_px2")
    tsv.to_csv(no_area / layout.NUCLEI_TSV, sep="\t", index=False)
    with pytest.raises(InputError) as err:
        nuclei.patch_nuclei(str(no_area), 9, 9, PIXELS)
    assert "area" in _one_line(err)

    with pytest.raises(InputError) as err:
        relevance.pool_relevance(np.zeros((4, 4)), np.zeros((4, 5), int))
    _one_line(err)
    with pytest.raises(InputError) as err:
        nuclei_stats.property_relevance(pd.DataFrame({"sample": [1]}))
    assert "nuclei table" in _one_line(err)
    with pytest.raises(InputError) as err:
        relevance.nuclei_table(pd.DataFrame([{"map_id": 0, "sample": SAMPLE, "row": 9, "col": 9,
                                              "target": "CC", "method": "m"}]), lambda i: np.zeros((4, 4)),
                               str(root), images={})
    assert "images" in _one_line(err)
