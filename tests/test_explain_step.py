"""Explain step: map storage (local and gs://), display normalisation, trust measures on hand-made
cases, the step through its CLI and library call, and the KFP component. Method formulas are tested in
test_explain.py, whose tiny fixed model these tests reuse."""

from __future__ import annotations

import json
import re
from pathlib import Path
from types import SimpleNamespace

import h5py
import numpy as np
import pandas as pd
import pytest

from histoxai import artifacts, layout
from histoxai.cli import main
from histoxai.components.explain.explain import explain
from histoxai.components.explain.methods import Score
from histoxai.errors import InputError
from histoxai.saliency import randomization, store, trust
from tests.test_explain import SIZE, _build, _close
from tests.train_data import write_blob_manifest


@pytest.fixture(scope="module")
def net():
    return _build()


# ---- storage ----

def test_float16_storage_keeps_any_magnitude(tmp_path):
    rng = np.random.default_rng(1)
    maps = [rng.uniform(0, 3e-7, (8, 8)), rng.uniform(-2e5, 2e5, (8, 8)), np.zeros((8, 8)),
            np.where(rng.random((8, 8)) < 0.2, np.nan, rng.normal(size=(8, 8)))]
    with store.MapWriter(tmp_path, chunk_bytes=200) as writer:
        locations = [writer.append(m.astype(np.float32)) for m in maps]
    assert len({loc["map_file"] for loc in locations}) > 1  # chunks roll over
    table = pd.DataFrame(locations).assign(map_id=range(len(maps)))
    store.write_table(table, tmp_path / artifacts.MAPS_TABLE)
    reader = store.open_maps(str(tmp_path))
    for i, raw in enumerate(maps):
        got = reader.read(i)
        assert got.dtype == np.float32 and got.shape == (8, 8)
        np.testing.assert_array_equal(np.isnan(got), np.isnan(raw))
        np.testing.assert_allclose(got[~np.isnan(raw)], raw[~np.isnan(raw)], rtol=2**-11, atol=0)
    with pytest.raises(InputError, match="no map with map_id 9"):
        reader.read(9)


def test_display_normalisation_is_separate():
    raw = np.array([[0.0, 1.0], [2.0, np.nan]], np.float32)
    np.testing.assert_array_equal(store.minmax(raw)[0], [0, 0.5])
    assert np.isnan(store.minmax(raw)[1, 1])
    low, high = store.display_range([raw, raw * 10], percentiles=(0, 100))
    assert (low, high) == (0.0, 20.0)
    np.testing.assert_allclose(store.normalize(raw, (0, 20))[0], [0, 0.05], rtol=1e-6)


# ---- trust measures on hand-made cases ----

def test_mask_measures():
    mask = np.zeros((4, 4), bool)
    mask[:, :2] = True
    assert trust.mask_measures(mask.astype(float), mask) == (1.0, 1.0, 0.5)
    assert trust.mask_measures((~mask).astype(float), mask) == (0.0, 0.0, 0.5)
    mass, rank, area = trust.mask_measures(np.where(mask, 1.0, 3.0) - 2.0, mask)  # negatives do not count
    assert (mass, rank) == (0.0, 0.0)
    graded = np.tile(np.array([4.0, 3.0, 2.0, 1.0]), (4, 1))  # relevance falling left to right
    assert trust.mask_measures(graded, mask)[0] == pytest.approx(7 / 10)
    assert np.isnan(trust.mask_measures(np.zeros((4, 4)), mask)[0])


