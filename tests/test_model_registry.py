"""The folder model registry and the promotion rule (the Vertex AI backend:
tests/test_model_registry_vertex.py; two pipeline runs that register and gate through the real local
runner: tests/test_pipeline_local_run.py)."""

from __future__ import annotations

import json
import threading
from pathlib import Path

import pandas as pd
import pytest

from histoxai import storage
from histoxai.cli import main as histoxai_main
from histoxai.errors import InputError
from histoxai.model_registry import (
    CHAMPION,
    SAVED_MODEL_DIR,
    VERSION_FILES,
    gate,
    open_registry,
)
from histoxai.model_registry.folder import FolderRegistry

RULE = gate.PromotionRule(metric="r2", margin=0.01, tolerance=0.02)


def _version_dir(root: Path, tag: str) -> Path:
    """A version folder as the register step builds it (the files' contents do not matter here)."""
    folder = root / f"version-{tag}"
    for name in VERSION_FILES:
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_text(f"{name} of {tag}")
    (folder / SAVED_MODEL_DIR / "variables").mkdir(parents=True)
    (folder / SAVED_MODEL_DIR / "saved_model.pb").write_text(f"graph of {tag}")
    return folder


def _register(registry, tmp_path, tag, promote, verdict="promoted"):
    return registry.register("histoxai-multitask", _version_dir(tmp_path, tag),
                             labels={"training-samples": "3-4"}, record={"verdict": verdict, "run": tag},
                             promote=promote)


def test_the_champion_moves_only_when_asked(tmp_path):
    registry = open_registry(str(tmp_path / "registry"))
    assert isinstance(registry, FolderRegistry) and registry.champion("histoxai-multitask") is None
    first = _register(registry, tmp_path, "a", promote=True)
    second = _register(registry, tmp_path, "b", promote=False, verdict="not-promoted")
    assert (first.version, second.version) == (1, 2)
    assert registry.champion("histoxai-multitask").version == 1 and second.aliases == ()
    assert registry.get("histoxai-multitask", CHAMPION).record["run"] == "a"
    third = _register(registry, tmp_path, "c", promote=True)
    assert registry.champion("histoxai-multitask").version == third.version == 3
    # rollback returns to the newest earlier version that was champion once (1, not the never-promoted 2)
    assert registry.rollback("histoxai-multitask", reason="bad maps").version == 1
    assert registry.get("histoxai-multitask", 1).record["verdict"] == "manual"
    assert registry.set_champion("histoxai-multitask", 2, reason="review").champion
    fetched = registry.fetch(registry.get("histoxai-multitask", "v3"), tmp_path / "fetched")
    assert (fetched / "model.keras").read_text() == "model.keras of c"
    assert registry.names() == ["histoxai-multitask"]
    with pytest.raises(InputError, match="no such version or alias"):
        registry.get("histoxai-multitask", 9)
    with pytest.raises(InputError, match="not in the registry"):
        registry.get("histoxai-single-task", CHAMPION)


@pytest.mark.parametrize("where", ["local", "gcs"])
def test_concurrent_registrations_lose_no_version(where, tmp_path, request):
    location = str(tmp_path / "registry") if where == "local" else \
        storage.join(request.getfixturevalue("gcs_bucket"), "registry")
    folders = [_version_dir(tmp_path, str(i)) for i in range(6)]
    errors = []

    def register(folder):
        try:  # each thread its own registry object, as separate pipeline tasks have
            open_registry(location).register("histoxai-multitask", folder, labels={},
                                              record={"run": folder.name}, promote=False)
        except Exception as err:  # noqa: BLE001 (reported below)
            errors.append(err)

    threads = [threading.Thread(target=register, args=(f,)) for f in folders]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors
    versions = open_registry(location).versions("histoxai-multitask")
    assert [v.version for v in versions] == [1, 2, 3, 4, 5, 6]
    assert sorted(v.record["run"] for v in versions) == sorted(f.name for f in folders)
    assert len({v.uri for v in versions}) == 6


def test_a_damaged_index_or_a_missing_file_is_one_error_and_changes_nothing(tmp_path):
    location = tmp_path / "registry"
    registry = open_registry(str(location))
    _register(registry, tmp_path, "a", promote=True)
    index = location / "histoxai-multitask" / "index.json"
    index.write_text('{"name": "histoxai-multitask", "versions": [')
    before = sorted(p for p in location.rglob("*"))
    with pytest.raises(InputError, match=r"index.json: not valid JSON .*nothing was changed"):
        _register(registry, tmp_path, "b", promote=True)
    assert sorted(p for p in location.rglob("*")) == before  # no version folder copied in
    code = histoxai_main(["models", "list", "histoxai-multitask", "--registry", str(location)])
    assert code == 2

    good = "versions/" + "0" * 32
    index.write_text(json.dumps({"name": "histoxai-multitask", "versions": [{"version": 1, "folder": good}],
                                 "aliases": {CHAMPION: 4}}))
    with pytest.raises(InputError, match="name versions it does not list"):
        registry.champion("histoxai-multitask")
    # a tampered index cannot point a version out of the registry (fetch would copy from there)
    index.write_text(json.dumps({"name": "histoxai-multitask", "aliases": {},
                                 "versions": [{"version": 1, "folder": "../../../etc"}]}))
    with pytest.raises(InputError, match="no list of versions with numbers and folders"):
        registry.versions("histoxai-multitask")

    fresh = open_registry(str(tmp_path / "other"))
    version = _register(fresh, tmp_path, "c", promote=True)
    Path(version.uri, "model.keras").unlink()
    out = tmp_path / "champion"
    code = histoxai_main(["models", "fetch", "histoxai-multitask", "--registry", str(tmp_path / "other"),
                          "--out", str(out)])
    assert code == 2 and not out.exists()


