"""Ingestion reads slides in any chunk layout (MATLAB's included) alike, decoding each chunk about once."""

from __future__ import annotations

import contextlib
import os
import shutil
from pathlib import Path

import h5py
import numpy as np
import pandas as pd
import pytest

from histoxai import chunked, layout, manifest, ranged, storage
from histoxai.components.ingest.ingest import ingest_sample
from histoxai.errors import InputError
from histoxai.matfile import open_mat
from histoxai.matlayout import LAYOUTS, MATLAB_DEFLATE, relayout
from histoxai.phantom.writer import render_phantom

P, CROP, SAMPLE = 16, (12, 14), 6  # sample 6's top-left corner holds tissue: 192 x 224 px
# Tiny slides must meet the choices real ones do: strips of more than 64 rows go to scratch here, as
# strips of more than STRIP_BUDGET bytes do at 28,800 px.
SMALL_BUDGET = 64 * CROP[1] * P * 3


@pytest.fixture(scope="module")
def sources(tmp_path_factory):
    """The same phantom sample in every layout; `matlab` comes from the phantom's own option."""
    root = tmp_path_factory.mktemp("layouts")
    options = {"pixels_per_voxel": P, "n_max": 8, "crop": CROP, "seed": 1}
    (rows,) = render_phantom(root / "rows", [SAMPLE], **options)
    (matlab,) = render_phantom(root / "matlab", [SAMPLE], mat_layout="matlab", **options)
    folders = {"rows": Path(rows), "matlab": Path(matlab)}
    for name in ("tiles", "strips", "contiguous"):
        folder = root / name / str(SAMPLE)
        shutil.copytree(rows, folder)
        for rel in (layout.HE_MAT, layout.HE_MASK_MAT):
            relayout(Path(rows) / rel, folder / rel, name)
        folders[name] = folder
    return folders


def _stored_pieces(path: Path, name: str) -> int:
    with h5py.File(path, "r") as f:
        ds = f[name]
        return ds.id.get_num_chunks() if ds.chunks else -1


@pytest.fixture(scope="module")
def ingested(sources, tmp_path_factory):
    """Each layout ingested (same sample id), with what each band reader decoded."""
    out, seen = {}, {}
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(chunked, "STRIP_BUDGET", SMALL_BUDGET)
        for cls in (chunked.StripCache, chunked.ScratchRows):
            def spy(self, _close=cls.close):
                seen.setdefault(current, {})[self._ds.name.strip("/")] = (self.strategy, self.chunks_read)
                _close(self)
            mp.setattr(cls, "close", spy)
        for current, folder in sources.items():
            target = tmp_path_factory.mktemp("out") / current
            ingest_sample(str(folder), str(target), sample_id="s6", patch_size=P, erosion=1, shard_size=40)
            out[current] = target
    return out, seen


def test_matlab_layout_is_gzip_with_automatic_chunks(sources):
    for rel, name in ((layout.HE_MAT, "HE"), (layout.HE_MASK_MAT, "HE_mask")):
        path = sources["matlab"] / rel
        assert path.read_bytes().startswith(b"MATLAB 7.3 MAT-file")
        with h5py.File(path, "r") as f:
            ds = f[name]
            assert ds.compression == "gzip" and ds.compression_opts == MATLAB_DEFLATE
            assert ds.chunks[-1] < ds.shape[-1] and ds.attrs["MATLAB_class"] in (b"uint8", b"logical")
        with open_mat(path) as mat, open_mat(sources["rows"] / rel) as rows:
            np.testing.assert_array_equal(mat.read(name), rows.read(name))
            if name == "HE_mask":
                np.testing.assert_array_equal(mat.read("dHE_mask"), rows.read("dHE_mask"))


@pytest.mark.parametrize("name", [n for n in LAYOUTS if n != "rows"])
def test_every_layout_gives_identical_manifest_and_shards(ingested, name):
    outs, _ = ingested
    base, other = outs["rows"], outs[name]
    frame = manifest.read_manifest(str(other))
    # values first: a difference then names its column and rows, which the bytes alone would not
    pd.testing.assert_frame_equal(frame.drop(columns="shard_uri"),
                                  manifest.read_manifest(str(base)).drop(columns="shard_uri"))
    assert (other / "manifest.parquet").read_bytes() == (base / "manifest.parquet").read_bytes()
    assert len(frame) > 10
    for shard in sorted(frame["shard"].unique()):
        assert (other / shard).read_bytes() == (base / shard).read_bytes()