def test_phantom_masks_cut_the_voxel_block_like_ingest(tmp_path):
    folder = tmp_path / "7"
    (folder / "phantom_truth").mkdir(parents=True)
    (folder / layout.TRUTH_TARGETS).write_text(json.dumps({"grid": [2, 3], "image_shape": [8, 13]}))
    labels = np.zeros((8, 13), np.uint32)
    labels[0:4, 4:8] = 5        # voxel (0, 1): all nucleus
    labels[4:8, 8:10] = 9       # voxel (1, 2): left half of its block
    labels[:, 12] = 3           # column 12 lies outside every block (13 // 3 = 4 px per voxel)
    with h5py.File(folder / layout.TRUTH_LABELS, "w") as h5:
        h5["labels"] = labels
    patches = pd.DataFrame({"sample": ["7"] * 3, "row": [0, 1, 0], "col": [1, 2, 0]})
    masks = trust.phantom_masks(str(tmp_path), patches, 8)
    assert masks[("7", 0, 1)].all() and not masks[("7", 0, 0)].any()
    assert masks[("7", 1, 2)][:, :4].all() and not masks[("7", 1, 2)][:, 4:].any()
    with pytest.raises(InputError, match="phantom-dir"):
        trust.phantom_masks(str(tmp_path / "none"), patches, 8)


def test_deletion_and_insertion_reward_the_right_order():
    rng = np.random.default_rng(2)
    images = rng.uniform(0, 255, (4, 6, 6, 3)).astype(np.float32)
    linear = SimpleNamespace(predict=lambda x, target: x[..., 0].mean(axis=(1, 2)))  # S = mean of red
    blurred = np.zeros_like(images)
    best = trust._ranks(images[..., 0])
    curves = trust.perturbation_curves(linear, images, blurred, best, "t", Score(), np.zeros(4), 36, 2.5)
    expected = -np.cumsum(np.sort(images[..., 0].reshape(4, -1), axis=1)[:, ::-1], axis=1) / 36 / 2.5
    np.testing.assert_allclose(curves["deletion"][:, 1:], expected, rtol=1e-5)
    random = trust.perturbation_curves(linear, images, blurred, np.stack([rng.permutation(36)] * 4), "t",
                                       Score(), np.zeros(4), 36, 2.5)
    assert trust.auc(curves["deletion"]).mean() < trust.auc(random["deletion"]).mean()
    assert trust.auc(curves["insertion"]).mean() > trust.auc(random["insertion"]).mean()


def test_randomisation_pieces(net):
    def layer(name):
        return SimpleNamespace(name=name, weights=[1])

    names = ["stem_conv", "block6n_project_bn", "block6o_expand_conv", "block6o_bn", "top_conv", "top_bn",
             "conv5_block16_1_conv", "head_dense", "CC"]
    fake = SimpleNamespace(layers=[layer(n) for n in names], output_names=["CC"])
    assert [[x.name for x in b] for b in randomization.backbone_blocks(fake)] == [
        ["conv5_block16_1_conv"], ["top_bn", "top_conv"], ["block6o_bn", "block6o_expand_conv"],
        ["block6n_project_bn"], ["stem_conv"]]
    stages = randomization.randomization_stages(fake, 2)  # at most 2 measured stages between head and input
    assert [s for s, _ in stages] == ["head", "head + 2 blocks (top_bn)",
                                      "head + 4 blocks (block6n_project_bn)",
                                      "head + 5 blocks (stem_conv) (to the input)"]
    assert len(stages[-1][1]) == len(names)  # every weighted layer is random at the last stage
    import keras

    copy = keras.models.clone_model(net)
    copy.set_weights(net.get_weights())
    randomization.randomize_layers([copy.get_layer("tiny_conv3")], seed=0)
    changed = copy.get_layer("tiny_conv3").get_weights()[0]
    assert not np.allclose(changed, net.get_layer("tiny_conv3").get_weights()[0])
    untouched = copy.get_layer("tiny_conv2").get_weights()[0]
    assert np.array_equal(untouched, net.get_layer("tiny_conv2").get_weights()[0])
    same = np.arange(16.0).reshape(4, 4)
    assert randomization.spearman(same, same) == pytest.approx(1.0)
    assert np.isnan(randomization.spearman(same, np.ones((4, 4))))


