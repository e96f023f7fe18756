"""Explain step: each method against an independent computation of its formula, the Grad-CAM++ overflow,
score modes, mixed precision, map storage (local and gs://), trust measures, the CLI and the KFP component.

Tolerances: maps are float32 and the references float64, so maps must agree within 1e-5 of the map's
largest magnitude (1e-4 where tf-keras-vis's own float32 path is the reference); stored maps within
float16 precision (relative 2**-11).
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from types import SimpleNamespace

import h5py
import numpy as np
import pandas as pd
import pytest
import tensorflow as tf
from scipy.ndimage import zoom

from histoxai import layout
from histoxai.cli import main
from histoxai.components.explain import store, trust
from histoxai.components.explain.engine import SaliencyEngine
from histoxai.components.explain.explain import explain, map_statistics
from histoxai.components.explain.methods import Score, parse_method, parse_score
from histoxai.components.explain.tfkv import TfKerasVisEngine
from histoxai.config import from_dict
from histoxai.errors import InputError
from histoxai.model import build_model
from tests.train_data import write_blob_manifest

SIZE = 32
CONFIG = {"targets": ["MD", "CC"], "backbone": "tiny", "weights": None, "image_size": SIZE,
          "dense_units": 8, "feature_units": 4, "dropout": 0.0, "feature_dropout": 0.0}
KEYS = np.array([11, 22, 33], np.int64)


def _build(precision: str = "float32"):
    import keras

    keras.utils.set_random_seed(3)
    # CC starts near 300: an output "in the hundreds", where tf-keras-vis's exp(score) overflows
    return build_model(from_dict(CONFIG, "test"), target_means={"MD": 1.0, "CC": 300.0}, precision=precision)


@pytest.fixture(scope="module")
def net():
    return _build()


@pytest.fixture(scope="module")
def engine(net):
    return SaliencyEngine(net, gradient_batch=64)


@pytest.fixture(scope="module")
def images():
    return np.random.default_rng(0).uniform(0, 255, (3, SIZE, SIZE, 3)).astype(np.float32)


def _close(ours, reference, tolerance=1e-5):
    reference = np.asarray(reference, np.float64)
    scale = np.abs(reference).max()
    assert scale > 0, "degenerate reference map"
    np.testing.assert_allclose(ours, reference, rtol=0, atol=tolerance * scale)


def _activations_and_grads(net, layer, target, images, score=lambda y: y):
    """Independent TF tape: y, A and dS/dA for one layer, as float64."""
    import keras

    view = keras.Model(net.input, [net.get_layer(target).output, net.get_layer(layer).output])
    x = tf.constant(images)
    with tf.GradientTape() as tape:
        y, a = view(x)
        s = score(y[:, 0])
    g = tape.gradient(s, a)
    return (y.numpy()[:, 0].astype(np.float64), a.numpy().astype(np.float64), g.numpy().astype(np.float64))


def _zoom(cams):
    return np.stack([zoom(c, (SIZE / c.shape[0], SIZE / c.shape[1]), order=1) for c in cams])


SCORES = {"increase": lambda y: y, "decrease": lambda y: -y, "toward=290": lambda y: -(y - 290.0) ** 2}


@pytest.mark.parametrize("layer", ["tiny_conv3", "top_activation"])
@pytest.mark.parametrize("score", list(SCORES))
def test_gradcam_plus_plus_equals_paper_formula_with_exp_score_divided_out(net, engine, images, layer, score):
    y, a, g = _activations_and_grads(net, layer, "CC", images, SCORES[score])
    s = SCORES[score](y)
    e = np.exp(s - s.max())[:, None, None, None] * np.exp(s.max())  # exp(S), finite in float64 here
    first, second, third = e * g, e * g**2, e * g**3
    denominator = 2 * second + a.sum(axis=(1, 2), keepdims=True) * third
    alpha = np.where(second != 0, second / np.where(second != 0, denominator, 1), 0)
    alpha_sum = alpha.sum(axis=(1, 2), keepdims=True)
    alpha = alpha / np.where(alpha_sum != 0, alpha_sum, 1)  # tf-keras-vis's normalisation, as in the thesis
    weights = (np.maximum(first, 0) * alpha).sum(axis=(1, 2), keepdims=True)
    cam = np.maximum((weights * a).sum(axis=-1), 0) / e[:, :, :, 0]
    spec = parse_method(f"gradcam++:layer={layer}")
    ours, gap = engine.maps(images, "CC", spec, parse_score(score), np.zeros(3), KEYS)
    assert gap is None and ours.shape == (3, SIZE, SIZE)
    _close(ours, _zoom(cam))


def test_layercam_single_and_fused_layers_equal_their_formula(net, engine, images):
    cams = []
    for layer in ("tiny_conv2", "top_activation"):
        _, a, g = _activations_and_grads(net, layer, "MD", images)
        cams.append(_zoom(np.maximum((np.maximum(g, 0) * a).sum(axis=-1), 0)))
    spec = parse_method("layercam:layers=tiny_conv2")
    single, _ = engine.maps(images, "MD", spec, Score(), np.zeros(3), KEYS)
    _close(single, cams[0])
    fused, _ = engine.maps(images, "MD", parse_method("layercam:layers=tiny_conv2+top_activation,gamma=2"),
                           Score(), np.zeros(3), KEYS)
    scaled = [np.tanh(2 * c / c.max(axis=(1, 2), keepdims=True)) for c in cams]
    _close(fused, np.maximum(*scaled))


def _input_gradient(net, target, image, score=lambda y: y):
    import keras

    view = keras.Model(net.input, net.get_layer(target).output)
    x = tf.constant(image[None])
    with tf.GradientTape() as tape:
        tape.watch(x)
        s = score(view(x)[:, 0])
    return tape.gradient(s, x).numpy()[0].astype(np.float64)


def test_vanilla_gradient_is_abs_gradient_max_over_channels(net, engine, images):
    ours, _ = engine.maps(images, "MD", parse_method("vanilla"), Score(), np.zeros(3), KEYS)
    _close(ours, [np.abs(_input_gradient(net, "MD", im)).max(axis=-1) for im in images])


def test_smoothgrad_equals_mean_abs_gradient_over_seeded_copies_whatever_the_batching(net, engine, images):
    spec = parse_method("smoothgrad:sigma=0.3,n=5,seed=7")
    reference = []
    for image, key in zip(images, KEYS, strict=True):
        sigma = 0.3 * (image.max() - image.min())
        total = 0
        for copy in range(5):
            noise = tf.random.stateless_normal((SIZE, SIZE, 3), seed=[key, 7 * 1_000_003 + copy]).numpy()
            total = total + np.abs(_input_gradient(net, "CC", image + sigma * noise))
        reference.append((total / 5).max(axis=-1))
    ours, _ = engine.maps(images, "CC", spec, Score(), np.zeros(3), KEYS)
    _close(ours, reference)
    one_copy_per_pass = SaliencyEngine(net, gradient_batch=1)
    alone, _ = one_copy_per_pass.maps(images[1:2], "CC", spec, Score(), np.zeros(1), KEYS[1:2])
    np.testing.assert_allclose(alone[0], ours[1], rtol=1e-5, atol=1e-6 * np.abs(ours[1]).max())
    other_seed, _ = engine.maps(images, "CC", parse_method("smoothgrad:sigma=0.3,n=5,seed=8"), Score(),
                                np.zeros(3), KEYS)
    assert not np.allclose(other_seed, ours)


def test_integrated_gradients_riemann_sum_and_completeness(net, engine, images):
    steps, white = 64, 255.0
    view_score = []
    reference = []
    for image in images:
        path = [white + (k + 0.5) / steps * (image - white) for k in range(steps)]
        total = sum(_input_gradient(net, "CC", point) for point in path)
        reference.append(((image - white) * total / steps).sum(axis=-1))
    ours, gap = engine.maps(images, "CC", parse_method(f"ig:steps={steps}"), Score(), np.zeros(3), KEYS)
    _close(ours, reference)
    y_image = engine.predict(images, "CC").astype(np.float64)
    y_white = engine.predict(np.full_like(images, white), "CC").astype(np.float64)
    view_score = ours.reshape(3, -1).sum(axis=1, dtype=np.float64) - (y_image - y_white)
    np.testing.assert_allclose(gap, view_score, atol=1e-3 * np.abs(y_image - y_white).max())
    assert np.all(np.abs(gap) <= 0.05 * np.abs(y_image - y_white) + 1e-3)  # completeness holds


def test_outputs_in_the_hundreds_give_finite_gradcam_plus_plus_where_tf_keras_vis_gives_nan(net, engine,
                                                                                            images):
    import keras
    from tf_keras_vis.gradcam_plus_plus import GradcamPlusPlus

    assert engine.predict(images, "CC").min() > 100
    single = keras.Model(net.input, net.get_layer("CC").output)
    plain = GradcamPlusPlus(single)(lambda output: output[:, 0], images, penultimate_layer="top_activation",
                                    seek_penultimate_conv_layer=False, normalize_cam=False)
    assert np.isnan(plain).all()  # exp(~300) overflows float32
    spec = parse_method("gradcam++:layer=top_activation")
    ours, _ = engine.maps(images, "CC", spec, Score(), np.zeros(3), KEYS)
    assert np.isfinite(ours).all() and not map_statistics(ours)["map_blank"].any()
    fixed, _ = TfKerasVisEngine(net).maps(images, "CC", spec, Score(), np.zeros(3), KEYS)
    _close(ours, fixed, 1e-4)


def test_tf_keras_vis_engine_equals_batched_engine_for_deterministic_methods(net, engine, images):
    library = TfKerasVisEngine(net)
    for text in ("layercam:layers=tiny_conv2+top_activation", "vanilla"):
        spec = parse_method(text).with_layers("top_activation")
        expected, _ = engine.maps(images, "MD", spec, Score("decrease"), np.zeros(3), KEYS)
        got, _ = library.maps(images, "MD", spec, Score("decrease"), np.zeros(3), KEYS)
        _close(got, expected, 1e-4)


def test_score_modes(engine, images):
    y = engine.predict(images, "MD")
    ig = parse_method("ig:steps=8")
    up, _ = engine.maps(images, "MD", ig, Score("increase"), y, KEYS)
    down, _ = engine.maps(images, "MD", ig, Score("decrease"), y, KEYS)
    np.testing.assert_allclose(down, -up, atol=1e-6 * np.abs(up).max())
    vanilla = parse_method("vanilla")
    plain, _ = engine.maps(images, "MD", vanilla, Score(), y, KEYS)
    toward, _ = engine.maps(images, "MD", vanilla, parse_score("toward=0.5"), y, KEYS)
    _close(toward, 2 * np.abs(y - 0.5)[:, None, None] * plain)  # d/dx -(y - v)^2 = -2 (y - v) dy/dx
    at_truth, _ = engine.maps(images, "MD", vanilla, parse_score("toward=truth"), y, KEYS)
    assert map_statistics(at_truth)["map_blank"].all()  # the prediction already equals the reference
    assert parse_score("toward=truth") == Score("toward", None)
    for bad in ("up", "toward", "toward=x", "increase=1"):
        with pytest.raises(InputError, match=rf"score {bad!r}: expected"):
            parse_score(bad)


def test_method_parsing():
    spec = parse_method("smoothgrad:n=30,sigma=0.3")
    assert spec.setting == "sigma=0.3,n=30,seed=0" and spec.key == "smoothgrad:sigma=0.3,n=30,seed=0"
    assert parse_method("layercam").with_layers("top").get("layers") == ("top",)
    with pytest.raises(InputError, match="Score-CAM"):
        parse_method("scorecam")
    with pytest.raises(InputError, match="sigma='-1'"):
        parse_method("smoothgrad:sigma=-1")
    with pytest.raises(InputError, match="KEY among"):
        parse_method("vanilla:n=3")


@pytest.mark.parametrize("precision", ["mixed_float16", "mixed_bfloat16"])
def test_mixed_precision_model_is_explained_in_float32(net, engine, images, precision):
    mixed = _build(precision)
    mixed.set_weights(net.get_weights())
    assert any(layer.compute_dtype == precision.removeprefix("mixed_") for layer in mixed.layers)
    copy = SaliencyEngine(mixed)
    assert all(layer.compute_dtype == "float32" for layer in copy.model.layers)
    for text in ("gradcam++:layer=top_activation", "vanilla"):
        expected, _ = engine.maps(images, "CC", parse_method(text), Score(), np.zeros(3), KEYS)
        got, _ = copy.maps(images, "CC", parse_method(text), Score(), np.zeros(3), KEYS)
        _close(got, expected, 1e-6)


# ---- storage ----

def test_float16_storage_keeps_any_magnitude(tmp_path):
    rng = np.random.default_rng(1)
    maps = [rng.uniform(0, 3e-7, (8, 8)), rng.uniform(-2e5, 2e5, (8, 8)), np.zeros((8, 8)),
            np.where(rng.random((8, 8)) < 0.2, np.nan, rng.normal(size=(8, 8)))]
    with store.MapWriter(tmp_path, chunk_bytes=200) as writer:
        locations = [writer.append(m.astype(np.float32)) for m in maps]
    assert len({loc["map_file"] for loc in locations}) > 1  # chunks roll over
    table = pd.DataFrame(locations).assign(map_id=range(len(maps)))
    store.write_table(table, tmp_path / store.TABLE_NAME)
    reader = store.open_maps(str(tmp_path))
    for i, raw in enumerate(maps):
        got = reader.read(i)
        assert got.dtype == np.float32 and got.shape == (8, 8)
        np.testing.assert_array_equal(np.isnan(got), np.isnan(raw))
        np.testing.assert_allclose(got[~np.isnan(raw)], raw[~np.isnan(raw)], rtol=2**-11, atol=0)
    with pytest.raises(InputError, match="no map with map_id 9"):
        reader.read(9)


def test_display_normalisation_is_separate():
    raw = np.array([[0.0, 1.0], [2.0, np.nan]], np.float32)
    np.testing.assert_array_equal(store.minmax(raw)[0], [0, 0.5])
    assert np.isnan(store.minmax(raw)[1, 1])
    low, high = store.display_range([raw, raw * 10], percentiles=(0, 100))
    assert (low, high) == (0.0, 20.0)
    np.testing.assert_allclose(store.normalize(raw, (0, 20))[0], [0, 0.05], rtol=1e-6)


# ---- trust measures on hand-made cases ----

def test_mask_measures():
    mask = np.zeros((4, 4), bool)
    mask[:, :2] = True
    assert trust.mask_measures(mask.astype(float), mask) == (1.0, 1.0, 0.5)
    assert trust.mask_measures((~mask).astype(float), mask) == (0.0, 0.0, 0.5)
    mass, rank, area = trust.mask_measures(np.where(mask, 1.0, 3.0) - 2.0, mask)  # negatives do not count
    assert (mass, rank) == (0.0, 0.0)
    graded = np.tile(np.array([4.0, 3.0, 2.0, 1.0]), (4, 1))  # relevance falling left to right
    assert trust.mask_measures(graded, mask)[0] == pytest.approx(7 / 10)
    assert np.isnan(trust.mask_measures(np.zeros((4, 4)), mask)[0])


def test_phantom_masks_cut_the_voxel_block_like_ingest(tmp_path):
    folder = tmp_path / "7"
    (folder / "phantom_truth").mkdir(parents=True)
    (folder / layout.TRUTH_TARGETS).write_text(json.dumps({"grid": [2, 3], "image_shape": [8, 13]}))
    labels = np.zeros((8, 13), np.uint32)
    labels[0:4, 4:8] = 5        # voxel (0, 1): all nucleus
    labels[4:8, 8:10] = 9       # voxel (1, 2): left half of its block
    labels[:, 12] = 3           # column 12 lies outside every block (13 // 3 = 4 px per voxel)
    with h5py.File(folder / layout.TRUTH_LABELS, "w") as h5:
        h5["labels"] = labels
    patches = pd.DataFrame({"sample": ["7"] * 3, "row": [0, 1, 0], "col": [1, 2, 0]})
    masks = trust.phantom_masks(str(tmp_path), patches, 8)
    assert masks[("7", 0, 1)].all() and not masks[("7", 0, 0)].any()
    assert masks[("7", 1, 2)][:, :4].all() and not masks[("7", 1, 2)][:, 4:].any()
    with pytest.raises(InputError, match="phantom-dir"):
        trust.phantom_masks(str(tmp_path / "none"), patches, 8)


def test_deletion_and_insertion_reward_the_right_order():
    rng = np.random.default_rng(2)
    images = rng.uniform(0, 255, (4, 6, 6, 3)).astype(np.float32)
    linear = SimpleNamespace(predict=lambda x, target: x[..., 0].mean(axis=(1, 2)))  # S = mean of red
    blurred = np.zeros_like(images)
    best = trust._ranks(images[..., 0])
    curves = trust.perturbation_curves(linear, images, blurred, best, "t", Score(), np.zeros(4), 36, 2.5)
    expected = -np.cumsum(np.sort(images[..., 0].reshape(4, -1), axis=1)[:, ::-1], axis=1) / 36 / 2.5
    np.testing.assert_allclose(curves["deletion"][:, 1:], expected, rtol=1e-5)
    random = trust.perturbation_curves(linear, images, blurred, np.stack([rng.permutation(36)] * 4), "t",
                                       Score(), np.zeros(4), 36, 2.5)
    assert trust.auc(curves["deletion"]).mean() < trust.auc(random["deletion"]).mean()
    assert trust.auc(curves["insertion"]).mean() > trust.auc(random["insertion"]).mean()


def test_randomisation_pieces(net):
    def layer(name):
        return SimpleNamespace(name=name, weights=[1])

    names = ["stem_conv", "block6n_project_bn", "block6o_expand_conv", "block6o_bn", "top_conv", "top_bn",
             "conv5_block16_1_conv", "head_dense", "CC"]
    fake = SimpleNamespace(layers=[layer(n) for n in names], output_names=["CC"])
    assert [[x.name for x in b] for b in trust.backbone_blocks(fake)] == [
        ["conv5_block16_1_conv"], ["top_bn", "top_conv"], ["block6o_bn", "block6o_expand_conv"],
        ["block6n_project_bn"], ["stem_conv"]]
    stages = trust.randomization_stages(net, 2)
    assert [s for s, _ in stages] == ["head", "head + 1 block (tiny_conv3)", "head + 2 blocks (tiny_conv2)"]
    import keras

    copy = keras.models.clone_model(net)
    copy.set_weights(net.get_weights())
    trust.randomize_layers([copy.get_layer("tiny_conv3")], seed=0)
    changed = copy.get_layer("tiny_conv3").get_weights()[0]
    assert not np.allclose(changed, net.get_layer("tiny_conv3").get_weights()[0])
    untouched = copy.get_layer("tiny_conv2").get_weights()[0]
    assert np.array_equal(untouched, net.get_layer("tiny_conv2").get_weights()[0])
    same = np.arange(16.0).reshape(4, 4)
    assert trust.spearman(same, same) == pytest.approx(1.0)
    assert np.isnan(trust.spearman(same, np.ones((4, 4))))


# ---- the step ----

@pytest.fixture(scope="module")
def run_inputs(tmp_path_factory, net):
    folder = tmp_path_factory.mktemp("explain-in")
    manifest = write_blob_manifest(folder, n=40, size=SIZE, seed=1)
    frame = pd.read_parquet(manifest)
    frame.loc[frame["split"] == "test", "CC"] = 0.0  # y = 0: rΔ is undefined there
    frame.to_parquet(manifest, index=False)
    net.save(folder / "model.keras")
    return {"model": str(folder / "model.keras"), "data": str(manifest)}


ARGS = ["--methods", "gradcam++", "smoothgrad:n=4", "ig:steps=8", "--scores", "increase,toward=truth",
        "--max-patches", "6", "--batch-size", "4", "--gradient-batch", "8", "--trust-patches", "4",
        "--trust-steps", "2", "--randomize-blocks", "1"]


def test_cli_writes_maps_table_and_trust_report(run_inputs, tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["explain", "--model", run_inputs["model"], "--data", run_inputs["data"], "--out", str(out),
                 *ARGS]) == 0
    assert "maps for 6 patches" in capsys.readouterr().out
    maps = store.open_maps(str(out))
    table = maps.table
    assert len(table) == 6 * 2 * 3 * 2  # patches x targets x methods x scores
    assert set(table["split"]) == {"test"} and set(table["method"]) == {"gradcam++", "smoothgrad", "ig"}
    np.testing.assert_allclose(table["delta"], table["y_hat"] - table["y"])
    md = table["target"] == "MD"
    np.testing.assert_allclose(table.loc[md, "rdelta"], (table["y_hat"] / table["y"] - 1)[md] * 100)
    assert table.loc[~md, "rdelta"].isna().all()  # CC = 0 on these rows
    row = table.iloc[5]
    raw = maps.read(row["map_id"])
    assert raw.shape == (SIZE, SIZE) and np.nanmax(raw) == pytest.approx(row["map_max"], rel=2**-10)
    assert table["ig_gap"].notna().eq(table["method"] == "ig").all()
    assert (table["map_nan_fraction"] == 0).all()
    summary = json.loads((out / "explain.json").read_text())
    assert (summary["maps"], summary["nan_maps"], summary["cam_layer"]) == (len(table), 0, "top_activation")
    measures = pd.read_parquet(out / trust.TRUST_TABLE)
    assert {"deletion_auc", "random_insertion_auc", "rho: head", "randomization_flag"} <= set(
        measures.columns)
    assert measures["rho: head"].notna().sum() == 2 * 3  # first score only
    assert "Saliency trust report" in (out / "trust.md").read_text()
    assert "<table" in (out / "trust.html").read_text()
    curves = pd.read_parquet(out / trust.CURVES_TABLE)
    assert set(curves["order"]) == {"map", "random"} and curves["fraction"].max() == 1


def test_gcs_output_reads_back_like_local(run_inputs, tmp_path, gcs_bucket):
    options = {"methods": ["vanilla", "smoothgrad:n=3"], "targets": ["MD"], "max_patches": 5,
               "trust_patches": 0, "shard_range": (1, 2)}
    explain(run_inputs["model"], run_inputs["data"], str(tmp_path / "local"), **options)
    explain(run_inputs["model"], run_inputs["data"], f"{gcs_bucket}/runs/a", **options)
    local, remote = store.open_maps(str(tmp_path / "local")), store.open_maps(f"{gcs_bucket}/runs/a")
    assert remote.table["sample"].eq("2").all()  # shard 1 of the test rows holds sample 2
    pd.testing.assert_frame_equal(local.table, remote.table)
    for map_id in remote.table["map_id"]:
        np.testing.assert_array_equal(remote.read(map_id), local.read(map_id))


def test_tf_keras_vis_engine_through_the_step(run_inputs, tmp_path):
    options = {"methods": ["gradcam++", "vanilla"], "targets": ["CC"], "max_patches": 4, "trust_patches": 0}
    explain(run_inputs["model"], run_inputs["data"], str(tmp_path / "a"), **options)
    summary = explain(run_inputs["model"], run_inputs["data"], str(tmp_path / "b"), engine="tf-keras-vis",
                      **options)
    assert summary["engine"] == "tf-keras-vis" and summary["nan_maps"] == 0  # CC near 300: no overflow
    batched, library = store.open_maps(str(tmp_path / "a")), store.open_maps(str(tmp_path / "b"))
    for map_id in batched.table["map_id"]:
        _close(library.read(map_id), batched.read(map_id), 1e-3)  # float16 storage of both


@pytest.mark.parametrize(("extra", "message"), [
    (["--methods", "scorecam"], "Score-CAM"),
    (["--targets", "FA"], "not outputs of"),
    (["--shard-range", "5:6"], "spans 2 shards"),
    (["--samples", "9"], r"samples \['9'\] not found"),
])
def test_cli_rejects_bad_input_in_one_line_and_writes_nothing(run_inputs, tmp_path, capsys, extra, message):
    out = tmp_path / "run"
    assert main(["explain", "--model", run_inputs["model"], "--data", run_inputs["data"], "--out", str(out),
                 *extra]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and re.search(message, err)
    assert not out.exists()


def test_kfp_component_compiles(tmp_path):
    import yaml
    from kfp import compiler

    from histoxai.components.explain.component import explain_model
    from histoxai.images import GPU_IMAGE

    path = tmp_path / "explain.yaml"
    compiler.Compiler().compile(explain_model, str(path))
    spec = yaml.safe_load(Path(path).read_text())
    outputs = spec["root"]["outputDefinitions"]["artifacts"]
    assert {k: v["artifactType"]["schemaTitle"] for k, v in outputs.items()} == {
        "maps": "system.Dataset", "metrics": "system.Metrics", "trust_html": "system.HTML",
        "trust_markdown": "system.Markdown"}
    inputs = spec["root"]["inputDefinitions"]["artifacts"]
    assert inputs["model"]["artifactType"]["schemaTitle"] == "system.Model"
    executor = next(iter(spec["deploymentSpec"]["executors"].values()))
    assert executor["container"]["image"] == GPU_IMAGE
