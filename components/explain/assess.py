"""Runs the trust measures of `trust` on an explain run and writes trust.md, trust.html and their tables.

Called by `explain` before it publishes its output: quality over all maps, phantom mask measures over
all CC maps (added to the maps table as mask_mass, mask_rank_accuracy, mask_area), deletion/insertion
and model randomisation on a seeded subset of patches.
"""

from __future__ import annotations

import html
from pathlib import Path

import numpy as np

from histoxai import artifacts
from histoxai.saliency import store, trust

GROUP = ["target", "method", "setting", "score"]


def _subset(frame, patches: int, seed: int) -> np.ndarray:
    """Positions of a seeded random subset of the frame, in reading order."""
    count = min(patches, len(frame))
    return np.sort(np.random.default_rng(seed + 1).choice(len(frame), count, replace=False))


def _spread(table, target: str, score) -> float:
    """Standard deviation of the score S(ŷ, y) over every explained patch of a target."""
    import tensorflow as tf

    rows = table[(table["target"] == target) & (table["map_id"] == table.groupby(
        ["sample", "row", "col", "target"])["map_id"].transform("min"))]
    values = score(tf.constant(rows["y_hat"], tf.float32), tf.constant(rows["y"], tf.float32)).numpy()
    return float(np.nanstd(values)) if np.isfinite(values).sum() > 1 else 1.0


def _images(frame) -> np.ndarray:
    from histoxai import dataset

    size = int(frame.attrs["image_size"])
    with dataset.local_shards(frame) as local:
        data = dataset.patch_dataset(local, image_size=size, batch_size=64, cache="none")
        return np.concatenate([batch.numpy() for batch in data])


def _phantom(table, reader, phantom_dir: str):
    """Mask measures for every CC map; returns the per-map columns (NaN elsewhere)."""
    from tqdm import tqdm

    out = np.full((len(table), 3), np.nan)
    rows = table[table["target"] == "CC"]
    if rows.empty:
        return out
    masks = trust.phantom_masks(phantom_dir, rows[["sample", "row", "col"]].drop_duplicates(),
                                int(rows["map_height"].iloc[0]))
    for position, (map_id, key) in enumerate(tqdm(
            zip(table["map_id"], zip(table["sample"], table["row"], table["col"], strict=True), strict=True),
            total=len(table), desc="trust: nuclei masks", unit="map", leave=False)):
        if table["target"].iat[position] == "CC" and key in masks:
            out[position] = trust.mask_measures(reader.read(map_id), masks[key])
    return out


def assess(stage: Path, reader, model, saliency, frame, keys, specs, scores, targets, *, phantom_dir,
           patches: int, steps: int, randomize_blocks: int, seed: int, summary: dict):
    """Writes the trust report files into stage; returns the maps table with the mask columns."""
    import keras
    import pandas as pd
    from tqdm import tqdm

    table = reader.table.reset_index(drop=True)
    measures = trust.quality(table)
    if phantom_dir:
        columns = _phantom(table, reader, phantom_dir)
        table = table.assign(mask_mass=columns[:, 0], mask_rank_accuracy=columns[:, 1],
                             mask_area=columns[:, 2])
        masked = table.dropna(subset=["mask_area"]).groupby(GROUP, sort=False)[
            ["mask_mass", "mask_rank_accuracy", "mask_area"]].mean().reset_index()
        measures = measures.merge(masked, on=GROUP, how="left")

    positions = _subset(frame, patches, seed)
    subset = frame.iloc[positions]
    subset.attrs["image_size"] = saliency.size[0]
    images = _images(subset)
    blurred = trust.blur(images)
    size = int(table["map_height"].iloc[0])
    by_patch = table.set_index(["target", "method", "setting", "score", "sample", "row", "col"])["map_id"]
    patch_keys = list(zip(subset["sample"], subset["row"], subset["col"], strict=True))
    rng = np.random.default_rng(seed + 2)
    random_order = np.stack([rng.permutation(images.shape[1] * images.shape[2]) for _ in images])
    rows, curves, trained = [], [], {}
    work = [(t, spec, score) for t in targets for spec in specs for score in scores]
    for target, spec, score in tqdm(work, desc="trust: deletion/insertion", unit="method", leave=False):
        ids = [by_patch[(target, spec.method, spec.setting, score.label, *k)] for k in patch_keys]
        stored = reader.read_many(ids)
        trained[(target, spec.key, score.label)] = stored
        maps = store.resize_maps(stored, saliency.size[0], method="bilinear")
        references = subset[target].to_numpy(np.float32)
        found = {}
        for name, order in (("map", trust._ranks(maps)), ("random", random_order)):
            found[name] = trust.perturbation_curves(saliency, images, blurred, order, target, score,
                                                    references, steps, _spread(table, target, score))
        row = {"target": target, "method": spec.method, "setting": spec.setting, "score": score.label}
        for name, kinds in found.items():
            for kind, values in kinds.items():
                prefix = "" if name == "map" else "random_"
                row[f"{prefix}{kind}_auc"] = float(np.nanmean(trust.auc(values)))
                mean = np.nanmean(values, axis=0)
                curves += [{**{k: row[k] for k in GROUP}, "order": name, "curve": kind, "fraction": f,
                            "value": v} for f, v in zip(np.linspace(0, 1, steps + 1), mean, strict=True)]
        rows.append(row)
    measures = measures.merge(pd.DataFrame(rows), on=GROUP, how="left")

    # model randomisation, first score only (it is a property of the method and model, not of the score)
    stages = trust.randomization_stages(saliency.model, randomize_blocks)
    copy = keras.models.clone_model(saliency.model)
    copy.set_weights(saliency.model.get_weights())
    randomised = saliency.__class__(copy, gradient_batch=saliency.gradient_batch)  # sees weight changes
    references = {t: subset[t].to_numpy(np.float32) for t in targets}
    correlations, done = [], 0
    for stage_name, layers in tqdm(stages, desc="trust: randomisation", unit="stage", leave=False):
        trust.randomize_layers([copy.get_layer(layer.name) for layer in layers[done:]], seed + done)
        done = len(layers)
        for target in targets:
            for spec in specs:
                maps, _ = randomised.maps(images, target, spec, scores[0], references[target],
                                          keys[positions])
                before = trained[(target, spec.key, scores[0].label)]
                after = store.resize_maps(maps, size)
                rho = [trust.spearman(a, b) for a, b in zip(before, after, strict=True)]
                correlations.append({"target": target, "method": spec.method, "setting": spec.setting,
                                     "score": scores[0].label, "stage": stage_name,
                                     "rho": float(np.nanmean(rho)) if np.isfinite(rho).any() else np.nan})
    if correlations:
        wide = pd.DataFrame(correlations).pivot_table(index=GROUP, columns="stage", values="rho", sort=False,
                                                      dropna=False)
        wide.columns = [f"rho: {c}" for c in wide.columns]
        measures = measures.merge(wide.reset_index(), on=GROUP, how="left")
        last = f"rho: {stages[-1][0]}"
        measures["randomization_flag"] = measures[last] >= trust.RANDOMIZATION_FLAG
    store.write_table(measures, stage / artifacts.TRUST_TABLE)
    store.write_table(pd.DataFrame(curves), stage / artifacts.TRUST_CURVES)
    notes = _notes(measures, summary, phantom_dir, len(subset), steps)
    (stage / artifacts.TRUST_REPORT).write_text(markdown(measures, notes))
    (stage / artifacts.TRUST_HTML).write_text(html_page(measures, notes))
    summary["trust"] = {"patches": len(subset), "stages": [s for s, _ in stages],
                        "flagged": sorted({f"{r.target} {r.method}:{r.setting}" for r in measures.itertuples()
                                           if getattr(r, "randomization_flag", False) is True})}
    return table


