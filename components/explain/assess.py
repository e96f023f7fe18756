"""Runs the trust measures (`trust`, `controls`, `randomization`) on an explain run; writes the trust files.

Called by `explain` before it publishes its output: quality over all maps, phantom mask measures over
all CC maps (added to the maps table as mask_mass, mask_rank_accuracy, mask_area), and on a seeded
subset of patches the randomisation cascade, then for every target x method x setting x score the mask
measures and deletion/insertion AUCs of the method's maps beside those of the controls (a random
map, darkness, edges, the method on the fully randomised model), and a verdict.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from histoxai import artifacts
from histoxai.saliency import controls, randomization, store, trust, trust_report
from histoxai.saliency.cascade_plot import cascade_png

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


def patch_images(frame, size: int | None = None) -> np.ndarray:
    """The patches of `frame` as the model takes them (float32 0-255), in frame order."""
    from histoxai import dataset

    size = int(size or frame.attrs["image_size"])
    with dataset.local_shards(frame) as local:
        data = dataset.patch_dataset(local, image_size=size, batch_size=64, cache="none")
        return np.concatenate([batch.numpy() for batch in data])


def _phantom(table, reader, phantom_dir: str):
    """Mask measures for every map of a target the nuclei masks score (per-map columns, NaN elsewhere),
    the masks by patch, and those targets."""
    from tqdm import tqdm

    out = np.full((len(table), 3), np.nan)
    scored = trust.mask_targets(phantom_dir, sorted(set(table["sample"])))
    rows = table[table["target"].isin(scored)]
    if rows.empty:
        return out, {}, scored
    masks = trust.phantom_masks(phantom_dir, rows[["sample", "row", "col"]].drop_duplicates(),
                                int(rows["map_height"].iloc[0]))
    for position, (map_id, key) in enumerate(tqdm(
            zip(table["map_id"], zip(table["sample"], table["row"], table["col"], strict=True), strict=True),
            total=len(table), desc="trust: nuclei masks", unit="map", leave=False)):
        target = table["target"].iat[position]
        if target in scored and key in masks:
            out[position] = trust.mask_measures(trust.relevance_for(target, reader.read(map_id)), masks[key])
    return out, masks, scored


def assess(stage: Path, reader, model, saliency, frame, keys, specs, scores, targets, *, phantom_dir,
           patches: int, steps: int, randomize_blocks: int, seed: int, summary: dict):
    """Writes the trust report files into stage; returns the maps table with the mask columns."""
    import pandas as pd
    from tqdm import tqdm

    table = reader.table.reset_index(drop=True)
    measures = trust.quality(table)
    masks: dict = {}
    scored: tuple = ()
    if phantom_dir:
        columns, masks, scored = _phantom(table, reader, phantom_dir)
        table = table.assign(mask_mass=columns[:, 0], mask_rank_accuracy=columns[:, 1],
                             mask_area=columns[:, 2])

    positions = _subset(frame, patches, seed)
    subset = frame.iloc[positions]
    subset.attrs["image_size"] = saliency.size[0]
    images = patch_images(subset)
    blurred = trust.blur(images)
    size = int(table["map_height"].iloc[0])
    by_patch = table.set_index(["target", "method", "setting", "score", "sample", "row", "col"])["map_id"]
    patch_keys = list(zip(subset["sample"], subset["row"], subset["col"], strict=True))
    references = {t: subset[t].to_numpy(np.float32) for t in targets}
    work = [(t, spec, score) for t in targets for spec in specs for score in scores]
    trained = {(t, spec.key, score.label): reader.read_many(
        [by_patch[(t, spec.method, spec.setting, score.label, *k)] for k in patch_keys])
        for t, spec, score in work}

    # the randomisation cascade; its last stage gives the randomised-model control
    stages = randomization.randomization_stages(saliency.model, randomize_blocks)
    engines: list = []
    progress = tqdm(total=len(stages), desc="trust: randomisation", unit="stage", leave=False)

    def compute(copy, last: bool) -> dict:
        if not engines:
            engines.append(saliency.__class__(copy, gradient_batch=saliency.gradient_batch))
        out = {}
        for target, spec, score in work:
            if last or score is scores[0]:
                maps, _ = engines[0].maps(images, target, spec, score, references[target], keys[positions])
                out[(target, spec.key, score.label)] = store.resize_maps(maps, size)
        progress.update()
        return out

    records, randomized = randomization.cascade(saliency.model, stages, compute, trained, seed)
    progress.close()

    inputs = controls.input_maps(images)
    sized = {name: store.resize_maps(maps, size) for name, maps in inputs.items()}  # as the maps are stored
    patch_masks = [masks.get((s, int(r), int(c))) for s, r, c in patch_keys]
    rng = np.random.default_rng(seed + 2)
    random_order = np.stack([rng.permutation(images.shape[1] * images.shape[2]) for _ in images])
    spec_of = {spec.key: spec for spec in specs}
    rows, curves, cached = [], [], {}

    def curve(name, target, score, order):
        return trust.perturbation_curves(saliency, images, blurred, order, target, score, references[target],
                                         steps, _spread(table, target, score))

    for target, spec, score in tqdm(work, desc="trust: controls, deletion/insertion", unit="method",
                                    leave=False):
        key = (target, spec.key, score.label)
        row = {"target": target, "method": spec.method, "setting": spec.setting, "score": score.label}
        found = {"map": curve("map", target, score, trust._ranks(
                     store.resize_maps(trained[key], saliency.size[0], method="bilinear"), seed)),
                 "randomized": curve("randomized", target, score, trust._ranks(
                     store.resize_maps(randomized[key], saliency.size[0], method="bilinear"), seed))}
        for name, order in (("random", random_order), *((n, None) for n in inputs)):
            if (target, score.label, name) not in cached:
                cached[(target, score.label, name)] = curve(
                    name, target, score, order if order is not None else trust._ranks(inputs[name], seed))
            found[name] = cached[(target, score.label, name)]
        for name, kinds in found.items():
            prefix = "" if name == "map" else f"{name}_"
            for kind, values in kinds.items():
                row[f"{prefix}{kind}_auc"] = float(np.nanmean(trust.auc(values)))
                mean = np.nanmean(values, axis=0)
                curves += [{**{k: row[k] for k in GROUP}, "order": name, "curve": kind, "fraction": f,
                            "value": v} for f, v in zip(np.linspace(0, 1, steps + 1), mean, strict=True)]
        if target in scored and any(m is not None for m in patch_masks):
            row.update(controls.mask_row(trust.relevance_for(target, trained[key]), {
                "randomized": trust.relevance_for(target, randomized[key]), **sized}, patch_masks))
        last = next(r for r in reversed(records) if r["key"] == key)
        row.update(randomization_signed_rho=last["signed_rho"], randomization_abs_rho=last["abs_rho"],
                   randomization_ssim=last["ssim"], randomization_undefined=last["undefined"],
                   randomization=randomization.state(last))
        row["randomization_flag"] = row["randomization"] != "passes"
        row[f"rho: {stages[-1][0]}"] = last["abs_rho"]
        row["verdict"] = controls.verdict(row)
        rows.append(row)
    measures = measures.merge(pd.DataFrame(rows), on=GROUP, how="left")
    cascade = pd.DataFrame([
        {"target": r["key"][0], "method": spec_of[r["key"][1]].method,
         "setting": spec_of[r["key"][1]].setting, "score": r["key"][2],
         **{k: v for k, v in r.items() if k != "key"}} for r in records])

    store.write_table(measures, stage / artifacts.TRUST_TABLE)
    store.write_table(pd.DataFrame(curves), stage / artifacts.TRUST_CURVES)
    store.write_table(cascade, stage / artifacts.TRUST_CASCADE)
    first = cascade[cascade["score"] == scores[0].label]
    png = cascade_png(first.assign(method=[_label(m, s) for m, s in zip(first["method"], first["setting"],
                                                                         strict=True)]))
    (stage / artifacts.TRUST_CASCADE_PLOT).write_bytes(png)
    notes = _notes(summary, phantom_dir, len(subset), steps, stages, [t for t in scored if t in targets])
    (stage / artifacts.TRUST_REPORT).write_text(trust_report.markdown(measures, notes))
    (stage / artifacts.TRUST_HTML).write_text(trust_report.html_page(measures, notes, png))
    summary["trust"] = {
        "patches": len(subset), "stages": [s for s, _ in stages],
        "flagged": sorted({f"{r['target']} {_label(r['method'], r['setting'])} ({r['randomization']})"
                           for r in rows if r["randomization_flag"]}),
        "verdicts": {f"{r['target']} {_label(r['method'], r['setting'])} ({r['score']})": r["verdict"]
                     for r in rows}}
    return table


def _label(method: str, setting: str) -> str:
    return f"{method}:{setting}" if setting else method


def _notes(summary: dict, phantom_dir, patches: int, steps: int, stages, masked: list) -> list[str]:
    notes = [f"Maps: {summary['maps']} for {summary['patches']} patches; methods "
             f"{', '.join(summary['methods'])}; scores {', '.join(summary['scores'])}; "
             f"engine {summary['engine']}.",
             f"Maps with non-finite values: {summary['nan_maps']}; blank maps (no contrast): "
             f"{summary['blank_maps']}.",
             f"Controls, deletion/insertion ({steps} steps) and the randomisation cascade on the same "
             f"{patches} patches; the cascade re-initialises the head and then every backbone block down to "
             f"the input, measured after {len(stages)} stages (the plot: {artifacts.TRUST_CASCADE_PLOT}).",
             "Randomisation check: fails when |signed rho| or |map| rho is >= "
             f"{randomization.RANDOMIZATION_FLAG} after the last stage; undefined (never a pass) when a "
             "map is constant or NaN."]
    if summary["nan_maps"]:
        notes.insert(2, "WARNING: some maps contain NaN or infinite values: " +
                     ", ".join(f"{k} ({v})" for k, v in summary["nan_maps_by_method"].items()))
    if phantom_dir and masked:
        notes.append(f"Nuclei masks from {phantom_dir} ({', '.join(masked)} maps; CC by positive relevance, "
                     "derived MD/FA by |map|): mask measures on the same patches, beside the random map (the "
                     "mask's area share), darkness, edges and the randomised model.")
    elif phantom_dir:
        notes.append(f"{phantom_dir}: not used; the nuclei masks score CC maps (and MD/FA of a phantom with "
                     "derived targets), and this run has none.")
    return notes
