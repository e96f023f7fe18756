"""Saliency speed: maps/s per method of the explain step's batched engine against tf-keras-vis, at 128 px.

`bench_explain(work_dir)` builds the tiny CNN and EfficientNetV2S (weights None, targets MD and FA)
at 128 px and explains MD for synthetic H&E-like patches, batches of 16, with each method: the
step's engine (compiled float32 graphs) against tf-keras-vis 0.8.7 called one batch at a time with
its default settings (normalised maps, its own score handling), except that the CAM layer is named
as the step names it (top_activation), so that the two sets of maps are the same quantity. Both are
timed after a warm-up call (tracing / first-call overhead reported separately). The largest
difference between the two sets of maps is taken after applying tf-keras-vis's own normalisation to
the step's raw maps; for SmoothGrad, whose noise differs, beside the difference between two
tf-keras-vis runs with different seeds (the Monte-Carlo noise floor). IG and LayerCAM fused over
several layers (the step's default) have no tf-keras-vis counterpart and are timed alone. On a GPU
the same runs at 360 px.
"""

from __future__ import annotations

import os
import time

import numpy as np

from tests.train_data import blob_patch

IMAGE_SIZE = 128
BATCH = 16
# patches timed per method and backbone (SmoothGrad and IG pass 30-32 images per patch)
PATCHES = {"tiny": {"cheap": 64, "costly": 32}, "EfficientNetV2S": {"cheap": 32, "costly": 8}}
# LayerCAM twice: on the CAM layer alone (what tf-keras-vis computes) and with the step's default
# fusion of stage layers, which has no tf-keras-vis counterpart (like IG) and is timed alone
METHODS = ("gradcam++", "layercam:layers={cam_layer}", "layercam", "vanilla", "smoothgrad:sigma=0.2,n=30",
           "ig:steps=32")


def _has_counterpart(spec, cam_layer: str) -> bool:
    """Whether tf-keras-vis computes the same maps: not IG, not LayerCAM fused over several layers."""
    if spec.method == "layercam":
        return tuple(spec.get("layers")) == (cam_layer,)
    return spec.method != "ig"


def _patches(count: int, size: int) -> np.ndarray:
    rng = np.random.default_rng(0)
    return np.stack([blob_patch(rng, size, int(rng.integers(0, 7)), 1.5, 2.5 * size / 48)[0]
                     for _ in range(count)]).astype(np.float32)


def _library_call(method: str, model, layer: str):
    """tf-keras-vis with its defaults (layer named): a function batch -> normalised maps."""
    from tf_keras_vis.gradcam_plus_plus import GradcamPlusPlus
    from tf_keras_vis.layercam import Layercam
    from tf_keras_vis.saliency import Saliency

    def score(output):
        return output[:, 0]

    named = {"penultimate_layer": layer, "seek_penultimate_conv_layer": False}
    if method == "gradcam++":
        return lambda x: GradcamPlusPlus(model)(score, x, **named)
    if method == "layercam":
        return lambda x: Layercam(model)(score, x, **named)
    if method == "vanilla":
        return lambda x: Saliency(model)(score, x)
    return lambda x: Saliency(model)(score, x, smooth_samples=30, smooth_noise=0.2)


def _timed(function, images: np.ndarray) -> tuple[np.ndarray, float]:
    start = time.perf_counter()
    maps = np.concatenate([np.asarray(function(images[i:i + BATCH])) for i in range(0, len(images), BATCH)])
    return maps, time.perf_counter() - start


def _backbone(backbone: str, size: int) -> dict:
    import warnings

    import keras
    from tf_keras_vis.utils import normalize

    from histoxai.components.explain.engine import SaliencyEngine
    from histoxai.components.explain.methods import Score, parse_method
    from histoxai.config import from_dict
    from histoxai.model import build_model, cam_layer_name

    warnings.filterwarnings("ignore", message="The structure of `inputs` doesn't match", category=UserWarning)
    keras.utils.set_random_seed(0)
    config = from_dict({"targets": ["MD", "FA"], "backbone": backbone, "weights": None, "image_size": size,
                        "dropout": 0.0, "feature_dropout": 0.0}, "bench")
    net = build_model(config, target_means={"MD": 1.0, "FA": 0.3})
    layer = cam_layer_name(net)
    engine = SaliencyEngine(net)
    single = keras.Model(net.input, net.get_layer("MD").output)
    images = _patches(max(PATCHES[backbone].values()), size)
    out = {}
    for text in METHODS:
        spec = parse_method(text.format(cam_layer=layer)).with_layers(layer)
        count = PATCHES[backbone]["costly" if spec.method in ("smoothgrad", "ig") else "cheap"]
        batch = images[:count]
        keys = np.arange(count, dtype=np.int64)

        def ours(x, spec=spec, keys=keys):
            return engine.maps(x, "MD", spec, Score(), np.zeros(len(x)), keys[:len(x)])[0]

        tick = time.perf_counter()
        ours(batch[:2])
        warmup = time.perf_counter() - tick
        maps, seconds = _timed(ours, batch)
        row = {"patches": count, "maps_per_s": round(count / seconds, 2), "warmup_s": round(warmup, 1)}
        if _has_counterpart(spec, layer):
            library = _library_call(spec.method, single, layer)
            tick = time.perf_counter()
            library(batch[:2])
            row["tf_keras_vis_warmup_s"] = round(time.perf_counter() - tick, 1)
            np.random.seed(1)
            reference, library_seconds = _timed(library, batch)
            row["tf_keras_vis_maps_per_s"] = round(count / library_seconds, 2)
            row["speedup"] = round(library_seconds / seconds, 2)
            row["max_abs_difference"] = float(np.abs(normalize(maps) - reference).max())
            if spec.method == "smoothgrad":
                np.random.seed(2)
                again, _ = _timed(library, batch)
                row["tf_keras_vis_seed_to_seed_difference"] = float(np.abs(again - reference).max())
        out[spec.key] = row
    return out


def bench_explain(work_dir: str | os.PathLike) -> dict:
    """Measures and returns the figures (work_dir is unused: everything stays in memory)."""
    import tensorflow as tf

    from histoxai.provenance import device_name

    gpu = bool(tf.config.list_physical_devices("GPU"))
    size = 360 if gpu else IMAGE_SIZE
    results = {"device": device_name(), "image_size": size, "batch_size": BATCH, "target": "MD",
               "note": "maps/s after warm-up; speedup = step maps/s / tf-keras-vis maps/s; differences on "
                       "tf-keras-vis's normalised 0-1 scale"}
    for backbone in PATCHES:
        results[backbone] = _backbone(backbone, size)
    ratios = [row["speedup"] for b in PATCHES for row in results[b].values() if "speedup" in row]
    results["slowest_speedup"] = min(ratios)
    return results


if __name__ == "__main__":
    import json
    import sys

    print(json.dumps(bench_explain(sys.argv[1] if len(sys.argv) > 1 else "."), indent=2))