def _predictions(values: dict[str, list[float]]) -> pd.DataFrame:
    """Two training samples (3: train/val/test patches, 4: test) and held-out sample 5."""
    rows = [("3", 0, 0, "train"), ("3", 0, 1, "val"), ("3", 1, 0, "test"), ("3", 1, 1, "test"),
            ("5", 0, 0, "heldout"), ("5", 0, 1, "heldout"), ("5", 1, 0, "heldout"), ("5", 1, 1, "heldout")]
    frame = pd.DataFrame(rows, columns=["sample", "row", "col", "split"])
    frame["MD_measured"] = [1.0, 2.0, 3.0, 4.0, 1.0, 2.0, 3.0, 4.0]
    for column, predicted in values.items():
        frame[column] = predicted
    return frame


def test_the_comparison_leaves_out_every_patch_the_champion_saw():
    perfect = [1.0, 2.0, 3.0, 4.0, 1.0, 2.0, 3.0, 4.0]
    shifted = [v + 0.5 for v in perfect]
    new, old = _predictions({"MD_predicted": perfect}), _predictions({"MD_predicted": shifted})
    # the champion saw held-out sample 5's first two patches (it trained when 5 was a training sample)
    seen = pd.DataFrame({"sample": ["5", "5"], "row": [0, 0], "col": [0, 1], "split": ["train", "val"]})
    comparison = gate.compare(new, old, ["MD"], ["3", "4"], seen)
    assert comparison["basis"] == "held-out samples" and comparison["n"] == 2
    scores = {r["model"]: r["r2"] for r in comparison["scores"]}
    assert scores["challenger"] == 1.0 and scores["champion"] == pytest.approx(1 - 0.5**2 * 2 / 0.5)
    verdict = gate.decide(comparison, RULE)
    assert verdict["promote"] and "beats the champion's" in verdict["reason"]
    assert not gate.decide(gate.compare(old, new, ["MD"], ["3", "4"], seen), RULE)["promote"]

    # nothing held out: the test set, without what the champion saw
    seen = pd.DataFrame({"sample": ["5"] * 4 + ["3"], "row": [0, 0, 1, 1, 1], "col": [0, 1, 0, 1, 0],
                         "split": ["train"] * 5})
    comparison = gate.compare(new, old, ["MD"], ["3", "4"], seen)
    assert comparison["basis"] == "test set" and comparison["n"] == 1
    verdict = gate.decide(comparison, RULE)
    assert not verdict["promote"] and "undefined" in verdict["reason"]  # R² of one patch is undefined


def test_the_rule_margin_and_tolerance():
    def comparison(new: dict, old: dict) -> dict:
        scores = [{"target": t, "group": "5", "model": m, "n": 10, "r2": v, "pearson_r2": v}
                  for m, values in (("challenger", new), ("champion", old)) for t, v in values.items()]
        return {"basis": "held-out samples", "targets": list(new), "n": 10, "groups": ["5"], "scores": scores}

    assert gate.decide(None, RULE)["promote"]
    assert gate.decide(comparison({"MD": 0.60, "FA": 0.50}, {"MD": 0.50, "FA": 0.50}), RULE)["promote"]
    small = gate.decide(comparison({"MD": 0.505, "FA": 0.505}, {"MD": 0.50, "FA": 0.50}), RULE)
    assert not small["promote"] and "by the margin" in small["reason"]
    worse = gate.decide(comparison({"MD": 0.90, "FA": 0.45}, {"MD": 0.50, "FA": 0.50}), RULE)
    assert not worse["promote"] and worse["reason"].startswith("FA worse")
    assert worse["challenger"] == pytest.approx(0.675) and worse["champion"] == pytest.approx(0.5)
    with pytest.raises(InputError, match="promotion metric 'mae'"):
        gate.PromotionRule(metric="mae", margin=0.0, tolerance=0.0)
    with pytest.raises(InputError, match="promotion margin -1"):
        gate.PromotionRule(metric="r2", margin=-1, tolerance=0.0)
