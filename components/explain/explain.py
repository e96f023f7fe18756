"""Batch saliency over a manifest subset: each patch x target x method x setting x score, stored raw, checked.

`explain(model_uri, data_uri, out_uri, ...)` reads a trained model (a `histoxai train` folder or a
.keras file) and a split manifest, picks the patches (test split and/or chosen samples, optionally
one shard range, so that a pipeline can fan out over shards), computes the maps batch by batch and
writes to OUT (local or gs://; built aside and published whole, the table last):
  maps.parquet, maps/     the raw maps and their table (see `store`)
  explain.json            options, counts (NaN and blank maps), speed per method
  trust.md, trust.html, trust.parquet, trust_curves.parquet   the trust measures (see `trust`)
Table columns per map: map_id, sample, row, col, split, target, method, setting, score, y, y_hat
(ŷ of the float32 model the maps explain), delta = ŷ - y, rdelta = (ŷ / y - 1) x 100 (NaN where
y = 0: a relative error is undefined there), map_min, map_max, map_sum (finite values), map_nan_fraction
(non-finite share), map_blank (no contrast: all finite values equal, or none), map_signed (IG),
ig_gap (IG only: sum of the map - (S(x) - S(baseline)), the completeness error), the patch image's
location (shard_uri, index, offset, encoding, patch_size) and the map's location (store.LOCATION).
"""

from __future__ import annotations

import hashlib
import json
import math
import time
from collections.abc import Sequence

import numpy as np

from histoxai import artifacts
from histoxai.components.explain.methods import SIGNED_METHODS, parse_method, parse_score
from histoxai.components.explain.params import DEFAULTS
from histoxai.errors import InputError
from histoxai.outputs import check_writable, clear_stale_scratch, staged
from histoxai.saliency import store

ENGINES = ("batched", "tf-keras-vis")
PATCH_COLUMNS = ("shard_uri", "index", "offset", "encoding", "patch_size")


def patch_keys(frame) -> np.ndarray:
    """A stable int64 per patch from (sample, row, col): seeds its SmoothGrad noise."""
    def key(sample, row, col) -> int:
        digest = hashlib.blake2b(f"{sample}/{int(row)}/{int(col)}".encode(), digest_size=8).digest()
        return int.from_bytes(digest, "little") & (2**63 - 1)

    return np.array([key(*k) for k in zip(frame["sample"], frame["row"], frame["col"], strict=True)],
                    dtype=np.int64)


def parse_shard_range(text: str | None) -> tuple[int, int] | None:
    """'a:b' -> (a, b): shards a..b-1 in reading order (first appearance in the manifest)."""
    if not text:
        return None
    first, sep, last = text.partition(":")
    try:
        bounds = (int(first), int(last)) if sep else None
    except ValueError:
        bounds = None
    if bounds is None or not 0 <= bounds[0] < bounds[1]:
        raise InputError(f"--shard-range {text!r}: expected A:B with 0 <= A < B (shards A to B-1)")
    return bounds


def select_patches(frame, *, splits: Sequence[str] = ("test",), samples: Sequence[str] = (),
                   shard_range: tuple[int, int] | None = None, max_patches: int | None = None,
                   seed: int = 0, source: str = "manifest"):
    """The patches to explain, in reading order: rows of the given splits or samples, then one shard
    range, then at most max_patches of them (a seeded random choice)."""
    from histoxai import dataset

    chosen = np.zeros(len(frame), bool)
    for split in splits:
        chosen |= (frame.index.isin(dataset.select_split(frame, split, source).index))
    unknown = sorted(set(samples) - set(frame["sample"]))
    if unknown:
        raise InputError(f"{source}: samples {unknown} not found; expected some of "
                         f"{sorted(set(frame['sample']))}")
    chosen |= frame["sample"].isin(list(samples)).to_numpy()
    picked = dataset.reading_order(frame[chosen])
    if shard_range is not None:
        shards = list(dict.fromkeys(picked["shard_uri"]))
        if shard_range[0] >= len(shards):
            raise InputError(f"--shard-range {shard_range[0]}:{shard_range[1]}: the selection spans "
                             f"{len(shards)} shards (0 to {len(shards) - 1})")
        picked = picked[picked["shard_uri"].isin(shards[shard_range[0]:shard_range[1]])]
    if max_patches is not None and len(picked) > max_patches:
        keep = np.sort(np.random.default_rng(seed).choice(len(picked), max_patches, replace=False))
        picked = picked.iloc[keep]
    if picked.empty:
        raise InputError(f"{source}: no patches in splits {list(splits)} or samples {list(samples)}; "
                         "expected a split manifest from `histoxai split` with such rows")
    return picked


def load_trained_model(uri: str):
    """A `histoxai train` output folder (its model.keras) or a .keras file."""
    from histoxai.model import load_model

    return load_model(artifacts.model_file(uri))


