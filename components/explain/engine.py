"""The batched saliency engine: compiled float32 graphs that compute every method's raw maps for a batch.

Formulas live in `methods`; this module runs them over batches. SmoothGrad and Integrated Gradients
send their noisy copies / path points through the model in chunks of at most `gradient_batch`
images, so memory stays bounded for n = 30 copies at 360 px.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import numpy as np

from histoxai.components.explain.methods import (
    STAGES,
    MethodSpec,
    Score,
    fuse_layers,
    gradcam_plus_plus,
    ig_baseline_value,
    layercam,
    upsample,
)
from histoxai.errors import InputError
from histoxai.saliency.precision import float32_model


def _quiet_retracing_warning() -> None:
    """Each (target, method, score) compiles its own function once, by design; TensorFlow would warn
    that 'tf.function retracing' is frequent after five of them."""
    import tensorflow as tf

    logger = tf.get_logger()
    if not any(getattr(f, "histoxai", False) for f in logger.filters):
        quiet = logging.Filter()
        quiet.filter = lambda record: "triggered tf.function retracing" not in record.getMessage()
        quiet.histoxai = True
        logger.addFilter(quiet)


def _prediction(view, images):
    """The target's prediction (B,) from a single-output view (Keras returns a bare tensor then)."""
    import tensorflow as tf

    outputs = view(images, training=False)
    return tf.reshape(outputs[0] if isinstance(outputs, list | tuple) else outputs, (-1,))


