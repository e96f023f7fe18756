"""Training speed: images/s of training steps and of the tf.data input pipeline alone, per device.

`bench_training(out_dir)` writes a few hundred synthetic 128 px patches, measures the input pipeline
(first pass: read + decode; later passes: from the in-memory cache), then trains the tiny CNN and
EfficientNetV2S (weights None, whole network trainable) at 128 px in float32 without and with XLA
(on a CPU also mixed_float16 without XLA, which the CPU default declines), each case in its own process
under a time limit (XLA compiles EfficientNetV2S for minutes on a CPU).
Speed is counted after a warm-up that includes tracing and compiling; the warm-up time is reported.
These cases call Keras's fit as it comes, which traces the train step twice; one more EfficientNetV2S
case builds the training state first, as histoxai.training does (`built`), so its warm-up shows the
trace that saves.
On a GPU it adds mixed_float16 + XLA cases and the thesis configuration at 360 px with and without
mixed precision + XLA, and the speed-up between them.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
IMAGE_SIZE = 128
BATCH = 16
WARMUP_STEPS = 2
TIMED_SECONDS = 10.0


def _limit_s(case: dict) -> int:
    """Seconds a case may take in all (sized so the whole benchmark stays near 6 minutes on 2 cores;
    tracing EfficientNetV2S's full gradient graph alone takes 1-2 minutes there)."""
    base = 60 if case["backbone"] == "tiny" else 150 if case["jit"] else 180
    return base * (2 if case["image_size"] > IMAGE_SIZE else 1)


def _timed_training(backbone: str, image_size: int, precision: str, jit: bool, manifest: str,
                    built: bool = False) -> dict:
    """Runs in a child process: build, compile, warm up, then time steps for TIMED_SECONDS."""
    import keras

    from histoxai import dataset
    from histoxai import model as models
    from histoxai.config import from_dict
    from histoxai.manifest import read_manifest
    from histoxai.training import build_training_state

    config = from_dict({"targets": ["MD", "FA"], "backbone": backbone, "weights": None,
                        "image_size": image_size, "batch_size": BATCH, "precision": precision,
                        "jit_compile": jit, "lr_schedule": "none"}, "bench")
    keras.utils.set_random_seed(0)
    frame = dataset.reading_order(dataset.select_split(read_manifest(manifest), "train"))
    data = dataset.patch_dataset(frame, image_size=image_size, batch_size=BATCH, targets=config.targets,
                                 shuffle_seed=0, cache="memory", repeat=True)
    start = time.perf_counter()
    net = models.build_model(config, precision=precision)
    models.set_phase(net, "finetune")
    models.compile_model(net, config, steps_per_epoch=10, jit_compile=jit)
    if built:
        build_training_state(net, data.element_spec)
    marks: list[float] = []

    class Timer(keras.callbacks.Callback):
        def on_train_batch_end(self, batch, logs=None):
            marks.append(time.perf_counter())
            if len(marks) > WARMUP_STEPS and marks[-1] - marks[WARMUP_STEPS - 1] >= TIMED_SECONDS:
                self.model.stop_training = True

    net.fit(data, epochs=1, steps_per_epoch=100_000, verbose=0, callbacks=[Timer()])
    timed = len(marks) - WARMUP_STEPS
    return {"backbone": backbone, "image_size": image_size, "precision": precision, "jit_compile": jit,
            "built": built, "batch_size": BATCH, "warmup_s": round(marks[WARMUP_STEPS - 1] - start, 1),
            "timed_steps": timed,
            "train_images_per_s": round(timed * BATCH / (marks[-1] - marks[WARMUP_STEPS - 1]), 1)}


def _run_case(case: dict, manifest: str, limit_s: int) -> dict:
    command = [sys.executable, "-m", "tests.bench.train_bench", "--case", json.dumps(case),
               "--manifest", manifest]
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}
    start = time.perf_counter()
    try:
        done = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=limit_s, env=env)
    except subprocess.TimeoutExpired:
        return {**case, "status": f"not measured: did not finish warm-up + timing within {limit_s} s"}
    if done.returncode != 0:
        return {**case, "status": f"failed: {done.stderr.strip().splitlines()[-1:]}"}
    result = json.loads(done.stdout.strip().splitlines()[-1])
    return {**result, "status": "ok", "process_s": round(time.perf_counter() - start, 1)}