def map_statistics(maps: np.ndarray) -> dict[str, np.ndarray]:
    """Per map of (B, H, W): min, max, sum of finite values, non-finite share, blank flag."""
    flat = maps.reshape(len(maps), -1).astype(np.float64)
    finite = np.isfinite(flat)
    count = finite.sum(axis=1)
    low = np.where(finite, flat, np.inf).min(axis=1)
    high = np.where(finite, flat, -np.inf).max(axis=1)
    none = count == 0
    return {"map_min": np.where(none, np.nan, low), "map_max": np.where(none, np.nan, high),
            "map_sum": np.where(none, np.nan, np.where(finite, flat, 0).sum(axis=1)),
            "map_nan_fraction": 1 - count / flat.shape[1], "map_blank": none | (low == high)}


def _make_engine(model, engine: str, gradient_batch: int):
    from histoxai.components.explain.engine import SaliencyEngine
    from histoxai.components.explain.tfkv import TfKerasVisEngine

    if engine not in ENGINES:
        raise InputError(f"--engine {engine!r}: expected one of {list(ENGINES)}")
    cls = SaliencyEngine if engine == "batched" else TfKerasVisEngine
    return cls(model, gradient_batch=gradient_batch)


def explain(model_uri: str, data_uri: str, out_uri: str, *, methods: Sequence[str] = DEFAULTS.methods,
            targets: Sequence[str] | None = None, scores: Sequence[str] = DEFAULTS.scores,
            splits: Sequence[str] = DEFAULTS.splits, samples: Sequence[str] = DEFAULTS.samples,
            max_patches: int | None = None, shard_range: tuple[int, int] | None = None,
            batch_size: int = DEFAULTS.batch_size, gradient_batch: int = DEFAULTS.gradient_batch,
            map_size: int | None = None, engine: str = DEFAULTS.engine, phantom_dir: str | None = None,
            trust_patches: int = DEFAULTS.trust_patches, trust_steps: int = DEFAULTS.trust_steps,
            randomize_blocks: int = DEFAULTS.randomize_blocks, seed: int = DEFAULTS.seed,
            nuclei: bool = DEFAULTS.nuclei, nuclei_voxels: int = DEFAULTS.nuclei_voxels,
            overwrite: bool = False) -> dict:
    """Compute, store and check the maps; returns the summary written to explain.json."""
    import pandas as pd
    from tqdm import tqdm

    from histoxai import dataset
    from histoxai.components.explain.assess import assess
    from histoxai.manifest import read_manifest
    from histoxai.model import cam_layer_name

    if batch_size < 1 or gradient_batch < 1 or trust_patches < 0 or trust_steps < 1 or randomize_blocks < 0:
        raise InputError(f"batch size {batch_size}, gradient batch {gradient_batch}, trust patches "
                         f"{trust_patches}, trust steps {trust_steps}, randomised blocks {randomize_blocks}: "
                         "expected batch sizes and steps >= 1, patches and blocks >= 0")
    if nuclei and not phantom_dir:
        raise InputError("--nuclei: no --phantom-dir; expected the samples' folder whose nuclei (phantom "
                         "truth or QuPath detections) the maps are pooled into")
    if nuclei_voxels < 0:
        raise InputError(f"--nuclei-voxels {nuclei_voxels}: expected an integer >= 0")
    check_writable(out_uri)
    clear_stale_scratch()
    specs = [parse_method(m) for m in methods]
    score_list = list(dict.fromkeys(parse_score(s) for s in scores))
    model = load_trained_model(model_uri)
    try:
        cam_layer = cam_layer_name(model)
    except ValueError:
        cam_layer = None  # not a histoxai model: CAM methods must name their layer
    if cam_layer is None and any(s.method in ("gradcam++", "layercam") for s in specs):
        raise InputError(f"{model_uri}: no head_pool layer to find the CAM layer by; name it, e.g. "
                         "gradcam++:layer=NAME, layercam:layers=NAME")
    specs = list(dict.fromkeys(s.with_layers(cam_layer) for s in specs))
    outputs = list(model.output_names)
    targets = list(targets) if targets else outputs
    if missing := [t for t in targets if t not in outputs]:
        raise InputError(f"--targets {missing}: not outputs of {model_uri}; expected some of {outputs}")
    image_size = int(model.input_shape[1])
    if map_size is not None and not 1 <= map_size <= image_size:
        raise InputError(f"--map-size {map_size}: expected 1 to the model's input size {image_size}")
    data_uri = artifacts.split_table(data_uri)
    frame = read_manifest(data_uri)
    dataset.check_targets(frame, targets, str(data_uri))
    frame = select_patches(frame, splits=splits, samples=samples, shard_range=shard_range,
                           max_patches=max_patches, seed=seed, source=str(data_uri)).reset_index(drop=True)
    keys = patch_keys(frame)
    saliency = _make_engine(model, engine, gradient_batch)

    rows: list[pd.DataFrame] = []
    seconds: dict[str, float] = {}
    started = time.perf_counter()
    with staged(out_uri, overwrite=overwrite, commit_last=artifacts.MAPS_TABLE) as stage:
        with store.MapWriter(stage) as writer, dataset.local_shards(frame) as local, \
                dataset.read_errors(local):
            batches = dataset.patch_dataset(local, image_size=image_size, batch_size=batch_size, cache="none")
            start = 0
            for images in tqdm(batches, total=math.ceil(len(frame) / batch_size), desc="explain",
                               unit="batch"):
                images = images.numpy()
                part = frame.iloc[start:start + len(images)]
                for target in targets:
                    y = part[target].to_numpy(np.float64)
                    y_hat = saliency.predict(images, target).astype(np.float64)
                    for spec in specs:
                        for score in score_list:
                            tick = time.perf_counter()
                            maps, gap = saliency.maps(images, target, spec, score, y,
                                                      keys[start:start + len(images)])
                            seconds[spec.key] = seconds.get(spec.key, 0.0) + time.perf_counter() - tick
                            locations = [writer.append(m) for m in store.resize_maps(maps, map_size)]
                            rows.append(pd.DataFrame({
                                "patch": part.index.to_numpy(), "target": target, "method": spec.method,
                                "setting": spec.setting, "score": score.label, "y": y, "y_hat": y_hat,
                                **map_statistics(maps), "map_signed": spec.method in SIGNED_METHODS,
                                "ig_gap": gap if gap is not None else np.nan}).join(pd.DataFrame(locations)))
                start += len(images)
        table = _assemble(frame, rows)
        reader = store.MapReader(str(stage), table.set_index("map_id", drop=False).rename_axis(None))
        summary = _summary(table, seconds, time.perf_counter() - started, options={
            "model": str(model_uri), "data": str(data_uri), "engine": engine, "cam_layer": cam_layer,
            "methods": [s.key for s in specs], "scores": [s.label for s in score_list], "targets": targets,
            "splits": list(splits), "samples": list(samples), "shard_range": shard_range,
            "max_patches": max_patches, "batch_size": batch_size, "gradient_batch": gradient_batch,
            "map_size": map_size or image_size, "image_size": image_size, "seed": seed})
        if trust_patches:
            table = assess(stage, reader, model, saliency, frame, keys, specs, score_list, targets,
                           phantom_dir=phantom_dir, patches=trust_patches, steps=trust_steps,
                           randomize_blocks=randomize_blocks, seed=seed, summary=summary)
        if nuclei:
            from histoxai.components.explain import drivers
            from histoxai.components.explain.assess import patch_images

            stack = patch_images(frame, image_size)
            keys_ = frame[["sample", "row", "col"]].astype({"sample": str}).itertuples(index=False)
            images = {tuple(k): stack[i].astype(np.uint8) for i, k in enumerate(keys_)}
            summary["drivers"] = drivers.analyse(stage, reader, table, model, images, targets,
                                                 samples_dir=phantom_dir, voxels=nuclei_voxels, seed=seed)
        store.write_table(table, stage / artifacts.MAPS_TABLE)
        (stage / artifacts.EXPLAIN_INFO).write_text(json.dumps(summary, indent=2, default=str) + "\n")
    return summary


