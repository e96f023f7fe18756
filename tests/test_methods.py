"""Distinct methods by default: Grad-CAM++'s two alphas, LayerCAM's stage fusion per backbone, and no two
default methods giving one map (the formulas' shared checks: test_explain.py)."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import tensorflow as tf
from scipy.ndimage import zoom
from scipy.stats import spearmanr

from histoxai.components.explain.engine import SaliencyEngine
from histoxai.components.explain.methods import DEFAULT_METHODS, Score, parse_method
from histoxai.components.explain.tfkv import TfKerasVisEngine
from histoxai.config import from_dict
from histoxai.errors import InputError
from histoxai.model import build_model

SIZE = 32
CONFIG = {"targets": ["CC"], "backbone": "tiny", "weights": None, "image_size": SIZE, "dense_units": 8,
          "feature_units": 4, "dropout": 0.0, "feature_dropout": 0.0}
KEYS = np.array([5, 6, 7], np.int64)
# An output that moves by hundreds between patches, as a cell count does: the paper's alpha depends on
# the score's scale (channel contributions g_k sum A_k against 2), tf-keras-vis's and LayerCAM's do not.
HEAD_GAIN = 1000.0


@pytest.fixture(scope="module")
def net():
    import keras

    keras.utils.set_random_seed(3)
    model = build_model(from_dict(CONFIG, "test"), target_means={"CC": 300.0})
    kernel, bias = model.get_layer("CC").get_weights()
    model.get_layer("CC").set_weights([kernel * HEAD_GAIN, bias])
    return model


@pytest.fixture(scope="module")
def engine(net):
    return SaliencyEngine(net)


@pytest.fixture(scope="module")
def images():
    return np.random.default_rng(1).uniform(0, 255, (3, SIZE, SIZE, 3)).astype(np.float32)


def _maps(engine, images, text):
    spec = parse_method(text).with_layers("top_activation")
    return engine.maps(images, "CC", spec, Score(), np.zeros(len(images)), KEYS[:len(images)])[0]


def _rho(a, b) -> float:
    """Mean Spearman rho over patches."""
    return float(np.mean([spearmanr(x.ravel(), y.ravel())[0] for x, y in zip(a, b, strict=True)]))


def _zoom(cams):
    return np.stack([zoom(c, (SIZE / c.shape[0], SIZE / c.shape[1]), order=1) for c in cams])


def _activations_and_grads(net, layer, images):
    import keras

    view = keras.Model(net.input, [net.get_layer("CC").output, net.get_layer(layer).output])
    with tf.GradientTape() as tape:
        y, a = view(tf.constant(images))
        score = y[:, 0]
    g = tape.gradient(score, a)
    return a.numpy().astype(np.float64), g.numpy().astype(np.float64)


@pytest.mark.parametrize("layer", ["tiny_conv3", "top_activation"])
def test_gradcam_plus_plus_default_is_the_papers_alpha(net, engine, images, layer):
    a, g = _activations_and_grads(net, layer, images)
    denominator = 2 * g**2 + g**3 * a.sum(axis=(1, 2), keepdims=True)  # eq. 19, exp(S) divided out
    alpha = np.where(g != 0, g**2 / np.where(g != 0, denominator, 1), 0)  # no normalisation over space
    weights = (np.maximum(g, 0) * alpha).sum(axis=(1, 2), keepdims=True)
    reference = _zoom(np.maximum((weights * a).sum(axis=-1), 0))
    ours = _maps(engine, images, f"gradcam++:layer={layer}")
    assert parse_method("gradcam++").get("alpha") == "paper"
    np.testing.assert_allclose(ours, reference, rtol=0, atol=1e-5 * np.abs(reference).max())


def test_at_the_pooled_layer_tfkv_alpha_is_layercam_and_the_papers_is_not(engine, images):
    single_layercam = _maps(engine, images, "layercam:layers=top_activation")
    tfkv = _maps(engine, images, "gradcam++:alpha=tfkv")
    np.testing.assert_allclose(tfkv, single_layercam, rtol=0, atol=1e-5 * np.abs(single_layercam).max())
    assert _rho(_maps(engine, images, "gradcam++:alpha=paper"), single_layercam) < 0.8


def test_tf_keras_vis_library_computes_the_tfkv_variant(net, engine, images):
    spec = parse_method("gradcam++:alpha=tfkv").with_layers("top_activation")
    library, _ = TfKerasVisEngine(net).maps(images, "CC", spec, Score(), np.zeros(3), KEYS)
    ours = _maps(engine, images, "gradcam++:alpha=tfkv")
    np.testing.assert_allclose(library, ours, rtol=0, atol=1e-4 * np.abs(ours).max())


def test_gradcam_plus_plus_alpha_is_checked_and_named_in_the_key():
    assert parse_method("gradcam++").with_layers("top").key == "gradcam++:layer=top,alpha=paper"
    with pytest.raises(InputError, match="alpha='normalised'.*paper or tfkv"):
        parse_method("gradcam++:alpha=normalised")


def test_layercam_default_fuses_shallow_middle_and_last_stage_with_tanh_scaling(net, engine, images):
    layers = ("tiny_conv1", "tiny_conv2", "top_activation")
    assert engine.cam_layers(parse_method("layercam")) == layers
    assert parse_method("layercam").setting == "layers=stages,gamma=2.0"
    cams = []
    for layer in layers:
        a, g = _activations_and_grads(net, layer, images)
        cams.append(_zoom(np.maximum((np.maximum(g, 0) * a).sum(axis=-1), 0)))
    scaled = [np.tanh(2.0 * c / c.max(axis=(1, 2), keepdims=True)) for c in cams]
    fused = _maps(engine, images, "layercam")
    np.testing.assert_allclose(fused, np.max(scaled, axis=0), rtol=0, atol=1e-5)
    assert not np.allclose(fused, scaled[-1], atol=1e-3)  # the shallow stages change the map
    spec = parse_method("layercam")
    library, _ = TfKerasVisEngine(net).maps(images, "CC", spec, Score(), np.zeros(3), KEYS)
    np.testing.assert_allclose(library, fused, rtol=0, atol=1e-4)


def test_no_two_default_methods_give_the_same_map(engine, images):
    maps = {text: _maps(engine, images, text) for text in DEFAULT_METHODS}
    for first, second in itertools.combinations(DEFAULT_METHODS, 2):
        assert _rho(maps[first], maps[second]) < 0.9, (first, second)


# Every backbone's stage layers (strides 8, 16, 32) are checked where each is built once: test_model.py.
def test_stages_need_a_histoxai_model(net, images):
    import keras

    other = keras.Model(net.input, net.outputs, name="someone_elses")
    with pytest.raises(InputError, match="layercam:layers=stages needs a histoxai model"):
        SaliencyEngine(other).cam_layers(parse_method("layercam"))
    named = parse_method("layercam:layers=tiny_conv2+top_activation")
    assert SaliencyEngine(other).cam_layers(named) == ("tiny_conv2", "top_activation")