def _input_pipeline(manifest: str) -> dict:
    """Images/s of tf.data alone: first pass decodes PNGs, later passes come from the cache."""
    from histoxai import dataset
    from histoxai.manifest import read_manifest

    frame = dataset.reading_order(read_manifest(manifest))
    out = {}
    for label, cache in (("decode", "none"), ("cached", "memory")):
        data = dataset.patch_dataset(frame, image_size=IMAGE_SIZE, batch_size=BATCH, targets=["MD", "FA"],
                                     shuffle_seed=0, cache=cache)
        for _ in data:  # warm-up pass (fills the cache when there is one)
            pass
        start = time.perf_counter()
        passes = 3
        for _ in range(passes):
            for _ in data:
                pass
        out[f"input_{label}_images_per_s"] = round(passes * len(frame) / (time.perf_counter() - start), 1)
    return out


def bench_training(out_dir: str | os.PathLike) -> dict:
    """Measures and returns the figures; writes the synthetic data under out_dir/train-bench-data."""
    import tensorflow as tf

    from histoxai.provenance import device_name
    from tests.train_data import write_blob_manifest

    manifest = str(write_blob_manifest(Path(out_dir) / "train-bench-data", n=320, size=IMAGE_SIZE, seed=0))
    gpu = bool(tf.config.list_physical_devices("GPU"))
    cases = [{"backbone": b, "image_size": IMAGE_SIZE, "precision": "float32", "jit": jit}
             for b in ("tiny", "EfficientNetV2S") for jit in (False, True)]
    cases.append({"backbone": "EfficientNetV2S", "image_size": IMAGE_SIZE, "precision": "float32",
                  "jit": False, "built": True})
    if not gpu:  # the CPU default is float32: this measures the mixed precision it declines
        cases += [{"backbone": b, "image_size": IMAGE_SIZE, "precision": "mixed_float16", "jit": False}
                  for b in ("tiny", "EfficientNetV2S")]
    if gpu:
        cases += [{"backbone": b, "image_size": IMAGE_SIZE, "precision": "mixed_float16", "jit": True}
                  for b in ("tiny", "EfficientNetV2S")]
        cases += [{"backbone": "EfficientNetV2S", "image_size": 360, "precision": p, "jit": jit}
                  for p, jit in (("float32", False), ("mixed_float16", True))]
    results = {"device": device_name(), "n_patches": 320, **_input_pipeline(manifest), "training": []}
    for case in cases:
        results["training"].append(_run_case(case, manifest, _limit_s(case)))
        print(f"train bench: {results['training'][-1]}", flush=True)
    warmups = {r.get("built", False): r["warmup_s"] for r in results["training"] if r["status"] == "ok"
               and r["backbone"] == "EfficientNetV2S" and r["image_size"] == IMAGE_SIZE
               and r["precision"] == "float32" and not r["jit_compile"]}
    if len(warmups) == 2:  # Keras's order over built first: the second trace's share of the warm-up
        results["efficientnet_warmup_keras_over_built"] = round(warmups[False] / warmups[True], 2)
    thesis = [r for r in results["training"] if r["image_size"] == 360 and r["status"] == "ok"]
    if len(thesis) == 2:
        results["thesis_360px_mixed_xla_speedup"] = round(
            thesis[1]["train_images_per_s"] / thesis[0]["train_images_per_s"], 2)
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description="one training-speed case (used by bench_training)")
    parser.add_argument("--case", help="JSON: backbone, image_size, precision, jit")
    parser.add_argument("--manifest", help="split manifest of the synthetic patches")
    parser.add_argument("--out", help="run the whole training benchmark, print its figures (JSON)")
    args = parser.parse_args()
    if args.case:
        case = json.loads(args.case)
        print(json.dumps(_timed_training(case["backbone"], case["image_size"], case["precision"],
                                         case["jit"], args.manifest, case.get("built", False))))
    else:
        print(json.dumps(bench_training(args.out or "bench-out"), indent=1))


if __name__ == "__main__":
    main()
