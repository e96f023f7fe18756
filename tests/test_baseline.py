"""The original study's baselines: smoothing, quadratic fit, real summary.mat, `histoxai baseline`."""

import json

import numpy as np
import pandas as pd
import pytest
import scipy.io
from scipy import ndimage

from histoxai import cli, storage
from histoxai.components.evaluate import baseline
from histoxai.errors import InputError
from histoxai.metrics import regression_metrics


@pytest.fixture(scope="module")
def real_samples():
    return baseline.load_summary(baseline.BUNDLED_SUMMARY)


def disc_roi(shape=(24, 30), centre=(12, 14), radius=9):
    rows, cols = np.indices(shape)
    return (rows - centre[0]) ** 2 + (cols - centre[1]) ** 2 <= radius**2


def test_kernel_is_matlab_fspecial_5x5_sigma_half():
    kernel = baseline.gaussian_kernel()
    one_d = np.exp(-np.arange(-2, 3) ** 2 / (2 * 0.5**2))
    expected = np.outer(one_d, one_d) / np.outer(one_d, one_d).sum()
    assert kernel.shape == (5, 5)
    np.testing.assert_allclose(kernel, expected, rtol=1e-12)
    assert kernel.sum() == pytest.approx(1.0)


def test_smoothing_stays_inside_the_roi():
    roi = disc_roi()
    rng = np.random.default_rng(0)
    inside = rng.uniform(0, 1, roi.shape)
    a = np.where(roi, inside, 1000.0)
    b = np.where(roi, inside, -55.0)
    smooth_a, smooth_b = baseline.smooth_in_roi(a, roi), baseline.smooth_in_roi(b, roi)
    np.testing.assert_array_equal(smooth_a, smooth_b)  # outside values never reach the ROI
    assert np.isnan(smooth_a[~roi]).all() and np.isfinite(smooth_a[roi]).all()
    assert smooth_a[roi].max() <= inside[roi].max() and smooth_a[roi].min() >= inside[roi].min()
    constant = baseline.smooth_in_roi(np.where(roi, 0.4, 9.0), roi)
    np.testing.assert_allclose(constant[roi], 0.4)  # no pull towards 0 (or 9) at the border
    # Far from the border it is the plain 5x5 Gaussian filter.
    plain = ndimage.correlate(a, baseline.gaussian_kernel(), mode="constant")
    deep = ndimage.binary_erosion(roi, np.ones((5, 5), bool))
    np.testing.assert_allclose(smooth_a[deep], plain[deep], rtol=1e-12)


def test_smoothing_fills_a_missing_voxel_from_its_neighbours():
    roi = np.ones((7, 7), bool)
    values = np.full((7, 7), 0.3)
    values[3, 3] = np.nan
    out = baseline.smooth_in_roi(values, roi)
    assert out[3, 3] == pytest.approx(0.3)
    lonely = np.zeros((7, 7), bool)
    lonely[3, 3] = True
    assert np.isnan(baseline.smooth_in_roi(values, lonely)[3, 3])  # nothing valid to borrow from


def test_fit_quadratic_recovers_coefficients():
    x = np.linspace(-1, 2, 40)
    np.testing.assert_allclose(baseline.fit_quadratic(x, 0.7 * x**2 - 1.3 * x + 0.25), [0.7, -1.3, 0.25],
                               atol=1e-12)


def test_quadratic_baseline_recovers_a_known_map():
    roi = disc_roi()
    rng = np.random.default_rng(3)
    feature = np.where(roi, rng.uniform(0, 1, roi.shape), 50.0)
    smooth = baseline.smooth_in_roi(feature, roi)
    target = np.where(roi, 1.2 * smooth**2 - 0.9 * smooth + 1.5, 0.0)
    row = baseline.quadratic_baseline(feature, target, roi, repeats=5, rng=np.random.default_rng(1))
    assert row["n_voxels"] == roi.sum() and row["n"] == int(np.ceil(0.2 * roi.sum()))
    assert (row["coef_a"], row["coef_b"], row["coef_c"]) == pytest.approx((1.2, -0.9, 1.5), abs=1e-9)
    assert row["r2"] == pytest.approx(1.0) and row["r2_var"] == pytest.approx(1.0)
    assert row["note"] == ""
    # With noise the score drops below 1, reproducibly for one seed.
    noisy = target + np.where(roi, rng.normal(0, 0.05, roi.shape), 0.0)
    runs = [baseline.quadratic_baseline(feature, noisy, roi, repeats=7, rng=np.random.default_rng(s))
            for s in (4, 4, 5)]
    assert 0 < runs[0]["r2"] < 1 and runs[0]["r2_q25"] <= runs[0]["r2"] <= runs[0]["r2_q75"]
    assert runs[0] == runs[1] and runs[0]["r2"] != runs[2]["r2"]


def test_quadratic_baseline_on_too_few_voxels_is_explained():
    roi = np.zeros((6, 6), bool)
    roi[2, 2:5] = True
    row = baseline.quadratic_baseline(np.ones((6, 6)), np.ones((6, 6)), roi, repeats=3,
                                      rng=np.random.default_rng(0))
    assert row["r2"] is None and row["n"] == 0
    assert "only 3 usable ROI voxels" in row["note"]


def test_real_summary_layout(real_samples):
    assert [s.sample for s in real_samples] == [str(i) for i in range(1, 17)]
    for sample in real_samples:
        for target, cnn in sample.cnn.items():
            # sROI lies inside the voxels the study's CNNs saw, as documented.
            assert not (sample.roi & (cnn["I_measured"] == 2)).any(), (sample.sample, target)
    raw = scipy.io.loadmat(baseline.BUNDLED_SUMMARY, squeeze_me=True, struct_as_record=False)
    for var in baseline.CNN_VARIABLES.values():
        for cell in raw[var]:
            test = cell.I_test_ind > 0
            # The test vectors are the grid maps at I_test_ind: same values, same R².
            on_grid = regression_metrics(cell.I_measured[test], cell.I_pred[test])["r2"]
            assert on_grid == pytest.approx(regression_metrics(cell.measured, cell.predicted)["r2"], abs=1e-6)


