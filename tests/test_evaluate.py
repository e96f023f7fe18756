"""Evaluate step: Table 4.1 layout, metrics, degenerate samples, prediction cache, the predict step's
files, maps, gs://, KFP."""

from __future__ import annotations

import io
import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
from PIL import Image

from histoxai import artifacts, colour, dataset, prediction, storage
from histoxai import config as configs
from histoxai.cli import main
from histoxai.components.evaluate import evaluate as ev
from histoxai.components.evaluate.baseline import BUNDLED_SUMMARY
from histoxai.errors import InputError
from histoxai.evaluation import table41
from histoxai.manifest import read_manifest, write_manifest
from histoxai.metrics import METRICS, NOTE_CONSTANT_TARGET, NOTE_SINGLE, format_value, regression_metrics
from histoxai.training import train
from tests.train_data import write_blob_manifest

pytestmark = pytest.mark.slow  # a long file: it starts first (tests/conftest.py)

TINY = {"backbone": "tiny", "weights": None, "image_size": 32, "batch_size": 16, "frozen_epochs": 1,
        "finetune_epochs": 1, "patience": 5, "lr_schedule": "none", "learning_rate": 3e-3,
        "dense_units": 16, "feature_units": 8, "targets": ["MD", "CC"]}
HELD_GRID = (4, 20)  # larger than the held-out patches' extent: the grid must come from ingest.json
SAMPLE_ROWS = ["sample 1 *", "sample 2 *", "sample 7", "sample 8", "sample 9",
               "train set", "validation set", "test set"]


def _extra_sample(folder: Path, sample: str, n: int, seed: int, **changes) -> Path:
    """An ingest-like folder (manifest.parquet + shards, no split) holding one blob sample."""
    frame = read_manifest(write_blob_manifest(folder, n=n, size=32, seed=seed, samples=1))
    frame = frame.drop(columns=["split", "shard_uri"]).assign(sample=sample)
    for column, values in changes.items():
        frame[column] = values
    (folder / "split.parquet").unlink()
    write_manifest(frame, folder / "manifest.parquet")
    return folder


@pytest.fixture(scope="session")
def setup(tmp_path_factory):
    """One tiny MD + CC model (trained once), the split of its two samples and three more samples:
    7 (constant MD), 8 (one patch) and 9 (some MD missing; ingest.json with a larger grid)."""
    root = tmp_path_factory.mktemp("evaluate")
    split = write_blob_manifest(root / "split", n=96, size=32, seed=3)
    train(configs.from_dict(TINY), str(split), str(root / "model"))
    constant = _extra_sample(root / "s7", "7", 12, seed=7, MD=1.25)
    single = _extra_sample(root / "s8", "8", 1, seed=8)
    held = _extra_sample(root / "s9", "9", 24, seed=9)
    frame = pd.read_parquet(held / "manifest.parquet")
    frame.loc[frame.index[:3], "MD"] = np.nan
    write_manifest(frame, held / "manifest.parquet")
    (held / "ingest.json").write_text(json.dumps({"grid": list(HELD_GRID)}))
    data = [str(split), str(constant), str(single / "manifest.parquet"), str(held)]
    out = root / "out"
    args = ["evaluate", "--model", f"a={root / 'model'}", "--model", f"b={root / 'model'}",
            *[arg for uri in data for arg in ("--data", uri)],
            "--summary", BUNDLED_SUMMARY, "--baseline-repeats", "3", "--out", str(out)]
    assert main(args) == 0
    return {"root": root, "model": root / "model", "data": data, "out": out, "args": args}


def _table(out) -> pd.DataFrame:
    return pd.read_parquet(io.BytesIO(storage.read_bytes(storage.join(str(out), artifacts.EVALUATION_TABLE))))


