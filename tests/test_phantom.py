"""Tests of the digital phantom: layout, determinism, counts, orientation, derived targets, formats."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import h5py
import numpy as np
import pandas as pd
import pytest

from histoxai import layout, storage
from histoxai.errors import InputError
from histoxai.matfile import open_mat
from histoxai.phantom import cli
from histoxai.phantom.summary import load_summary
from histoxai.phantom.writer import render_phantom

SAMPLE, CROP, P, N_MAX = 6, (12, 14), 32, 30  # sample 6's top-left corner holds tissue and high-SA voxels


def _render(out: Path, **options) -> Path:
    kwargs = {"pixels_per_voxel": P, "n_max": N_MAX, "crop": CROP, "seed": 3, **options}
    (uri,) = render_phantom(out, [SAMPLE], **kwargs)
    return Path(uri)


@pytest.fixture(scope="module")
def maps():
    return load_summary().sample(SAMPLE).cropped(*CROP)


@pytest.fixture(scope="module")
def rendered(tmp_path_factory) -> Path:
    return _render(tmp_path_factory.mktemp("phantom") / "out")


@pytest.fixture(scope="module")
def truth(rendered):
    with h5py.File(rendered / layout.TRUTH_LABELS, "r") as f:
        labels = f["labels"][()]
    return labels, pd.read_parquet(rendered / layout.TRUTH_NUCLEI)


def _expected_counts(maps) -> np.ndarray:
    tissue = (maps.mr["MD"] > 0) | (maps.mr["ROI"] > 0)
    return np.where(tissue, np.rint(np.nan_to_num(maps.cd) * N_MAX), 0).astype(int)


def _files(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_same_options_give_byte_identical_files(rendered, tmp_path):
    again = _render(tmp_path / "again")
    first, second = _files(rendered), _files(again)
    assert sorted(first) == sorted(second)
    assert [name for name in first if first[name] != second[name]] == []
    other_seed = _files(_render(tmp_path / "seed4", seed=4))
    assert other_seed[layout.HE_MAT] != first[layout.HE_MAT]


def test_samples_rendered_in_parallel_processes_are_the_samples_rendered_one_by_one(tmp_path):
    options = {"pixels_per_voxel": 16, "n_max": 8, "crop": "4x5", "seed": 1}
    alone = render_phantom(tmp_path / "alone", "3,6", **options)
    together = render_phantom(tmp_path / "together", "3,6", workers=2, **options)
    for one, other in zip(alone, together, strict=True):
        assert _files(Path(one)) == _files(Path(other))
    assert len(alone) == 2 and Path(together[1]).name == "6"


def test_layout_shapes_and_pixels(rendered, maps, truth):
    rows, cols = CROP
    with open_mat(rendered / layout.HE_MAT) as mat:
        assert mat.version == "7.3"
        he = mat.read("HE")
    assert he.dtype == np.uint8 and he.shape == (rows * P, cols * P, 3)
    with open_mat(rendered / layout.HE_MASK_MAT) as mat:
        mask, coarse = mat.read("HE_mask").astype(bool), mat.read("dHE_mask").astype(bool)
    assert mask.shape == he.shape[:2] and coarse.shape == (rows, cols)
    np.testing.assert_array_equal(coarse, mask.reshape(rows, P, cols, P).mean(axis=(1, 3)) > 0.5)
    np.testing.assert_array_equal(coarse, maps.tissue)  # every tissue voxel's centre is tissue
    with open_mat(rendered / layout.MR_MAT) as mat:
        mr = mat.read_struct("MR")
    assert set(mr) == {"MD", "FA", "FAIP", "ROI", "J_11", "J_12", "J_22"}
    for field, value in mr.items():
        assert value.dtype == np.float64
        np.testing.assert_array_equal(value, maps.mr[field])
    labels, _ = truth
    with h5py.File(rendered / layout.TRUTH_LABELS, "r") as f:
        assert f["labels"].dtype == np.uint32 and f["labels"].compression == "gzip" and f["labels"].chunks
    assert labels.shape == he.shape[:2]
    # white background, pink stroma, purple nuclei (blue above green), some holes inside tissue
    grey = he.mean(axis=2)
    assert grey[~mask].mean() > 235
    stroma = mask & (labels == 0) & (grey < 225)
    assert he[stroma][:, 0].mean() > he[stroma][:, 1].mean() + 30
    nuclei = he[labels > 0].astype(float)
    assert nuclei[:, 2].mean() > nuclei[:, 1].mean() and nuclei.mean() < grey[stroma].mean() - 40
    assert (mask & (grey > 235) & (labels == 0)).any()


def test_counts_per_voxel_match_cell_density_and_truth(rendered, maps, truth):
    expected = _expected_counts(maps)
    assert expected.sum() > 500
    table = pd.read_csv(rendered / layout.NUCLEI_TSV, sep="\t")
    assert {"Image", "Name", "Class", "Nucleus_Area_px2", "Nucleus_Eccentricity"} <= set(table.columns)
    x, y = table[layout.CENTROID_X].to_numpy(), table[layout.CENTROID_Y].to_numpy()
    counts = np.zeros(CROP, int)
    np.add.at(counts, ((y // P).astype(int), (x // P).astype(int)), 1)
    np.testing.assert_array_equal(counts, expected)
    inner = np.minimum(y % P, x % P) > 1  # strictly inside, also for the original study's count rule
    assert inner.all() and (np.maximum(y % P, x % P) < P - 1).all()

    labels, nuclei = truth
    assert len(nuclei) == len(table)
    np.testing.assert_array_equal(np.unique(labels[labels > 0]), np.arange(1, len(table) + 1))
    # label k sits at its own centroid pixel; nuclei may spill only into neighbouring blocks
    np.testing.assert_array_equal(labels[y.astype(int), x.astype(int)], nuclei["label"])
    home = {int(k): (int(r), int(c)) for k, r, c in nuclei[["label", "voxel_row", "voxel_col"]].to_numpy()}
    for row in range(CROP[0]):
        for col in range(CROP[1]):
            present = set(np.unique(labels[row * P:(row + 1) * P, col * P:(col + 1) * P]).tolist()) - {0}
            own = {k for k in present if home[k] == (row, col)}
            assert len(own) == expected[row, col]
            assert all(max(abs(home[k][0] - row), abs(home[k][1] - col)) == 1 for k in present - own)


def _doubled_mean(angles: np.ndarray) -> tuple[float, float]:
    """Circular mean direction (radians, [0, pi)) and mean resultant length of axial angles."""
    z = np.exp(2j * angles).mean()
    return float(np.mod(np.angle(z) / 2, np.pi)), float(abs(z))


def _axial_difference(a: float, b: float) -> float:
    d = abs(a - b) % np.pi
    return min(d, np.pi - d)


def test_orientation_follows_structure_tensor(maps, truth):
    labels, nuclei = truth
    counts = _expected_counts(maps)
    sa = np.where(counts >= 12, np.nan_to_num(maps.dsa), -1)
    row, col = np.unravel_index(np.argmax(sa), sa.shape)
    assert sa[row, col] > 0.5
    j11, j12, j22 = maps.dj11[row, col], maps.dj12[row, col], maps.dj22[row, col]
    tensor = np.array([[j11, j12], [j12, j22]])
    _, vectors = np.linalg.eigh(tensor)  # eigenvalues ascending: column 0 = the smallest's eigenvector
    along = float(np.mod(np.arctan2(vectors[1, 0], vectors[0, 0]), np.pi))  # (x = column, y = row)

    # orientation fitted from each nucleus's mask (second moments of its pixels)
    mine = nuclei[(nuclei.voxel_row == row) & (nuclei.voxel_col == col)]
    fitted = []
    for label in mine["label"]:
        ys, xs = np.nonzero(labels == label)
        if ys.size >= 8:
            dy, dx = ys - ys.mean(), xs - xs.mean()
            fitted.append(0.5 * np.arctan2(2 * (dx * dy).mean(), (dx * dx).mean() - (dy * dy).mean()))
    assert len(fitted) >= 0.7 * len(mine)
    direction, coherence = _doubled_mean(np.array(fitted))
    assert _axial_difference(direction, along) < np.radians(20)
    truth_direction, _ = _doubled_mean(mine["angle"].to_numpy())
    assert _axial_difference(truth_direction, along) < np.radians(15)

    # the spread shrinks and elongation grows with SA: compare with the voxels of lowest SA
    low = [(r, c) for r, c in zip(*np.nonzero((sa >= 0) & (sa < 0.2)), strict=True)]
    assert len(low) >= 5
    low_coherence = np.mean([_doubled_mean(nuclei[(nuclei.voxel_row == r) & (nuclei.voxel_col == c)]
                                           ["angle"].to_numpy())[1] for r, c in low])
    assert coherence > low_coherence + 0.2
    aspect = nuclei.semi_major / nuclei.semi_minor
    low_aspect = np.mean([aspect[(nuclei.voxel_row == r) & (nuclei.voxel_col == c)].mean() for r, c in low])
    assert aspect[mine.index].mean() > low_aspect + 0.4


def test_derived_targets_equal_their_formula(tmp_path, maps):
    out = _render(tmp_path / "derived", targets="derived", pixels_per_voxel=24, n_max=20)
    record = json.loads((out / layout.TRUTH_TARGETS).read_text())
    assert record["mode"] == "derived" and record["options"]["targets"] == "derived"
    assert "MD" in record["formula"] and "FA" in record["formula"]
    md_c, fa_c, area_ref = record["formula"]["MD_coefficients"], record["formula"]["FA_coefficients"], \
        record["formula"]["A_ref_px2"]
    nuclei = pd.read_parquet(out / layout.TRUTH_NUCLEI)
    with open_mat(out / layout.MR_MAT) as mat:
        mr = mat.read_struct("MR")
    tissue = maps.tissue
    md, fa = np.array(maps.mr["MD"]), np.array(maps.mr["FA"])
    for (row, col), group in nuclei.groupby(["voxel_row", "voxel_col"]):
        n = len(group)
        rel_area = (np.pi * group.semi_major * group.semi_minor).mean() / area_ref
        md[row, col] = np.clip(md_c["intercept"] + md_c["per_density"] * n / 20
                               + md_c["per_relative_area"] * (rel_area - 1), *md_c["clip"])
        coherence = abs(np.exp(2j * group.angle.to_numpy()).mean()) if n >= 2 else 0.0
        fa[row, col] = fa_c["intercept"] + fa_c["per_coherence"] * coherence
    empty = tissue & (_expected_counts(maps) == 0)
    md[empty], fa[empty] = md_c["intercept"], fa_c["intercept"]
    np.testing.assert_allclose(mr["MD"], md, rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(mr["FA"], fa, rtol=1e-9, atol=1e-12)
    np.testing.assert_array_equal(mr["ROI"], maps.mr["ROI"])
    assert not np.allclose(mr["MD"][tissue], maps.mr["MD"][tissue])


def test_v5_output_reads_like_v73(tmp_path):
    small = {"crop": (4, 5), "pixels_per_voxel": 16, "n_max": 10}
    v73, v5 = _render(tmp_path / "v73", **small), _render(tmp_path / "v5", mat_format="v5", **small)
    for rel, names in ((layout.HE_MAT, ["HE"]), (layout.HE_MASK_MAT, ["HE_mask", "dHE_mask"])):
        with open_mat(v73 / rel) as a, open_mat(v5 / rel) as b:
            assert (a.version, b.version) == ("7.3", "5")
            for name in names:
                np.testing.assert_array_equal(a.read(name).astype(np.uint8), b.read(name).astype(np.uint8))
    with open_mat(v73 / layout.MR_MAT) as a, open_mat(v5 / layout.MR_MAT) as b:
        mr73, mr5 = a.read_struct("MR"), b.read_struct("MR")
    assert set(mr73) == set(mr5)
    for field in mr73:
        np.testing.assert_array_equal(mr73[field], mr5[field])
    assert (v73 / layout.NUCLEI_TSV).read_bytes() == (v5 / layout.NUCLEI_TSV).read_bytes()


def test_output_to_gcs(gcs_bucket):
    out = f"{gcs_bucket}/phantom"
    uris = render_phantom(out, "6", crop="3x4", pixels_per_voxel=16, n_max=8)
    assert uris == [f"{out}/6"]
    files = storage.list_files(uris[0])
    for rel in (layout.MR_MAT, layout.HE_MAT, layout.HE_MASK_MAT, layout.NUCLEI_TSV, layout.TRUTH_LABELS,
                layout.TRUTH_NUCLEI, layout.TRUTH_TARGETS):
        assert f"{uris[0]}/{rel}" in files
    with storage.local_copy(f"{uris[0]}/{layout.HE_MAT}") as path, open_mat(path) as mat:
        assert mat.shape("HE") == (48, 64, 3)
    with pytest.raises(InputError, match="already exists"):
        render_phantom(out, [6], crop="3x4", pixels_per_voxel=16, n_max=8)
    render_phantom(out, [6], crop="3x4", pixels_per_voxel=16, n_max=8, overwrite=True)


@pytest.mark.parametrize(("options", "message"), [
    ({"samples": [17]}, r"sample 17 does not exist; expected a sample number from 1 to 16"),
    ({"samples": "3,x"}, r"--samples"),
    ({"crop": "80by80"}, r"--crop '80by80': expected ROWSxCOLS"),
    ({"crop": "0x5"}, r"--crop '0x5': expected at least 1x1"),
    ({"pixels_per_voxel": 4}, r"--pixels-per-voxel 4: expected an integer from 8"),
    ({"n_max": 10_000}, r"--n-max 10000: expected an integer from 1 to 225"),
    ({"targets": "fake"}, r"--targets 'fake'"),
    ({"mat_format": "v7"}, r"--mat-format 'v7'"),
    ({"workers": 0}, r"--workers 0: expected a whole number of processes, at least 1"),
])
def test_bad_options_raise_input_error(tmp_path, options, message):
    kwargs = {"samples": [3], "pixels_per_voxel": P, "crop": "2x2", **options}
    with pytest.raises(InputError, match=message):
        render_phantom(tmp_path / "out", kwargs.pop("samples"), **kwargs)
    assert not (tmp_path / "out").exists()


def test_bad_summary_and_cli_error(tmp_path, capsys):
    broken = tmp_path / "summary.mat"
    broken.write_bytes(b"not a mat file")
    with pytest.raises(InputError, match="not a readable MATLAB v5 summary.mat"):
        render_phantom(tmp_path / "out", [3], summary=broken, crop="2x2")
    parser = argparse.ArgumentParser()
    cli.add_arguments(parser)
    with pytest.raises(InputError, match="sample 17"):
        cli.run(parser.parse_args(["--out", str(tmp_path / "cli"), "--samples", "3,17", "--crop", "2x2"]))
    assert not (tmp_path / "cli").exists()  # nothing rendered when any sample is bad
    cli.run(parser.parse_args(["--out", str(tmp_path / "cli"), "--samples", "2", "--crop", "2x3",
                               "--pixels-per-voxel", "8"]))
    assert capsys.readouterr().out.strip() == str(tmp_path / "cli" / "2")
