"""Explain methods: each against an independent computation of its formula, the Grad-CAM++ overflow,
score modes and mixed precision (the step itself: test_explain_step.py).

Tolerances: maps are float32 and the references float64, so maps must agree within 1e-5 of the map's
largest magnitude (1e-4 where tf-keras-vis's own float32 path is the reference); stored maps (in
test_explain_step.py) within float16 precision (relative 2**-11).
"""

from __future__ import annotations

import numpy as np
import pytest
import tensorflow as tf
from scipy.ndimage import zoom

from histoxai.components.explain.engine import SaliencyEngine
from histoxai.components.explain.explain import map_statistics
from histoxai.components.explain.methods import Score, parse_method, parse_score
from histoxai.components.explain.tfkv import TfKerasVisEngine
from histoxai.config import from_dict
from histoxai.errors import InputError
from histoxai.model import build_model

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
def test_gradcam_plus_plus_tfkv_alpha_equals_library_formula_exp_score_divided_out(net, engine, images, layer,
                                                                                   score):
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
    spec = parse_method(f"gradcam++:layer={layer},alpha=tfkv")
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
    spec = parse_method("gradcam++:layer=top_activation,alpha=tfkv")
    ours, _ = engine.maps(images, "CC", spec, Score(), np.zeros(3), KEYS)
    assert np.isfinite(ours).all() and not map_statistics(ours)["map_blank"].any()
    fixed, _ = TfKerasVisEngine(net).maps(images, "CC", spec, Score(), np.zeros(3), KEYS)
    _close(ours, fixed, 1e-4)


def test_tf_keras_vis_engine_equals_batched_engine_for_deterministic_methods(net, engine, images):
    library = TfKerasVisEngine(net)
    for text in ("gradcam++:alpha=tfkv", "layercam:layers=tiny_conv2+top_activation", "layercam", "vanilla"):
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
    assert parse_method("layercam").with_layers("top").get("layers") == ("stages",)
    assert parse_method("layercam:layers=top").get("layers") == ("top",)
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
