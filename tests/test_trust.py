"""Trust measures that the input alone cannot fool: tie-fair rank accuracy and pixel orders, the
randomisation cascade (undefined is never a pass, sign flips, a weight-blind map), and the controls
(darkness, edges) scored on phantom patches against the phantom's true nuclei."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from histoxai.matfile import open_mat
from histoxai.saliency import controls, randomization, trust
from tests.test_explain import SIZE, _build

PIXELS = 32  # phantom pixels per voxel: one voxel is one SIZE x SIZE patch


@pytest.fixture(scope="module")
def net():
    return _build()


@pytest.fixture(scope="module")
def phantom(tmp_path_factory):
    """Patches of a 20 x 20 voxel phantom crop that hold nuclei, with their true nuclei masks."""
    from histoxai import layout
    from histoxai.phantom import render_phantom

    folder = tmp_path_factory.mktemp("phantom")
    render_phantom(folder, [3], pixels_per_voxel=PIXELS, crop=(20, 20), seed=1)
    with open_mat(folder / "3" / layout.HE_MAT) as mat:
        slide = mat.read("HE")
    keys = pd.DataFrame([("3", r, c) for r in range(20) for c in range(20)], columns=["sample", "row", "col"])
    masks = trust.phantom_masks(str(folder), keys, PIXELS)
    chosen = [(r, c) for _, r, c in keys.itertuples(index=False) if masks[("3", r, c)].any()]
    images = np.stack([slide[r * PIXELS:(r + 1) * PIXELS, c * PIXELS:(c + 1) * PIXELS] for r, c in chosen])
    return images.astype(np.float32), [masks[("3", r, c)] for r, c in chosen]


# ---- ties ----

def _tied_case():
    rng = np.random.default_rng(4)
    relevance = rng.integers(0, 3, (12, 12)).astype(float)  # three levels: ties everywhere
    mask = rng.random((12, 12)) < 0.3
    return relevance, mask


def test_rank_accuracy_does_not_depend_on_where_tied_pixels_sit():
    relevance, mask = _tied_case()
    expected = trust.mask_measures(relevance, mask)
    for turn in (np.flipud, np.fliplr, np.transpose, lambda a: np.rot90(a, 2)):
        got = trust.mask_measures(turn(relevance), turn(mask))
        np.testing.assert_allclose(got, expected, rtol=0, atol=1e-12)


def test_tied_pixels_count_by_the_share_of_their_group_in_the_top_k():
    relevance = np.array([[1.0, 1.0, 1.0, 0.0]])  # K = 1; three pixels tie for the first place
    assert trust.mask_measures(relevance, np.array([[True, False, False, False]]))[1] == pytest.approx(1 / 3)
    relevance, mask = _tied_case()
    assert trust.mask_measures(np.full((12, 12), 2.0), mask)[1] == pytest.approx(mask.mean(), abs=1e-12)
    assert trust.mask_measures(np.full((12, 12), 2.0), mask)[1] == trust.mask_measures(
        np.full((12, 12), 2.0), mask)[2]


def test_pixel_order_breaks_ties_at_random_with_a_seed_nan_last():
    maps = np.zeros((1, 6, 6))
    maps[0, 0, 0] = np.nan
    maps[0, 5, 5] = 1.0
    order = trust._ranks(maps, seed=0)[0]
    assert order[0] == 35 and order[-1] == 0  # the top pixel first, NaN last
    assert not np.array_equal(order[1:-1], np.arange(1, 35))  # tied zeros are not in raster order
    np.testing.assert_array_equal(order, trust._ranks(maps, seed=0)[0])
    assert not np.array_equal(order, trust._ranks(maps, seed=1)[0])


# ---- randomisation ----

def test_blank_or_nan_maps_are_undefined_never_a_pass():
    rng = np.random.default_rng(0)
    trained = rng.normal(size=(3, 16, 16))
    for after in (np.zeros((3, 16, 16)), np.full((3, 16, 16), np.nan)):
        result = randomization.compare(trained, after)
        assert np.isnan(result["signed_rho"]) and result["undefined"] == 1.0
        assert randomization.state(result) == "undefined"
    one_blank = np.concatenate([rng.normal(size=(2, 16, 16)), np.zeros((1, 16, 16))])
    assert randomization.state(randomization.compare(trained, one_blank)) == "undefined"
    assert randomization.state(randomization.compare(trained, rng.normal(size=(3, 16, 16)))) == "passes"


def test_a_sign_flip_is_caught_by_the_signed_rank_correlation():
    trained = np.random.default_rng(1).normal(size=(2, 16, 16))
    same, flipped = randomization.compare(trained, trained), randomization.compare(trained, -trained)
    assert same["signed_rho"] == pytest.approx(1) and flipped["signed_rho"] == pytest.approx(-1)
    assert flipped["abs_rho"] == pytest.approx(1) and flipped["ssim"] == pytest.approx(1)
    assert randomization.state(flipped) == "fails"  # the same pixels, only the sign changed


def test_ssim_is_one_for_equal_maps_and_low_for_unrelated_ones():
    rng = np.random.default_rng(2)
    first = rng.random((32, 32))
    assert randomization.ssim(first, 3 * first + 1) == pytest.approx(1)
    assert randomization.ssim(first, rng.random((32, 32))) < 0.2
    assert np.isnan(randomization.ssim(first, np.ones((32, 32))))


def test_full_cascade_to_the_input_flags_a_map_blind_to_the_weights(net):
    blocks = randomization.backbone_blocks(net)
    stages = randomization.randomization_stages(net)
    assert [s for s, _ in stages] == ["head", "head + 1 block (tiny_conv3)", "head + 2 blocks (tiny_conv2)",
                                      "head + 3 blocks (tiny_conv1) (to the input)"]
    every = {layer.name for layer in net.layers if layer.weights}
    assert {layer.name for layer in stages[-1][1]} == every  # the last stage leaves no weight trained
    bounded = randomization.randomization_stages(net, 1)
    assert len(bounded) == 3 and bounded[-1][1] == stages[-1][1] and len(blocks) == 3

    images = np.random.default_rng(0).uniform(0, 255, (3, SIZE, SIZE, 3)).astype(np.float32)
    edge_maps = controls.edges(images)
    blank = np.zeros((3, SIZE, SIZE))
    weights = [w.copy() for w in net.get_weights()]
    seen = []

    def compute(copy, last):
        seen.append(float(np.abs(copy.get_layer("tiny_conv1").get_weights()[0] - weights[0]).max()))
        return {"edges": edge_maps, "blank": blank}

    records, last = randomization.cascade(net, stages, compute, {"edges": edge_maps, "blank": blank}, seed=0)
    assert seen[0] == 0 and seen[-1] > 0  # the copy is randomised stage by stage, down to the stem
    assert all(np.array_equal(a, b) for a, b in zip(net.get_weights(), weights, strict=True))  # original kept
    final = {r["key"]: r for r in records if r["stage_number"] == len(stages) - 1}
    assert randomization.state(final["edges"]) == "fails" and final["edges"]["abs_rho"] == pytest.approx(1)
    assert randomization.state(final["blank"]) == "undefined"


def test_cascade_plot_draws_every_stage_method_and_target(net):
    import io

    from PIL import Image

    from histoxai.saliency.cascade_plot import cascade_figure, cascade_png

    stages = randomization.randomization_stages(net)
    images = np.random.default_rng(0).uniform(0, 255, (3, SIZE, SIZE, 3)).astype(np.float32)
    edge_maps, blank = controls.edges(images), np.zeros((3, SIZE, SIZE))
    noise = np.random.default_rng(1)
    trained = {("MD", "edges"): edge_maps, ("MD", "noise"): noise.random((3, SIZE, SIZE)),
               ("CC", "edges"): edge_maps, ("CC", "blank"): blank}

    def compute(copy, last):
        return {("MD", "edges"): edge_maps, ("MD", "noise"): noise.random((3, SIZE, SIZE)),
                ("CC", "edges"): edge_maps, ("CC", "blank"): blank}

    records, _ = randomization.cascade(net, stages, compute, trained, seed=0)
    cascade = pd.DataFrame([{"target": r["key"][0], "method": r["key"][1],
                             **{k: v for k, v in r.items() if k != "key"}} for r in records])
    figure = cascade_figure(cascade)
    panels = [axes for axes in figure.axes if axes.get_title(loc="left")]
    assert [axes.get_title(loc="left").split(":")[0] for axes in panels] == ["MD", "CC"]
    for axes, target in zip(panels, ["MD", "CC"], strict=True):
        lines = {line.get_label(): line for line in axes.get_lines()}
        rows = cascade[cascade["target"] == target]
        for method in rows["method"].unique():
            part = rows[rows["method"] == method].sort_values("stage_number")
            for column, label, style in (("abs_rho", "|rho|", "-"), ("signed_rho", "signed rho", "None")):
                line = lines[f"{method}: {label}"]
                values = part[column].to_numpy(dtype=float)
                finite = np.isfinite(values)  # undefined stages (a blank map) are left out, not drawn as 0
                assert list(line.get_xdata()) == list(part["stage_number"][finite])
                assert np.allclose(line.get_ydata(), values[finite]) and line.get_linestyle() == style
        other = lines.get("noise: |rho|", lines.get("blank: |rho|"))
        assert lines["edges: |rho|"].get_color() != other.get_color()  # one colour per method
        assert list(axes.get_xticks()) == list(range(len(stages))) and axes.get_ylim() == (-1.05, 1.05)
        band = axes.patches[0]  # the shaded band where |rho| passes
        assert (band.get_y(), band.get_height()) == (-randomization.RANDOMIZATION_FLAG,
                                                     2 * randomization.RANDOMIZATION_FLAG)
    assert len(lines["blank: |rho|"].get_xdata()) == 0  # CC: a blank map is undefined at every stage
    listing = figure.get_supxlabel().splitlines()
    assert listing == [f"stage {n}: {name} randomised" for n, (name, _) in enumerate(stages)]
    legend = [text.get_text() for text in figure.legends[0].get_texts()]
    assert legend[:3] == ["edges", "noise", "blank"] and "|rho| < 0.5 (passes)" in legend

    png = cascade_png(cascade)
    image = Image.open(io.BytesIO(png))
    assert image.format == "PNG" and image.size[0] > 600 and png == cascade_png(cascade.copy())
    assert png != cascade_png(cascade.assign(abs_rho=cascade["abs_rho"] * 0.5))


# ---- controls ----

def test_darkness_map_has_the_issue_figures_and_is_refused(phantom):
    images, masks = phantom
    inputs = controls.input_maps(images)
    row = controls.mask_row(inputs["darkness"], inputs, masks)
    # against the area baseline alone the darkness map would look excellent
    assert row["mask_rank_accuracy"] == pytest.approx(1.0) and row["mask_mass"] > 1.5 * row["mask_area"]
    assert 0.1 < row["mask_mass"] < 0.4 and row["mask_area"] < 0.15
    assert controls.verdict(row) == "does not beat: darkness, edges"
    # darkness to the 4th power beats the input controls on the mask measures alone; a map that ignores
    # the weights fails the randomisation check, so the verdict still refuses it
    sharp = inputs["darkness"] ** 4
    sharper = controls.mask_row(sharp, inputs, masks)
    assert sharper["mask_mass"] > 0.5 and controls.not_beaten(sharper) == []
    check = randomization.state(randomization.compare(sharp, sharp))
    assert controls.verdict({**sharper, "randomization": check}) == "randomisation check fails"


TRUSTED = controls.TRUSTED


def test_a_map_equal_to_the_nuclei_mask_beats_every_control(phantom):
    images, masks = phantom
    inputs = controls.input_maps(images)
    truth = np.stack(masks).astype(np.float32)
    row = controls.mask_row(truth, inputs, masks)
    assert (row["mask_mass"], row["mask_rank_accuracy"]) == (1.0, 1.0)
    assert controls.verdict(row) == TRUSTED
    assert controls.verdict({**row, "randomization": "undefined"}) == "randomisation check undefined"
    noisy = controls.mask_row(truth + np.random.default_rng(0).random(truth.shape) * 4, inputs, masks)
    assert noisy["mask_rank_accuracy"] < 1 and "darkness" in controls.not_beaten(noisy)  # no tie at 1


def test_verdict_names_each_control_not_beaten_on_deletion_and_insertion():
    row = {"deletion_auc": -0.5, "insertion_auc": 0.4, "random_deletion_auc": -0.1,
           "random_insertion_auc": 0.1, "darkness_deletion_auc": -0.6, "darkness_insertion_auc": 0.2,
           "edges_deletion_auc": -0.2,
           "edges_insertion_auc": np.nan, "randomized_deletion_auc": -0.3, "randomized_insertion_auc": 0.5}
    assert controls.verdict(row) == "does not beat: darkness, randomised model"
    assert controls.not_beaten({**row, "deletion_auc": np.nan}) == ["random", "darkness", "edges",
                                                                    "randomised model"]


# ---- known-truth targets ----

def test_derived_phantom_targets_are_scored_against_the_nuclei_too(tmp_path, phantom):
    from histoxai.phantom import render_phantom

    render_phantom(tmp_path / "derived", [4], pixels_per_voxel=16, crop=(3, 3), seed=1, targets="derived")
    render_phantom(tmp_path / "real", [4], pixels_per_voxel=16, crop=(3, 3), seed=1)
    assert trust.mask_targets(str(tmp_path / "derived"), ["4"]) == ("CC", "MD", "FA", "FAIP")
    assert trust.mask_targets(str(tmp_path / "real"), ["4"]) == ("CC",)
    images, masks = phantom
    truth = np.stack(masks).astype(np.float32)
    signed = np.where(truth > 0, -1.0, 0.02)  # evidence against a higher MD on the nuclei
    assert trust.mask_measures(trust.relevance_for("CC", signed)[0], masks[0])[0] == 0  # positive part
    row = controls.mask_row(trust.relevance_for("MD", signed), controls.input_maps(images), masks)
    assert row["mask_mass"] > 0.7 and controls.verdict(row) == TRUSTED