def test_map_comparisons_of_a_batch_equal_each_maps_own():
    from scipy.stats import spearmanr

    rng = np.random.default_rng(3)
    before = rng.normal(size=(6, 12, 12))
    after = 0.5 * before + rng.normal(size=(6, 12, 12))
    before[1] = 0.0  # constant: undefined
    after[2, :3] = np.nan  # partly missing: read as 0, as one map alone is
    before[3] = np.round(before[3])  # ties
    after[4] = np.inf  # nothing finite: undefined
    for absolute in (False, True):
        rows = randomization.spearman_rows(before, after, absolute=absolute)
        for i in range(len(before)):
            a, b = (np.nan_to_num(m[i], nan=0.0, posinf=0.0, neginf=0.0) for m in (before, after))
            a, b = (np.abs(m) if absolute else m for m in (a, b))
            if i in (1, 4):
                assert np.isnan(rows[i])
            else:  # scipy's own Spearman of the same values
                assert rows[i] == pytest.approx(spearmanr(a.ravel(), b.ravel())[0], abs=1e-12)
    together = randomization.ssim_rows(before, after)
    alone = [randomization.ssim_rows(before[i:i + 1], after[i:i + 1])[0] for i in range(len(before))]
    np.testing.assert_array_equal(together, alone)  # the batch's filter never mixes two maps
    assert np.isnan(together[[1, 4]]).all() and np.isfinite(together[[0, 2, 3, 5]]).all()
    assert randomization.compare(before, after)["undefined"] == pytest.approx(2 / 6)


# ---- the step ----

@pytest.fixture(scope="module")
def run_inputs(tmp_path_factory, net):
    folder = tmp_path_factory.mktemp("explain-in")
    manifest = write_blob_manifest(folder, n=40, size=SIZE, seed=1)
    frame = pd.read_parquet(manifest)
    frame.loc[frame["split"] == "test", "CC"] = 0.0  # y = 0: rΔ is undefined there
    frame.to_parquet(manifest, index=False)
    net.save(folder / "model.keras")
    block = 16  # a phantom truth for both samples: one square nucleus in each voxel's block
    for (sample, mode) in [(s, m) for s in ("1", "2") for m in ("real", "derived")]:
        truth = folder / f"phantom-{mode}" / sample / "phantom_truth"
        truth.mkdir(parents=True)
        shape = {"image_shape": [2 * block, 16 * block], "grid": [2, 16], "mode": mode}
        (truth / "targets.json").write_text(json.dumps(shape))
        labels = np.zeros((2 * block, 16 * block), np.uint32)
        for row in range(2):
            for col in range(16):
                top, left = row * block, col * block
                labels[top + 4:top + 10, left + 5:left + 12] = 1 + row * 16 + col
        with h5py.File(truth / "nuclei_labels.h5", "w") as h5:
            h5["labels"] = labels
    return {"model": str(folder / "model.keras"), "data": str(manifest),
            "phantom": str(folder / "phantom-real"), "derived": str(folder / "phantom-derived")}


ARGS = ["--methods", "gradcam++,smoothgrad:n=4,ig:steps=8", "--scores", "increase,toward=truth",
        "--max-patches", "6", "--batch-size", "4", "--gradient-batch", "8", "--trust-patches", "4",
        "--trust-steps", "2", "--randomize-blocks", "1"]


