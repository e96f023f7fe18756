"""The regression CNN of the thesis (Table 3.1): backbone by name, per-target heads, R² metric, optimizer.

Layers are built flat (the backbone's layers sit in the model's own graph, not in a nested model), so
the saliency step can reach each backbone's last activation by name (`CAM_LAYERS`). Head layers are
named `head_*` and each output layer is named after its target, so the two training phases can freeze
"everything that is not head". Custom layers and the metric are registered, so a saved `.keras` file
loads wherever this module is imported.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
from collections.abc import Iterator, Mapping

import keras
import tensorflow as tf

from histoxai import storage
from histoxai.config import BACKBONES, TrainConfig
from histoxai.errors import InputError

HEAD_PREFIX = "head_"
INPUT_NAME = "image"


@dataclasses.dataclass(frozen=True)
class BackboneSpec:
    """How to build one backbone: its keras.applications constructor, the input preprocessing this
    model adds in front of it ((scale, offset) on 0-255 pixels; None where the application carries
    its own), the name of its last activation (the CAM layer), and the layers LayerCAM fuses with it by
    default ('+'-joined): the outputs of a shallow (stride 8) and a middle (stride 16) stage."""

    application: str | None
    preprocess: tuple | None
    cam_layer: str
    stages: str


_TF_MODE = (1 / 127.5, -1.0)  # keras.applications "tf" mode: x / 127.5 - 1
_TORCH_MEAN, _TORCH_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
# keras.applications "torch" mode: (x / 255 - mean) / std per channel
_TORCH_MODE = ([1 / (255 * s) for s in _TORCH_STD],
               [-m / s for m, s in zip(_TORCH_MEAN, _TORCH_STD, strict=True)])

BACKBONE_SPECS: dict[str, BackboneSpec] = {
    "MobileNet": BackboneSpec("MobileNet", _TF_MODE, "conv_pw_13_relu", "conv_pw_5_relu+conv_pw_11_relu"),
    "MobileNetV2": BackboneSpec("MobileNetV2", _TF_MODE, "out_relu", "block_5_add+block_12_add"),
    # MobileNetV3 and ConvNeXt leave their last layer auto-named ("activation_17"); we name it.
    "MobileNetV3Small": BackboneSpec("MobileNetV3Small", None, "top_activation",
                                     "expanded_conv_2_add+expanded_conv_7_add"),
    "MobileNetV3Large": BackboneSpec("MobileNetV3Large", None, "top_activation",
                                     "expanded_conv_5_add+expanded_conv_11_add"),
    # ConvNeXt's stage outputs are unnamed sums: convnext_*_downsampling_block_0, _1 (stride 8, 16) stand in
    **{f"ConvNeXt{v}": BackboneSpec(f"ConvNeXt{v}", None, "top_layernorm", "+".join(
        f"convnext_{v.lower()}_downsampling_block_{i}" for i in (0, 1))) for v in ("Tiny", "Small")},
    "DenseNet121": BackboneSpec("DenseNet121", _TORCH_MODE, "relu", "pool3_relu+pool4_relu"),
    "EfficientNetV2S": BackboneSpec("EfficientNetV2S", None, "top_activation", "block3d_add+block5i_add"),
    "tiny": BackboneSpec(None, (1 / 255, 0.0), "top_activation", "tiny_conv1+tiny_conv2"),
}
CAM_LAYERS = {name: spec.cam_layer for name, spec in BACKBONE_SPECS.items()}
assert set(BACKBONE_SPECS) == set(BACKBONES), "config.BACKBONES and model.BACKBONE_SPECS disagree"


# ---- augmentation (inside the compiled graph; XLA-safe, unlike keras RandomRotation) ----

@keras.saving.register_keras_serializable(package="histoxai")
class RandomRot90(keras.layers.Layer):
    """Rotates each square image by a random k x 90 degrees (training only)."""

    def __init__(self, seed: int | None = None, **kwargs):
        super().__init__(**kwargs)
        self.seed = seed
        self.seed_generator = keras.random.SeedGenerator(seed)

    def call(self, images, training=None):
        if not training:
            return images
        batch = tf.shape(images)[0]
        k = keras.random.randint((batch,), 0, 4, seed=self.seed_generator)
        rotations = tf.stack([tf.image.rot90(images, k=i) for i in range(4)])
        return tf.gather_nd(rotations, tf.stack([k, tf.range(batch)], axis=1))

    def get_config(self):
        return {**super().get_config(), "seed": self.seed}


@keras.saving.register_keras_serializable(package="histoxai")
class RandomSmallRotation(keras.layers.Layer):
    """Rotates each image by a random angle in [-max_degrees, max_degrees], bilinear, edges reflected."""

    def __init__(self, max_degrees: float, seed: int | None = None, **kwargs):
        super().__init__(**kwargs)
        self.max_degrees = float(max_degrees)
        self.seed = seed
        self.seed_generator = keras.random.SeedGenerator(seed)

    def call(self, images, training=None):
        if not training or self.max_degrees == 0:
            return images
        limit = self.max_degrees * math.pi / 180
        angles = keras.random.uniform((tf.shape(images)[0],), -limit, limit, seed=self.seed_generator)
        return rotate_images(images, angles)

    def get_config(self):
        return {**super().get_config(), "max_degrees": self.max_degrees, "seed": self.seed}


def rotate_images(images, angles):
    """Rotates each image of a batch by its angle (radians) about its centre, as
    scipy.ndimage.rotate(image, degrees, reshape=False, order=1, mode="mirror") does: bilinear,
    edges reflected about the border pixels. Plain gathers, so XLA compiles it."""
    dtype = images.dtype
    images = tf.cast(images, tf.float32)
    batch = tf.shape(images)[0]
    height, width, channels = images.shape[1], images.shape[2], images.shape[3]
    cos, sin = tf.cos(angles)[:, None, None], tf.sin(angles)[:, None, None]
    cy, cx = (height - 1) / 2, (width - 1) / 2
    yy, xx = tf.meshgrid(tf.range(height, dtype=tf.float32) - cy,
                         tf.range(width, dtype=tf.float32) - cx, indexing="ij")
    # Each output pixel samples the source at the inversely rotated position.
    src_x = _reflect(cos * xx - sin * yy + cx, width)
    src_y = _reflect(sin * xx + cos * yy + cy, height)
    x0, y0 = tf.floor(src_x), tf.floor(src_y)
    fx, fy = (src_x - x0)[..., None], (src_y - y0)[..., None]
    x0 = tf.clip_by_value(tf.cast(x0, tf.int32), 0, width - 1)
    y0 = tf.clip_by_value(tf.cast(y0, tf.int32), 0, height - 1)
    x1, y1 = tf.minimum(x0 + 1, width - 1), tf.minimum(y0 + 1, height - 1)
    flat = tf.reshape(images, [-1, channels])
    base = (tf.range(batch) * height * width)[:, None, None]

    def pixel(y, x):
        return tf.gather(flat, base + y * width + x)

    out = (pixel(y0, x0) * (1 - fx) * (1 - fy) + pixel(y0, x1) * fx * (1 - fy)
           + pixel(y1, x0) * (1 - fx) * fy + pixel(y1, x1) * fx * fy)
    return tf.cast(out, dtype)


def _reflect(coord, size: int):
    period = 2.0 * (size - 1)
    coord = tf.math.floormod(tf.abs(coord), period)
    return tf.where(coord > size - 1, period - coord, coord)


def augmentation_layers(config: TrainConfig) -> list[keras.layers.Layer]:
    layers = []
    if config.augment_flip:
        layers.append(keras.layers.RandomFlip("horizontal_and_vertical", seed=config.seed,
                                              name="augment_flip", dtype="float32"))
    if config.augment_rot90:
        layers.append(RandomRot90(seed=config.seed + 1, name="augment_rot90", dtype="float32"))
    if config.augment_rotation_degrees > 0:
        layers.append(RandomSmallRotation(config.augment_rotation_degrees, seed=config.seed + 2,
                                          name="augment_rotation", dtype="float32"))
    return layers


# ---- the R² metric ----

@keras.saving.register_keras_serializable(package="histoxai")
class R2Score(keras.metrics.Metric):
    """R² = 1 - SSE/SST over everything seen since reset (0 while SST is 0).

    Streams count, mean and centred sum of squares of y (Chan et al.'s pairwise merge, stable in
    float32) and the SSE, as metric variables: no Python state, so it runs under XLA, in graph mode
    and with mixed precision (inputs are cast to float32). Sample weights are not supported.
    """

    def __init__(self, name: str = "r2", **kwargs):
        super().__init__(name=name, **kwargs)
        self.count = self.add_variable(shape=(), initializer="zeros", name="count", dtype="float32")
        self.mean = self.add_variable(shape=(), initializer="zeros", name="mean", dtype="float32")
        self.sst = self.add_variable(shape=(), initializer="zeros", name="sst", dtype="float32")
        self.sse = self.add_variable(shape=(), initializer="zeros", name="sse", dtype="float32")

    def update_state(self, y_true, y_pred, sample_weight=None):
        ops = keras.ops
        y_true = ops.reshape(ops.cast(y_true, "float32"), (-1,))
        y_pred = ops.reshape(ops.cast(y_pred, "float32"), (-1,))
        n_batch = ops.cast(ops.size(y_true), "float32")
        mean_batch = ops.divide_no_nan(ops.sum(y_true), n_batch)
        sst_batch = ops.sum(ops.square(y_true - mean_batch))
        total = self.count + n_batch
        delta = mean_batch - self.mean
        self.mean.assign(self.mean + delta * ops.divide_no_nan(n_batch, total))
        between = ops.square(delta) * ops.divide_no_nan(self.count * n_batch, total)
        self.sst.assign(self.sst + sst_batch + between)
        self.count.assign(total)
        self.sse.assign(self.sse + ops.sum(ops.square(y_true - y_pred)))

    def result(self):
        ops = keras.ops
        return ops.where(self.sst > 0, 1.0 - ops.divide_no_nan(self.sse, self.sst), 0.0)


# ---- building ----

@contextlib.contextmanager
def dtype_policy(name: str) -> Iterator[None]:
    """Build layers under a global dtype policy ('float32' or 'mixed_float16'), then restore it."""
    old = keras.config.dtype_policy()
    keras.config.set_dtype_policy(name)
    try:
        yield
    finally:
        keras.config.set_dtype_policy(old)


def _tiny_cnn(x) -> tuple[keras.KerasTensor, list[keras.layers.Layer]]:
    """A three-layer CNN for tests and the CPU demo; returns its feature map and its layers."""
    layers = []
    for i, filters in enumerate((16, 32), start=1):
        layers += [keras.layers.Conv2D(filters, 3, padding="same", activation="relu", name=f"tiny_conv{i}"),
                   keras.layers.MaxPooling2D(2, name=f"tiny_pool{i}")]
    layers += [keras.layers.Conv2D(64, 3, padding="same", name="tiny_conv3"),
               keras.layers.Activation("relu", name="top_activation")]
    for layer in layers:
        x = layer(x)
    return x, layers


def _application(name: str, size: int, weights, input_tensor=None):
    fn = getattr(keras.applications, BACKBONE_SPECS[name].application)
    return fn(include_top=False, weights=weights, input_shape=(size, size, 3), input_tensor=input_tensor)


def standalone_backbone(name: str, size: int, weights: str | None = None) -> keras.Model:
    """The backbone alone, without top: the architecture a weights file must fit ('imagenet', a
    local weights file, or None)."""
    if name == "tiny":
        inputs = keras.Input((size, size, 3))
        model = keras.Model(inputs, _tiny_cnn(inputs)[0], name="tiny")
        if weights is not None:
            model.load_weights(weights)
        return model
    return _application(name, size, weights)


def _load_backbone_weights(name: str, size: int, weights: str, layers: list[keras.layers.Layer]) -> None:
    """Copy weights into our flat backbone layers, layer by layer in build order."""
    def load(local: str) -> None:
        try:
            reference = standalone_backbone(name, size, local)
        except (ValueError, OSError) as err:
            raise InputError(f"{weights}: cannot load as {name} weights without the top ({err})") from err
        source = [layer for layer in reference.layers if layer.weights]
        target = [layer for layer in layers if layer.weights]
        if len(source) != len(target):
            raise InputError(f"{weights}: {len(source)} weighted layers, expected {len(target)} for {name}")
        for src, dst in zip(source, target, strict=True):
            dst.set_weights(src.get_weights())

    if weights == "imagenet":
        try:
            load("imagenet")
        except InputError:
            raise
        except Exception as err:  # keras raises a bare Exception when the download fails
            raise InputError(f"weights imagenet: could not fetch the {name} ImageNet weights ({err}); "
                             "expected network access to Keras' weight store, or set weights to a "
                             "local/gs:// weights file or none") from err
        return
    with storage.local_copy(weights) as local:
        load(str(local))


def _backbone(config: TrainConfig, x):
    """Builds the backbone's layers on tensor x (0-255 pixels); returns its last feature map."""
    spec = BACKBONE_SPECS[config.backbone]
    if spec.preprocess is not None:
        scale, offset = spec.preprocess
        x = keras.layers.Rescaling(scale, offset, name="preprocess", dtype="float32")(x)
    if spec.application is None:
        features, layers = _tiny_cnn(x)
    else:
        app = _application(config.backbone, config.image_size, None, input_tensor=x)
        features = app.output
        if app.layers[-1].name != spec.cam_layer:
            app.layers[-1].name = spec.cam_layer
        first = next(i for i, layer in enumerate(app.layers) if layer is x._keras_history[0])
        layers = app.layers[first + 1:]
    if config.weights is not None:
        _load_backbone_weights(config.backbone, config.image_size, config.weights, layers)
    return features


