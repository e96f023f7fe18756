"""Ingestion against hand-made samples: rules, targets, patches and SA checked by independent computations."""

from __future__ import annotations

import json
import shutil
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from histoxai import cli, layout, manifest, shards, storage
from histoxai.components.ingest import structure
from histoxai.components.ingest.ingest import RULES, ingest_sample
from histoxai.errors import InputError
from histoxai.matfile import open_mat
from tests.samples import SampleArrays, make_sample, write_sample, write_tsv

PATCH = 32


def expected_rules(arrays, erosion: int) -> np.ndarray:
    """Per voxel the first failing rule's name, or 'kept': the rules written out voxel by voxel."""
    rows, cols = arrays.grid
    bh, bw = arrays.block
    out = np.empty((rows, cols), object)

    def in_roi(i, j):
        return 0 <= i < rows and 0 <= j < cols and arrays.roi[i, j] == 1

    for i in range(rows):
        for j in range(cols):
            targets = [arrays.md[i, j], arrays.fa[i, j]]
            if arrays.faip is not None:
                targets.append(arrays.faip[i, j])
            if not in_roi(i, j):
                out[i, j] = "roi"
            elif not all(in_roi(i + di, j + dj) for di, dj in ((-erosion, 0), (erosion, 0), (0, -erosion),
                                                                (0, erosion))):
                out[i, j] = "erosion"
            elif arrays.dhe_mask[i, j] != 1:
                out[i, j] = "dhe_mask"
            elif not arrays.he_mask[i * bh:(i + 1) * bh, j * bw:(j + 1) * bw].all():
                out[i, j] = "he_mask"
            elif any(np.isnan(t) for t in targets):
                out[i, j] = "nan_target"
            else:
                out[i, j] = "kept"
    return out


@pytest.fixture(scope="module")
def arrays():
    return make_sample()


@pytest.fixture(scope="module")
def sample_v73(arrays, tmp_path_factory):
    return write_sample(tmp_path_factory.mktemp("in73") / "sample-a", arrays, mat_format="7.3")


@pytest.fixture(scope="module")
def ingested(sample_v73, tmp_path_factory):
    out = tmp_path_factory.mktemp("out") / "sample-a"
    counts = ingest_sample(str(sample_v73), str(out), patch_size=PATCH, erosion=2, shard_size=25)
    return out, counts, manifest.read_manifest(str(out))


@pytest.mark.parametrize("erosion", [0, 2, 5])
def test_kept_set_and_rule_counts_match_voxel_by_voxel_rules(erosion, tmp_path):
    arrays = make_sample(16, 18, (9, 8), seed=3)  # big enough that the default erosion keeps some voxels
    folder = write_sample(tmp_path / "s", arrays)
    counts = ingest_sample(str(folder), str(tmp_path / "out"), patch_size=PATCH, erosion=erosion)
    expected = expected_rules(arrays, erosion)
    frame = manifest.read_manifest(str(tmp_path / "out"))
    kept = {tuple(v) for v in np.argwhere(expected == "kept")}
    assert set(zip(frame["row"], frame["col"], strict=True)) == kept
    assert counts["dropped"] == {rule: int((expected == rule).sum()) for rule in RULES}
    assert counts["kept"] == len(frame) == int((expected == "kept").sum()) > 0
    assert counts["nan_skipped"] == counts["dropped"]["nan_target"]
    assert sum(counts["dropped"].values()) + counts["kept"] == 16 * 18


