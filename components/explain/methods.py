"""Saliency methods for regression CNNs: Grad-CAM++, LayerCAM, SmoothGrad, vanilla gradient, IG.

What to explain (score modes), which methods with which settings, and their formulas. Maps are
computed (by `engine`) batched, as compiled graphs, in float32 (a mixed-precision model is copied to
float32 first), and returned raw: never min-max stretched. Grad-CAM++ comes in two variants,
`alpha=paper` (the default) and `alpha=tfkv`; LayerCAM fuses a shallow, a middle and the last stage by
default (`layers=stages`). The other formulas follow tf-keras-vis 0.8.7 (`tfkv.py` runs the library
itself; the tests hold the two to each other) with its traps removed:

- Grad-CAM++ in tf-keras-vis takes exp() of the score, so any output above ~88 gives NaN maps. exp(S)
  cancels out of the alphas and only scales the weights, so we use exp(0) = 1: the map is the
  library's map divided by exp(S), finite for any output.
- The CAM layer is named (default: the layer the head pools, `histoxai.model.cam_layer_name`), never
  sought: the library's seek stops at EfficientNetV2's `top_conv`, before BN and activation.
- SmoothGrad's noise is seeded per patch and copy (stateless), so a map does not depend on the batch
  it was computed in, and the noisy copies go through the model in chunks of at most
  `gradient_batch` images, so memory does not grow with n.
- Score-CAM is not offered: its softmax over one regression output is always 1.
"""

from __future__ import annotations

import dataclasses
import math

from histoxai.errors import InputError

SCORE_MODES = ("increase", "decrease", "toward")
# Each method's parameters and their defaults (None: resolved from the model).
METHOD_PARAMS: dict[str, dict[str, object]] = {
    "gradcam++": {"layer": None, "alpha": "paper"},
    "layercam": {"layers": ("stages",), "gamma": 2.0},
    "smoothgrad": {"sigma": 0.2, "n": 30, "seed": 0},
    "vanilla": {},
    "ig": {"steps": 32, "baseline": "white"},
}
# Grad-CAM++'s alpha: the paper's (the default: it is the method as published) or tf-keras-vis's, whose
# normalisation makes it equal LayerCAM at a globally pooled layer (see gradcam_plus_plus).
GRADCAM_ALPHAS = ("paper", "tfkv")
STAGES = "stages"  # in layercam's layers: the backbone's shallow and middle stage and its CAM layer
# The thesis's four (Grad-CAM++, LayerCAM, SmoothGrad at sigma 0.2 and 0.3 with n = 30) and two more.
# The thesis ran tf-keras-vis's alpha and one LayerCAM layer; the defaults are the paper's and three stages.
DEFAULT_METHODS = ("gradcam++", "layercam", "smoothgrad:sigma=0.2,n=30", "smoothgrad:sigma=0.3,n=30",
                   "vanilla", "ig")
SIGNED_METHODS = ("ig",)  # maps with negative values; the others are >= 0
IG_BASELINES = {"white": 255.0, "black": 0.0}  # pixel value of the IG reference image (0-255 input)


# ---- what to explain: score modes and method settings ----

@dataclasses.dataclass(frozen=True)
class Score:
    """What a map explains. increase: the prediction y (the thesis's choice); decrease: -y;
    toward: -(y - v)^2, closer to v (a number, or each patch's measured value when v is None)."""

    mode: str = "increase"
    value: float | None = None

    @property
    def label(self) -> str:
        if self.mode != "toward":
            return self.mode
        return "toward=truth" if self.value is None else f"toward={self.value:g}"

    def __call__(self, y, reference):
        """Per-patch scores from predictions y (B,) and measured values (B,), as TF tensors."""
        import tensorflow as tf

        if self.mode == "increase":
            return y
        if self.mode == "decrease":
            return -y
        goal = reference if self.value is None else tf.constant(self.value, tf.float32)
        return -tf.square(y - goal)


def parse_score(text: str) -> Score:
    """'increase', 'decrease', 'toward=1.2' or 'toward=truth'."""
    mode, _, value = text.strip().partition("=")
    if mode not in SCORE_MODES or (mode == "toward") != bool(value):
        raise InputError(f"score {text!r}: expected increase, decrease, toward=NUMBER or toward=truth")
    if mode != "toward" or value == "truth":
        return Score(mode)
    try:
        number = float(value)
    except ValueError:
        number = math.nan
    if not math.isfinite(number):
        raise InputError(f"score {text!r}: expected toward=NUMBER or toward=truth")
    return Score(mode, number)


@dataclasses.dataclass(frozen=True)
class MethodSpec:
    """One method with all its parameters (defaults filled in)."""

    method: str
    params: tuple[tuple[str, object], ...]

    def get(self, key: str):
        return dict(self.params)[key]

    @property
    def setting(self) -> str:
        """Canonical parameter text, e.g. 'sigma=0.2,n=30,seed=0' ('' for none)."""
        return ",".join(f"{k}={'+'.join(v) if isinstance(v, tuple) else v}" for k, v in self.params)

    @property
    def key(self) -> str:
        return f"{self.method}:{self.setting}" if self.setting else self.method

    def with_layers(self, cam_layer: str) -> MethodSpec:
        """Unset CAM layers become the model's CAM layer (the engine expands layercam's 'stages')."""
        params = dict(self.params)
        if params.get("layer", "") is None:
            params["layer"] = cam_layer
        if params.get("layers", ()) is None:
            params["layers"] = (cam_layer,)
        return MethodSpec(self.method, tuple(params.items()))