def build_model(config: TrainConfig, *, target_means: Mapping[str, float] | None = None,
                precision: str = "float32") -> keras.Model:
    """The Table 3.1 network for config.targets: augmentations -> backbone -> pooling -> dropout ->
    dense -> per target: dense features -> dropout -> dense(1) in float32 named after the target.

    target_means start each output's bias at the training mean, so training starts at the right scale.
    """
    if not config.targets:
        raise InputError("config: key 'targets': no targets given; expected e.g. [MD, FA] or [CC]")
    if config.image_size is None:
        raise InputError("config: key 'image_size': not set; expected the input side in pixels "
                         "(training sets it to the data's patch size)")
    means = target_means or {}
    with dtype_policy(precision):
        inputs = keras.Input((config.image_size, config.image_size, 3), name=INPUT_NAME, dtype="float32")
        x = inputs
        for layer in augmentation_layers(config):
            x = layer(x)
        x = _backbone(config, x)
        x = keras.layers.GlobalAveragePooling2D(name=f"{HEAD_PREFIX}pool")(x)
        x = keras.layers.Dropout(config.dropout, seed=config.seed, name=f"{HEAD_PREFIX}dropout")(x)
        x = keras.layers.Dense(config.dense_units, name=f"{HEAD_PREFIX}dense")(x)
        outputs = {}
        for i, target in enumerate(config.targets):
            f = keras.layers.Dense(config.feature_units, name=f"{HEAD_PREFIX}{target}_features")(x)
            f = keras.layers.Dropout(config.feature_dropout, seed=config.seed + 10 + i,
                                     name=f"{HEAD_PREFIX}{target}_dropout")(f)
            outputs[target] = keras.layers.Dense(
                1, dtype="float32", name=target,
                bias_initializer=keras.initializers.Constant(float(means.get(target, 0.0))))(f)
        return keras.Model(inputs, outputs, name=f"histoxai_{config.backbone}")