def test_targets_and_nuclei_counts_match_independent_values(arrays, ingested):
    _, counts, frame = ingested
    bh, bw = arrays.block
    rows, cols = arrays.grid
    assert list(frame.columns[: len(manifest.COLUMNS)]) == list(manifest.COLUMNS)
    r, c = frame["row"].to_numpy(), frame["col"].to_numpy()
    np.testing.assert_array_equal(frame["MD"], arrays.md[r, c])
    np.testing.assert_array_equal(frame["FA"], arrays.fa[r, c])
    np.testing.assert_array_equal(frame["FAIP"], arrays.faip[r, c])
    counted = np.zeros((rows, cols))
    for x, y in arrays.centroids:
        for i in range(rows):
            for j in range(cols):
                counted[i, j] += (i * bh <= y < (i + 1) * bh) and (j * bw <= x < (j + 1) * bw)
    np.testing.assert_array_equal(frame["CC"], counted[r, c])
    np.testing.assert_allclose(frame["CD"], counted[r, c] / counted.max())
    assert counts["nuclei"] == {"total": len(arrays.centroids), "in_grid": int(counted.sum()),
                                "max_per_voxel": int(counted.max())}
    assert frame["SA"].between(0, 1).all()
    assert (frame["sample"] == "sample-a").all() and (frame["patch_size"] == PATCH).all()


def _resized_block(arrays, row, col):
    bh, bw = arrays.block
    block = arrays.he[row * bh:(row + 1) * bh, col * bw:(col + 1) * bw]
    return np.asarray(Image.fromarray(block).resize((PATCH, PATCH), Image.Resampling.BICUBIC))


@pytest.mark.parametrize("encoding", shards.ENCODINGS)
def test_decoded_patches_equal_resized_blocks(arrays, sample_v73, tmp_path, encoding):
    ingest_sample(str(sample_v73), str(tmp_path / "o"), patch_size=PATCH, erosion=2, encoding=encoding,
                  shard_size=30)
    frame = manifest.read_manifest(str(tmp_path / "o"))
    assert (frame["encoding"] == encoding).all()
    for row in frame.itertuples():
        patch = shards.decode_image(shards.read_record(row.shard_uri, row.offset), encoding, PATCH)
        expected = _resized_block(arrays, row.row, row.col)
        if encoding == "jpeg":
            assert np.abs(patch.astype(int) - expected).mean() < 4
        else:
            np.testing.assert_array_equal(patch, expected)
    # records sit in manifest order: the index-th record of each shard is the manifest's
    for name, group in frame.groupby("shard"):
        payloads = list(shards.iter_records(tmp_path / "o" / name))
        assert list(group["index"]) == list(range(len(payloads)))


def test_v5_and_v73_inputs_give_identical_manifests(arrays, ingested, tmp_path):
    folder = write_sample(tmp_path / "sample-a", arrays, mat_format="5")
    counts = ingest_sample(str(folder), str(tmp_path / "out"), patch_size=PATCH, erosion=2, shard_size=25)
    assert set(counts["mat_versions"].values()) == {"5"}
    v5 = manifest.read_manifest(str(tmp_path / "out")).drop(columns="shard_uri")
    pd.testing.assert_frame_equal(v5, ingested[2].drop(columns="shard_uri"))
    for name in v5["shard"].unique():
        assert (tmp_path / "out" / name).read_bytes() == (ingested[0] / name).read_bytes()


def _original_recipe_sa(he, grid, block):
    """The original MATLAB recipe on whole arrays, full resolution (gradients with edge replication)."""
    from scipy import ndimage, signal

    def fspecial(size, sigma):
        t = np.arange(size) - (size - 1) / 2
        k = np.exp(-(t[:, None] ** 2 + t[None, :] ** 2) / (2 * sigma**2))
        return k / k.sum()

    grey = he.astype(np.float64).mean(axis=2)
    f1, f2 = fspecial(9, 1), fspecial(51, 30)
    fx = np.linspace(-1, 1, 9)[None, :] * f1
    dx = ndimage.convolve(grey, fx, mode="nearest")
    dy = ndimage.convolve(grey, fx.T, mode="nearest")
    m = signal.fftconvolve((grey > 230).astype(float), f2, mode="same") > 0.9
    m = signal.fftconvolve(m.astype(float), f2, mode="same") > 0.1
    m = ~(signal.fftconvolve(m.astype(float), f2, mode="same") > 0.1)
    (rows, cols), (bh, bw) = grid, block
    j = [signal.fftconvolve(p * m, f2, mode="same")[: rows * bh, : cols * bw].reshape(rows, bh, cols, bw)
         .mean(axis=(1, 3)) for p in (dx * dx, dx * dy, dy * dy)]
    return np.sqrt((j[0] - j[2]) ** 2 + 4 * j[1] ** 2) / (j[0] + j[2])