def _parse_value(method: str, key: str, text: str):
    def fail(expected: str):
        raise InputError(f"method {method!r}: parameter {key}={text!r}; expected {expected}")

    if key == "layer":
        return text or fail("a layer name")
    if key == "alpha":
        return text if text in GRADCAM_ALPHAS else fail(" or ".join(GRADCAM_ALPHAS))
    if key == "layers":
        names = tuple(n for n in text.split("+") if n)
        return names or fail("layer names joined by '+'")
    if key == "baseline":
        if text in IG_BASELINES:
            return text
        try:
            value = float(text)
        except ValueError:
            value = -1.0
        return text if 0 <= value <= 255 else fail("white, black or a pixel value in [0, 255]")
    try:
        number = float(text) if key in ("sigma", "gamma") else int(text)
    except ValueError:
        number = -1
    if key == "seed":
        return number if number >= 0 else fail("an integer >= 0")
    return number if number > 0 else fail("a positive number" if key in ("sigma", "gamma") else
                                          "a positive integer")


def split_methods(text: str) -> list[str]:
    """A comma-separated list of methods with their settings, as every list option is given:
    'gradcam++,smoothgrad:sigma=0.2,n=30,vanilla' -> ['gradcam++', 'smoothgrad:sigma=0.2,n=30', 'vanilla'].
    A KEY=VALUE item after a method's settings belongs to that method (a method name holds no '=')."""
    methods: list[str] = []
    for item in (part.strip() for part in text.split(",")):
        if not item:
            continue
        if "=" in item and ":" not in item and methods and ":" in methods[-1]:
            methods[-1] += "," + item
        else:
            methods.append(item)
    return methods


def parse_method(text: str) -> MethodSpec:
    """'smoothgrad:sigma=0.3,n=30' -> MethodSpec (unnamed parameters take their defaults)."""
    name, _, rest = text.strip().partition(":")
    name = name.lower()
    if name == "scorecam":
        raise InputError("method 'scorecam': not offered; Score-CAM's softmax over one regression output "
                         "is always 1, so its maps ignore the model's head")
    if name not in METHOD_PARAMS:
        raise InputError(f"method {name!r}: expected one of {list(METHOD_PARAMS)}")
    params = dict(METHOD_PARAMS[name])
    for item in filter(None, rest.split(",")):
        key, sep, value = item.partition("=")
        if not sep or key not in params:
            raise InputError(f"method {text!r}: parameter {item!r}; expected KEY=VALUE with KEY among "
                             f"{list(params) or 'none'}")
        params[key] = _parse_value(name, key, value)
    return MethodSpec(name, tuple(params.items()))


def ig_baseline_value(spec: MethodSpec) -> float:
    baseline = spec.get("baseline")
    return IG_BASELINES[baseline] if baseline in IG_BASELINES else float(baseline)


def upsample(cams, size: tuple[int, int]):
    """(B, h, w) -> (B, H, W) bilinear with corners aligned, as tf-keras-vis (scipy zoom, order 1)."""
    import tensorflow as tf

    resized = tf.raw_ops.ResizeBilinear(images=cams[..., None], size=size, align_corners=True,
                                        half_pixel_centers=False)
    return resized[..., 0]


def gradcam_plus_plus(activations, grads, alpha: str = "paper"):
    """Grad-CAM++ at feature resolution from A and dS/dA = g (B, h, w, K), with exp(S) = 1 (it cancels
    from the alphas and only scales the map):
    alpha = g^2 / (2 g^2 + g^3 sum_ab A) (Chattopadhay et al. 2018, eq. 19; 0 where g = 0),
    weights_k = sum_ab relu(g) * alpha, map = relu(sum_k weights_k A_k).
    alpha='tfkv' first divides each channel's alphas by their sum over space, as tf-keras-vis 0.8.7's
    GradcamPlusPlus does. At a layer the head pools globally, g is constant over space: tf-keras-vis's
    alphas are then 1/(h w), its weights relu(g_k), and its map LayerCAM's; the paper's weights are
    h w relu(g_k) / (2 + g_k sum_ab A_k), which weigh channels differently."""
    import tensorflow as tf

    if alpha not in GRADCAM_ALPHAS:
        raise ValueError(f"unknown Grad-CAM++ alpha {alpha!r}")
    second = grads * grads
    third = second * grads
    total = tf.reduce_sum(activations, axis=(1, 2), keepdims=True)
    denominator = 2.0 * second + third * total
    denominator += tf.cast(tf.equal(second, 0.0), tf.float32)
    alphas = second / denominator
    if alpha == "tfkv":
        norm = tf.reduce_sum(alphas, axis=(1, 2), keepdims=True)
        alphas /= norm + tf.cast(tf.equal(norm, 0.0), tf.float32)
    weights = tf.reduce_sum(tf.nn.relu(grads) * alphas, axis=(1, 2), keepdims=True)
    return tf.nn.relu(tf.reduce_sum(weights * activations, axis=-1))


def layercam(activations, grads):
    """LayerCAM at feature resolution: relu(sum_k relu(g_k) A_k)."""
    import tensorflow as tf

    return tf.nn.relu(tf.reduce_sum(tf.nn.relu(grads) * activations, axis=-1))


def fuse_layers(maps, gamma: float):
    """LayerCAM's multi-layer fusion (Jiang et al. 2021): each layer's map M (upsampled to the input)
    scaled by tanh(gamma * M / max M), max over the patch, then the element-wise maximum over layers.
    The result is in [0, tanh(gamma)], not raw; a single layer's map is returned raw, unscaled."""
    import tensorflow as tf

    scaled = []
    for cam in maps:
        peak = tf.reduce_max(cam, axis=(1, 2), keepdims=True)
        scaled.append(tf.tanh(gamma * tf.math.divide_no_nan(cam, peak)))
    return tf.reduce_max(tf.stack(scaled), axis=0)
