"""Concept sensitivity on phantom patches with a hand-built model whose output is, by construction, a
linear function of one "darkness" channel: nuclei density moves it (and which way follows the output
weight's sign), a random concept does not, and bad inputs fail with one clear line."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from histoxai.errors import InputError
from histoxai.matfile import open_mat
from histoxai.saliency import concepts

PIXELS = 32  # phantom pixels per voxel: one voxel is one 32 x 32 patch
SAMPLE, CROP = 7, 12  # sample 7's top-left 12 x 12 voxels hold tissue with 0-8 nuclei per voxel
WEIGHT = 50.0


def _model(weight: float = WEIGHT):
    """image (0-255) -> features (1x1 conv, 4 channels: darkness, brightness, redness, blueness) ->
    global average -> CC = weight * mean darkness."""
    import keras

    kernel = np.zeros((1, 1, 3, 4), np.float32)
    kernel[0, 0, :, 0] = -1 / (3 * 255)  # darkness: relu(0.6 - mean RGB / 255)
    kernel[0, 0, :, 1] = 1 / (3 * 255)  # brightness
    kernel[0, 0, :, 2] = np.array([1, 0, -1]) / 255  # red over blue
    kernel[0, 0, :, 3] = np.array([0, -1, 1]) / 255  # blue over green
    bias = np.array([0.6, 0, 0, 0], np.float32)
    inputs = keras.Input((PIXELS, PIXELS, 3), name="image")
    conv = keras.layers.Conv2D(4, 1, activation="relu", name="features")
    x = conv(inputs)
    x = keras.layers.GlobalAveragePooling2D(name="head_pool")(x)
    dense = keras.layers.Dense(1, name="CC")
    outputs = dense(x)
    conv.set_weights([kernel, bias])
    dense.set_weights([np.array([[weight], [0], [0], [0]], np.float32), np.zeros(1, np.float32)])
    return keras.Model(inputs, {"CC": outputs}, name="darkness_model")


@pytest.fixture(scope="module")
def phantom(tmp_path_factory):
    """Every patch of a 12 x 12 voxel phantom crop, and its concept values from the true nuclei."""
    from histoxai import layout
    from histoxai.phantom import render_phantom

    folder = tmp_path_factory.mktemp("phantom")
    render_phantom(folder, [SAMPLE], pixels_per_voxel=PIXELS, n_max=8, crop=(CROP, CROP), seed=1)
    with open_mat(folder / str(SAMPLE) / layout.HE_MAT) as mat:
        slide = mat.read("HE")
    keys = pd.DataFrame([(str(SAMPLE), r, c) for r in range(CROP) for c in range(CROP)],
                        columns=["sample", "row", "col"])
    images = np.stack([slide[r * PIXELS:(r + 1) * PIXELS, c * PIXELS:(c + 1) * PIXELS]
                       for _, r, c in keys.itertuples(index=False)])
    table = concepts.patch_concepts(concepts.phantom_nuclei(folder / str(SAMPLE)), keys)
    table["random"] = np.random.default_rng(5).normal(size=len(table))
    return images, table


@pytest.fixture(scope="module")
def result(phantom):
    images, table = phantom
    return concepts.concept_sensitivity(_model(), images, table, ["CC"], layers=["features"], repeats=20)


def test_patch_concepts_count_measure_and_align_nuclei():
    nuclei = pd.DataFrame({"sample": [1, 1, 1, 2], "row": [0, 0, 0, 0], "col": [0, 0, 0, 1],
                           "area": [10.0, 20.0, 30.0, 5.0], "elongation": [1.0, 3.0, np.nan, 2.0],
                           "orientation": [0.1, 0.1 + np.pi, 0.1 + np.pi / 2, 0.3],
                           "haematoxylin": [1.0, 2.0, 3.0, 4.0], "label": [1, 2, 3, 4],
                           "centroid_x": [1.0, 2.0, 3.0, 4.0]})
    patches = pd.DataFrame({"sample": ["2", "1", "3"], "row": [0, 0, 5], "col": [1, 0, 5]})
    out = concepts.patch_concepts(nuclei, patches)
    assert list(out.columns) == ["sample", "row", "col", "density", "size", "elongation", "coherence",
                                 "haematoxylin"]
    assert out["density"].tolist() == [1, 3, 0]
    first = out.iloc[1]
    assert (first["size"], first["elongation"], first["haematoxylin"]) == (20.0, 2.0, 2.0)
    # angles 0.1 and 0.1 + pi are the same axis; 0.1 + pi/2 is across it: |(1 + 1 - 1) / 3| = 1/3
    assert first["coherence"] == pytest.approx(1 / 3)
    assert np.isnan(out.iloc[0]["coherence"]) and out.iloc[2][["size", "coherence"]].isna().all()


def test_phantom_nuclei_give_concepts_that_follow_the_truth(phantom):
    images, table = phantom
    assert len(table) == CROP * CROP == len(images)
    assert table["density"].max() == 8 and (table["density"] == 0).sum() > 10
    assert table["coherence"].between(0, 1).all() or table["coherence"].isna().any()
    darkness = (images.mean(axis=-1) < 0.6 * 255).mean(axis=(1, 2))
    assert np.corrcoef(darkness, table["density"])[0, 1] > 0.8


def test_density_moves_the_prediction_upwards_and_a_random_concept_does_not(phantom, result):
    by = result.set_index("concept")
    density, random = by.loc["density"], by.loc["random"]
    assert density["r2"] > 0.5 and density["verdict"] == concepts.MOVES and density["direction"] == "raises"
    assert density["effect_low"] > 0 and density["sensitivity_low"] > 0 and density["tcav"] == 1.0
    assert density["p_corrected"] < 0.05 < density["random_tcav"] < 0.95
    assert random["r2"] < 0.1 and random["p_corrected"] > 0.05
    assert random["verdict"] != concepts.MOVES and random["direction"] == "none"
    # the output reads darkness only: the sensitivity is the weight times v's darkness component, and
    # the effect per SD the weight times cov(darkness, density / SD)
    assert 0 < density["sensitivity"] <= WEIGHT
    images, table = phantom
    darkness = np.maximum(0.6 - images.mean(axis=-1) / 255, 0).mean(axis=(1, 2))
    expected = WEIGHT * np.cov(darkness, table["density"] / table["density"].std(ddof=0), ddof=0)[0, 1]
    assert density["effect_low"] < expected * 1.05 and density["effect_high"] > expected * 0.95
    # the ridge weights (the published RCV direction) cancel across the collinear channels: wrong sign
    assert density["rcv_sensitivity"] < 0
    assert result.attrs["tests"] == 6 and result.attrs["randoms"] >= 480
    text = concepts.markdown(result)
    assert "| CC | features | density |" in text and "raises | moves the prediction |" in text


def test_negating_the_output_weight_flips_sensitivity_and_tcav(phantom, result):
    images, table = phantom
    flipped = concepts.concept_sensitivity(_model(-WEIGHT), images, table, ["CC"], layers=["features"],
                                           repeats=20)
    np.testing.assert_allclose(flipped["sensitivity"], -result["sensitivity"], rtol=1e-5)
    np.testing.assert_allclose(flipped["tcav"], 1 - result["tcav"], atol=1e-9)
    np.testing.assert_allclose(flipped["r2"], result["r2"])
    assert flipped.set_index("concept").loc["density", "direction"] == "lowers"


def test_default_layers_of_a_histoxai_model_are_its_cam_layer_and_middle_stage(phantom):
    from histoxai.config import from_dict
    from histoxai.model import build_model

    images, table = phantom
    config = {"targets": ["MD", "CC"], "backbone": "tiny", "weights": None, "image_size": PIXELS,
              "dense_units": 8, "feature_units": 4, "dropout": 0.0, "feature_dropout": 0.0}
    model = build_model(from_dict(config, "test"))
    frame = table[["density"]].assign(flat=1.0, rare=np.where(np.arange(len(table)) < 5, 1.0, np.nan))
    out = concepts.concept_sensitivity(model, images, frame, ["MD", "CC"], repeats=2, randoms=20)
    assert sorted(set(out["layer"])) == ["tiny_conv2", "top_activation"] and len(out) == 12
    fitted = out[out["concept"] == "density"]
    assert fitted["r2"].notna().all() and fitted["sensitivity"].notna().all()
    assert set(out.loc[out["concept"] == "flat", "verdict"]) == {"undefined (constant)"}
    assert set(out.loc[out["concept"] == "rare", "verdict"]) == {"undefined (under 10 patches)"}
    assert out.loc[out["concept"] != "density", "p_value"].isna().all()


@pytest.mark.parametrize("case, message", [
    ("rows", "concepts: 143 rows for 144 images; expected one row per image"),
    ("layer", "layer 'nope': not in model darkness_model"),
    ("target", "target 'MD': not an output of model darkness_model"),
    ("size", "images: 16 x 16 px; expected 32 x 32 px"),
])
def test_bad_inputs_fail_with_one_line(phantom, case, message):
    images, table = phantom
    args = {"images": images, "concepts": table, "targets": ["CC"], "layers": ["features"]}
    if case == "rows":
        args["concepts"] = table.iloc[1:]
    elif case == "layer":
        args["layers"] = ["nope"]
    elif case == "target":
        args["targets"] = ["MD"]
    else:
        args["images"] = images[:, :16, :16]
    with pytest.raises(InputError) as caught:
        concepts.concept_sensitivity(_model(), **args, repeats=2)
    assert message in str(caught.value) and "\n" not in str(caught.value)