class SaliencyEngine:
    """Computes maps for batches of images (B, H, W, 3, pixels 0-255) of one float32 model.

    Each (target, layers, score) gets one compiled function, traced once for any batch size.
    """

    def __init__(self, model, *, gradient_batch: int = 64):
        _quiet_retracing_warning()
        self.model = float32_model(model)
        self.size = tuple(int(d) for d in self.model.input_shape[1:3])
        self.gradient_batch = max(1, int(gradient_batch))
        self._functions: dict = {}

    # -- compiled pieces --

    def _compiled(self, key, build):
        if key not in self._functions:
            self._functions[key] = build()
        return self._functions[key]

    def _signature(self, *extra):
        import tensorflow as tf

        return [tf.TensorSpec((None, *self.size, 3), tf.float32), tf.TensorSpec((None,), tf.float32), *extra]

    def _view(self, target: str, layers: Sequence[str] = ()):
        import keras

        def build():
            try:
                outputs = [self.model.get_layer(target).output]
                outputs += [self.model.get_layer(name).output for name in layers]
            except ValueError as err:
                raise InputError(f"model {self.model.name}: {err}; expected a target output and CAM "
                                 "layers that exist in the model") from err
            return keras.Model(self.model.input, outputs)

        return self._compiled(("view", target, tuple(layers)), build)

    def predict(self, images: np.ndarray, target: str) -> np.ndarray:
        import tensorflow as tf

        view = self._view(target)
        fn = self._compiled(("predict", target), lambda: tf.function(
            lambda x: _prediction(view, x),
            input_signature=self._signature()[:1]))
        return fn(tf.constant(images, tf.float32)).numpy()

    def stage_layers(self) -> tuple[str, ...]:
        """LayerCAM's default layers ('stages'): the backbone's shallow and middle stage outputs and its
        CAM layer (`histoxai.model.BACKBONE_SPECS`), found by the model's name, histoxai_BACKBONE."""
        from histoxai.model import BACKBONE_SPECS, cam_layer_name

        spec = BACKBONE_SPECS.get(self.model.name.removeprefix("histoxai_"))
        names = {layer.name for layer in self.model.layers}
        layers = (*spec.stages.split("+"), spec.cam_layer) if spec else ()
        try:
            if layers and set(layers) <= names and cam_layer_name(self.model) == spec.cam_layer:
                return layers
        except ValueError:
            pass
        raise InputError(f"model {self.model.name}: layercam:layers={STAGES} needs a histoxai model "
                         "(named histoxai_BACKBONE, with that backbone's layers); expected the layers "
                         "named instead, e.g. layercam:layers=A+B+C")

    def cam_layers(self, spec: MethodSpec) -> tuple[str, ...]:
        """The layers a CAM method reads, 'stages' expanded."""
        if spec.method == "gradcam++":
            return (spec.get("layer"),)
        layers = tuple(spec.get("layers") or (None,))
        if STAGES in layers:
            index = layers.index(STAGES)
            layers = layers[:index] + self.stage_layers() + layers[index + 1:]
        return tuple(dict.fromkeys(layers))

    def _cam_fn(self, method: str, target: str, layers: tuple[str, ...], score: Score, gamma: float,
                alpha: str):
        import tensorflow as tf

        view = self._view(target, layers)

        def formula(a, g):
            return gradcam_plus_plus(a, g, alpha) if method == "gradcam++" else layercam(a, g)

        def run(images, references):
            with tf.GradientTape() as tape:
                outputs = view(images, training=False)
                y, activations = tf.reshape(outputs[0], (-1,)), list(outputs[1:])
                scores = score(y, references)
            grads = tape.gradient(scores, activations)
            maps = [upsample(formula(a, g), self.size) for a, g in zip(activations, grads, strict=True)]
            return maps[0] if len(maps) == 1 else fuse_layers(maps, gamma)

        return tf.function(run, input_signature=self._signature())

    def _input_grad_fn(self, target: str, score: Score):
        """(images, references) -> dS/dx, the score summed over the batch (patches are independent)."""
        import tensorflow as tf

        view = self._view(target)

        def run(images, references):
            with tf.GradientTape() as tape:
                tape.watch(images)
                scores = score(_prediction(view, images), references)
            return tape.gradient(scores, images)

        return tf.function(run, input_signature=self._signature())

    def _smooth_chunk_fn(self, target: str, score: Score):
        """(images, references, seeds (c, B, 2), sigma (B,)) -> sum over c noisy copies of |dS/dx|."""
        import tensorflow as tf

        grad = self._compiled(("grad", target, score), lambda: self._input_grad_fn(target, score))
        shape = (*self.size, 3)

        def run(images, references, seeds, sigma):
            copies, batch = tf.shape(seeds)[0], tf.shape(seeds)[1]
            noise = tf.map_fn(lambda s: tf.random.stateless_normal(shape, seed=s),
                              tf.reshape(seeds, (-1, 2)), fn_output_signature=tf.float32)
            noise = tf.reshape(noise, (copies, batch, *shape)) * sigma[None, :, None, None, None]
            noisy = tf.reshape(images[None] + noise, (-1, *shape))
            grads = tf.abs(grad(noisy, tf.tile(references, [copies])))
            return tf.reduce_sum(tf.reshape(grads, (copies, batch, *shape)), axis=0)

        return tf.function(run, input_signature=self._signature(
            tf.TensorSpec((None, None, 2), tf.int64), tf.TensorSpec((None,), tf.float32)))

    def _ig_chunk_fn(self, target: str, score: Score):
        """(images, references, alphas (c,), baseline) -> sum over the c path points of dS/dx."""
        import tensorflow as tf

        grad = self._compiled(("grad", target, score), lambda: self._input_grad_fn(target, score))

        def run(images, references, alphas, baseline):
            steps = tf.shape(alphas)[0]
            path = baseline + alphas[:, None, None, None, None] * (images[None] - baseline)
            grads = grad(tf.reshape(path, (-1, *self.size, 3)), tf.tile(references, [steps]))
            return tf.reduce_sum(tf.reshape(grads, (steps, -1, *self.size, 3)), axis=0)

        return tf.function(run, input_signature=self._signature(
            tf.TensorSpec((None,), tf.float32), tf.TensorSpec((), tf.float32)))

    def _copies_per_pass(self, batch: int) -> int:
        return max(1, self.gradient_batch // max(1, batch))

    # -- public --

    def maps(self, images: np.ndarray, target: str, spec: MethodSpec, score: Score,
             references: np.ndarray, keys: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        """Raw maps (B, H, W) float32 for one method, and for IG the completeness gap per patch
        (sum of the map minus S(x) + S(baseline); None for other methods).

        references: measured values (used by score toward=truth); keys: int64 per patch, which
        (with the method's seed) fixes SmoothGrad's noise.
        """
        import tensorflow as tf

        images = tf.constant(images, tf.float32)
        references = tf.constant(np.asarray(references, np.float32).reshape(-1))
        method = spec.method
        if method in ("gradcam++", "layercam"):
            layers = self.cam_layers(spec)
            if None in layers:
                raise ValueError("resolve CAM layers first: spec.with_layers(cam_layer_name(model))")
            gamma = float(spec.get("gamma")) if method == "layercam" else 0.0
            alpha = spec.get("alpha") if method == "gradcam++" else ""
            fn = self._compiled(("cam", method, target, layers, score, gamma, alpha),
                                lambda: self._cam_fn(method, target, layers, score, gamma, alpha))
            return fn(images, references).numpy(), None
        grad_key = ("grad", target, score)
        if method == "vanilla":
            fn = self._compiled(grad_key, lambda: self._input_grad_fn(target, score))
            return tf.reduce_max(tf.abs(fn(images, references)), axis=-1).numpy(), None
        if method == "smoothgrad":
            return self._smoothgrad(images, references, keys, target, spec, score), None
        if method == "ig":
            return self._integrated_gradients(images, references, target, spec, score)
        raise ValueError(f"unknown method {method!r}")

    def _smoothgrad(self, images, references, keys, target, spec, score) -> np.ndarray:
        import tensorflow as tf

        n, seed = int(spec.get("n")), int(spec.get("seed"))
        fn = self._compiled(("smooth", target, score), lambda: self._smooth_chunk_fn(target, score))
        # sigma is relative to each image's value range (as tf-keras-vis does)
        sigma = float(spec.get("sigma")) * (tf.reduce_max(images, axis=(1, 2, 3))
                                            - tf.reduce_min(images, axis=(1, 2, 3)))
        keys = np.asarray(keys, np.int64)
        step = self._copies_per_pass(len(keys))
        total = tf.zeros_like(images)
        for first in range(0, n, step):
            copies = np.arange(first, min(n, first + step), dtype=np.int64)
            seeds = np.stack(np.broadcast_arrays(keys[None, :], seed * 1_000_003 + copies[:, None]), axis=-1)
            total += fn(images, references, tf.constant(seeds), sigma)
        return tf.reduce_max(total / n, axis=-1).numpy()

    def _integrated_gradients(self, images, references, target, spec, score):
        import tensorflow as tf

        steps = int(spec.get("steps"))
        baseline = tf.constant(ig_baseline_value(spec), tf.float32)
        fn = self._compiled(("ig", target, score), lambda: self._ig_chunk_fn(target, score))
        alphas = (np.arange(steps, dtype=np.float32) + 0.5) / steps  # midpoint rule
        chunk = self._copies_per_pass(int(images.shape[0]))
        total = tf.zeros_like(images)
        for first in range(0, steps, chunk):
            total += fn(images, references, tf.constant(alphas[first:first + chunk]), baseline)
        maps = tf.reduce_sum((images - baseline) * total / steps, axis=-1).numpy()
        view = self._view(target)
        ends = [score(_prediction(view, x), references).numpy()
                for x in (images, tf.broadcast_to(baseline, images.shape))]
        gap = maps.reshape(len(maps), -1).sum(axis=1, dtype=np.float64) - (ends[0] - ends[1])
        return maps, gap
