"""Synthetic runs for the review app's benchmark and tests: a split manifest with small shards and an explain
output written with the explain step's own store (MapWriter, write_table) and statistics."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd

from histoxai import artifacts
from histoxai.components.explain.explain import map_statistics
from histoxai.manifest import write_manifest
from histoxai.saliency import store
from histoxai.shards import ShardWriter, encode_image
from tests.train_data import blob_patch

DISTINCT = 32  # distinct patch pictures and maps, cycled: the files are real, their content repeats


def _bump_maps(rng, count: int, size: int) -> np.ndarray:
    """Smooth saliency-like maps: a few Gaussian bumps each, at random scales (raw, not normalised)."""
    yy, xx = np.mgrid[0:size, 0:size] / size
    maps = np.zeros((count, size, size), np.float32)
    for m in maps:
        for _ in range(rng.integers(1, 4)):
            cy, cx, width = rng.uniform(0.1, 0.9), rng.uniform(0.1, 0.9), rng.uniform(0.05, 0.25)
            m += np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * width ** 2))
        m *= 10.0 ** rng.uniform(-6, -2)
    return maps


def synthesise_run(folder: str | Path, patches: int = 10_000, *, patch_size: int = 360, map_size: int = 90,
                   encoding: str = "jpeg", samples: int = 4, shard_size: int = 1000,
                   targets: tuple[str, ...] = ("MD",), method: str = "gradcam++",
                   setting: str = "layer=top_activation", seed: int = 0) -> dict:
    """folder/split (split.parquet + shards) and folder/explain (maps.parquet, maps/, explain.json):
    `patches` test patches x targets, one map each. Returns the paths and counts."""
    folder = Path(folder)
    rng = np.random.default_rng(seed)
    pictures = [encode_image(blob_patch(rng, patch_size, int(rng.integers(2, 12)), 1.5,
                                        3.0 * patch_size / 48)[0], encoding) for _ in range(DISTINCT)]
    split = folder / "split"
    (split / "shards").mkdir(parents=True, exist_ok=True)
    per_sample = int(np.ceil(patches / samples))
    columns = int(np.ceil(np.sqrt(per_sample)))
    rows = []
    writer = None
    for i in range(patches):
        if i % shard_size == 0:
            if writer is not None:
                writer.close()
            shard = f"shards/part-{i // shard_size:05d}.tfrecord"
            writer = ShardWriter(split / shard)
        index, offset = writer.append(pictures[i % DISTINCT])
        sample, position = divmod(i, per_sample)
        md = float(rng.uniform(0.5, 2.0))
        rows.append({"sample": str(sample + 1), "row": position // columns, "col": position % columns,
                     "shard": shard, "index": index, "offset": offset, "encoding": encoding,
                     "patch_size": patch_size, "MD": md, "FA": float(rng.uniform(0.05, 0.6)),
                     "FAIP": np.nan, "CC": float(rng.integers(0, 300)), "CD": 0.5, "SA": 0.2,
                     "split": "test"})
    writer.close()
    frame = pd.DataFrame(rows)
    write_manifest(frame, split / "split.parquet")
    frame["shard_uri"] = [str(split / s) for s in frame["shard"]]

    explain = folder / "explain"
    maps = _bump_maps(rng, DISTINCT, map_size)
    parts = []
    with store.MapWriter(explain) as maps_out:
        for target in targets:
            locations = [maps_out.append(maps[i % DISTINCT]) for i in range(patches)]
            y = frame[target].to_numpy(np.float64)
            y_hat = y * rng.normal(1.0, 0.1, patches)
            stats = map_statistics(np.stack([maps[i % DISTINCT] for i in range(patches)]))
            parts.append(frame[["sample", "row", "col", "split", "shard_uri", "index", "offset", "encoding",
                                "patch_size"]].assign(
                target=target, method=method, setting=setting, score="increase", y=y, y_hat=y_hat,
                delta=y_hat - y, rdelta=np.where(y != 0, (y_hat / np.where(y != 0, y, 1) - 1) * 100, np.nan),
                **stats, map_signed=False, ig_gap=np.nan).join(pd.DataFrame(locations)))
    table = pd.concat(parts, ignore_index=True)
    table.insert(0, "map_id", np.arange(len(table), dtype=np.int64))
    store.write_table(table, explain / artifacts.MAPS_TABLE)
    (explain / "explain.json").write_text(json.dumps({"model": str(folder / "models" / "mdfa"),
                                                      "maps": len(table), "patches": patches}))
    return {"run": str(folder), "split": str(split), "explain": str(explain), "maps": len(table),
            "patches": patches}
