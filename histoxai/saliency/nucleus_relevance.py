"""Relevance per nucleus: the table that sets each nucleus's properties beside the relevance a map gives it.

The thesis left open which nuclear properties drive the MD and FA predictions. `nuclei_table` turns
maps into one row per nucleus and map (the nuclei of each patch from histoxai/saliency/nuclei.py), so
that `nuclei_stats` can ask whether relevance follows a property, and more than the input-only controls
do. Relevance: per nucleus, the sum and mean of the map over its pixels, signed and positive part
(non-finite map values count as 0, as in trust.mask_measures), and its pixel count; the input-only
control maps (darkness, edges) of the same patches are pooled the same way.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

import numpy as np

from histoxai import storage
from histoxai.errors import InputError
from histoxai.saliency.controls import INPUT_CONTROLS
from histoxai.saliency.nuclei import PROPERTIES, patch_nuclei

RELEVANCE = ("relevance_sum", "relevance_mean", "positive_sum", "positive_mean")
MAP_COLUMNS = ("map_id", "sample", "row", "col", "target", "method", "setting", "score", "y", "y_hat")
CONTROL_PREFIX = "control:"


def pool_relevance(raw_map: np.ndarray, labels: np.ndarray):
    """Per nucleus (label > 0) of a map: pixels, relevance_sum/mean (signed) and positive_sum/mean
    (positive part); non-finite map values count as 0."""
    import pandas as pd

    raw, labels = np.asarray(raw_map, np.float64), np.asarray(labels)
    if raw.shape != labels.shape or raw.ndim != 2:
        raise InputError(f"map of shape {raw.shape} and labels of shape {labels.shape}: expected two "
                         "images of the same shape")
    values = np.nan_to_num(raw, nan=0.0, posinf=0.0, neginf=0.0).ravel()
    flat = labels.ravel()
    inside = flat > 0
    ids, inverse = np.unique(flat[inside], return_inverse=True)
    pixels = np.bincount(inverse, minlength=ids.size)
    signed = np.bincount(inverse, values[inside], minlength=ids.size)
    positive = np.bincount(inverse, np.clip(values[inside], 0, None), minlength=ids.size)
    return pd.DataFrame({"label": ids.astype(np.int64), "pixels": pixels.astype(np.int64),
                         "relevance_sum": signed, "relevance_mean": signed / np.maximum(pixels, 1),
                         "positive_sum": positive, "positive_mean": positive / np.maximum(pixels, 1)})


def _resize(values: np.ndarray, size: int) -> np.ndarray:
    """A control map at the map size, by area averaging (as ingest downsamples patches)."""
    if values.shape == (size, size):
        return values
    from PIL import Image

    image = Image.fromarray(values.astype(np.float32), mode="F")
    return np.asarray(image.resize((size, size), Image.Resampling.BOX))


def _image(images, key) -> np.ndarray:
    image = images(*key) if callable(images) else images.get(key) if isinstance(images, Mapping) else None
    if image is None:
        raise InputError(f"images: no image for patch {key}; expected a uint8 (H, W, 3) array per patch")
    image = np.asarray(image)
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        raise InputError(f"images: patch {key} is {image.dtype} {image.shape}; expected uint8 (H, W, 3)")
    return image


def _joined(blocks, keep: list[str]):
    """One frame of (a patch's nuclei, its map's relevance per nucleus, the map's record) blocks: the
    nuclei beside their relevance, the record repeated on each. Both list the patch's labels in order
    (np.unique of one label image), so they are joined side by side in three concatenations; joining
    each block on its own (merge, then assign) took 5 ms a map."""
    import pandas as pd

    props = pd.concat([b[0] for b in blocks], ignore_index=True)
    pooled = pd.concat([b[1] for b in blocks], ignore_index=True)
    if not np.array_equal(props["label"].to_numpy(), pooled["label"].to_numpy()):  # a repeated label
        return pd.concat([p.merge(r, on="label").assign(**record) for p, r, record in blocks],
                         ignore_index=True)
    records = pd.DataFrame([b[2] for b in blocks], columns=keep)
    repeated = records.loc[records.index.repeat([len(b[0]) for b in blocks])].reset_index(drop=True)
    return pd.concat([props, pooled.drop(columns="label"), repeated], axis=1)


def nuclei_table(maps_rows, read_map: Callable, sample_dir_for, *, images=None,
                 controls: tuple[str, ...] = INPUT_CONTROLS):
    """One row per nucleus and map: the map's columns (MAP_COLUMNS present in maps_rows), the nucleus's
    properties and its relevance. maps_rows: rows of maps.parquet (map_id, sample, row, col, target,
    method, ...); read_map(map_id) -> raw (S, S) map; sample_dir_for(sample) -> folder, or the folder
    that holds the sample folders. With `images` ({(sample, row, col): uint8 (H, W, 3)} or a function
    (sample, row, col) -> image), also rows for the input-only control maps (`controls`), once per
    patch and target, method "control:<name>", map_id -1."""
    import pandas as pd
    from tqdm import tqdm

    from histoxai.saliency import controls as control_maps

    need = ["map_id", "sample", "row", "col", "target", "method"]
    missing = [c for c in need if c not in maps_rows.columns]
    if missing:
        raise InputError(f"maps table: lacks columns {missing}; expected rows of {', '.join(need)}, ...")
    unknown = [c for c in controls if c not in control_maps.INPUT_CONTROLS]
    if unknown:
        raise InputError(f"controls {unknown}: expected any of {', '.join(control_maps.INPUT_CONTROLS)}")
    folder = sample_dir_for if callable(sample_dir_for) else (
        lambda sample: storage.join(str(sample_dir_for), str(sample)))
    keep = [c for c in MAP_COLUMNS if c in maps_rows.columns]
    patches, blocks, firsts, computed = {}, [], {}, {}
    for record in tqdm(maps_rows[keep].to_dict("records"), desc="nuclei: relevance", unit="map", leave=False):
        raw = np.asarray(read_map(record["map_id"]))
        if raw.ndim != 2 or raw.shape[0] != raw.shape[1]:
            raise InputError(f"map {record['map_id']}: shape {raw.shape}; expected a square (S, S) map")
        key = (record["sample"], int(record["row"]), int(record["col"]), raw.shape[0])
        if key not in patches:
            patches[key] = patch_nuclei(folder(record["sample"]), key[1], key[2], key[3])
        labels, props = patches[key]
        blocks.append((props, pool_relevance(raw, labels), record))
        firsts.setdefault((*key, record["target"]), record)
    for (*key, _), first in firsts.items() if images is not None else ():
        key = tuple(key)  # (sample, row, col, size): the controls are computed once per patch and size
        if key not in computed:
            maps = control_maps.input_maps(_image(images, key[:3])[None])
            computed[key] = {name: _resize(maps[name][0], key[3]) for name in controls}
        labels, props = patches[key]
        for name in controls:
            record = {**first, "map_id": -1, "method": f"{CONTROL_PREFIX}{name}", "setting": "", "score": ""}
            blocks.append((props, pool_relevance(computed[key][name], labels),
                           {k: v for k, v in record.items() if k in keep}))
    if not blocks:
        return pd.DataFrame(columns=[*keep, "label", "outline", *PROPERTIES, "pixels", *RELEVANCE])
    table = _joined(blocks, keep)
    return table[keep + [c for c in table.columns if c not in keep]]
