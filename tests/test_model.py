"""The model: every backbone builds, trains a step and has its saliency layers; preprocessing, R² metric,
schedule, phases, weights."""

from __future__ import annotations

import math

import keras
import numpy as np
import pytest
import scipy.ndimage as ndi
import tensorflow as tf

from histoxai import model as models
from histoxai import storage
from histoxai.components.explain.engine import SaliencyEngine
from histoxai.components.explain.methods import parse_method
from histoxai.config import BACKBONES, MIN_IMAGE_SIZE, from_dict
from histoxai.errors import InputError

pytestmark = pytest.mark.slow  # a long file: it starts first (tests/conftest.py)

# keras.applications module whose preprocess_input belongs to each backbone
PREPROCESS_MODULES = {
    "MobileNet": "mobilenet", "MobileNetV2": "mobilenet_v2", "MobileNetV3Small": "mobilenet_v3",
    "MobileNetV3Large": "mobilenet_v3", "ConvNeXtTiny": "convnext", "ConvNeXtSmall": "convnext",
    "DenseNet121": "densenet", "EfficientNetV2S": "efficientnet_v2",
}
# ConvNeXtSmall is ConvNeXtTiny's code with a deeper third stage: its eager training step (15 s here,
# twice Tiny's) would test nothing Tiny's does not, so it is built and checked but not stepped
NOT_STEPPED = {"ConvNeXtSmall"}


def small_config(**values):
    base = {"targets": ["MD", "FA"], "backbone": "tiny", "weights": None, "image_size": MIN_IMAGE_SIZE,
            "lr_schedule": "none", "learning_rate": 1e-3, "dense_units": 8, "feature_units": 4}
    return from_dict({**base, **values}, "test")


