"""Review app, What drives the prediction page (Streamlit AppTest): on synthetic runs whose explain output
holds small `explain --nuclei` tables (written here, not by the explain step) and a phantom truth, the
page shows the response curves, the property relevance plot, the concept table and one patch's nuclei
in the colour of their relevance; it says so when the files or the phantom are absent."""

from __future__ import annotations

import json
from pathlib import Path

import h5py
import numpy as np
import pandas as pd
import pytest
from streamlit.testing.v1 import AppTest

from histoxai import artifacts, layout, plots
from histoxai.app import auth, page_drivers
from histoxai.app.settings import ENV
from histoxai.errors import InputError
from histoxai.phantom.interventions import response_figure
from tests.app_data import synthesise_run

MAIN = str(Path(auth.__file__).with_name("main.py"))
BLOCK = 20  # phantom slide pixels per voxel
UM2_PER_PX2 = (200.0 / BLOCK) ** 2
GRID = (3, 4)  # 12 patches of one sample, 4 per row (synthesise_run)
# label -> (centroid x, centroid y within the block, semi-axis) of the nuclei of voxel (0, 0) and (0, 1)
NUCLEI = {1: (5.0, 5.0, 3.0), 2: (14.0, 6.0, 2.0), 3: (10.0, 14.0, 3.0)}


def write_drivers(explain: Path, targets=("MD", "CC")) -> dict[str, pd.DataFrame]:
    """Small tables of the `explain --nuclei` outputs in an explain folder, their plots and drivers.md, and
    explain.json's drivers entry. Relevance per nucleus: -1, 0, +1 for labels 1, 2, 3 (gradcam++)."""
    rows = []
    for target in targets:
        for col in (0, 1):
            for label, (x, y, axis) in NUCLEI.items():
                base = {"sample": "1", "row": 0, "col": col, "target": target, "y": 1.0, "y_hat": 1.1,
                        "label": label, "outline": "mask", "centroid_x": col * BLOCK + x, "centroid_y": y,
                        "area_px": np.pi * axis * axis, "area_um2": np.pi * axis * axis * UM2_PER_PX2,
                        "elongation": 1.0, "pixels": 10}
                for method, setting, score, value in (("gradcam++", "layer=top_activation", "increase",
                                                       float(label - 2)),
                                                      ("control:darkness", "", "", 0.5)):
                    rows.append({**base, "method": method, "setting": setting, "score": score,
                                 "relevance_mean": value, "positive_mean": max(value, 0.0)})
    nuclei = pd.DataFrame(rows)
    drivers = pd.DataFrame([
        {"target": t, "method": "gradcam++", "setting": "layer=top_activation", "score": "increase",
         "property": p, "kind": k, "nuclei": 6, "patches": 6, "rho": rho, "rho_low": rho - 0.1,
         "rho_high": rho + 0.1, "beta": rho, "beta_low": rho - 0.2, "beta_high": rho + 0.2,
         "darkness_rho": 0.1, "edges_rho": -0.05, "verdict": "drives" if abs(rho) > 0.3 else "no evidence",
         "reason": ""}
        for t in targets for k in ("signed", "positive")
        for p, rho in (("area_um2", 0.6), ("elongation", -0.2), ("density_per_mm2", 0.1))])
    concepts = pd.DataFrame([
        {"target": t, "layer": "top_activation", "concept": c, "n_patches": 12, "r2": 0.4, "effect": e,
         "effect_low": e - 0.1, "effect_high": e + 0.1, "sensitivity": e, "tcav": 0.7, "p_value": 0.01,
         "p_corrected": 0.04, "direction": "raises" if e > 0 else "none",
         "verdict": "moves the prediction" if e > 0.2 else "no significant effect"}
        for t in targets for c, e in (("density", 0.5), ("size", 0.1))])
    curves = pd.DataFrame([
        {"property": p, "value": v, "target": t, "voxel": 0, "sample": 1, "row": 0, "col": 0,
         "prediction": 1.0 + 0.1 * v * (t == "CC"), "truth": 1.0 + 0.1 * v}
        for t in targets for p in ("count_factor", "size") for v in (0.5, 1.0, 2.0)])
    summary = pd.DataFrame([{"property": "count_factor", "target": t, "slope": 0.1, "slope_std": 0.3,
                             "spearman": 1.0} for t in targets] +
                           [{"property": "size", "target": t, "slope": -0.1, "slope_std": -0.5,
                             "spearman": -1.0} for t in targets])
    for name, frame in ((artifacts.NUCLEI_TABLE, nuclei), (artifacts.NUCLEI_DRIVERS, drivers),
                        (artifacts.CONCEPTS_TABLE, concepts), (artifacts.RESPONSE_CURVES, curves),
                        (artifacts.RESPONSE_SUMMARY, summary)):
        frame.to_parquet(explain / name, index=False)
    (explain / artifacts.RESPONSE_PLOT).write_bytes(plots.png(response_figure(curves)))
    (explain / artifacts.DRIVERS_PLOT).write_bytes(plots.png(plots.drivers_figure(drivers)))
    (explain / artifacts.DRIVERS_REPORT).write_text(
        "# What drives the prediction\n\nPer target, the property each answer ranks first:\n\n"
        "| target | per-nucleus relevance | concept sensitivity | interventions | verdict |\n"
        "|---|---|---|---|---|\n"
        + "".join(f"| {t} | size | density | size | disagree |\n" for t in targets)
        + "\n## 1. Relevance per nucleus\n\nDrivers:\n\n- MD gradcam++ (signed): rho +0.60\n")
    info = json.loads((explain / artifacts.EXPLAIN_INFO).read_text())
    info["drivers"] = {"nuclei": 6, "agreement": [{"target": t, "saliency": "size", "concepts": "density",
                                                   "interventions": "size", "verdict": "disagree"}
                                                  for t in targets]}
    (explain / artifacts.EXPLAIN_INFO).write_text(json.dumps(info))
    return {"nuclei": nuclei, "drivers": drivers, "concepts": concepts, "curves": curves}