def _notes(measures, summary: dict, phantom_dir, patches: int, steps: int) -> list[str]:
    notes = [f"Maps: {summary['maps']} for {summary['patches']} patches; methods "
             f"{', '.join(summary['methods'])}; scores {', '.join(summary['scores'])}; "
             f"engine {summary['engine']}.",
             f"Maps with non-finite values: {summary['nan_maps']}; blank maps (no contrast): "
             f"{summary['blank_maps']}.",
             f"Deletion/insertion ({steps} steps) and randomisation on {patches} patches; "
             f"randomisation flag: rank correlation >= {trust.RANDOMIZATION_FLAG} after the last stage."]
    if summary["nan_maps"]:
        notes.insert(2, "WARNING: some maps contain NaN or infinite values: " +
                     ", ".join(f"{k} ({v})" for k, v in summary["nan_maps_by_method"].items()))
    if phantom_dir and "CC" in summary["targets"]:
        notes.append(f"Nuclei masks from {phantom_dir} (CC maps): mask_mass and mask_rank_accuracy against "
                     "mask_area, their value for a random map.")
    elif phantom_dir:
        notes.append(f"{phantom_dir}: not used; the nuclei masks score CC maps, and this run has no CC.")
    return notes


def _display(measures):
    return measures.rename(columns={"nan_maps": "NaN share", "blank_maps": "blank share"})


def markdown(measures, notes: list[str]) -> str:
    from histoxai.metrics import markdown_table

    return "# Saliency trust report\n\n" + "\n".join(f"- {n}" for n in notes) + "\n\n" + \
        markdown_table(_display(measures)) + "\n" + _LEGEND + "\n"


def html_page(measures, notes: list[str]) -> str:
    items = "".join(f"<li>{html.escape(n)}</li>" for n in notes)
    table = _display(measures).to_html(index=False, float_format=lambda v: f"{v:.3f}", na_rep="n/a")
    return ("<!DOCTYPE html><html><head><meta charset=\"utf-8\"><title>Saliency trust report</title>"
            "<style>body{font-family:sans-serif;margin:2em}table{border-collapse:collapse;font-size:13px}"
            "td,th{border:1px solid #ccc;padding:3px 6px;text-align:right}</style></head><body>"
            f"<h1>Saliency trust report</h1><ul>{items}</ul>{table}<p>{html.escape(_LEGEND)}</p>"
            "</body></html>\n")


_LEGEND = ("Lower deletion AUC and higher insertion AUC than the random order mean the map ranks pixels "
           "that move the prediction; mask_mass and mask_rank_accuracy above mask_area mean relevance "
           "falls on nuclei more than chance; rho near 1 after randomisation means the maps ignore the "
           "learned weights.")