def test_table_4_1_layout_marks_training_samples(setup):
    table = _table(setup["out"])
    layout = table41(table, "r2")
    assert list(layout["data"]) == SAMPLE_ROWS
    assert list(layout.columns) == ["data", "MD (a)", "CC (a)", "MD (b)", "CC (b)"]
    assert layout.attrs["training_rows"] == [0, 1]
    report = (setup["out"] / "report.md").read_text()
    assert "| data | MD (a) | CC (a) | MD (b) | CC (b) |" in report
    assert report.index("R² = 1 - SSE/SST") < report.index("R²var")  # the standard definition leads
    cc = table[(table.model == "b") & (table.target == "CC") & (table.group == "9")]["r2"].iloc[0]
    row9 = layout.iloc[4]
    assert row9["CC (b)"] == cc
    assert "| sample 9 | " + " | ".join(format_value(v) for v in row9.iloc[1:]) + " |" in report
    html = (setup["out"] / "report.html").read_text()
    first_table = html[html.index("<table>", html.index("Table 4.1")):]
    first_table = first_table[:first_table.index("</table>")]
    assert first_table.count('<tr class="training">') == 2 and "sample 1 *" in first_table
    # embedded: a map per model x target x sample, a scatter per model x target, curves per model
    assert html.count("data:image/png;base64,") == 2 * 2 * 5 + 2 * 2 + 2


def test_metric_rows_equal_the_metrics_library_on_the_predictions(setup):
    table = _table(setup["out"]).set_index(["model", "target", "kind", "group"])
    folder = setup["out"] / ev.PREDICTIONS_DIR / "a"
    predictions = pd.concat([pd.read_parquet(p) for p in sorted(folder.glob("*.parquet"))])
    assert sorted(predictions["sample"].unique()) == ["1", "2", "7", "8", "9"]
    for target in ("MD", "CC"):
        y, p = prediction.measured_column(target), prediction.predicted_column(target)
        groups = [("sample", s, predictions[predictions["sample"] == s]) for s in ("1", "2", "7", "8", "9")]
        groups += [("split", s, predictions[predictions["split"] == s]) for s in ("train", "val", "test")]
        for kind, group, rows in groups:
            rows = rows[rows[y].notna()]
            expected = regression_metrics(rows[y], rows[p])
            got = table.loc[("a", target, kind, group)]
            assert got["n"] == expected["n"]
            for metric in METRICS:
                if expected[metric] is None:
                    assert pd.isna(got[metric])
                else:
                    assert got[metric] == pytest.approx(expected[metric], rel=1e-12, abs=1e-12)
    # the pooled test R² is the one training reported on the same patches
    trained = json.loads((setup["model"] / "metrics.json").read_text())["r2"]["test"]
    for target in ("MD", "CC"):
        assert table.loc[("a", target, "split", "test"), "r2"] == pytest.approx(trained[target], abs=1e-5)
    assert "3 rows without a measured MD left out" in table.loc[("a", "MD", "sample", "9"), "note"]


def test_one_patch_and_constant_target_give_documented_values(setup):
    table = _table(setup["out"]).set_index(["model", "target", "kind", "group"])
    single = table.loc[("a", "CC", "sample", "8")]
    assert single["n"] == 1 and single["note"] == NOTE_SINGLE
    assert pd.isna(single["r2"]) and pd.isna(single["r2_var"]) and pd.isna(single["pearson_r2"])
    assert np.isfinite(single["mae"]) and np.isfinite(single["bias"])
    constant = table.loc[("a", "MD", "sample", "7")]
    assert constant["n"] == 12 and constant["note"] == NOTE_CONSTANT_TARGET and pd.isna(constant["r2"])
    raw = pq.read_table(setup["out"] / artifacts.EVALUATION_TABLE).to_pandas()
    floats = raw[list(METRICS)].to_numpy(dtype=float)
    assert not np.isnan(floats[raw[list(METRICS)].notna().to_numpy()]).any()  # null, never NaN
    report = (setup["out"] / "report.md").read_text()
    assert "| sample 8 | n/a |" in report and NOTE_CONSTANT_TARGET in report
    arrays = np.load(setup["out"] / "maps" / "a" / "8" / "CC.npz")
    assert np.isfinite(arrays["measured"]).sum() == 1
    low, high = arrays["value_scale"]
    assert np.isfinite([low, high]).all() and low < high
    # a map whose values are all equal (and a zero residual) still gets a usable scale
    flat = np.full((2, 3), 1.25)
    scales = colour.colour_scales({"measured": flat, "predicted": flat, "residual": flat - flat})
    assert scales["value"][0] < 1.25 < scales["value"][1] and scales["residual"][1] > 0
    assert (colour.colourise(flat, *scales["value"], colour.VIRIDIS) == colour.colourise(
        np.full((1, 1), 1.25), *scales["value"], colour.VIRIDIS)[0, 0]).all()


