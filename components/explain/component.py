"""KFP component of the explain step: raw saliency maps of one trained model and its trust report."""

from kfp import dsl
from kfp.dsl import HTML, Dataset, Input, Markdown, Metrics, Model, Output

from histoxai.images import GPU_IMAGE


@dsl.component(base_image=GPU_IMAGE, install_kfp_package=False)
def explain_model(
    model: Input[Model],
    split: Input[Dataset],
    maps: Output[Dataset],
    metrics: Output[Metrics],
    trust_html: Output[HTML],
    trust_markdown: Output[Markdown],
    methods: list,
    targets: str,
    scores: str,
    splits: str,
    samples: str,
    max_patches: int,
    shard_range: str,
    phantom_dir: str,
    batch_size: int,
    gradient_batch: int,
    trust_patches: int,
    nuclei: bool,
    nuclei_voxels: int,
    seed: int,
):
    """Maps of `model` (a training output folder) for the patches of `split` (the split folder).

    Parameters as `histoxai explain`, defaults in components/explain/params.py; the pipeline passes every
    value (comma-separated lists; '' = default; max_patches 0 = all;
    shard_range 'A:B' to fan out over shards). maps: the output folder (maps.parquet, maps/, trust
    files, explain.json; with `nuclei`, what drives the prediction: drivers.md and its tables),
    readable with histoxai.saliency.store.open_maps; metrics: map and NaN counts, per target x
    method x score the trust measures beside their controls and earns_trust (1: the verdict is
    "beats every control", 0: not), and with `nuclei` drivers_agree_<target> (1: the three answers
    name the same property).
    """
    import re

    import pandas as pd

    from histoxai import artifacts, storage
    from histoxai.artifacts import location
    from histoxai.components.explain.explain import explain, parse_shard_range
    from histoxai.components.explain.params import DEFAULTS
    from histoxai.saliency import controls

    def listed(text: str) -> list:
        return [item.strip() for item in text.split(",") if item.strip()]

    out = location(maps)
    # overwrite: a retried task may find an earlier attempt's partial output
    summary = explain(location(model), location(split), out, methods=methods,
                      targets=listed(targets) or None, scores=listed(scores) or list(DEFAULTS.scores),
                      splits=listed(splits), samples=listed(samples), max_patches=max_patches or None,
                      shard_range=parse_shard_range(shard_range), batch_size=batch_size,
                      gradient_batch=gradient_batch, phantom_dir=phantom_dir or None,
                      trust_patches=trust_patches, nuclei=nuclei, nuclei_voxels=nuclei_voxels, seed=seed,
                      overwrite=True)
    for name in ("maps", "patches", "nan_maps", "blank_maps"):
        metrics.log_metric(name, summary[name])
    if trust_patches:
        trust = storage.read_parquet(storage.join(out, artifacts.TRUST_TABLE),
                                     "the explain step's trust table")
        # each measure beside its controls, the randomisation check, and 1/0: earns trust (the verdict)
        scored = [*controls.MEASURES, *(f"{c}_{m}" for c in controls.CONTROLS for m in controls.MEASURES)]
        measures = [c for c in ("nan_maps", "blank_maps", *scored, "randomization_signed_rho",
                                "randomization_abs_rho", "randomization_ssim") if c in trust.columns]
        for _, row in trust.iterrows():
            values = {m: row[m] for m in measures}
            if "verdict" in row:
                values["earns_trust"] = float(row["verdict"] == controls.TRUSTED)
            for measure, value in values.items():
                if pd.notna(value):
                    name = f"{measure}_{row['target']}_{row['method']}_{row['setting']}_{row['score']}"
                    metrics.log_metric(re.sub(r"[^A-Za-z0-9]+", "_", name).strip("_"), float(value))
        for page, name in ((trust_html, artifacts.TRUST_HTML), (trust_markdown, artifacts.TRUST_REPORT)):
            storage.write_bytes(location(page), storage.read_bytes(storage.join(out, name)))
    else:
        skipped = "Trust measures not computed (trust_patches = 0)."
        storage.write_text(location(trust_html), f"<!DOCTYPE html><html><body><p>{skipped}</p></body></html>")
        storage.write_text(location(trust_markdown), skipped + "\n")
    maps.metadata.update({"methods": summary["methods"], "scores": summary["scores"],
                          "targets": summary["targets"], "cam_layer": summary["cam_layer"],
                          "table": artifacts.MAPS_TABLE, "reader": "histoxai.saliency.store.open_maps",
                          "flagged": summary.get("trust", {}).get("flagged", [])})
    for row in summary.get("drivers", {}).get("agreement", []):
        metrics.log_metric(f"drivers_agree_{row['target']}", float(row["verdict"] == "agree"))
    for artifact in (trust_html, trust_markdown):
        artifact.metadata["step"] = "explain"
