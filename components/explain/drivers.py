"""`histoxai explain --nuclei`: what drives the prediction, three answers written beside the maps.

1. Relevance per nucleus (histoxai.saliency.nuclei, nuclei_stats): every map pooled into the nuclei of
   its patch (the phantom's masks, or discs of the QuPath detections' areas), and which nuclear
   properties go with high relevance, against the darkness and edges controls.
2. Concept sensitivity (histoxai.saliency.concepts): regression concept vectors of the patches' nuclear
   concepts (density, size, elongation, coherence, ...) at the CAM layer and one earlier stage, the
   directional derivative of each target along them, tested against random concepts.
3. Interventions (histoxai.phantom.interventions, phantom samples only): chosen voxels re-rendered with
   one property changed, the model's response curves, and with `--targets derived` the true ones.
Then, per target, the property each answer ranks first, in one vocabulary, and whether they agree.
The explain step is where the maps, the patches and the model meet, hence an option of it rather than
a step of its own (a separate step would load the same model and read the same maps again).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd

from histoxai import artifacts, layout, storage

# One vocabulary for the three answers: the nuclei table's properties, the concepts, the interventions
CANONICAL = {
    "density": ("density", "density_per_mm2", "nn_distance_um", "nn3_distance_um", "count", "count_factor"),
    "size": ("size", "area_um2", "area_px"),
    "elongation": ("elongation",),
    "coherence": ("coherence", "orientation"),
    "stain": ("haematoxylin",),
}
RELEVANCE_PROPERTIES = ("area_um2", "elongation", "nn_distance_um", "density_per_mm2", "haematoxylin")
# Intervention values: count as a factor of the voxel's own count; sizes beyond real nuclei (5-12 µm)
# because the phantom keeps nuclei >= 3 px across, which hides smaller sizes at 32-64 px per voxel
INTERVENTIONS = {"count_factor": [0.25, 0.5, 1.0, 1.5, 2.0], "size": [7.5, 15.0, 22.5, 30.0],
                 "elongation": [1.2, 2.0, 3.0, 4.0], "coherence": [0.0, 0.3, 0.6, 0.95]}


def canonical(name: str) -> str:
    return next((key for key, names in CANONICAL.items() if name in names), name)


def _truth(samples_dir: str, sample: str) -> dict | None:
    uri = storage.join(samples_dir, str(sample), layout.TRUTH_TARGETS)
    return json.loads(storage.read_text(uri)) if storage.exists(uri) else None


def _nuclei_answer(stage: Path, reader, table: pd.DataFrame, images: dict, samples_dir: str, seed: int):
    from histoxai.saliency import nuclei_stats
    from histoxai.saliency.nucleus_relevance import nuclei_table

    nuclei = nuclei_table(table, reader.read, samples_dir, images=images)
    nuclei.to_parquet(stage / artifacts.NUCLEI_TABLE, index=False)
    properties = [p for p in RELEVANCE_PROPERTIES if p in nuclei.columns and nuclei[p].notna().any()]
    relevance = nuclei_stats.property_relevance(nuclei, properties=properties, seed=seed)
    found = nuclei_stats.findings(relevance)
    found.to_parquet(stage / artifacts.NUCLEI_DRIVERS, index=False)
    return nuclei, found, nuclei_stats.markdown(relevance, found)


def _concept_answer(model, images: dict, nuclei: pd.DataFrame, targets, seed: int):
    from histoxai.saliency.concepts import concept_sensitivity, markdown, patch_concepts

    per_nucleus = nuclei[~nuclei["method"].str.startswith("control:")].drop_duplicates(
        ["sample", "row", "col", "label"])
    per_nucleus = per_nucleus.rename(columns={"area_um2": "area"})
    keep = ["sample", "row", "col", "area", "elongation", "orientation"]  # the nuclear concepts, not stain
    keys = list(images)
    patches = pd.DataFrame(keys, columns=["sample", "row", "col"])
    concepts = patch_concepts(per_nucleus[[c for c in keep if c in per_nucleus.columns]], patches)
    stack = np.stack([images[k] for k in keys]).astype(np.float32)
    table = concept_sensitivity(model, stack, concepts, list(targets), seed=seed)
    return table, markdown(table)


def _intervention_answer(stage: Path, model, table: pd.DataFrame, samples_dir: str, voxels: int, seed: int):
    from histoxai.phantom import interventions as iv
    from histoxai.plots import png

    candidates = table.drop_duplicates(["sample", "row", "col"])
    records = {s: _truth(samples_dir, s) for s in candidates["sample"].unique()}
    chosen = [(int(r.sample), int(r.row), int(r.col)) for r in candidates.itertuples()
              if records.get(r.sample)][:voxels]
    if not chosen:
        return None, None, "no phantom sample among the explained patches: no interventions"
    options = records[str(chosen[0][0])]["options"]
    summary = options.get("summary")
    curves = iv.response_curves(
        iv.keras_predictor(model), chosen, INTERVENTIONS, pixels_per_voxel=int(options["pixels_per_voxel"]),
        image_size=int(model.input_shape[1]), seed=int(options["seed"]), n_max=options.get("n_max"),
        derived=records[str(chosen[0][0])].get("mode") == "derived", crop=options.get("crop"),
        summary=None if not summary or str(summary).startswith("bundled") else summary)
    curves.to_parquet(stage / artifacts.RESPONSE_CURVES, index=False)
    result = iv.summarise(curves)
    result.to_parquet(stage / artifacts.RESPONSE_SUMMARY, index=False)
    (stage / artifacts.RESPONSE_PLOT).write_bytes(png(iv.response_figure(curves)))
    return curves, result, iv.markdown(result)


def _top(frame: pd.DataFrame | None, target: str, name: str, value: str, keep) -> str | None:
    """The property (canonical name) with the largest |value| among the rows `keep` selects."""
    if frame is None or frame.empty:
        return None
    rows = frame[(frame["target"] == target) & keep(frame)]
    rows = rows[rows[value].notna()]
    if rows.empty:
        return None
    return canonical(str(rows.loc[rows[value].abs().idxmax(), name]))


def agreement(targets, found, concepts, responses) -> list[dict]:
    """Per target the top property of each answer (canonical names, None: no driver) and whether the
    answers agree."""
    rows = []
    for target in targets:
        saliency = _top(found, target, "property", "rho", lambda f: f["verdict"] == "drives")
        concept = _top(concepts, target, "concept", "effect",
                       lambda f: f["verdict"] == "moves the prediction")
        response = _top(responses, target, "property", "slope_std", lambda f: f["slope_std"].notna())
        given = [a for a in (saliency, concept, response) if a]
        if not given:
            verdict = "no answer found a driver"
        elif len(given) == 1:
            verdict = "only one answer names a driver"
        elif len(set(given)) > 1:
            verdict = "disagree"
        else:
            verdict = "agree" if len(given) == 3 else "agree (two answers; the third names none)"
        rows.append({"target": target, "saliency": saliency, "concepts": concept, "interventions": response,
                     "verdict": verdict})
    return rows


def analyse(stage: Path, reader, table: pd.DataFrame, model, images: dict, targets, *, samples_dir: str,
            voxels: int, seed: int) -> dict:
    """Write the three answers and drivers.md into `stage`; returns the summary's `drivers` entry.
    images: {(sample, row, col): uint8 (H, W, 3)} of the explained patches (the model's input)."""
    from histoxai import plots

    nuclei, found, nuclei_md = _nuclei_answer(stage, reader, table, images, samples_dir, seed)
    (stage / artifacts.DRIVERS_PLOT).write_bytes(plots.png(plots.drivers_figure(found)))
    concepts, concepts_md = _concept_answer(model, images, nuclei, targets, seed)
    concepts.to_parquet(stage / artifacts.CONCEPTS_TABLE, index=False)
    _, responses, responses_md = _intervention_answer(stage, model, table, samples_dir, voxels, seed)
    agreed = agreement(targets, found, concepts, responses)
    lines = ["# What drives the prediction", "",
             "Per target, the nuclear property each answer ranks first (density, size, elongation, "
             "coherence, stain), and whether they agree:", "",
             "| target | per-nucleus relevance | concept sensitivity | interventions | verdict |",
             "|---|---|---|---|---|"]
    for r in agreed:
        answers = " | ".join(r[k] or "-" for k in ("saliency", "concepts", "interventions"))
        lines.append(f"| {r['target']} | {answers} | {r['verdict']} |")
    lines += ["", "## 1. Relevance per nucleus", "", nuclei_md, "", "## 2. Concept sensitivity", "",
              concepts_md, "", "## 3. Interventions on the phantom", "", responses_md, ""]
    (stage / artifacts.DRIVERS_REPORT).write_text("\n".join(lines))
    return {"nuclei": int(nuclei[["sample", "row", "col", "label"]].drop_duplicates().shape[0]),
            "agreement": agreed}