def test_maps_have_the_grid_shape_and_show_the_patches(setup):
    maps = setup["out"] / "maps" / "a"
    held = np.load(maps / "9" / "MD.npz")
    assert held["measured"].shape == HELD_GRID
    predictions = pd.read_parquet(setup["out"] / "predictions" / "a" / "9.parquet")
    rows, cols = predictions["row"].to_numpy(), predictions["col"].to_numpy()
    np.testing.assert_array_equal(held["predicted"][rows, cols], predictions["MD_predicted"])
    assert np.isnan(held["predicted"]).sum() == HELD_GRID[0] * HELD_GRID[1] - len(predictions)
    assert np.isnan(held["measured"]).sum() == np.isnan(held["predicted"]).sum() + 3  # 3 MD missing
    np.testing.assert_allclose(held["residual"], held["predicted"] - held["measured"])
    lim = held["residual_scale"]
    assert lim[0] == -lim[1] > -np.inf
    train_map = np.load(maps / "1" / "CC.npz")  # no ingest.json: the patches' extent (48 patches, 16 a row)
    assert train_map["measured"].shape == (3, 16) and not np.isnan(train_map["measured"]).any()
    image = np.asarray(Image.open(maps / "9" / "MD.png").convert("RGB"))
    assert image.shape[0] > HELD_GRID[0] * 10 and image.shape[1] > 3 * HELD_GRID[1] * 10
    grey = (image == (200, 200, 200)).all(axis=2)
    assert grey.any() and (~grey).any()  # no-patch voxels grey, patches coloured


def test_baseline_rows_stand_beside_ours(setup):
    report = (setup["out"] / "report.md").read_text()
    assert "MD ~ CD quadratic (2023)" in report and "MD per-sample CNN (2023)" in report
    baseline = pd.read_parquet(setup["out"] / "baseline" / "baseline.parquet")
    cnn = baseline[(baseline["sample"] == "1") & (baseline["baseline"] == "cnn_brabec2023")
                   & (baseline["target"] == "MD")]["r2"].iloc[0]
    row = next(line for line in report.splitlines() if line.startswith("| sample 1 *")
               and line.count("|") == 8)
    assert f"{cnn:.3f}" in row


def test_predictions_are_reused_when_the_model_hash_matches(setup, monkeypatch):
    out = setup["out"]
    before = pd.read_parquet(out / "predictions" / "b" / "9.parquet")
    real_predict, calls = dataset.predict, []

    def counting_predict(model, frame, **kwargs):
        calls.append(sorted(frame["sample"].unique()))
        return real_predict(model, frame, **kwargs)

    monkeypatch.setattr(dataset, "predict", counting_predict)
    # a file stamped with another model's hash is recomputed, the others are reused
    stale = out / "predictions" / "b" / "9.parquet"
    table = pq.read_table(stale)
    stamp = json.loads(table.schema.metadata[prediction.CACHE_KEY])
    stamp["model_sha256"] = "0" * 64
    pq.write_table(table.replace_schema_metadata({prediction.CACHE_KEY: json.dumps(stamp).encode()}), stale)
    result = ev.evaluate([f"a={setup['model']}", f"b={setup['model']}"], setup["data"], str(out),
                         overwrite=True, progress=False)
    assert calls == [["9"]]
    assert sum(result["cached"].values()) == 9 and not result["cached"][("b", "9")]
    after = pd.read_parquet(out / "predictions" / "b" / "9.parquet")
    pd.testing.assert_frame_equal(before, after)
    assert json.loads(pq.read_table(stale).schema.metadata[prediction.CACHE_KEY])["model_sha256"] != "0" * 64