def test_cli_writes_maps_table_and_trust_report(run_inputs, tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["explain", "--model", run_inputs["model"], "--data", run_inputs["data"], "--out", str(out),
                 "--phantom-dir", run_inputs["phantom"], *ARGS]) == 0
    assert "maps for 6 patches" in capsys.readouterr().out
    maps = store.open_maps(str(out))
    table = maps.table
    assert len(table) == 6 * 2 * 3 * 2  # patches x targets x methods x scores
    assert set(table["split"]) == {"test"} and set(table["method"]) == {"gradcam++", "smoothgrad", "ig"}
    np.testing.assert_allclose(table["delta"], table["y_hat"] - table["y"])
    md = table["target"] == "MD"
    np.testing.assert_allclose(table.loc[md, "rdelta"], (table["y_hat"] / table["y"] - 1)[md] * 100)
    assert table.loc[~md, "rdelta"].isna().all()  # CC = 0 on these rows
    row = table.iloc[5]
    raw = maps.read(row["map_id"])
    assert raw.shape == (SIZE, SIZE) and np.nanmax(raw) == pytest.approx(row["map_max"], rel=2**-10)
    assert table["ig_gap"].notna().eq(table["method"] == "ig").all()
    assert (table["map_nan_fraction"] == 0).all()
    summary = json.loads((out / "explain.json").read_text())
    assert (summary["maps"], summary["nan_maps"], summary["cam_layer"]) == (len(table), 0, "top_activation")
    measures = pd.read_parquet(out / artifacts.TRUST_TABLE)
    assert len(measures) == 2 * 3 * 2  # targets x methods x scores
    for control in ("random", "darkness", "edges", "randomized"):
        assert measures[[f"{control}_deletion_auc", f"{control}_insertion_auc"]].notna().all().all()
    cc = measures["target"] == "CC"  # the nuclei masks score CC maps, beside every control
    for control in ("random", "darkness", "edges", "randomized"):
        for measure in ("mask_mass", "mask_rank_accuracy"):
            assert measures.loc[cc, f"{control}_{measure}"].notna().all()
            assert measures.loc[~cc, f"{control}_{measure}"].isna().all()
    np.testing.assert_allclose(measures.loc[cc, "random_mask_mass"], 42 / 256)  # the nucleus's area share
    assert set(measures["randomization"]) <= {"passes", "fails", "undefined"}
    assert measures["randomization_flag"].eq(measures["randomization"] != "passes").all()
    assert all(v == "beats every control" or v.startswith(("does not beat: ", "randomisation check "))
               for v in measures["verdict"])
    cascade = pd.read_parquet(out / artifacts.TRUST_CASCADE)
    # --randomize-blocks 1: head, one block, then every block down to the input (the tiny model has 3)
    assert sorted(set(cascade["stage_number"])) == [0, 1, 2]
    assert cascade["stage"].iloc[-1].endswith("(to the input)")
    assert len(cascade[cascade["stage_number"] == 2]) == 2 * 3 * 2  # every score at the last stage
    assert (out / artifacts.TRUST_CASCADE_PLOT).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    text = (out / "trust.md").read_text()
    assert "Saliency trust report" in text and "| mask mass |" in text and "Legend" in text
    page = (out / "trust.html").read_text()
    assert "<table" in page and "data:image/png;base64," in page
    from histoxai.components.report.report import trust_table

    report, _ = trust_table({"tiny": [str(out)]})  # the run report's trust section reads the same table
    assert list(report.columns) == [
        "model", "target", "method", "score", "verdict", "randomisation", "mask mass", "rank accuracy",
        "deletion AUC", "insertion AUC", "NaN share", "blank share"]
    assert report["verdict"].tolist() == measures["verdict"].tolist()
    cell = report.loc[report["target"] == "CC", "mask mass"].iloc[0]
    assert "(random 0.164 · darkness " in cell and " · edges " in cell and " · randomised model " in cell
    assert report.loc[report["target"] == "MD", "mask mass"].isna().all()
    curves = pd.read_parquet(out / artifacts.TRUST_CURVES)
    assert set(curves["order"]) == {"map", "random", "darkness", "edges", "randomized"}
    assert curves["fraction"].max() == 1


