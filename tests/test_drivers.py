"""`histoxai explain --nuclei`: the three answers to "what drives the prediction", written beside the
maps of a real (tiny, untrained) model on an ingested phantom sample, and their agreement table."""

from __future__ import annotations

import json

import pandas as pd
import pytest

from histoxai import artifacts
from histoxai.cli import main
from histoxai.components.explain.drivers import agreement, canonical

PX, PATCH = 32, 32


@pytest.fixture(scope="module")
def explained(tmp_path_factory):
    from histoxai import model as models
    from histoxai.components.ingest.ingest import ingest_sample
    from histoxai.components.split.split import split_manifests
    from histoxai.config import from_dict
    from histoxai.phantom import render_phantom

    root = tmp_path_factory.mktemp("drivers")
    render_phantom(root / "phantom", [6], pixels_per_voxel=PX, n_max=8, crop=(12, 12), seed=1)
    ingest_sample(str(root / "phantom" / "6"), str(root / "ingest"), patch_size=PATCH, erosion=0)
    split_manifests([str(root / "ingest")], str(root / "split"), train_samples=["6"])
    config = from_dict({"targets": ["CC"], "backbone": "tiny", "weights": None, "image_size": PATCH,
                        "dense_units": 8, "feature_units": 4, "seed": 3}, "test")
    (root / "model").mkdir()
    models.build_model(config, target_means={"CC": 4.0}).save(root / "model" / "model.keras")
    (root / "model" / "config.yaml").write_text(config.to_yaml())
    out = root / "explain"
    code = main(["explain", "--model", str(root / "model"), "--data", str(root / "split"), "--out", str(out),
                 "--phantom-dir", str(root / "phantom"), "--nuclei", "--nuclei-voxels", "3",
                 "--methods", "vanilla", "--splits", "train,val,test", "--max-patches", "30",
                 "--trust-patches", "0"])
    assert code == 0
    return out


def test_explain_writes_the_three_answers_beside_the_maps(explained, capsys):
    nuclei = pd.read_parquet(explained / artifacts.NUCLEI_TABLE)
    assert {"vanilla", "control:darkness", "control:edges"} == set(nuclei["method"])
    assert (nuclei["outline"] == "mask").all() and nuclei["area_um2"].gt(0).all()
    drivers = pd.read_parquet(explained / artifacts.NUCLEI_DRIVERS)
    assert set(drivers["property"]) >= {"area_um2", "density_per_mm2"} and "verdict" in drivers
    concepts = pd.read_parquet(explained / artifacts.CONCEPTS_TABLE)
    assert {"density", "size", "coherence"} <= set(concepts["concept"]) and set(concepts["target"]) == {"CC"}
    curves = pd.read_parquet(explained / artifacts.RESPONSE_CURVES)
    assert set(curves["property"]) == {"count_factor", "size", "elongation", "coherence"}
    assert curves["voxel"].nunique() == 3
    for name in (artifacts.RESPONSE_PLOT, artifacts.DRIVERS_PLOT):
        assert (explained / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    text = (explained / artifacts.DRIVERS_REPORT).read_text()
    assert text.startswith("# What drives the prediction") and "| CC |" in text
    summary = json.loads((explained / artifacts.EXPLAIN_INFO).read_text())["drivers"]
    (row,) = summary["agreement"]
    assert row["target"] == "CC" and row["verdict"] in (
        "agree", "agree (two answers; the third names none)", "disagree", "only one answer names a driver",
        "no answer found a driver")
    assert summary["nuclei"] == nuclei[["sample", "row", "col", "label"]].drop_duplicates().shape[0]


def test_the_agreement_speaks_one_vocabulary():
    assert canonical("density_per_mm2") == canonical("count_factor") == canonical("density") == "density"
    assert canonical("area_um2") == canonical("size") == "size"
    found = pd.DataFrame({"target": ["CC", "CC"], "property": ["area_um2", "density_per_mm2"],
                          "rho": [0.2, -0.6], "verdict": ["drives", "drives"]})
    concepts = pd.DataFrame({"target": ["CC"], "concept": ["density"], "effect": [3.0],
                             "verdict": ["moves the prediction"]})
    responses = pd.DataFrame({"target": ["CC", "CC"], "property": ["count_factor", "size"],
                              "slope_std": [0.9, 0.1]})
    (row,) = agreement(["CC"], found, concepts, responses)
    assert (row["saliency"], row["concepts"], row["interventions"], row["verdict"]) == (
        "density", "density", "density", "agree")
    (row,) = agreement(["CC"], found.assign(verdict="no evidence"), concepts.iloc[:0], responses.iloc[:0])
    assert row["verdict"] == "no answer found a driver" and row["saliency"] is None
    (row,) = agreement(["CC"], found, concepts.assign(concept="coherence"), None)
    assert row["verdict"] == "disagree"
    (row,) = agreement(["CC"], found, concepts, None)
    assert row["verdict"] == "agree (two answers; the third names none)"


def test_nuclei_needs_the_samples_folder(tmp_path):
    from histoxai.components.explain.explain import explain
    from histoxai.errors import InputError

    with pytest.raises(InputError, match="--nuclei: no --phantom-dir"):
        explain(str(tmp_path / "m"), str(tmp_path / "d"), str(tmp_path / "o"), nuclei=True)
    assert not (tmp_path / "o").exists()
