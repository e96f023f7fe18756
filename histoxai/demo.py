"""`make demo`: the whole flow on phantom data, ending with a one-screen summary of where results are.

Runs phantom -> ingest (each sample) -> split with small, fast settings (64 px per voxel, 64 px
patches), through the same library functions as the `histoxai` subcommands.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from histoxai import storage
from histoxai.errors import InputError

DEMO_SAMPLES = ("3", "4")  # the thesis's training samples


def run_demo(out: str, *, samples=DEMO_SAMPLES, pixels_per_voxel: int = 64, patch_size: int = 64,
             seed: int = 0) -> dict:
    from histoxai.components.ingest.ingest import ingest_sample
    from histoxai.components.split.split import split_manifests
    from histoxai.phantom import render_phantom

    timings = {}
    t0 = time.perf_counter()
    phantom_dir = storage.join(out, "phantom")
    render_phantom(phantom_dir, [int(s) for s in samples], pixels_per_voxel=pixels_per_voxel,
                   seed=seed, overwrite=True)
    timings["phantom"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    manifests = []
    for sample in samples:
        ingest_out = storage.join(out, "ingest", sample)
        ingest_sample(storage.join(phantom_dir, sample), ingest_out, patch_size=patch_size, overwrite=True)
        manifests.append(storage.join(ingest_out, "manifest.parquet"))
    timings["ingest"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    split_out = storage.join(out, "split")
    counts = split_manifests(manifests, split_out, train_samples=tuple(samples), seed=seed, overwrite=True)
    timings["split"] = time.perf_counter() - t0
    return {"counts": counts, "timings": timings, "phantom": phantom_dir, "manifests": manifests,
            "split": split_out}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m histoxai.demo", description=__doc__)
    parser.add_argument("--out", default="outputs/demo", help="output folder or gs:// URI")
    args = parser.parse_args(argv)
    out = args.out if storage.is_gcs(args.out) else str(Path(args.out).resolve())
    try:
        result = run_demo(out)
    except InputError as err:
        print(f"demo: error: {err}", file=sys.stderr)
        return 2
    print("\nPatches per sample and split:")
    print(result["counts"].to_string())
    print("\nTime per step: " + ", ".join(f"{k} {v:.0f} s" for k, v in result["timings"].items()))
    print("\nOutputs:")
    print(f"  phantom samples (dataset layout)  {result['phantom']}")
    for manifest in result["manifests"]:
        print(f"  ingest manifest + shards + QC      {manifest.rsplit('/', 1)[0]}")
    print(f"  split (split.parquet, split.md)    {result['split']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