def test_real_baselines_are_deterministic_and_complete(real_samples):
    picked = [real_samples[2], real_samples[12]]
    first = baseline.per_sample_baselines(picked, roi="sROI", repeats=3, seed=7, progress=False)
    again = baseline.per_sample_baselines(picked, roi="sROI", repeats=3, seed=7, progress=False)
    other = baseline.per_sample_baselines(picked, roi="sROI", repeats=3, seed=8, progress=False)
    pd.testing.assert_frame_equal(first, again)
    assert list(first.columns) == list(baseline.ROW_COLUMNS)
    assert len(first) == 2 * (len(baseline.PAIRS) + len(baseline.CNN_VARIABLES))
    quad = first["baseline"] == baseline.QUADRATIC
    assert not np.allclose(first.loc[quad, "r2"].astype(float), other.loc[quad, "r2"].astype(float))
    pd.testing.assert_frame_equal(first[~quad], other[~quad])  # the stored CNN results take no seed
    # A sample's figure does not depend on which other samples ran.
    alone = baseline.per_sample_baselines([real_samples[12]], roi="sROI", repeats=3, seed=7, progress=False)
    pd.testing.assert_frame_equal(alone.reset_index(drop=True),
                                  first[first["sample"] == "13"].reset_index(drop=True))
    sample3 = first[(first["sample"] == "3") & (first["target"] == "FAIP") & quad].iloc[0]
    assert "28 ROI voxels without a feature value filled" in sample3["note"]  # SA is NaN there
    cnn = first[~quad].iloc[0]
    assert cnn["n"] == real_samples[2].cnn["MD"]["measured"].size and cnn["note"] == ""
    assert cnn["r2"] == pytest.approx(regression_metrics(real_samples[2].cnn["MD"]["measured"],
                                                         real_samples[2].cnn["MD"]["predicted"])["r2"])


def test_across_tumour_is_the_squared_correlation_of_roi_means(real_samples):
    means = baseline.tumour_means(real_samples)
    table = baseline.across_tumour(means)
    sample = real_samples[0]
    cd_mean = baseline.smooth_in_roi(sample.maps["CD"], sample.roi)[sample.roi].mean()
    assert means.loc[0, "CD"] == pytest.approx(cd_mean)
    assert means.loc[0, "MD"] == pytest.approx(sample.maps["MD"][sample.roi].mean())
    for row in table.itertuples():
        x, y = means[row.feature].to_numpy(float), means[row.target].to_numpy(float)
        assert row.n_samples == 16
        assert row.pearson_r2 == pytest.approx(np.corrcoef(x, y)[0, 1] ** 2)
        assert row.slope == pytest.approx(np.polyfit(x, y, 1)[0])
    assert table.iloc[0]["pearson_r"] < 0  # denser tissue, lower MD


def test_cli_prints_and_writes_local_outputs(tmp_path, capsys):
    out = tmp_path / "baseline"
    assert cli.main(["baseline", "--baseline-repeats", "2", "--seed", "1", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "| sample | MD~CD R² |" in printed and "## Across tumours" in printed
    assert sorted(p.name for p in out.iterdir()) == ["baseline.json", "baseline.md", "baseline.parquet"]
    table = pd.read_parquet(out / "baseline.parquet")
    assert len(table) == 16 * 5 and table["r2"].notna().all()
    info = json.loads((out / "baseline.json").read_text())
    assert info["settings"]["repeats"] == 2 and len(info["across_tumour"]) == len(baseline.PAIRS)
    assert info["per_sample"][0]["coef_a"] is not None and info["per_sample"][3]["coef_a"] is None
    assert "## All rows" in (out / "baseline.md").read_text()
    assert cli.main(["baseline", "--baseline-repeats", "2", "--out", str(out)]) == 2  # no silent overwrite


def test_cli_writes_to_gcs(gcs_bucket):
    out = storage.join(gcs_bucket, "baseline")
    assert cli.main(["baseline", "--baseline-repeats", "1", "--roi", "ROI", "--out", out]) == 0
    names = ("baseline.json", "baseline.md", "baseline.parquet")
    assert storage.list_files(out) == [f"{out}/{name}" for name in names]
    assert json.loads(storage.read_text(f"{out}/baseline.json"))["settings"]["roi"] == "ROI"


def test_missing_or_corrupt_summary_is_one_clear_error(tmp_path, capsys):
    missing = tmp_path / "nowhere.mat"
    assert cli.main(["baseline", "--summary", str(missing)]) == 2
    assert f"{missing}: not found" in capsys.readouterr().err
    corrupt = tmp_path / "corrupt.mat"
    corrupt.write_bytes(b"MATLAB 5.0 MAT-file" + b"\x00" * 40)
    with pytest.raises(InputError, match=rf"{corrupt}: not a readable MATLAB v5 summary\.mat"):
        baseline.load_summary(str(corrupt))
    foreign = tmp_path / "foreign.mat"
    scipy.io.savemat(foreign, {"x": np.ones(3)})
    with pytest.raises(InputError, match=rf"{foreign}: variable 'sMR' missing \(found: x\)"):
        baseline.load_summary(str(foreign))
    with pytest.raises(InputError, match="roi 'eroded'"):
        baseline.load_summary(baseline.BUNDLED_SUMMARY, roi="eroded")
    with pytest.raises(InputError, match="repeats 0"):
        baseline.compute_baselines(repeats=0, progress=False)