@pytest.mark.parametrize("name", LAYOUTS)
def test_ingestion_decodes_each_stored_chunk_once(sources, ingested, name):
    _, seen = ingested
    he = _stored_pieces(sources[name] / layout.HE_MAT, "HE")
    mask = _stored_pieces(sources[name] / layout.HE_MASK_MAT, "HE_mask")
    (he_strategy, he_read), (_, mask_read) = seen[name]["HE"], seen[name]["HE_mask"]
    expected = {"rows": "strips", "contiguous": "scratch", "strips": "scratch", "tiles": "scratch"}
    if name in expected:
        assert he_strategy == expected[name]
    if name == "contiguous":
        assert he == mask == -1 and 1 <= he_read <= 3 and mask_read == 1  # pieces of whole columns
    else:  # the mask is read only in voxel rows with candidates: some of its chunks may never be
        assert he_read == he and 1 <= mask_read <= mask


def _image_file(path: Path, layout_name: str, size=(1024, 1024)) -> np.ndarray:
    """A compressible pseudo-random RGB image and its mask in a v7.3 file of the given layout."""
    rng = np.random.default_rng(7)
    he = (rng.integers(0, 16, (*size, 3)) * 16).astype(np.uint8)
    rows = path.with_suffix(".rows.mat")
    with h5py.File(rows, "w", userblock_size=512) as f:
        f.create_dataset("HE", data=he.T, chunks=(3, size[1], 64))
        f.create_dataset("HE_mask", data=(he[..., 0] > 50).T.astype(np.uint8), chunks=(size[1], 64))
    with open(rows, "r+b") as fh:
        fh.write(b"MATLAB 7.3 MAT-file".ljust(512, b"\0"))
    relayout(rows, path, layout_name)
    rows.unlink()
    return he


def _rchar() -> int:
    with open("/proc/self/io") as fh:
        return next(int(line.split()[1]) for line in fh if line.startswith("rchar"))


@pytest.mark.skipif(not Path("/proc/self/io").exists(), reason="needs Linux /proc/self/io")
@pytest.mark.parametrize("name", ["strips", "matlab", "contiguous"])
def test_band_reads_read_each_stored_byte_about_once(tmp_path, monkeypatch, name):
    """Bytes the process reads (file and scratch copy) stay near one pass over each, not one per band."""
    monkeypatch.setattr(chunked, "STRIP_BUDGET", 256 * 1024 * 3)
    path = tmp_path / "HE.mat"
    he = _image_file(path, name)
    size, bands = path.stat().st_size, 32
    before = _rchar()
    with open_mat(path) as mat:
        got = np.concatenate([mat.read_rows("HE", i, i + bands) for i in range(0, he.shape[0], bands)])
    read = _rchar() - before
    np.testing.assert_array_equal(got, he)
    assert read <= 1.2 * size + 1.1 * he.nbytes, (read, size, he.nbytes)  # a scratch copy is read once too


def test_gcs_ranged_reads_download_each_chunk_about_once(gcs_bucket, tmp_path, monkeypatch):
    """Through byte ranges, a whole-height strip layout and MATLAB's chunks cost about one download."""
    monkeypatch.setattr(ranged, "BLOCK", 64 * 1024)  # a cache much smaller than the file, as at full size
    monkeypatch.setattr(ranged, "CACHED_BLOCKS", 4)
    requests = []
    real = storage.read_range

    def counting(uri, start, length, **kw):
        data = real(uri, start, length, **kw)
        requests.append(len(data))
        return data

    monkeypatch.setattr(storage, "read_range", counting)
    for name in ("strips", "matlab"):
        path = tmp_path / f"{name}.mat"
        he = _image_file(path, name)
        uri = storage.join(gcs_bucket, name, "HE.mat")
        storage.upload_file(path, uri)
        requests.clear()
        with contextlib.closing(ranged.RangedFile(uri)) as handle, open_mat(uri, handle) as mat:
            assert mat.band_reader("HE").strategy == "scratch"
            got = np.concatenate([mat.read_rows("HE", i, i + 32) for i in range(0, he.shape[0], 32)])
            mask = np.concatenate([mat.read_rows("HE_mask", i, i + 32) for i in range(0, he.shape[0], 32)])
        np.testing.assert_array_equal(got, he)
        np.testing.assert_array_equal(mask, (he[..., 0] > 50).astype(np.uint8))
        size = path.stat().st_size
        assert sum(requests) <= 1.25 * size, (name, sum(requests), size)
        assert len(requests) <= 1.25 * size / ranged.BLOCK + 16, (name, len(requests))


