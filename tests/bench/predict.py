"""Prediction throughput: `histoxai predict` on phantom slides, as patches/s read + predicted.

`bench_predict(out_dir)` renders crops of phantom sample 6 (40 x 40 voxels at 64 px per voxel, a 2,560 px
square; 20 x 20 voxels at 360 px, the thesis's patch size, a 7,200 px square), writes each also as a
JPEG-tiled pyramidal TIFF with its pixel size, and runs `histoxai predict` in its own process on both
inputs for a tiny CNN and a real backbone (MobileNetV2 at 64 px, the thesis's EfficientNetV2-S at 360 px;
random weights, input = patch size). The figures: patches/s over the slide loop (reading, resizing and
predicting; from prediction.json), the whole command's wall time (TensorFlow start-up, model loading
and output writing included) and its peak memory.
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

from tests.bench.common import run_measured

# (pixels per voxel, crop in voxels, backbones)
CASES = ((64, (40, 40), ("tiny", "MobileNetV2")), (360, (20, 20), ("tiny", "EfficientNetV2S")))
BATCH = 64


def _model(folder: Path, backbone: str, size: int) -> Path:
    from histoxai import model as models
    from histoxai.config import from_dict

    config = from_dict({"targets": ["MD", "FA"], "backbone": backbone, "weights": None,
                        "image_size": size}, "bench")
    folder.mkdir(parents=True)
    models.build_model(config).save(folder / "model.keras")
    (folder / "config.yaml").write_text(config.to_yaml())
    return folder


def _pyramid(path: Path, sample: str, mpp: float) -> Path:
    import tifffile

    from histoxai import layout
    from histoxai.matfile import open_mat

    with open_mat(Path(sample) / layout.HE_MAT) as mat:
        image = mat.read("HE")
    with tifffile.TiffWriter(path) as tif:
        for k in range(4):
            tif.write(image[:: 2**k, :: 2**k], tile=(256, 256), compression="jpeg", photometric="rgb",
                      resolution=(1e4 / (mpp * 2**k),) * 2, resolutionunit="CENTIMETER",
                      subfiletype=0 if k == 0 else 1, metadata=None)
    return path


def bench_predict(out_dir: Path) -> dict:
    from histoxai.phantom import render_phantom

    out_dir = Path(out_dir)
    shutil.rmtree(out_dir, ignore_errors=True)
    out_dir.mkdir(parents=True)
    results = {"batch_size": BATCH, "cases": []}
    for size, crop, backbones in CASES:
        where = out_dir / f"{size}px"
        (sample,) = render_phantom(where / "phantom", [6], pixels_per_voxel=size, crop=crop, seed=1)
        inputs = {"sample folder": sample,
                  "pyramidal TIFF": str(_pyramid(where / "slide.tif", sample, 200.0 / size))}
        for backbone in backbones:
            model = _model(where / f"model-{backbone}", backbone, size)
            for name, slide in inputs.items():
                results["cases"].append(_case(where, model, backbone, name, slide, size, crop))
                print(json.dumps(results["cases"][-1]), flush=True)
    return results


def _case(where: Path, model: Path, backbone: str, name: str, slide: str, size: int, crop) -> dict:
    out = where / f"out-{backbone}-{name.replace(' ', '-')}"
    measured = run_measured([sys.executable, "-m", "histoxai.cli", "predict", slide, "--model",
                             str(model), "--out", str(out), "--batch-size", str(BATCH)])
    entry = json.loads((out / "prediction.json").read_text())["slides"][0]
    return {"pixels_per_voxel": size, "grid": list(crop), "backbone": backbone, "input": name,
            "patches": entry["predicted"], "slide_loop_s": entry["seconds"],
            "patches_per_s": entry["patches_per_s"], "command_wall_s": round(measured["wall_s"], 2),
            "peak_rss_mib": round(measured["peak_rss_mib"], 1)}


if __name__ == "__main__":
    print(json.dumps(bench_predict(Path(sys.argv[1] if len(sys.argv) > 1 else "outputs/bench/work-predict")),
                     indent=2))