def test_predictions_are_recomputed_when_the_patches_change(setup, tmp_path):
    """Sample 7 ingested again with other pixels (same voxels; its records move in the shard): its
    stamped predictions no longer match its patches, so evaluate predicts it again; the rest are reused."""
    out = tmp_path / "out"
    shutil.copytree(setup["out"], out)
    again = _extra_sample(tmp_path / "s7", "7", 12, seed=17, MD=1.25)
    data = [again if Path(uri).name == "s7" else uri for uri in setup["data"]]
    before = pd.read_parquet(out / ev.PREDICTIONS_DIR / "a" / "7.parquet")
    result = ev.evaluate([f"a={setup['model']}", f"b={setup['model']}"], [str(uri) for uri in data], str(out),
                         baseline_summary="", overwrite=True, progress=False)
    assert {key for key, n in result["predicted_here"].items() if n} == {("a", "7"), ("b", "7")}
    after = pd.read_parquet(out / ev.PREDICTIONS_DIR / "a" / "7.parquet")
    assert len(after) == len(before) and not np.allclose(after["MD_predicted"], before["MD_predicted"])


def _stamp(path) -> dict:
    return json.loads(pq.read_table(path).schema.metadata[prediction.CACHE_KEY])


def test_predict_step_files_give_the_same_evaluation_without_loading_a_model(setup, tmp_path):
    from histoxai.components.predict.split import predict_split

    folders = {name: str(tmp_path / "predictions" / name) for name in ("a", "b")}
    for name, folder in folders.items():
        info = predict_split(str(setup["model"]), setup["data"], folder, name=name, progress=False)
        assert info["samples"] == ["1", "2", "7", "8", "9"] and info["reused"] == []
        assert info["targets"] == ["MD", "CC"] and info["n"] == sum(
            len(pd.read_parquet(f)) for f in Path(folder).glob("*.parquet"))
    for sample in ("1", "8", "9"):  # the very file evaluate writes, stamp included
        written = setup["out"] / ev.PREDICTIONS_DIR / "a" / f"{sample}.parquet"
        given = Path(folders["a"]) / f"{sample}.parquet"
        pd.testing.assert_frame_equal(pd.read_parquet(given), pd.read_parquet(written))
        assert _stamp(given) == _stamp(written)
    models = [f"a={setup['model']}", f"b={setup['model']}"]
    out = tmp_path / "out"
    result = ev.evaluate(models, setup["data"], str(out), baseline_summary="", predictions=folders,
                         progress=False)
    assert all(result["cached"].values()) and len(result["cached"]) == 2 * 5
    assert set(result["predicted_here"].values()) == {0}
    assert not any(m.loaded for m in result["models"])  # scored without loading a model
    pd.testing.assert_frame_equal(_table(out), _table(setup["out"]), check_exact=True)
    assert json.loads((out / artifacts.EVALUATION_INFO).read_text())["predicted_here"] == {"a": 0, "b": 0}
    # a retried predict task reuses its earlier attempt's files
    again = predict_split(str(setup["model"]), setup["data"], folders["a"], name="a", overwrite=True,
                          progress=False)
    assert again["reused"] == again["samples"]
    # a file with another stamp is not used: evaluate predicts that sample itself
    stale = Path(folders["b"]) / "9.parquet"
    table = pq.read_table(stale)
    stamp = {**_stamp(stale), "patch_fingerprint": "0" * 64}
    pq.write_table(table.replace_schema_metadata({prediction.CACHE_KEY: json.dumps(stamp).encode()}), stale)
    result = ev.evaluate(models, setup["data"], str(tmp_path / "out2"), baseline_summary="",
                         predictions=folders, progress=False)
    assert [k for k, n in result["predicted_here"].items() if n] == [("b", "9")]
    assert result["predicted_here"][("b", "9")] == 24
    pd.testing.assert_frame_equal(_table(tmp_path / "out2"), _table(setup["out"]), check_exact=True)