def test_structure_anisotropy_follows_the_original_recipe(arrays, ingested):
    reference = _original_recipe_sa(arrays.he, arrays.grid, arrays.block)
    rng = np.random.default_rng(0)
    stream = structure.StructureStream(arrays.he.shape[:2], arrays.grid, arrays.block, downsample=1,
                                       row_step=1)
    start = 0
    while start < stream.rows_needed:  # uneven bands: streaming must not change the result
        stop = min(arrays.he.shape[0], start + int(rng.integers(1, 40)))
        stream.feed(arrays.he[start:stop])
        start = stop
    np.testing.assert_allclose(stream.finish(), reference, atol=1e-5)
    # ingest runs the 4x coarser variant, most of its work on a pool of threads: the same
    # whatever the band height and with or without the pool, close to the full-resolution recipe,
    # and it varies
    frame = ingested[2]
    coarse = structure.StructureStream(arrays.he.shape[:2], arrays.grid, arrays.block)
    with ThreadPoolExecutor(2) as pool:
        pooled = structure.StructureStream(arrays.he.shape[:2], arrays.grid, arrays.block, pool=pool)
        for start in range(0, arrays.he.shape[0], 23):
            coarse.feed(arrays.he[start:start + 23])
            pooled.feed(arrays.he[start:start + 23])
    np.testing.assert_array_equal(pooled.finish(), coarse.finish())
    np.testing.assert_allclose(frame["SA"], coarse.finish()[frame["row"], frame["col"]], rtol=1e-12)
    diff = np.abs(frame["SA"].to_numpy() - reference[frame["row"], frame["col"]])
    assert np.median(diff) < 0.01 and diff.max() < 0.1
    assert frame["SA"].std() > 0.05


def test_structure_anisotropy_of_a_slide_smaller_than_its_kernels():
    tiny = make_sample(2, 3, (7, 6), (1, 2), seed=4)  # 15 x 20 px against a 51-px smoothing window
    stream = structure.StructureStream(tiny.he.shape[:2], tiny.grid, tiny.block, downsample=1, row_step=1)
    stream.feed(tiny.he)
    reference = _original_recipe_sa(tiny.he, tiny.grid, tiny.block)
    np.testing.assert_allclose(stream.finish(), reference, atol=1e-5)


def test_faip_absent_gives_nan_column_and_is_not_a_rule(tmp_path):
    arrays = make_sample(seed=5, faip=False)
    folder = write_sample(tmp_path / "s", arrays)
    counts = ingest_sample(str(folder), str(tmp_path / "o"), patch_size=PATCH, erosion=2)
    frame = manifest.read_manifest(str(tmp_path / "o"))
    assert frame["FAIP"].isna().all() and not counts["faip_present"]
    expected = expected_rules(arrays, 2)
    assert counts["dropped"]["nan_target"] == int((expected == "nan_target").sum())
    assert counts["kept"] == int((expected == "kept").sum()) > 0