def test_derived_phantom_targets_get_mask_measures_for_md(run_inputs, tmp_path):
    explain(run_inputs["model"], run_inputs["data"], str(tmp_path / "run"), methods=["vanilla"],
            targets=["MD"], max_patches=4, trust_patches=2, trust_steps=1, phantom_dir=run_inputs["derived"])
    measures = pd.read_parquet(tmp_path / "run" / artifacts.TRUST_TABLE)
    columns = ["mask_mass", "darkness_mask_mass", "edges_mask_mass", "randomized_mask_mass"]
    assert measures[columns].notna().all(axis=None)
    assert store.open_maps(str(tmp_path / "run")).table["mask_mass"].notna().all()


def test_gcs_output_reads_back_like_local(run_inputs, tmp_path, gcs_bucket):
    options = {"methods": ["vanilla", "smoothgrad:n=3"], "targets": ["MD"], "max_patches": 5,
               "trust_patches": 0, "shard_range": (1, 2)}
    explain(run_inputs["model"], run_inputs["data"], str(tmp_path / "local"), **options)
    explain(run_inputs["model"], run_inputs["data"], f"{gcs_bucket}/runs/a", **options)
    local, remote = store.open_maps(str(tmp_path / "local")), store.open_maps(f"{gcs_bucket}/runs/a")
    assert remote.table["sample"].eq("2").all()  # shard 1 of the test rows holds sample 2
    pd.testing.assert_frame_equal(local.table, remote.table)
    for map_id in remote.table["map_id"]:
        np.testing.assert_array_equal(remote.read(map_id), local.read(map_id))


def test_tf_keras_vis_engine_through_the_step(run_inputs, tmp_path):
    options = {"methods": ["gradcam++:alpha=tfkv", "vanilla"], "targets": ["CC"], "max_patches": 4,
               "trust_patches": 0}
    explain(run_inputs["model"], run_inputs["data"], str(tmp_path / "a"), **options)
    summary = explain(run_inputs["model"], run_inputs["data"], str(tmp_path / "b"), engine="tf-keras-vis",
                      **options)
    assert summary["engine"] == "tf-keras-vis" and summary["nan_maps"] == 0  # CC near 300: no overflow
    batched, library = store.open_maps(str(tmp_path / "a")), store.open_maps(str(tmp_path / "b"))
    for map_id in batched.table["map_id"]:
        _close(library.read(map_id), batched.read(map_id), 1e-3)  # float16 storage of both


@pytest.mark.parametrize(("extra", "message"), [
    (["--methods", "scorecam"], "Score-CAM"),
    (["--targets", "FA"], "not outputs of"),
    (["--shard-range", "5:6"], "spans 2 shards"),
    (["--samples", "9"], r"samples \['9'\] not found"),
])
def test_cli_rejects_bad_input_in_one_line_and_writes_nothing(run_inputs, tmp_path, capsys, extra, message):
    out = tmp_path / "run"
    assert main(["explain", "--model", run_inputs["model"], "--data", run_inputs["data"], "--out", str(out),
                 *extra]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and re.search(message, err)
    assert not out.exists()


def test_kfp_component_compiles(tmp_path):
    import yaml
    from kfp import compiler

    from histoxai.components.explain.component import explain_model
    from histoxai.images import GPU_IMAGE

    path = tmp_path / "explain.yaml"
    compiler.Compiler().compile(explain_model, str(path))
    spec = yaml.safe_load(Path(path).read_text())
    outputs = spec["root"]["outputDefinitions"]["artifacts"]
    assert {k: v["artifactType"]["schemaTitle"] for k, v in outputs.items()} == {
        "maps": "system.Dataset", "metrics": "system.Metrics", "trust_html": "system.HTML",
        "trust_markdown": "system.Markdown"}
    inputs = spec["root"]["inputDefinitions"]["artifacts"]
    assert inputs["model"]["artifactType"]["schemaTitle"] == "system.Model"
    executor = next(iter(spec["deploymentSpec"]["executors"].values()))
    assert executor["container"]["image"] == GPU_IMAGE
