"""The retraining trigger's upload check `check_upload`: empty files, MAT files with a wrong header and
nuclei tables with a wrong header each give one InputError naming the file and what was expected,
before the sample is opened; a good sample (MAT v7.3 or v5) passes and gets its file sizes back.
(Missing files, truncated slides and bad maps are covered by tests/test_retrain*.py.)"""

from __future__ import annotations

import re
import shutil

import pytest

from histoxai import layout
from histoxai.components.ingest.inputs import check_upload
from histoxai.errors import InputError
from tests.samples import make_sample, write_sample, write_tsv

MAT_FILES = (layout.MR_MAT, layout.HE_MAT, layout.HE_MASK_MAT)
ALL_FILES = (*MAT_FILES, layout.NUCLEI_TSV)
SMALL = {"rows": 6, "cols": 7, "block": (8, 9), "seed": 3}
HINT = ("(the dataset layout: coreg_fine/ver1/{MR,HE,HE_mask}.mat, "
        "cell_density/QuPath/measurements.tsv)")


@pytest.fixture(scope="module")
def good_samples(tmp_path_factory):
    """A good sample folder per MAT format, written once and copied by each test."""
    root = tmp_path_factory.mktemp("uploads")
    arrays = make_sample(**SMALL)
    return {fmt: write_sample(root / f"v{fmt}" / "S1", arrays, mat_format=fmt) for fmt in ("7.3", "5")}


@pytest.fixture
def sample(good_samples, tmp_path):
    return shutil.copytree(good_samples["7.3"], tmp_path / "S1")


def _rejects(sample_dir, rel: str, message: str) -> None:
    """check_upload raises one InputError that is exactly `{path of rel}: {message}`."""
    with pytest.raises(InputError) as caught:
        check_upload(str(sample_dir))
    assert str(caught.value) == f"{sample_dir / rel}: {message}"
    assert len(str(caught.value).splitlines()) == 1


@pytest.mark.parametrize("fmt", ["7.3", "5"])
def test_a_good_sample_passes_with_its_file_sizes(good_samples, fmt):
    folder = good_samples[fmt]
    assert check_upload(str(folder)) == {rel: (folder / rel).stat().st_size for rel in ALL_FILES}
    assert check_upload(str(folder) + "/") == check_upload(str(folder))  # a trailing slash is the same folder


@pytest.mark.parametrize("rel", ALL_FILES)
def test_an_empty_file_is_rejected_by_name(sample, rel):
    (sample / rel).write_bytes(b"")
    _rejects(sample, rel, f"empty file; expected {rel} inside the sample folder {HINT}")


NOT_MATLAB = ("not a MATLAB file (its header does not start with 'MATLAB 5.0 MAT-file' or "
              "'MATLAB 7.3 MAT-file'); expected the .mat file of the dataset layout")


@pytest.mark.parametrize("rel", MAT_FILES)
@pytest.mark.parametrize("header", [
    b"MATLAB 4.0 MAT-file, Platform: GLNXA64",  # another MATLAB version
    b"\x89HDF\r\n\x1a\n",  # a bare HDF5 file (no 512-byte MATLAB header)
    b"Centroid_X_px\tCentroid_Y_px\n",  # the wrong file under a .mat name
], ids=["matlab4", "bare-hdf5", "text"])
def test_a_mat_file_with_a_wrong_header_is_rejected_by_name(sample, rel, header):
    body = (sample / rel).read_bytes()
    (sample / rel).write_bytes(header + body[len(header):])
    _rejects(sample, rel, NOT_MATLAB)


def test_a_v73_header_without_its_hdf5_part_is_rejected_as_truncated(sample):
    head = (sample / layout.HE_MAT).read_bytes()[:512]
    assert head.startswith(b"MATLAB 7.3 MAT-file")
    (sample / layout.HE_MAT).write_bytes(head)  # the upload stopped right after the MATLAB header
    _rejects(sample, layout.HE_MAT, "a MATLAB 7.3 header without its HDF5 part (truncated upload?); "
                                    "expected a complete v7.3 file")


MISSING = ("missing from the header line; expected QuPath measurements with centroids in pixels")


@pytest.mark.parametrize(("header", "missing"), [
    ("Image\tName\tCentroid_X_px\tNucleus: Area", "Centroid_Y_px"),  # one centroid column missing
    ("Image\tName\tClass", "Centroid_X_px, Centroid_Y_px"),  # no centroid columns
    ("Image,Name,Centroid_X_px,Centroid_Y_px", "Centroid_X_px, Centroid_Y_px"),  # comma-separated
    ("centroid_x_px\tcentroid_y_px", "Centroid_X_px, Centroid_Y_px"),  # wrong case
    ("Centroid X px\tCentroid Y px", "Centroid_X_px, Centroid_Y_px"),  # QuPath's display names
    ("Image Centroid_X_px Centroid_Y_px", "Centroid_X_px, Centroid_Y_px"),  # space-separated
], ids=["no-y", "no-centroids", "commas", "lowercase", "display-names", "spaces"])
def test_a_nuclei_table_with_a_wrong_header_is_rejected_by_name(sample, header, missing):
    path = sample / layout.NUCLEI_TSV
    rows = path.read_text(encoding="utf-8").split("\n", 1)[1]
    path.write_text(f"{header}\n{rows}", encoding="utf-8")
    _rejects(sample, layout.NUCLEI_TSV, f"column(s) {missing} {MISSING}")


def test_a_nuclei_table_header_that_is_not_utf8_is_rejected_by_name(sample):
    path = sample / layout.NUCLEI_TSV
    rows = path.read_bytes().split(b"\n", 1)[1]
    path.write_bytes(b"Centroid_X_px\tCentroid_Y_px\tArea \xb5m^2\n" + rows)  # latin-1 export
    with pytest.raises(InputError, match=rf"^{re.escape(str(path))}: not a readable tab-separated table "
                                         r"\('utf-8' codec can't decode"):
        check_upload(str(sample))


def test_a_good_table_with_windows_line_endings_passes(sample):
    path = sample / layout.NUCLEI_TSV
    write_tsv(path, make_sample(**SMALL).centroids, extra_columns=False)  # Centroid_Y_px ends the line
    path.write_bytes(path.read_bytes().replace(b"\n", b"\r\n"))
    assert path.read_bytes().startswith(b"Centroid_X_px\tCentroid_Y_px\r\n")
    assert check_upload(str(sample))[layout.NUCLEI_TSV] == path.stat().st_size
