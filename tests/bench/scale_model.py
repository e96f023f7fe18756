"""A scale model of a full run at the thesis's scale: per step the work (patches, FLOPs), the throughput
measured here, the throughput derived for the accelerator the pipeline compiles for, and wall time.

Inputs: the other bench sections' figures (ingest, training, predict, explain; run them first), FLOPs
per patch counted here by TensorFlow's profiler on EfficientNetV2-S, patch counts from the bundled
summary.mat, and published GPU figures (PUBLISHED, each with its source). Without a GPU the accelerator
throughput is derived: the published A100 figure, moved to 360 px by the FLOP ratio, then to the L4 by
the ratio of peak FP16 tensor throughput (an upper bound) and of memory bandwidth (a lower bound:
EfficientNet's depthwise convolutions are bandwidth-bound), so each GPU figure is a range.
"""

from __future__ import annotations

import numpy as np

PATCH = 360
THESIS = {"samples": 16, "train_samples": ("3", "4"), "train_share": 0.6, "val_share": 0.2,
          "test_share": 0.2, "erosion": 5, "tuning_trials": 250,
          # epochs per trial: the frozen phase's limit (thesis config) and the mean of Table 3.2's
          # "Epochs [50-100]"; early stopping and pruning cut both by an amount no one can know ahead
          "trial_frozen_epochs": 100, "trial_finetune_epochs": 75,
          "train_frozen_epochs": 100, "train_finetune_epochs": 100, "models": 2,
          # explain: Grad-CAM++ and LayerCAM (one gradient each) and SmoothGrad n = 30, for MD, FA, CC
          "explain_gradients_per_patch": 3 * (1 + 1 + 30)}
PUBLISHED = {
    "a100_train_img_s_300px_amp": (950, "NVIDIA DeepLearningExamples, TensorFlow2 EfficientNet v2-S README, "
                                   "training, 1x A100 80GB, mixed precision, 300 x 300"),
    "a100_infer_img_s_384px_fp16": (1674, "same README, inference, 1x A100 80GB, FP16, batch 128, 384 x 384"),
    "a100_fp16_tflops": (312, "NVIDIA A100 datasheet: FP16 Tensor Core, dense"),
    "l4_fp16_tflops": (121, "NVIDIA L4 datasheet: FP16 Tensor Core, dense (242 with sparsity)"),
    "a100_bandwidth_gb_s": (2039, "NVIDIA A100 80GB SXM datasheet: GPU memory bandwidth"),
    "l4_bandwidth_gb_s": (300, "NVIDIA L4 datasheet: GPU memory bandwidth"),
}


def count_flops(size: int) -> dict:
    """Float operations per patch of EfficientNetV2-S (the thesis's backbone, no head) at size x size:
    forward, and forward + backward to every weight, as TensorFlow's profiler counts them."""
    import keras
    import tensorflow as tf

    net = keras.applications.EfficientNetV2S(weights=None, include_top=False, input_shape=(size, size, 3),
                                             pooling="avg")
    spec = tf.TensorSpec((1, size, size, 3), tf.float32)

    def flops(fn) -> int:
        graph = tf.function(fn).get_concrete_function(spec).graph
        options = tf.compat.v1.profiler.ProfileOptionBuilder.float_operation()
        options["output"] = "none"
        return tf.compat.v1.profiler.profile(graph=graph, options=options).total_float_ops

    def forward_backward(x):
        with tf.GradientTape() as tape:
            y = tf.reduce_sum(net(x, training=False))
        return tape.gradient(y, net.trainable_variables)

    return {"forward": flops(lambda x: net(x, training=False)), "forward_backward": flops(forward_backward)}


def thesis_patches() -> dict:
    """Voxels of each real sample that pass ROI, erosion and finite MD/FA (an upper bound: the tissue
    masks, which need the slides, drop a few more)."""
    from histoxai.components.ingest.ingest import eroded_roi  # noqa: I001  (bench code may cross layers)
    from histoxai.phantom.summary import load_summary

    summary = load_summary()
    counts = {}
    for n in range(1, summary.n_samples + 1):
        maps = summary.sample(n)
        keep = eroded_roi(np.nan_to_num(maps.mr["ROI"]) == 1, THESIS["erosion"])
        keep &= np.isfinite(maps.mr["MD"]) & np.isfinite(maps.mr["FA"])
        counts[str(n)] = int(keep.sum())
    return counts


def _case(rows: list, predicate) -> dict | None:
    return next((r for r in rows if predicate(r)), None)


def _measured_here(sections: dict, flops: dict) -> dict:
    """Patches/s on this machine per kind of work at 360 px (None where the bench section is missing).
    Figures measured at 128 px are moved to 360 px by the FLOP ratio."""
    scale = flops["128"]["forward_backward"] / flops[str(PATCH)]["forward_backward"]
    out = {"ingest": None, "train": None, "predict": None, "explain_gradient": None}
    if "ingest" in sections:
        out["ingest"] = sections["ingest"]["ingest"]["patches_per_s_in_step"]
    training = sections.get("training", {}).get("training", [])
    case = _case(training, lambda r: r["backbone"] == "EfficientNetV2S" and r.get("status") == "ok"
                 and r["precision"] == "float32" and not r["jit_compile"])
    if case:
        size_scale = scale if case["image_size"] == 128 else 1.0
        out["train"] = case["train_images_per_s"] * size_scale
    predict = _case(sections.get("predict", {}).get("cases", []),
                    lambda r: r["backbone"] == "EfficientNetV2S" and r["pixels_per_voxel"] == PATCH)
    if predict:
        out["predict"] = predict["patches_per_s"]
    explain = sections.get("explain", {}).get("EfficientNetV2S", {})
    smooth = next((row for key, row in explain.items() if key.startswith("smoothgrad")), None)
    if smooth:  # maps/s of SmoothGrad n = 30: 30 gradients per map
        size_scale = scale if sections["explain"]["image_size"] == 128 else 1.0
        out["explain_gradient"] = smooth["maps_per_s"] * 30 * size_scale
    return out