def _phantom(folder: Path) -> None:
    """A phantom truth for sample 1: the label image with NUCLEI in voxels (0, 0) and (0, 1), and its
    nuclei table."""
    truth = folder / "1" / "phantom_truth"
    truth.mkdir(parents=True)
    (truth / "targets.json").write_text(json.dumps({"image_shape": [GRID[0] * BLOCK, GRID[1] * BLOCK],
                                                    "grid": list(GRID)}))
    labels = np.zeros((GRID[0] * BLOCK, GRID[1] * BLOCK), np.uint32)
    yy, xx = np.mgrid[0:labels.shape[0], 0:labels.shape[1]]
    table = []
    for col in (0, 1):
        for label, (x, y, axis) in NUCLEI.items():
            value = label + 10 * col
            labels[(xx - col * BLOCK - x) ** 2 + (yy - y) ** 2 <= axis ** 2] = value
            table.append({"label": value, "centroid_x": col * BLOCK + x, "centroid_y": y, "semi_major": axis,
                          "semi_minor": axis, "angle": 0.0, "haematoxylin": 1.0})
    with h5py.File(truth / "nuclei_labels.h5", "w") as h5:
        h5["labels"] = labels
    pd.DataFrame(table).to_parquet(truth / "nuclei.parquet", index=False)


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    """root/full (drivers outputs and a phantom truth), root/partial (the nuclei table alone, no phantom),
    root/bare (maps only), root/users.yaml."""
    root = tmp_path_factory.mktemp("drivers")
    for name in ("full", "partial", "bare"):
        synthesise_run(root / name, patches=12, patch_size=32, map_size=16, samples=1, shard_size=100,
                       targets=("MD", "CC"))
    tables = write_drivers(root / "full" / "explain")
    _phantom(root / "full" / "phantom")
    (root / "partial" / "explain" / artifacts.NUCLEI_TABLE).write_bytes(
        (root / "full" / "explain" / artifacts.NUCLEI_TABLE).read_bytes())
    (root / "users.yaml").write_text(f"alice: '{auth.hash_password('pw', rounds=4)}'\n")
    return {"root": root, **tables}


def _page(root: Path, run: str, monkeypatch) -> AppTest:
    for variable in ENV.values():
        monkeypatch.delenv(variable, raising=False)
    monkeypatch.setenv(ENV["run"], str(root / run))
    monkeypatch.setenv(ENV["root"], str(root))
    monkeypatch.setenv(ENV["users_file"], str(root / "users.yaml"))
    at = AppTest.from_file(MAIN, default_timeout=60)
    at.session_state[auth.SESSION_USER] = "alice"
    at.run()
    at.switch_page("page_drivers.py").run()
    assert not at.exception, [e.value for e in at.exception]
    return at


def _captions(at) -> list[str]:
    return [caption for image in at.main.image for caption in image.captions]