@pytest.mark.parametrize("backbone", BACKBONES)
def test_backbone_builds_trains_one_step_and_has_its_saliency_layers(backbone):
    config = small_config(backbone=backbone)
    net = models.build_model(config, target_means={"MD": 1.0, "FA": 0.3})
    if backbone != "tiny":  # LayerCAM's default layers: the stages at strides 8, 16 and 32, then the CAM one
        layers = SaliencyEngine(net).cam_layers(parse_method("layercam"))
        spec = models.BACKBONE_SPECS[backbone]
        assert layers == (*spec.stages.split("+"), spec.cam_layer)
        assert [MIN_IMAGE_SIZE // net.get_layer(name).output.shape[1] for name in layers] == [8, 16, 32]
    models.set_phase(net, "finetune")
    models.compile_model(net, config, steps_per_epoch=1, jit_compile=False)
    net.run_eagerly = True  # one step: tracing a backbone's full gradient graph takes minutes on 2 cores
    head = net.get_layer("MD").kernel.numpy().copy()
    x = np.random.default_rng(0).uniform(0, 255, (4, 32, 32, 3)).astype("float32")
    y = {"MD": np.linspace(0.5, 1.5, 4, dtype="float32")[:, None],
         "FA": np.linspace(0.1, 0.4, 4, dtype="float32")[:, None]}
    if backbone not in NOT_STEPPED:
        logs = net.train_on_batch(x, y, return_dict=True)
        assert np.isfinite(logs["loss"])
        assert not np.allclose(net.get_layer("MD").kernel.numpy(), head), "one step must move the head"
    assert set(net.output_names) == {"MD", "FA"}
    assert float(net.get_layer("MD").bias.numpy()[0]) == pytest.approx(1.0, abs=0.01)  # started at mean
    # The CAM layer: each backbone's last activation, reachable by its fixed name, 4-D.
    assert models.cam_layer_name(net) == models.CAM_LAYERS[backbone]
    assert len(net.get_layer(models.CAM_LAYERS[backbone]).output.shape) == 4
    if backbone == "EfficientNetV2S":
        assert models.CAM_LAYERS[backbone] == "top_activation"
    # Preprocessing equals the application's own preprocess_input (or the application carries it).
    if backbone in PREPROCESS_MODULES:
        module = getattr(keras.applications, PREPROCESS_MODULES[backbone])
        if models.BACKBONE_SPECS[backbone].preprocess is None:
            np.testing.assert_array_equal(module.preprocess_input(x.copy()), x)
        else:
            np.testing.assert_allclose(net.get_layer("preprocess")(x).numpy(),
                                       module.preprocess_input(x.copy()), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("jit", [False, True])
def test_r2_metric_equals_numpy_over_batches(jit):
    rng = np.random.default_rng(1)
    y = 1000 + rng.normal(0, 3, 257)  # a large mean with little spread: the hard case for streaming
    p = y + rng.normal(0.5, 1.5, 257)
    metric = models.R2Score()
    update = tf.function(metric.update_state, jit_compile=jit)
    for start in range(0, 257, 50):
        update(tf.constant(y[start:start + 50, None], tf.float32),
               tf.constant(p[start:start + 50, None], tf.float16 if jit else tf.float32))
    p_seen = p.astype(np.float16).astype(np.float64) if jit else p
    expected = 1 - np.sum((y - p_seen) ** 2) / np.sum((y - y.mean()) ** 2)
    assert float(metric.result()) == pytest.approx(expected, abs=2e-3)
    metric.reset_state()
    assert float(metric.result()) == 0.0


def test_warmup_cosine_schedule_at_chosen_steps():
    config = small_config(lr_schedule="warmup_cosine", initial_lr=1e-5, warmup_target_lr=5e-5,
                          warmup_epochs=17, decay_epochs=60)
    schedule = models.learning_rate(config, steps_per_epoch=10)
    at = {step: float(schedule(step)) for step in (0, 85, 170, 170 + 300, 170 + 600, 2000)}
    assert at[0] == pytest.approx(1e-5)
    assert at[85] == pytest.approx(3e-5)             # halfway through the linear warmup
    assert at[170] == pytest.approx(5e-5)            # warmup target reached
    assert at[470] == pytest.approx(2.5e-5)          # cosine halfway: 0.5 * (1 + cos(pi/2))
    assert at[770] == pytest.approx(0.0, abs=1e-12)  # fully decayed
    assert at[2000] == pytest.approx(0.0, abs=1e-12)
    assert models.learning_rate(small_config(learning_rate=3e-5), 10) == 3e-5
    optimizer = models.make_optimizer(small_config(optimizer="adamw", weight_decay=0.008), 10)
    assert isinstance(optimizer, keras.optimizers.AdamW) and optimizer.weight_decay == pytest.approx(0.008)


def test_phases_freeze_then_unfreeze_backbone():
    config = small_config(backbone="MobileNetV3Small")
    net = models.build_model(config)
    models.set_phase(net, "frozen")
    trainable = {v.path.split("/")[0] for v in net.trainable_variables}
    assert trainable == {"head_dense", "head_MD_features", "head_FA_features", "MD", "FA"}
    batchnorms = [layer for layer in net.layers if isinstance(layer, keras.layers.BatchNormalization)]
    assert batchnorms and not any(layer.trainable for layer in batchnorms)  # inference mode
    models.set_phase(net, "finetune")
    assert len(net.trainable_variables) > 100 and all(layer.trainable for layer in batchnorms)
    models.set_phase(net, "finetune", finetune_batchnorm=False)
    assert not any(layer.trainable for layer in batchnorms)
    assert any(layer.trainable for layer in net.layers if isinstance(layer, keras.layers.Conv2D))


def test_rotations_match_reference_and_compile_with_xla():
    rng = np.random.default_rng(2)
    images = rng.uniform(0, 255, (2, 33, 33, 3)).astype("float32")
    rotate = tf.function(models.rotate_images, jit_compile=True)
    out = rotate(tf.constant(images), tf.constant(np.deg2rad([7.0, -4.0]), tf.float32)).numpy()
    for image, got, degrees in zip(images, out, (7.0, -4.0), strict=True):
        expected = ndi.rotate(image, degrees, axes=(1, 0), reshape=False, order=1, mode="mirror")
        np.testing.assert_allclose(got, expected, atol=0.01)
    rot90 = models.RandomRot90(seed=3)
    turned = tf.function(lambda x: rot90(x, training=True), jit_compile=True)(tf.constant(images)).numpy()
    for image, got in zip(images, turned, strict=True):
        assert any(np.array_equal(np.rot90(image, k), got) for k in range(4))
    small = models.RandomSmallRotation(10, seed=4)
    np.testing.assert_array_equal(small(images, training=False), images)  # inference: untouched


@pytest.mark.parametrize("precision", ["float32", "mixed_float16"])
def test_xla_train_step_with_augmentations_and_r2(precision):
    """The GPU setup (XLA, mixed precision) compiles as one graph, augmentations and metric included."""
    config = small_config(augment_flip=True, augment_rot90=True, augment_rotation_degrees=10)
    net = models.build_model(config, precision=precision)
    models.compile_model(net, config, steps_per_epoch=1, jit_compile=True)
    x = np.random.default_rng(7).uniform(0, 255, (8, 32, 32, 3)).astype("float32")
    y = {"MD": np.linspace(0, 1, 8, dtype="float32")[:, None], "FA": np.ones((8, 1), "float32")}
    logs = net.fit(x, y, batch_size=4, epochs=1, verbose=0).history
    assert np.isfinite(logs["loss"][0]) and np.isfinite(logs["MD_r2"][0])


def test_weights_file_local_and_gcs(tmp_path, gcs_bucket):
    reference = models.standalone_backbone("tiny", 32)
    for variable in reference.weights:
        variable.assign(np.random.default_rng(5).normal(size=variable.shape))
    local = tmp_path / "tiny.weights.h5"
    reference.save_weights(local)
    remote = storage.join(gcs_bucket, "weights", "tiny.weights.h5")
    storage.upload_file(local, remote)
    for uri in (str(local), remote):
        net = models.build_model(small_config(weights=uri))
        np.testing.assert_array_equal(net.get_layer("tiny_conv3").kernel.numpy(),
                                      reference.get_layer("tiny_conv3").kernel.numpy())
    with pytest.raises(InputError, match="nowhere.weights.h5"):
        models.build_model(small_config(weights=str(tmp_path / "nowhere.weights.h5")))
    (tmp_path / "junk.weights.h5").write_bytes(b"not hdf5")
    with pytest.raises(InputError, match="junk.weights.h5"):
        models.build_model(small_config(weights=str(tmp_path / "junk.weights.h5")))


def test_application_weights_file_lands_in_flat_model(tmp_path):
    reference = models.standalone_backbone("MobileNetV3Small", 32)
    last_conv = [layer for layer in reference.layers if isinstance(layer, keras.layers.Conv2D)][-1]
    last_conv.kernel.assign(np.full(last_conv.kernel.shape, 0.25, "float32"))
    reference.save_weights(tmp_path / "mnv3.weights.h5")
    net = models.build_model(small_config(backbone="MobileNetV3Small",
                                          weights=str(tmp_path / "mnv3.weights.h5")))
    convs = [layer for layer in net.layers if isinstance(layer, keras.layers.Conv2D)]
    assert np.all(convs[-1].kernel.numpy() == 0.25)


def test_mixed_precision_keeps_float32_outputs_and_saved_model_round_trips(tmp_path):
    config = small_config(augment_flip=True, augment_rot90=True, augment_rotation_degrees=5)
    net = models.build_model(config, precision="mixed_float16")
    assert net.get_layer("tiny_conv1").compute_dtype == "float16"
    assert all(net.get_layer(t).compute_dtype == "float32" for t in ("MD", "FA"))
    assert keras.config.dtype_policy().name == "float32"  # the global policy is restored
    models.compile_model(net, config, steps_per_epoch=1, jit_compile=False)
    assert isinstance(net.optimizer, keras.optimizers.LossScaleOptimizer)
    x = np.random.default_rng(6).uniform(0, 255, (4, 32, 32, 3)).astype("float32")
    y = {"MD": np.ones((4, 1), "float32"), "FA": np.zeros((4, 1), "float32")}
    net.train_on_batch(x, y)
    net.save(tmp_path / "m.keras")
    loaded = models.load_model(str(tmp_path / "m.keras"))
    for target in ("MD", "FA"):
        np.testing.assert_allclose(loaded.predict(x, verbose=0)[target], net.predict(x, verbose=0)[target],
                                   rtol=1e-3)
    assert models.cam_layer_name(loaded) == "top_activation"
    assert math.isfinite(float(loaded.evaluate(x, y, verbose=0, return_dict=True)["loss"]))
