"""`histoxai predict`: maps from histology alone, through the sample-folder and whole-slide readers.

One phantom sample (16 x 16 voxels of 16 px) serves as a sample folder, as a copy without MR.mat and
as a pyramidal JPEG-tiled TIFF with its pixel size (read by OpenSlide); a tiny random model of 32 px
input predicts MD and FA. The sample folder's predictions must equal evaluate's (dataset.predict on
the ingested patches) on every voxel ingestion keeps.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import tifffile

from histoxai import dataset, layout
from histoxai.cli import main
from histoxai.config import from_dict
from histoxai.errors import InputError
from histoxai.manifest import read_manifest
from histoxai.matfile import open_mat
from histoxai.slides import open_slide
from histoxai.tissue import detect_tissue, voxel_fractions

PX, GRID, PATCH = 16, 16, 32
MPP = 200.0 / PX  # the phantom's voxels are 200 µm


def write_pyramid(path: Path, image: np.ndarray, mpp: float | None, levels: int = 3) -> Path:
    """A generic pyramidal TIFF as OpenSlide reads it: successive JPEG-tiled pages, halving each time."""
    with tifffile.TiffWriter(path) as tif:
        for k in range(levels):
            options = ({"resolution": (1e4 / (mpp * 2**k),) * 2, "resolutionunit": "CENTIMETER"}
                       if mpp else {})
            tif.write(image[:: 2**k, :: 2**k], tile=(64, 64), compression="jpeg", photometric="rgb",
                      subfiletype=0 if k == 0 else 1, metadata=None, **options)
    return path


def model_folder(folder: Path, channels: int = 3) -> Path:
    from histoxai import model as models

    config = from_dict({"targets": ["MD", "FA"], "backbone": "tiny", "weights": None, "image_size": PATCH,
                        "dense_units": 8, "feature_units": 4, "seed": 3}, "test")
    folder.mkdir(parents=True)
    if channels == 3:
        net = models.build_model(config, target_means={"MD": 1.0, "FA": 0.3})
    else:
        import keras

        inputs = keras.Input((PATCH, PATCH, channels))
        pooled = keras.layers.GlobalAveragePooling2D()(inputs)
        net = keras.Model(inputs, {t: keras.layers.Dense(1, name=t)(pooled) for t in ("MD", "FA")})
    net.save(folder / "model.keras")
    (folder / "config.yaml").write_text(config.to_yaml())
    return folder


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    from histoxai.components.ingest.ingest import ingest_sample
    from histoxai.phantom import render_phantom

    root = tmp_path_factory.mktemp("predict")
    (sample,) = render_phantom(root / "phantom", [6], pixels_per_voxel=PX, n_max=8, crop=(GRID, GRID), seed=1)
    ingest_sample(sample, str(root / "ingest"), patch_size=PATCH, erosion=0)
    with open_mat(Path(sample) / layout.HE_MAT) as mat:
        he = mat.read("HE")
    with open_mat(Path(sample) / layout.HE_MASK_MAT) as mat:
        mask = mat.read("HE_mask")
    no_mr = root / "no_mr" / "6"
    shutil.copytree(sample, no_mr)
    (no_mr / layout.MR_MAT).unlink()
    return {"root": root, "sample": sample, "ingest": root / "ingest", "he": he, "mask": mask, "no_mr": no_mr,
            "tiff": write_pyramid(root / "slide.tif", he, MPP), "model": model_folder(root / "model")}


def _predict(setup, slides, out, *extra) -> int:
    return main(["predict", *map(str, slides), "--model", str(setup["model"]), "--out", str(out), *extra])


def _map(out: Path, slide: str, target: str) -> np.ndarray:
    return np.load(out / slide / f"{target}.npz")["prediction"]


def test_pyramidal_tiff_reads_through_openslide(setup):
    with open_slide(str(setup["tiff"])) as slide:
        assert slide.kind == "whole-slide image (generic-tiff)"
        assert slide.size == setup["he"].shape[:2] and slide.mpp == (MPP, MPP)
        band = slide.read_band(32, 48)
        assert band.shape == (16, GRID * PX, 3) and band.dtype == np.uint8
        assert np.abs(band.astype(float) - setup["he"][32:48]).mean() < 4  # JPEG tiles: lossy
        image, scale = slide.low_resolution(4.0)  # level 2 (downsample 4) of three
        assert image.shape == (64, 64, 3) and scale == (4.0, 4.0)
        assert slide.grid(200.0).shape == (GRID, GRID) and slide.grid(200.0).block == (PX, PX)


def test_sample_folder_predictions_equal_evaluate(setup):
    from histoxai.model import load_model

    out = setup["root"] / "out-sample"
    assert _predict(setup, [setup["sample"]], out) == 0
    frame = read_manifest(setup["ingest"])
    expected = dataset.predict(load_model(str(setup["model"] / "model.keras")), frame, batch_size=16)
    for target in ("MD", "FA"):
        values = _map(out, "6", target)
        assert values.shape == (GRID, GRID) and values.dtype == np.float32
        got = values[frame["row"], frame["col"]]
        np.testing.assert_allclose(got, expected[target].to_numpy(), atol=1e-5, rtol=0)
        assert np.isnan(values).sum() > 0  # voxels outside HE_mask stay NaN
        painted = tifffile.imread(out / "6" / f"{target}.tif")
        assert painted.shape == setup["he"].shape[:2]
        np.testing.assert_array_equal(painted[PX // 2:: PX, PX // 2:: PX], values)
    table = pd.read_parquet(out / "6" / "predictions.parquet")
    assert len(table) == np.isfinite(_map(out, "6", "MD")).sum()
    assert (table["x"] == table["col"] * PX).all() and (table["y"] == table["row"] * PX).all()
    info = json.loads((out / "6" / "prediction.json").read_text())
    assert info["grid_source"] == "MR.mat" and info["tissue_source"] == "HE_mask.mat"
    for name in ("MD.png", "FA.png", "tissue.png", "summary.md", "summary.html"):
        assert (out / "6" / name).stat().st_size > 0
    assert "MD.png" in (out / "6" / "summary.md").read_text()
    assert json.loads((out / "prediction.json").read_text())["model"]["targets"] == ["MD", "FA"]


def test_tiff_gives_the_grid_and_agrees_loosely(setup):
    out = setup["root"] / "out-both"
    assert _predict(setup, [setup["sample"], setup["tiff"]], out, "--batch-size", "7") == 0
    exact, jpeg = _map(out, "6", "MD"), _map(out, "slide", "MD")
    assert jpeg.shape == (GRID, GRID)
    both = np.isfinite(exact) & np.isfinite(jpeg)
    assert both.sum() > 50
    spread = np.ptp(exact[both])
    assert np.abs(exact[both] - jpeg[both]).mean() < 0.25 * spread
    assert np.corrcoef(exact[both], jpeg[both])[0, 1] > 0.8
    info = json.loads((out / "slide" / "prediction.json").read_text())
    assert info["tissue_source"] == "detector" and info["mpp_source"] == "slide metadata"


def test_detector_leaves_out_the_gaps(setup):
    """Per voxel: tissue by the detector (>= half the block) against HE_mask (>= half the block)."""
    with open_slide(str(setup["tiff"])) as slide:
        image, scale = slide.low_resolution(2.0)
    detected = voxel_fractions(detect_tissue(image), scale, (GRID, GRID), (PX, PX)) >= 0.5
    truth = setup["mask"].reshape(GRID, PX, GRID, PX).mean(axis=(1, 3)) >= 0.5
    assert 0.1 < truth.mean() < 0.9  # the phantom has tissue and gaps to tell apart
    assert (detected == truth).mean() >= 0.95
    assert not detect_tissue(np.full((64, 64, 3), 240, np.uint8)).any()  # empty glass: no tissue


def test_sample_without_mr_needs_mpp_then_predicts(setup, capsys):
    out = setup["root"] / "out-no-mr"
    assert _predict(setup, [setup["no_mr"]], out) == 2
    assert "no microns-per-pixel metadata; pass --mpp" in capsys.readouterr().err
    assert not out.exists()
    assert _predict(setup, [setup["no_mr"]], out, "--mpp", str(MPP)) == 0
    info = json.loads((out / "6" / "prediction.json").read_text())
    assert info["grid"] == [GRID, GRID] and info["grid_source"] == "voxel size"
    reference = setup["root"] / "out-sample"
    if reference.exists():  # same blocks, same mask: the same predictions as with MR.mat
        np.testing.assert_array_equal(_map(out, "6", "MD"), _map(reference, "6", "MD"))


def _corrupt_tile(source: Path, target: Path) -> Path:
    shutil.copy(source, target)
    with tifffile.TiffFile(target) as tif:
        offset = tif.pages[0].dataoffsets[5]
    with open(target, "r+b") as fh:
        fh.seek(offset)
        fh.write(b"\x00" * 64)  # the tile's JPEG markers are gone
    return target


def test_bad_inputs_fail_with_one_line_and_leave_no_output(setup, capsys):
    root = setup["root"] / "bad"
    root.mkdir()
    (root / "notes.svs").write_text("not a slide\n")
    no_mpp = write_pyramid(root / "nompp.tif", setup["he"], None)
    corrupt = _corrupt_tile(setup["tiff"], root / "corrupt.tif")
    four = model_folder(root / "four-channels", channels=4)
    empty = root / "empty-model"
    empty.mkdir()
    cases = [([root / "notes.svs"], [], "not a slide format OpenSlide reads"),
             ([no_mpp], [], "no microns-per-pixel metadata; pass --mpp"),
             ([corrupt], [], "corrupt.tif: cannot read level 0"),
             ([root / "missing.svs"], [], "slide not found"),
             ([setup["tiff"]], ["--model", str(four)], "expected square RGB patches"),
             ([setup["tiff"]], ["--model", str(empty)], "no model.keras"),
             ([setup["tiff"]], ["--model", "registry:mdfa@champion"], "needs --registry")]
    for slides, extra, message in cases:
        out = root / "out"
        assert main(["predict", *map(str, slides), "--model", str(setup["model"]), *extra,
                     "--out", str(out)]) == 2, message
        err = capsys.readouterr().err
        # the progress bar may have started; the error itself is one line
        errors = [line for line in err.replace("\r", "\n").splitlines() if "error:" in line]
        assert len(errors) == 1 and errors[0].startswith("histoxai predict: error: "), err
        assert message in errors[0], err
        assert not out.exists() and not list(root.glob(".out.*"))
    existing = root / "existing"
    existing.mkdir()
    (existing / "keep.txt").write_text("mine")
    assert _predict(setup, [setup["tiff"]], existing) == 2
    assert "--overwrite" in capsys.readouterr().err
    assert (existing / "keep.txt").read_text() == "mine"
    assert _predict(setup, [setup["tiff"]], existing, "--overwrite") == 0
    assert not (existing / "keep.txt").exists() and (existing / "slide" / "MD.tif").exists()


def test_grid_needs_a_slide_larger_than_a_voxel(setup):
    with open_slide(str(setup["tiff"])) as slide, pytest.raises(InputError, match="smaller than one voxel"):
        slide.grid(10_000.0)


def test_a_registry_champion_predicts_like_its_folder(setup, capsys):
    """registry:NAME@champion fetches the version's files and predicts exactly as the folder does."""
    from histoxai.model_registry import SAVED_MODEL_DIR, open_registry

    version = setup["root"] / "version"
    shutil.copytree(setup["model"], version)
    for name in ("metrics.json", "history.csv", "training_patches.parquet"):
        (version / name).write_text("{}")
    (version / SAVED_MODEL_DIR).mkdir()
    (version / SAVED_MODEL_DIR / "saved_model.pb").write_text("")
    registry = str(setup["root"] / "registry")
    open_registry(registry).register("histoxai-multitask", version, labels={}, record={}, promote=True)
    out = setup["root"] / "out-registry"
    code = main(["predict", str(setup["sample"]), "--model", "registry:histoxai-multitask@champion",
                 "--registry", registry, "--out", str(out)])
    assert code == 0, capsys.readouterr().err
    folder = setup["root"] / "out-folder"
    assert _predict(setup, [setup["sample"]], folder) == 0
    np.testing.assert_array_equal(_map(out, "6", "MD"), _map(folder, "6", "MD"))
    code = main(["predict", str(setup["sample"]), "--model", "registry:histoxai-multitask@7",
                 "--registry", registry, "--out", str(setup["root"] / "out-missing")])
    assert code == 2 and "no such version or alias" in capsys.readouterr().err