def test_reports_shards_and_cli(arrays, ingested, sample_v73, tmp_path, capsys):
    out, counts, frame = ingested
    assert json.loads((out / "ingest.json").read_text()) == counts
    qc_text = (out / "qc.md").read_text()
    for rule, n in counts["dropped"].items():
        assert f"| {rule} |" in qc_text and f"| {n} |" in qc_text
    thumb = Image.open(out / "qc_thumbnail.png")
    t = thumb.size[0] // arrays.grid[1]
    assert thumb.size == (arrays.grid[1] * t, arrays.grid[0] * t)
    names = sorted(frame["shard"].unique())
    assert names == [f"shards/sample-a-{k:05d}.tfrecord" for k in range(-(-counts["kept"] // 25))]
    assert counts["shards"] == len(names)

    rc = cli.main(["ingest", str(sample_v73), "--out", str(tmp_path / "c"), "--sample-id", "s7",
                   "--patch-size", "16", "--erosion", "2", "--encoding", "raw", "--shard-size", "1000"])
    assert rc == 0 and "s7:" in capsys.readouterr().out
    again = manifest.read_manifest(str(tmp_path / "c"))
    assert (again["sample"] == "s7").all() and list(again["shard"].unique()) == ["shards/s7-00000.tfrecord"]
    assert len(shards.read_record(again["shard_uri"][0], int(again["offset"][0]))) == 16 * 16 * 3
    with pytest.raises(InputError, match="already exists"):
        ingest_sample(str(sample_v73), str(tmp_path / "c"), patch_size=16, erosion=2)
    ingest_sample(str(sample_v73), str(tmp_path / "c"), patch_size=16, erosion=2, overwrite=True)
    assert (manifest.read_manifest(str(tmp_path / "c"))["sample"] == "sample-a").all()


def _rewrite(folder: Path, arrays, **changes) -> None:
    write_sample(folder, arrays.with_(**changes))


def _mr_without_roi(folder: Path, arrays) -> None:
    from histoxai.matfile import MatWriterV73

    with MatWriterV73(folder / layout.MR_MAT) as mat:
        mat.write_struct("MR", {"MD": arrays.md, "FA": arrays.fa})


def _hole_in_every_block(folder: Path, arrays) -> None:
    bh, bw = arrays.block
    mask = arrays.he_mask.copy()
    mask[bh // 2::bh, bw // 2::bw] = False
    _rewrite(folder, arrays, he_mask=mask)


def _truncate(path: Path, size: int) -> None:
    path.write_bytes(path.read_bytes()[:size])


def _tsv(folder: Path, text: str) -> None:
    (folder / layout.NUCLEI_TSV).write_text(text)


BAD_INPUTS = {
    # case: (break the sample folder, erosion, words the one-line message must contain)
    "missing MR.mat": (lambda f, a: (f / layout.MR_MAT).unlink(), 2, [layout.MR_MAT, "not found"]),
    "missing HE.mat": (lambda f, a: (f / layout.HE_MAT).unlink(), 2, [layout.HE_MAT, "not found"]),
    "missing HE_mask.mat": (lambda f, a: (f / layout.HE_MASK_MAT).unlink(), 2,
                            [layout.HE_MASK_MAT, "not found"]),
    "missing TSV": (lambda f, a: (f / layout.NUCLEI_TSV).unlink(), 2, [layout.NUCLEI_TSV, "not found"]),
    "HE smaller than grid": (lambda f, a: _rewrite(f, a, he=a.he[:8, :9], he_mask=a.he_mask[:8, :9]), 2,
                             ["HE.mat", "HE is 8 x 9 px", "smaller than the MR grid"]),
    "HE not uint8": (lambda f, a: _rewrite(f, a, he=a.he.astype(np.float64)), 2, ["HE.mat", "HE is float64"]),
    "HE_mask shape": (lambda f, a: _rewrite(f, a, he_mask=a.he_mask[:-1]), 2,
                      ["HE_mask.mat", "HE_mask has shape"]),
    "dHE_mask shape": (lambda f, a: _rewrite(f, a, dhe_mask=a.dhe_mask[:, :-1]), 2,
                       ["HE_mask.mat", "dHE_mask has shape", "MR grid"]),
    "MR map shape": (lambda f, a: _rewrite(f, a, fa=a.fa[:-1]), 2, ["MR.mat", "MR.FA has shape"]),
    "MR field missing": (_mr_without_roi, 2, ["MR.mat", "lacks field(s) ROI"]),
    "MD all NaN": (lambda f, a: _rewrite(f, a, md=np.full(a.grid, np.nan)), 2, ["MR.mat", "MR.MD is NaN"]),
    "targets NaN where kept": (lambda f, a: _rewrite(f, a, fa=np.where(a.roi == 1, np.nan, a.fa)), 2,
                               ["MR.mat: MR.MD, MR.FA: a target is NaN at all"]),
    "empty ROI": (lambda f, a: _rewrite(f, a, roi=np.zeros(a.grid)), 2, ["MR.mat", "MR.ROI", "empty ROI"]),
    "erosion leaves nothing": (lambda f, a: None, 7, ["MR.mat", "eroded by 7", "erosion rule removed"]),
    "dHE_mask leaves nothing": (lambda f, a: _rewrite(f, a, dhe_mask=np.zeros(a.grid)), 2,
                                ["HE_mask.mat", "dHE_mask", "no patch left"]),
    "HE_mask leaves nothing": (_hole_in_every_block, 2, ["HE_mask.mat", "HE_mask", "no patch left"]),
    "TSV without centroids": (lambda f, a: _tsv(f, "Name\tCentroid X µm\tCentroid Y µm\nn1\t1.0\t2.0\n"), 2,
                              ["measurements.tsv", "Centroid_X_px", "missing"]),
    "TSV non-numeric": (lambda f, a: _tsv(f, "Centroid_X_px\tCentroid_Y_px\n1.0\t2.0\nabc\t3\n"), 2,
                        ["measurements.tsv", "non-numeric", "line 3"]),
    "random bytes MAT": (lambda f, a: (f / layout.HE_MASK_MAT).write_bytes(np.random.bytes(5000)), 2,
                         ["HE_mask.mat", "not a readable MATLAB"]),
    "truncated v7.3 MAT": (lambda f, a: _truncate(f / layout.HE_MAT, 6000), 2, ["HE.mat"]),
    "MD beyond free water": (lambda f, a: _rewrite(f, a, md=np.where(a.roi == 1, 1852.0, a.md)), 2,
                             ["MR.mat", "MR.MD is 1852", "expected 0 to 4 um^2/ms"]),
    "FA above 1": (lambda f, a: _rewrite(f, a, fa=np.where(a.roi == 1, 1.5, a.fa)), 2,
                   ["MR.mat", "MR.FA is 1.5", "expected 0 to 1"]),
    "negative MD": (lambda f, a: _rewrite(f, a, md=np.where(a.roi == 1, -0.2, a.md)), 2,
                    ["MR.mat", "MR.MD is -0.2"]),
}


@pytest.mark.parametrize("case", list(BAD_INPUTS))
def test_bad_input_is_one_clear_error_and_writes_nothing(case, arrays, tmp_path, capsys):
    breaker, erosion, words = BAD_INPUTS[case]
    folder = write_sample(tmp_path / "s", arrays)
    breaker(folder, arrays)
    out = tmp_path / "out"
    rc = cli.main(["ingest", str(folder), "--out", str(out), "--patch-size", "16", "--erosion", str(erosion)])
    err = capsys.readouterr().err.strip().splitlines()[-1]  # the progress bar may come before it
    assert rc == 2
    assert err.startswith("histoxai ingest: error: ")
    for word in words:
        assert word in err, f"{word!r} not in {err!r}"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s"]  # no output, no staging leftovers


def test_gcs_input_and_output(gcs_bucket, sample_v73, ingested, arrays):
    source = storage.join(gcs_bucket, "samples", "sample-a")
    for path in sorted(sample_v73.rglob("*")):
        if path.is_file():
            storage.upload_file(path, storage.join(source, path.relative_to(sample_v73).as_posix()))
    out = storage.join(gcs_bucket, "runs", "ingest", "sample-a")
    counts = ingest_sample(source, out, patch_size=PATCH, erosion=2, shard_size=25)
    assert counts["kept"] == ingested[1]["kept"] and counts["files"][layout.HE_MAT].startswith("gs://")
    remote = manifest.read_manifest(out)
    local = ingested[2]
    pd.testing.assert_frame_equal(remote.drop(columns="shard_uri"), local.drop(columns="shard_uri"))
    row = remote.iloc[-1]
    assert row["shard_uri"].startswith("gs://")
    assert shards.read_record(row["shard_uri"], int(row["offset"])) == shards.read_record(
        local.iloc[-1]["shard_uri"], int(local.iloc[-1]["offset"]))
    for name in ("qc.md", "qc_thumbnail.png", "ingest.json"):
        assert storage.exists(storage.join(out, name))

    # a broken remote file is named by its gs:// URI, not by the temporary local copy; nothing is written
    storage.write_bytes(storage.join(source, layout.HE_MASK_MAT), b"not a MAT file" * 100)
    failed = storage.join(gcs_bucket, "runs", "ingest", "broken")
    with pytest.raises(InputError, match=r"^gs://.*/HE_mask\.mat: not a readable MATLAB") as info:
        ingest_sample(source, failed, patch_size=PATCH, erosion=2)
    assert "histoxai-in" not in str(info.value)
    assert storage.list_files(failed) == []


def test_tsv_with_only_centroid_columns_is_enough(arrays, tmp_path):
    folder = write_sample(tmp_path / "s", arrays)
    write_tsv(folder / layout.NUCLEI_TSV, arrays.centroids, extra_columns=False)
    counts = ingest_sample(str(folder), str(tmp_path / "o"), patch_size=PATCH, erosion=2)
    assert counts["nuclei"]["total"] == len(arrays.centroids)
    shutil.rmtree(tmp_path / "o")


def _arrays_from_folder(folder: Path) -> SampleArrays:
    """Read a sample folder back whole (fine for a small one), for the voxel-by-voxel rules."""
    with open_mat(folder / layout.MR_MAT) as mr, open_mat(folder / layout.HE_MAT) as he, \
            open_mat(folder / layout.HE_MASK_MAT) as mask:
        maps = mr.read_struct("MR")
        table = pd.read_csv(folder / layout.NUCLEI_TSV, sep="\t")
        return SampleArrays(md=maps["MD"], fa=maps["FA"], faip=maps.get("FAIP"), roi=maps["ROI"],
                            dhe_mask=mask.read("dHE_mask"), he=he.read("HE"),
                            he_mask=mask.read("HE_mask") == 1,
                            centroids=table[[layout.CENTROID_X, layout.CENTROID_Y]].to_numpy())


def test_phantom_sample_nuclei_counts_and_rules(tmp_path):
    from scipy.stats import spearmanr

    from histoxai.phantom import render_phantom
    from histoxai.phantom.summary import load_summary

    grid = (20, 24)
    (uri,) = render_phantom(tmp_path / "phantom", [6], pixels_per_voxel=16, n_max=8, crop=grid, seed=1)
    counts = ingest_sample(uri, str(tmp_path / "out"), patch_size=PATCH, erosion=2)
    frame = manifest.read_manifest(str(tmp_path / "out"))
    r, c = frame["row"].to_numpy(), frame["col"].to_numpy()

    nuclei = pd.read_parquet(Path(uri) / layout.TRUTH_NUCLEI)
    truth = np.zeros(grid)
    np.add.at(truth, (nuclei["voxel_row"], nuclei["voxel_col"]), 1)
    np.testing.assert_array_equal(frame["CC"], truth[r, c])
    np.testing.assert_allclose(frame["CD"], truth[r, c] / truth.max())
    assert counts["nuclei"] == {"total": len(nuclei), "in_grid": len(nuclei),
                                "max_per_voxel": int(truth.max())}

    expected = expected_rules(_arrays_from_folder(Path(uri)), 2)
    assert counts["dropped"] == {rule: int((expected == rule).sum()) for rule in RULES}
    assert set(zip(r, c, strict=True)) == {tuple(v) for v in np.argwhere(expected == "kept")}
    # the phantom orients its nuclei after the real sample's SA: ours must follow it, if loosely
    real_sa = load_summary().sample(6).cropped(*grid).dsa[r, c]
    assert spearmanr(frame["SA"], real_sa)[0] > 0.3


def test_a_sample_id_too_long_for_files_and_runs_is_one_clear_error(sample_v73, tmp_path, capsys):
    rc = cli.main(["ingest", str(sample_v73), "--out", str(tmp_path / "out"), "--sample-id", "s" * 300])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and len(err.splitlines()) == 1 and "(300 characters)" in err and "1 to 64" in err, err
    assert not (tmp_path / "out").exists()