def test_phantom_layout_option_is_checked(tmp_path):
    with pytest.raises(InputError, match=r"--mat-layout 'zip': expected one of rows, matlab"):
        render_phantom(tmp_path / "a", [SAMPLE], pixels_per_voxel=P, crop=CROP, mat_layout="zip")
    with pytest.raises(InputError, match=r"--mat-layout matlab with --mat-format v5.*--mat-format v7"):
        render_phantom(tmp_path / "b", [SAMPLE], pixels_per_voxel=P, crop=CROP, mat_layout="matlab",
                       mat_format="v5")
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


def test_chunks_never_written_read_as_the_fill_value(tmp_path):
    """HDF5 allocates no chunk a writer never touched (a MATLAB mask that is zero over a region can
    lack chunks): the threaded reader gives the fill value there, as HDF5's own reads do."""
    from histoxai.chunked import decoded_chunks

    with h5py.File(tmp_path / "sparse.h5", "w") as f:
        data = f.create_dataset("mask", shape=(100, 90), dtype="u1", chunks=(30, 40), compression="gzip")
        data[0:30, 0:40] = 7
    with h5py.File(tmp_path / "sparse.h5") as f:
        data = f["mask"]
        origins = [(r, c) for r in range(0, 100, 30) for c in range(0, 90, 40)]
        got = list(decoded_chunks(data, origins))
        for origin, chunk in zip(origins, got, strict=True):
            expected = data[origin[0]:origin[0] + 30, origin[1]:origin[1] + 40]
            np.testing.assert_array_equal(chunk, expected)


def test_chunks_read_alike_while_other_threads_use_h5py(tmp_path):
    """h5py 3.14 runs read_direct_chunk without its lock `phil`, so another thread's h5py calls (any other
    reader's, a collected h5py object's) ran inside HDF5 with it: without the reader's own lock, 9 of 9
    runs of this test failed on an HDF5 error (6), crashed the process (1) or aborted on a double free."""
    import sys
    import threading

    rng = np.random.default_rng(3)
    with h5py.File(tmp_path / "slide.h5", "w") as f:
        f.create_dataset("he", data=rng.integers(0, 8, (3, 96, 512), np.uint8), chunks=(3, 32, 16),
                         compression="gzip")
        origins = [(0, x, r) for x in range(0, 96, 32) for r in range(0, 512, 16)]
    with h5py.File(tmp_path / "slide.h5", "r") as f:
        expected = [chunk.copy() for chunk in chunked.decoded_chunks(f["he"], origins)]
        stop = threading.Event()

        def churn(k: int) -> None:  # what other work in the process does with h5py meanwhile
            path = tmp_path / f"other{k}.h5"
            while not stop.is_set():
                with h5py.File(path, "w") as other:
                    other.create_dataset("x", data=np.arange(4096.0).reshape(64, 64), chunks=(16, 16),
                                         compression="gzip")
                with h5py.File(path, "r") as other:
                    other["x"][:8]

        threads = [threading.Thread(target=churn, args=(k,), daemon=True) for k in range(2)]
        interval = sys.getswitchinterval()
        sys.setswitchinterval(1e-5)  # threads take turns often, as on a loaded machine
        try:
            for thread in threads:
                thread.start()
            for _ in range(40):
                got = list(chunked.decoded_chunks(f["he"], origins))
                for a, b in zip(got, expected, strict=True):
                    np.testing.assert_array_equal(a, b)
        finally:
            sys.setswitchinterval(interval)
            stop.set()
            for thread in threads:
                thread.join()


def test_a_full_scratch_disk_and_a_bad_read_are_told_apart(tmp_path, monkeypatch):
    """Only the scratch file's own writes mean a full disk; HDF5's read errors while unpacking (an
    OSError too) name the rows that could not be read, not the free space."""
    import errno

    path = tmp_path / "HE.mat"
    _image_file(path, "strips", size=(256, 256))
    monkeypatch.setattr(chunked, "STRIP_BUDGET", 0)  # every chunked layout unpacks into scratch space

    def full(fd, data, offset):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    with monkeypatch.context() as patch, open_mat(path) as mat:
        patch.setattr(chunked.os, "pwrite", full)
        with pytest.raises(InputError, match=r"cannot unpack it into scratch space .*No space left"):
            mat.read_rows("HE", 0, 32)

    def unreadable(ds, origins):  # a generator, as decoded_chunks is: the error comes while unpacking
        raise OSError("Can't read unprocessed chunk data")
        yield

    with monkeypatch.context() as patch, open_mat(path) as mat:
        patch.setattr(chunked, "decoded_chunks", unreadable)
        with pytest.raises(InputError, match=r"cannot read rows 0-32 of 'HE' \(Can't read unprocessed"):
            mat.read_rows("HE", 0, 32)