def test_the_prediction_pipeline_runs_every_slide_of_a_folder(setup, tmp_path, shared_task_server):
    """`histoxai compile --pipeline predict`'s DAG under kfp.local: list the folder's slides (a sample
    folder and a pyramidal TIFF), predict each in its ParallelFor branch, as the CLI does."""
    import yaml
    from kfp import local

    from histoxai.pipelines.pipeline import CompileOptions, compile_package
    from histoxai.pipelines.predict_pipeline import build_predict_pipeline
    from histoxai.pipelines.task_fork import forked_tasks

    package = tmp_path / "predict.yaml"
    inputs = compile_package(str(package), CompileOptions(), pipeline="predict")
    assert {n for n, spec in inputs.items() if not spec.optional} == {"slides_uri", "model"}
    spec = yaml.safe_load(package.read_text())
    images = {name: e["container"]["image"] for name, e in spec["deploymentSpec"]["executors"].items()}
    assert images["exec-predict-slide"].startswith("histoxai-gpu")
    assert images["exec-list-slides"].startswith("histoxai-cpu")

    slides = tmp_path / "slides"
    shutil.copytree(setup["sample"], slides / "6")
    shutil.copy(setup["tiff"], slides / "slide.tif")
    (slides / "notes.txt").write_text("not a slide")
    local.init(runner=local.SubprocessRunner(use_venv=False), pipeline_root=str(tmp_path / "root"),
               raise_on_error=True)
    with forked_tasks(shared_task_server):
        build_predict_pipeline(CompileOptions(retries=0))(slides_uri=str(slides), model=str(setup["model"]))
    infos = sorted((tmp_path / "root").rglob("prediction.json"))
    found = {json.loads(p.read_text())["slides"][0]["id"]: p.parent for p in infos if p.parent.name == "maps"}
    assert set(found) == {"6", "slide"}
    assert _predict(setup, [setup["sample"]], tmp_path / "cli") == 0  # the same as `histoxai predict`
    np.testing.assert_array_equal(_map(found["6"], "6", "MD"), _map(tmp_path / "cli", "6", "MD"))
    assert _map(found["slide"], "slide", "FA").shape == (GRID, GRID)
