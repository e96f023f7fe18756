"""The register step: fetch a champion, and register a trained model as a new version, promoting it
only when the promotion rule says it beats the champion on the same evaluation.

`fetch_champion` writes the champion's files and champion.json (registry, name, version; version null
when the model has no champion yet) for the evaluate step to score beside the new model.
`register` builds the version folder (the training output, the SavedModel export, the patches the
model trained on), reads evaluate's comparison of it with the champion, decides by the rule, and
registers the version with its labels and record (run, samples, verdict, scores). The version is
registered whatever the verdict; only the champion alias waits for a win.
"""

from __future__ import annotations

import hashlib
import json
import tempfile
from pathlib import Path

from histoxai import artifacts, outputs, storage
from histoxai.errors import InputError
from histoxai.manifest import natural_key, read_manifest
from histoxai.model_registry import (
    NOT_PROMOTED,
    PROMOTED,
    SAVED_MODEL_DIR,
    TRAINING_PATCHES,
    VERSION_FILES,
    check_name,
    gate,
    open_registry,
)


def fetch_champion(registry: str, name: str, out: str, *, which: str | None = None,
                   overwrite: bool = False) -> dict:
    """The champion of `name` (or the version `which`: a number or alias) into OUT (local or gs://,
    published whole); returns champion.json. No registry ("") or no champion: only champion.json,
    with version null."""
    check_name(name)
    source = open_registry(registry) if registry else None
    if source is None:
        found = None
    else:
        found = source.champion(name) if which is None else source.get(name, which)
    info = {"registry": registry, "name": name, "version": None}
    with outputs.staged(out, overwrite=overwrite, commit_last=artifacts.CHAMPION_INFO) as stage:
        if found is not None:
            source.fetch(found, stage)
            info.update(version=found.version, resource_name=found.resource_name, uri=found.uri,
                        labels=found.labels)
        (stage / artifacts.CHAMPION_INFO).write_text(json.dumps(info, indent=1) + "\n")
    return info


def build_version(model_dir: str, split_dir: str, dest: Path) -> None:
    """The version folder: the model's files, the patches it saw, and its SavedModel export."""
    from histoxai.model_registry.export import export_saved_model

    for file in VERSION_FILES:
        if file != TRAINING_PATCHES:
            storage.download_file(storage.join(model_dir, file), dest / file)
    split_frame = read_manifest(artifacts.split_table(split_dir, "--split"))
    gate.seen_patches(split_frame).to_parquet(dest / TRAINING_PATCHES, index=False)
    export_saved_model(dest / artifacts.MODEL_FILE, dest / SAVED_MODEL_DIR)


def labels_for(model_dir: str, split_dir: str) -> dict[str, str]:
    """What both backends show as labels: config hash, code version, training samples (label-safe)."""
    config = storage.read_bytes(storage.join(model_dir, artifacts.MODEL_CONFIG))
    samples = artifacts.read_split_info(split_dir)["options"]["train_samples"]
    version = "".join(c if c.isalnum() or c in "-_" else "-" for c in artifacts.code_version().lower())
    return {"config-hash": hashlib.sha256(config).hexdigest()[:16], "code-version": version[:63],
            "training-samples": "-".join(str(s) for s in samples)[:63]}


def read_comparison(evaluation: str, model: str) -> dict | None:
    """evaluate's comparison of `model` with its champion, None when it scored none."""
    if not storage.exists(storage.join(evaluation, artifacts.COMPARISON)):
        return None
    return artifacts.read_json(evaluation, artifacts.COMPARISON).get(model)


def register(*, model_dir: str, split_dir: str, evaluation: str, model: str, registry: str, name: str,
             rule: gate.PromotionRule, run: str, staging: str = "") -> dict:
    """Register `model_dir` as the next version of `name`; returns {version, verdict, comparison,
    markdown}. `model` is the model's name in the evaluation (multitask, single_task)."""
    check_name(name)
    target = open_registry(registry, staging_uri=staging)
    current = target.champion(name)
    comparison = read_comparison(evaluation, model)
    if current is None:
        verdict = gate.decide(None, rule)
    elif comparison is None or comparison["champion"].get("version") != current.version:
        scored = comparison["champion"].get("version") if comparison else None
        verdict = {"promote": False, "challenger": None, "champion": None, "per_target": {},
                   "reason": f"the champion is version {current.version} but the evaluation scored "
                             f"{'version ' + str(scored) if scored else 'no champion'}: no comparison on "
                             "the same data (another run promoted in between?)"}
    else:
        verdict = gate.decide(comparison, rule)
    split_info = artifacts.read_split_info(split_dir)
    record = {"run": run, "verdict": PROMOTED if verdict["promote"] else NOT_PROMOTED,
              "reason": verdict["reason"], "scores": {"challenger": verdict["challenger"],
                                                      "champion": verdict["champion"],
                                                      "per_target": verdict["per_target"]},
              "rule": {"metric": rule.metric, "margin": rule.margin, "tolerance": rule.tolerance},
              "champion_before": current.version if current else None,
              "training_samples": [str(s) for s in split_info["options"]["train_samples"]],
              "samples": sorted(split_info.get("counts", {}), key=natural_key),
              "model": model_dir, "evaluation": evaluation,
              "basis": comparison["basis"] if comparison else None}
    with tempfile.TemporaryDirectory(prefix="histoxai-version-") as tmp:
        build_version(model_dir, split_dir, Path(tmp))
        version = target.register(name, Path(tmp), labels=labels_for(model_dir, split_dir), record=record,
                                  promote=verdict["promote"])
    champion_label = f"version {current.version}" if current else "none"
    text = gate.markdown(comparison if current else None, verdict, rule, name=name,
                         champion=champion_label, challenger=f"version {version.version}")
    return {"version": version.as_dict(), "verdict": verdict, "comparison": comparison, "markdown": text,
            "registry": target.location}


def check_rule(metric: str, margin: float, tolerance: float) -> gate.PromotionRule:
    try:
        return gate.PromotionRule(metric=metric, margin=float(margin), tolerance=float(tolerance))
    except (TypeError, ValueError) as err:
        raise InputError(f"promotion rule: {err}; expected a metric, a margin and a tolerance") from None
