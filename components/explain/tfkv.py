"""The same maps computed by tf-keras-vis 0.8.7 itself, as in the thesis, with the library's traps fixed.

`--engine tf-keras-vis` runs Grad-CAM++ (`alpha=tfkv`, the library's own), LayerCAM, SmoothGrad and
the vanilla gradient through the library's classes (Integrated Gradients and Grad-CAM++ with the
paper's alpha, which it lacks, through the batched engine). The fixes:
the model is given as a float32, single-output view (the library cannot index Keras 3's dict
outputs, and fails on bfloat16); the score is S - stop_gradient(S), value 0 with the gradient of S,
so Grad-CAM++'s exp() cannot overflow; the CAM layer is named, not sought; maps are kept raw
(normalize_cam / normalize_map off); SmoothGrad's copies go through in chunks of at most
`gradient_batch` images. The library draws SmoothGrad noise from NumPy's global generator, seeded
here once per batch, so its maps depend on the batch a patch falls in (the batched engine's do not).
"""

from __future__ import annotations

import warnings

import numpy as np

from histoxai.components.explain.engine import SaliencyEngine
from histoxai.components.explain.methods import MethodSpec, Score, fuse_layers


def safe_score(score: Score, references):
    """A tf-keras-vis score function: value 0, gradient that of the score (exp(0) = 1 in Grad-CAM++)."""
    import tensorflow as tf

    references = tf.constant(np.asarray(references, np.float32).reshape(-1))

    def function(output):
        value = score(tf.reshape(tf.cast(output, tf.float32), (-1,)), references)
        return value - tf.stop_gradient(value)

    return function


class TfKerasVisEngine(SaliencyEngine):
    """SaliencyEngine's interface, computed through tf-keras-vis."""

    def _single(self, target: str):
        import keras

        return self._compiled(("single", target),
                              lambda: keras.Model(self.model.input, self._view(target).outputs[:1]))

    def maps(self, images: np.ndarray, target: str, spec: MethodSpec, score: Score,
             references: np.ndarray, keys: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        from tf_keras_vis.gradcam_plus_plus import GradcamPlusPlus
        from tf_keras_vis.layercam import Layercam
        from tf_keras_vis.saliency import Saliency

        method = spec.method
        if method == "ig" or (method == "gradcam++" and spec.get("alpha") != "tfkv"):
            return super().maps(images, target, spec, score, references, keys)
        images = np.asarray(images, np.float32)
        model = self._single(target)
        function = safe_score(score, references)
        if method == "gradcam++":
            cam = GradcamPlusPlus(model, clone=False)(
                function, images, penultimate_layer=spec.get("layer"), seek_penultimate_conv_layer=False,
                normalize_cam=False)
            return np.asarray(cam, np.float32), None
        if method == "layercam":
            cams = [np.asarray(Layercam(model, clone=False)(
                function, images, penultimate_layer=layer, seek_penultimate_conv_layer=False,
                normalize_cam=False), np.float32) for layer in self.cam_layers(spec)]
            if len(cams) == 1:
                return cams[0], None
            return fuse_layers(cams, float(spec.get("gamma"))).numpy(), None
        saliency = Saliency(model, clone=False)
        # the library hands Keras a list of inputs; Keras warns that it expected a single tensor
        warnings.filterwarnings("ignore", message="The structure of `inputs` doesn't match",
                                category=UserWarning)
        if method == "vanilla":
            return np.asarray(saliency(function, images, normalize_map=False), np.float32), None
        if method != "smoothgrad":
            raise ValueError(f"unknown method {method!r}")
        n, sigma = int(spec.get("n")), float(spec.get("sigma"))
        np.random.seed(int(spec.get("seed")))
        step = self._copies_per_pass(len(images))
        channels = np.zeros(images.shape, np.float64)
        for first in range(0, n, step):
            copies = min(step, n - first)
            # the library averages |gradient| over its copies, then takes the channel maximum; keep the
            # channels (keepdims) so that chunk means combine into the mean over all n copies
            mean = saliency(function, images, smooth_samples=copies, smooth_noise=sigma, keepdims=True,
                            normalize_map=False)
            channels += np.asarray(mean, np.float64) * copies
        return (channels / n).max(axis=-1).astype(np.float32), None