def test_predict_step_without_a_champion_and_the_predictions_option(setup, tmp_path, capsys):
    from histoxai.components.predict.split import predict_split

    none = tmp_path / "no_champion"
    none.mkdir()
    (none / artifacts.CHAMPION_INFO).write_text(json.dumps({"registry": "r", "name": "m", "version": None}))
    info = predict_split(str(none), setup["data"][0], str(tmp_path / "pc"), name="a_champion", progress=False)
    assert info["model_sha256"] is None and info["samples"] == []
    assert [f.name for f in (tmp_path / "pc").iterdir()] == [prediction.PREDICTIONS_INFO]
    model = f"a={setup['model']}"
    result = ev.evaluate([model], setup["data"][3:], str(tmp_path / "o1"), baseline_summary="",
                         champions={"a": str(none)}, predictions={"a_champion": str(tmp_path / "pc")},
                         progress=False)
    assert [m.name for m in result["models"]] == ["a"] and result["comparisons"] == {}
    with pytest.raises(InputError, match=r"--predictions c=.*: no model named 'c'; expected one of a, a_ch"):
        ev.evaluate([model], setup["data"][3:], str(tmp_path / "o2"), baseline_summary="",
                    champions={"a": str(none)}, predictions={"c": str(tmp_path / "pc")}, progress=False)
    folder = tmp_path / "pa"
    predict_split(str(setup["model"]), setup["data"][3], str(folder), name="a", progress=False)
    args = ["evaluate", "--model", model, "--data", setup["data"][3], "--summary", "",
            "--out", str(tmp_path / "o3")]
    assert main([*args, "--predictions", f"a={folder}"]) == 0
    printed = capsys.readouterr().out
    assert "predictions reused for 1 of 1 model x sample pairs, 0 patches predicted here" in printed
    assert main([*args, "--predictions", f"a={tmp_path / 'nothing'}"]) == 2
    assert "--predictions a=" in capsys.readouterr().err


def test_gcs_model_data_and_output(setup, gcs_bucket, monkeypatch):
    model = storage.join(gcs_bucket, "models", "mdcc")
    storage.publish_dir(setup["model"], model)
    held = storage.join(gcs_bucket, "ingest", "9")
    storage.publish_dir(Path(setup["data"][3]), held)
    out = storage.join(gcs_bucket, "evaluate")
    result = ev.evaluate([model], [held], out, progress=False)
    assert [m.name for m in result["models"]] == ["mdcc"]
    files = {f[len(out) + 1:] for f in storage.list_files(out)}
    assert {"evaluation.parquet", "evaluation.json", "report.md", "report.html",
            "predictions/mdcc/9.parquet", "maps/mdcc/9/MD.png", "maps/mdcc/9/CC.npz"} <= files
    assert _table(out)["group"].tolist() == ["9", "9"]  # held-out only: no pooled split rows
    with np.load(io.BytesIO(storage.read_bytes(storage.join(out, "maps/mdcc/9/MD.npz")))) as arrays:
        assert arrays["measured"].shape == HELD_GRID  # ingest.json read from the bucket
    monkeypatch.setattr(dataset, "predict", lambda *a, **k: pytest.fail("cached predictions not reused"))
    again = ev.evaluate([model], [held], out, overwrite=True, progress=False)
    assert all(again["cached"].values())


def test_bad_inputs_fail_with_one_clear_line(setup, tmp_path, capsys):
    no_model = tmp_path / "no_model"
    shutil.copytree(setup["model"], no_model)
    (no_model / "model.keras").unlink()
    with pytest.raises(InputError, match=r"no_model: no model.keras; expected a finished training"):
        ev.evaluate([str(no_model)], setup["data"][:1], str(tmp_path / "o1"), progress=False)
    frame = read_manifest(setup["data"][0]).drop(columns=["CC", "shard_uri"])
    write_manifest(frame, tmp_path / "no_cc.parquet")
    with pytest.raises(InputError, match=r"targets of model model\): no column 'CC'"):
        ev.evaluate([str(setup["model"])], [str(tmp_path / "no_cc.parquet")], str(tmp_path / "o2"),
                    progress=False)
    write_manifest(frame.iloc[:0], tmp_path / "empty.parquet")
    args = ["evaluate", "--model", str(setup["model"]), "--data", str(tmp_path / "empty.parquet"),
            "--out", str(tmp_path / "o3")]
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "empty.parquet: no patches" in err
    assert main(args[:4] + [setup["data"][0], "--data", setup["data"][0]] + args[5:]) == 2
    assert "sample '1' is in both" in capsys.readouterr().err
    assert main(setup["args"]) == 2  # an existing OUT is kept unless --overwrite
    assert "--overwrite" in capsys.readouterr().err
    assert not any((tmp_path / o).exists() for o in ("o1", "o2", "o3"))