def _l4_range(flops: dict) -> dict:
    """(low, high) patches/s on one NVIDIA L4 at 360 px: training, and forward only."""
    p = {k: v[0] for k, v in PUBLISHED.items()}
    to_360_train = flops["300"]["forward_backward"] / flops[str(PATCH)]["forward_backward"]
    to_360_infer = flops["384"]["forward"] / flops[str(PATCH)]["forward"]
    ratios = (p["l4_bandwidth_gb_s"] / p["a100_bandwidth_gb_s"], p["l4_fp16_tflops"] / p["a100_fp16_tflops"])
    train = p["a100_train_img_s_300px_amp"] * to_360_train
    infer = p["a100_infer_img_s_384px_fp16"] * to_360_infer
    return {"train": tuple(train * r for r in ratios), "forward": tuple(infer * r for r in ratios)}


def scale_model(sections: dict) -> dict:
    flops = {str(size): count_flops(size) for size in (128, 300, PATCH, 384)}
    patches = thesis_patches()
    pooled = sum(patches[s] for s in THESIS["train_samples"])
    train_n, val_n, test_n = (round(pooled * THESIS[k]) for k in ("train_share", "val_share", "test_share"))
    fwd, fb = flops[str(PATCH)]["forward"], flops[str(PATCH)]["forward_backward"]

    def training_work(frozen: int, finetune: int) -> float:
        """Forward-pass equivalents: a frozen epoch costs a forward pass per patch (the head's backward
        is negligible), a fine-tuning epoch a forward and backward pass, validation a forward pass."""
        return (frozen * train_n + finetune * train_n * fb / fwd + (frozen + finetune) * val_n)

    here = _measured_here(sections, flops)
    l4 = _l4_range(flops)
    per_trial = training_work(THESIS["trial_frozen_epochs"], THESIS["trial_finetune_epochs"])
    per_model = training_work(THESIS["train_frozen_epochs"], THESIS["train_finetune_epochs"])
    # (step, machine, forward equivalents, CPU rate here in forward equivalents/s, L4 range in the same)
    train_here = here["train"] * fb / fwd if here["train"] else None
    l4_train_fe = tuple(x * fb / fwd for x in l4["train"])
    # the ingest step asks for 4 vCPU: assume each doubling of cores gains what 1 -> 2 gained here
    ingest_4 = None
    if here["ingest"]:
        ingest_4 = here["ingest"] * sections["ingest"]["speedup_2_cores_over_1"]
    from histoxai.components.tune.params import DEFAULTS as TUNE  # noqa: I001  (bench code may cross layers)

    default_trials = TUNE.tuning_trials
    steps = [
        ("ingest: largest sample (all 16 in parallel)", "4 vCPU", max(patches.values()), here["ingest"],
         ingest_4 and (ingest_4, ingest_4), "patches"),
        ("tune: 250 trials, one after another", "1 x L4", THESIS["tuning_trials"] * per_trial, train_here,
         l4_train_fe, "forward equivalents"),
        (f"tune: {default_trials} trials (the pipeline's default)", "1 x L4", default_trials * per_trial,
         train_here, l4_train_fe, "forward equivalents"),
        ("train: 2 models, in parallel", "1 x L4 each", per_model, train_here, l4_train_fe,
         "forward equivalents"),
        ("predict: every patch of 16 samples, 2 models", "1 x L4", THESIS["models"] * sum(patches.values()),
         here["predict"], l4["forward"], "forward passes"),
        ("explain: test set, 3 targets x 3 methods", "1 x L4", THESIS["explain_gradients_per_patch"] * test_n,
         here["explain_gradient"], l4["train"], "input gradients (forward + backward)"),
    ]
    rows = []
    for name, machine, work, rate_here, rate_gpu, unit in steps:
        row = {"step": name, "machine": machine, "work": work, "unit": unit, "rate_here": rate_here,
               "hours_here": work / rate_here / 3600 if rate_here else None}
        if rate_gpu:  # on the compiled machine: the L4 range, or the ingest step's 4 vCPU
            row.update(rate_compiled_low=rate_gpu[0], rate_compiled_high=rate_gpu[1],
                       hours_compiled_low=work / rate_gpu[1] / 3600,
                       hours_compiled_high=work / rate_gpu[0] / 3600)
        rows.append(row)
    return {"flops_per_patch": flops, "patches_per_sample": patches, "pooled_train_val_test": [
        train_n, val_n, test_n], "assumptions": THESIS, "published": PUBLISHED, "rows": rows}


def bench_scale(work_dir) -> dict:
    """The scale model from the figures already in work_dir's parent results.json (run after the
    ingest, training, predict and explain sections of the same `make bench`)."""
    import json
    from pathlib import Path

    results = Path(work_dir).parent / "results.json"
    sections = json.loads(results.read_text()).get("sections", {}) if results.exists() else {}
    return scale_model(sections)