def _assemble(frame, rows):
    import pandas as pd

    table = pd.concat(rows, ignore_index=True)
    patches = frame[["sample", "row", "col", "split", *PATCH_COLUMNS]] if "split" in frame.columns else \
        frame[["sample", "row", "col", *PATCH_COLUMNS]].assign(split="")
    table = patches.loc[table.pop("patch")].reset_index(drop=True).join(table)
    table.insert(0, "map_id", np.arange(len(table), dtype=np.int64))
    table.insert(table.columns.get_loc("y_hat") + 1, "delta", table["y_hat"] - table["y"])
    with np.errstate(divide="ignore", invalid="ignore"):
        rdelta = np.where(table["y"] != 0, (table["y_hat"] / table["y"] - 1) * 100, np.nan)
    table.insert(table.columns.get_loc("delta") + 1, "rdelta", rdelta)
    return table


def _summary(table, seconds: dict[str, float], wall: float, options: dict) -> dict:
    keys = table["method"] + table["setting"].map(lambda s: f":{s}" if s else "")
    counts = keys.value_counts()
    nan_maps = table[table["map_nan_fraction"] > 0]
    return {
        **options,
        "patches": int(table[["sample", "row", "col"]].drop_duplicates().shape[0]),
        "maps": len(table), "wall_s": round(wall, 2),
        "maps_per_s": {k: round(float(counts.get(k, 0)) / v, 2) for k, v in seconds.items() if v > 0},
        "nan_maps": int(len(nan_maps)), "blank_maps": int(table["map_blank"].sum()),
        "nan_maps_by_method": {k: int(v) for k, v in keys[nan_maps.index].value_counts().items()},
        "zero_y_rows": int((table["y"] == 0).sum()),
    }