def test_the_page_shows_the_three_answers_and_a_patch_outlined_by_relevance(root, monkeypatch):
    at = _page(root["root"], "full", monkeypatch)
    assert [t.value for t in at.title] == ["What drives the prediction"]
    assert [s.value for s in at.subheader] == ["Interventions: response curves",
                                               "Relevance per nuclear property", "Concept sensitivity",
                                               "Nuclei of one patch"]
    assert not at.info
    captions = _captions(at)
    assert len(captions) == 3
    assert captions[0].startswith("Mean prediction") and captions[1].startswith("Within")
    assert "3 nuclei" in captions[2] and "Outlines of the phantom's nuclei" in captions[2]
    assert at.sidebar.selectbox(key="w_drivers_target").value == "MD"
    concepts = at.dataframe[0].value
    assert concepts["concept"].tolist() == ["density", "size"] and "target" not in concepts.columns
    assert "What drives the prediction" in at.expander[0].markdown[0].value
    # the control map and another patch and target
    at.selectbox(key="w_drivers_map").set_value(("control:darkness", "", "")).run()
    at.selectbox(key="w_drivers_patch").set_value(("1", 0, 1)).run()
    at.sidebar.selectbox(key="w_drivers_target").set_value("CC").run()
    at.sidebar.selectbox(key="w_drivers_kind").set_value("positive").run()
    assert not at.exception and len(_captions(at)) == 3 and not at.info
    assert "mean positive relevance" in _captions(at)[2]


def test_nuclei_are_drawn_in_the_colour_of_their_relevance(root):
    nuclei = root["nuclei"]
    nuclei = nuclei[(nuclei["target"] == "MD") & (nuclei["col"] == 0) & (nuclei["method"] == "gradcam++")]
    labels = np.zeros((32, 32), np.int64)
    labels[2:10, 2:10], labels[20:30, 20:30] = 1, 3  # label 2 has no pixels here
    patch = np.full((32, 32, 3), 128, np.uint8)
    figure = page_drivers.nuclei_figure(patch, nuclei, "relevance_mean", (0, 0), labels)
    drawn = figure.axes[0].get_images()[1].get_array()
    low, high = drawn[2, 5], drawn[20, 25]  # on the outlines of label 1 (relevance -1) and 3 (+1)
    assert low[3] == high[3] == 1 and low[2] > low[0] and high[0] > high[2]  # blue, red
    assert drawn[5, 5, 3] == 0 and drawn[0, 0, 3] == 0  # inside a nucleus and outside: not drawn
    # without labels: circles of each nucleus's area at its centroid, in the patch's pixels
    figure = page_drivers.nuclei_figure(patch, nuclei, "relevance_mean", (0, 0))
    circles = figure.axes[0].patches
    assert len(circles) == 3
    first = circles[0]
    assert np.allclose(first.center, (5.0 / BLOCK * 32 - 0.5, 5.0 / BLOCK * 32 - 0.5))
    assert np.isclose(first.radius, 3.0 / BLOCK * 32)
    assert first.get_edgecolor()[2] > first.get_edgecolor()[0]  # relevance -1: blue


def test_absent_outputs_and_phantom_are_said(root, monkeypatch):
    at = _page(root["root"], "partial", monkeypatch)
    infos = [i.value for i in at.info]
    assert len(infos) == 3 and all("explain_nuclei" in i for i in infos)
    assert any(artifacts.RESPONSE_CURVES in i for i in infos)
    assert any(artifacts.CONCEPTS_TABLE in i for i in infos)
    captions = _captions(at)
    assert len(captions) == 1 and "Circles of each nucleus's area" in captions[0]
    assert "phantom truth of sample 1 is not under this run" in captions[0]

    at = _page(root["root"], "bare", monkeypatch)
    assert [i.value for i in at.info] == [
        "explain holds none of the outputs of `histoxai explain --nuclei` (drivers.md, "
        "nuclei_drivers.parquet, ...): the run did not ask for it (`histoxai explain --nuclei`; pipeline "
        "parameter `explain_nuclei`)."]
    assert not at.image and not at.subheader


def test_phantom_sample_is_found_only_with_its_whole_truth(root, tmp_path):
    from histoxai.app import data

    phantom = root["root"] / "full" / "phantom"
    assert data.phantom_sample([str(phantom)], "1", str(root["root"])) == str(phantom / "1")
    assert data.phantom_sample([str(phantom)], "2", str(root["root"])) is None
    (tmp_path / "1" / "phantom_truth").mkdir(parents=True)
    (tmp_path / "1" / layout.TRUTH_TARGETS).write_text("{}")
    with pytest.raises(InputError, match="outside the app's root"):
        data.phantom_sample([str(tmp_path)], "1", str(root["root"]))