def cam_layer_name(model: keras.Model) -> str:
    """The name of the layer whose output the head pools: the backbone's last activation."""
    return model.get_layer(f"{HEAD_PREFIX}pool").input._keras_history[0].name


def is_head_layer(model: keras.Model, layer: keras.layers.Layer) -> bool:
    return layer.name.startswith(HEAD_PREFIX) or layer.name in model.output_names


def set_phase(model: keras.Model, phase: str, *, finetune_batchnorm: bool = True) -> None:
    """'frozen': only the head trains (frozen BatchNorm runs in inference mode); 'finetune': all
    layers train (BatchNorm too unless finetune_batchnorm is False). Recompile afterwards."""
    if phase not in ("frozen", "finetune"):
        raise ValueError(f"unknown phase {phase!r}")
    for layer in model.layers:
        if is_head_layer(model, layer):
            layer.trainable = True
        elif phase == "frozen":
            layer.trainable = False
        else:
            layer.trainable = finetune_batchnorm or not isinstance(layer, keras.layers.BatchNormalization)


# ---- optimisation ----

def learning_rate(config: TrainConfig, steps_per_epoch: int):
    """A float, or the warmup + cosine decay schedule of Table 3.2 (counted in optimizer steps)."""
    if config.lr_schedule == "none":
        return config.learning_rate
    return keras.optimizers.schedules.CosineDecay(
        initial_learning_rate=config.initial_lr,
        decay_steps=max(1, config.decay_epochs * steps_per_epoch),
        warmup_target=config.warmup_target_lr,
        warmup_steps=config.warmup_epochs * steps_per_epoch,
    )


