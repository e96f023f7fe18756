"""Synthetic split manifests for the training tests and benchmark: patches with k dark blobs, CC = k.

Each patch is pink noise with k purple elliptical blobs (k = 0..max_blobs); CC = k, MD falls with the
blobs' total area (like MD with cell density), FA rises with their elongation, FAIP = FA, and each
row gets a train/val/test split (60/20/20). Written with the project's own shard and manifest
writers, two samples in two shards, so the reading code sees the real layout.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import yaml

from histoxai.manifest import write_manifest
from histoxai.shards import ShardWriter, encode_image

# A tuning config the tiny CNN learns MD of the blob patches with, within a few epochs at lr 1e-3.
QUICK_TUNE = {"targets": ["MD"], "backbone": "tiny", "weights": None, "image_size": 32, "batch_size": 8,
              "frozen_epochs": 0, "finetune_epochs": 3, "patience": 5, "optimizer": "adam",
              "lr_schedule": "none", "learning_rate": 1e-3, "dense_units": 16, "feature_units": 8,
              "dropout": 0.0, "feature_dropout": 0.0}


def blob_patch(rng: np.random.Generator, size: int, count: int, elongation: float, radius: float):
    """One size x size RGB patch with `count` blobs; returns (image, dark pixel fraction)."""
    yy, xx = np.mgrid[0:size, 0:size]
    image = np.empty((size, size, 3), dtype=np.float64)
    image[:] = (230, 180, 205)
    image += rng.normal(0, 6, image.shape)
    dark = np.zeros((size, size), dtype=bool)
    angle = rng.uniform(0, np.pi)
    for _ in range(count):
        cy, cx = rng.uniform(radius + 1, size - radius - 1, 2)
        dy, dx = yy - cy, xx - cx
        u = dx * np.cos(angle) + dy * np.sin(angle)
        v = -dx * np.sin(angle) + dy * np.cos(angle)
        dark |= (u / (radius * elongation)) ** 2 + (v / radius) ** 2 <= 1
    image[dark] = (90, 40, 120) + rng.normal(0, 6, (int(dark.sum()), 3))
    return np.clip(image, 0, 255).astype(np.uint8), float(dark.mean())


def write_blob_manifest(folder: str | Path, n: int = 120, size: int = 48, *, encoding: str = "png",
                        max_blobs: int = 6, seed: int = 0, samples: int = 2) -> Path:
    """Writes shards and a split manifest (split.parquet) under folder; returns the manifest path."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    rows = []
    per_sample = int(np.ceil(n / samples))
    for s in range(samples):
        shard = f"shards/sample{s + 1}.tfrecord"
        (folder / shard).parent.mkdir(parents=True, exist_ok=True)
        with ShardWriter(folder / shard) as writer:
            for i in range(min(per_sample, n - s * per_sample)):
                count = int(rng.integers(0, max_blobs + 1))
                elongation = float(rng.uniform(1.0, 2.0))
                radius = float(rng.uniform(2.0, 3.5)) * size / 48
                image, dark = blob_patch(rng, size, count, elongation, radius)
                index, offset = writer.append(encode_image(image, encoding))
                fa = (elongation - 1) / (elongation + 1) if count else 0.0
                rows.append({"sample": str(s + 1), "row": i // 16, "col": i % 16, "shard": shard,
                             "index": index, "offset": offset, "encoding": encoding, "patch_size": size,
                             "MD": 1.6 - 3.0 * dark, "FA": fa, "FAIP": fa, "CC": float(count),
                             "CD": count / max_blobs, "SA": fa})
    frame = pd.DataFrame(rows)
    frame["split"] = rng.choice(["train", "val", "test"], size=len(frame), p=[0.6, 0.2, 0.2])
    path = folder / "split.parquet"
    write_manifest(frame, path)
    return path


def write_yaml(folder: Path, values: dict, name: str = "space.yaml") -> str:
    """`values` as a YAML file in folder (a search space by default); its path."""
    path = Path(folder) / name
    path.write_text(yaml.safe_dump(values))
    return str(path)