def test_kfp_component_runs_locally(setup, tmp_path, shared_task_server):
    from kfp import dsl, local

    from histoxai.components.evaluate.component import evaluate_models
    from histoxai.pipelines.task_fork import forked_tasks

    local.init(runner=local.SubprocessRunner(use_venv=False), pipeline_root=str(tmp_path / "root"))

    @dsl.pipeline
    def evaluate_only():
        split = dsl.importer(artifact_uri=setup["data"][0], artifact_class=dsl.Dataset)
        model = dsl.importer(artifact_uri=str(setup["model"]), artifact_class=dsl.Model)
        evaluate_models(split=split.output, multitask_model=model.output, baseline_summary="",
                        baseline_repeats=1, seed=0)

    with forked_tasks(shared_task_server):
        evaluate_only()
    task_dir = next((tmp_path / "root").glob("*/evaluate-models"))
    logged = json.loads((task_dir / "executor_output.json").read_text())["artifacts"]["metrics"]
    logged = logged["artifacts"][0]["metadata"]
    table = _table(task_dir / "evaluation").set_index(["target", "group"])
    assert logged["r2_multitask_CC_test"] == pytest.approx(table.loc[("CC", "test"), "r2"])
    assert logged["r2_multitask_MD_sample_1"] == pytest.approx(table.loc[("MD", "1"), "r2"])
    assert "Table 4.1" in (task_dir / "report_html").read_text()
    assert (task_dir / "evaluation" / "predictions" / "multitask" / "2.parquet").exists()


def test_report_plots_learning_curves_and_measured_vs_predicted(setup):
    import base64

    from histoxai import plots

    out = setup["out"]
    markdown, page = (out / artifacts.REPORT_MARKDOWN).read_text(), (out / artifacts.REPORT_HTML).read_text()
    for model in ("a", "b"):
        curves = out / "plots" / model / "learning-curves.png"
        assert Image.open(curves).size == (1000, 400)
        assert curves.read_bytes() == plots.learning_curves(
            pd.read_csv(setup["model"] / artifacts.TRAIN_HISTORY), f"model {model}: learning curves")
        assert f"](plots/{model}/learning-curves.png)" in markdown
        for target in ("MD", "CC"):
            scatter = (out / "plots" / model / f"{target}.png").read_bytes()
            assert Image.open(io.BytesIO(scatter)).size == (550, 500)
            caption = f"model {model}, {target}: measured vs predicted"
            assert f"![{caption}](plots/{model}/{target}.png)" in markdown
            assert f"data:image/png;base64,{base64.b64encode(scatter).decode()}" in page  # one-file HTML
    # the scatter shows the test patches of samples 1 and 2 and every patch of 7, 8, 9 with a measured MD
    folder = out / ev.PREDICTIONS_DIR / "a"
    predictions = pd.concat([pd.read_parquet(p) for p in sorted(folder.glob("*.parquet"))], ignore_index=True)
    shown = plots.shown_patches(predictions, ["1", "2"])
    expected = predictions[(predictions["split"] == "test") | predictions["sample"].isin(["7", "8", "9"])]
    assert len(shown) == len(expected) and set(shown["points"]) == {
        "sample 1 (test set)", "sample 2 (test set)", "sample 7 (held out)", "sample 8 (held out)",
        "sample 9 (held out)"}
    axes = plots.scatter_figure(shown, "MD", "MD", by="points").axes[0]
    assert sum(len(c.get_offsets()) for c in axes.collections) == len(expected) - 3  # 3 MD missing in 9
    assert (out / "plots" / "a" / "MD.png").read_bytes() == plots.measured_vs_predicted(
        shown, "MD", "model a: MD, test set and held-out samples", by="points")