def make_optimizer(config: TrainConfig, steps_per_epoch: int) -> keras.optimizers.Optimizer:
    rate = learning_rate(config, steps_per_epoch)
    if config.optimizer == "adamw":
        return keras.optimizers.AdamW(learning_rate=rate, weight_decay=config.weight_decay)
    return keras.optimizers.Adam(learning_rate=rate)


def compile_model(model: keras.Model, config: TrainConfig, *, steps_per_epoch: int, jit_compile: bool,
                  optimizer: keras.optimizers.Optimizer | None = None) -> None:
    """MSE per target (static loss weights), R² per target; a fresh optimizer unless one is given
    (resuming). A mixed_float16 model gets a loss-scale optimizer from Keras."""
    targets = list(model.output_names)
    weights = {t: (config.loss_weights or {}).get(t, 1.0) for t in targets}
    model.compile(
        optimizer=optimizer or make_optimizer(config, steps_per_epoch),
        loss={t: "mse" for t in targets},
        loss_weights=weights,
        metrics={t: [R2Score(name="r2")] for t in targets},
        jit_compile=jit_compile,
    )


def current_learning_rate(model: keras.Model) -> float:
    optimizer = model.optimizer
    inner = getattr(optimizer, "inner_optimizer", optimizer)
    return float(keras.ops.convert_to_numpy(inner.learning_rate))


def inference_model(model: keras.Model) -> keras.Model:
    """The same layers and weights, uncompiled: what a results folder's model.keras holds (no
    optimizer state, a third of the size, loads without warnings under mixed precision)."""
    return keras.Model(model.input, model.output, name=model.name)


def load_model(uri: str) -> keras.Model:
    """A saved `.keras` model, local or gs://."""
    with storage.local_copy(uri) as local:
        try:
            return keras.models.load_model(local)
        except (ValueError, OSError) as err:
            raise InputError(f"{uri}: not a loadable .keras model ({err})") from err
