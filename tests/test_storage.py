"""The storage layer against the real google-cloud-storage client and a local GCS emulator."""

import os
import stat
import subprocess
import sys

import pytest

from histoxai import storage
from histoxai.errors import InputError


def test_write_read_list_roundtrip_on_gcs(gcs_bucket):
    uri = storage.join(gcs_bucket, "run", "a.txt")
    storage.write_text(uri, "hello")
    storage.write_bytes(storage.join(gcs_bucket, "run", "sub", "b.bin"), b"\x00\x01\x02\x03")
    assert storage.read_text(uri) == "hello"
    assert storage.read_range(storage.join(gcs_bucket, "run/sub/b.bin"), 1, 2) == b"\x01\x02"
    assert storage.list_files(storage.join(gcs_bucket, "run")) == [
        f"{gcs_bucket}/run/a.txt", f"{gcs_bucket}/run/sub/b.bin"]
    assert storage.exists(storage.join(gcs_bucket, "run"))
    assert not storage.exists(storage.join(gcs_bucket, "nothing"))


def test_missing_gcs_object_is_one_clear_error(gcs_bucket):
    with pytest.raises(InputError, match=r"gs://.*/absent\.txt: not found"):
        storage.read_bytes(storage.join(gcs_bucket, "absent.txt"))


def test_missing_bucket_is_one_clear_error(gcs_emulator):
    with pytest.raises(InputError, match="no-such-bucket"):
        storage.read_bytes("gs://no-such-bucket-histoxai/x")


def test_local_copy_of_gcs_folder(gcs_bucket, tmp_path):
    storage.write_text(storage.join(gcs_bucket, "s/1/x.txt"), "one")
    storage.write_text(storage.join(gcs_bucket, "s/1/deep/y.txt"), "two")
    with storage.local_copy(storage.join(gcs_bucket, "s/1")) as local:
        assert (local / "x.txt").read_text() == "one"
        assert (local / "deep" / "y.txt").read_text() == "two"


def test_staged_output_publishes_only_on_success(gcs_bucket, tmp_path):
    out = storage.join(gcs_bucket, "out")
    with pytest.raises(RuntimeError):
        with storage.staged_output(out) as stage:
            (stage / "part.txt").write_text("half")
            raise RuntimeError("step failed")
    assert storage.list_files(out) == []
    with storage.staged_output(out, commit_last="manifest.txt") as stage:
        (stage / "manifest.txt").write_text("m")
        (stage / "z.txt").write_text("z")
    assert storage.read_text(storage.join(out, "manifest.txt")) == "m"
    with pytest.raises(InputError, match="already exists"):
        with storage.staged_output(out):
            pass


def test_staged_output_local_keeps_old_output_on_failure(tmp_path):
    out = tmp_path / "out"
    with storage.staged_output(out) as stage:
        (stage / "a.txt").write_text("first")
    with pytest.raises(RuntimeError):
        with storage.staged_output(out, overwrite=True) as stage:
            (stage / "a.txt").write_text("second, unfinished")
            raise RuntimeError("boom")
    assert (out / "a.txt").read_text() == "first"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]  # no partial folder left behind
    with storage.staged_output(out, overwrite=True) as stage:
        (stage / "a.txt").write_text("second")
    assert (out / "a.txt").read_text() == "second"


def test_local_outputs_get_normal_permissions(tmp_path):
    old = os.umask(0o022)
    try:
        storage.write_text(tmp_path / "f.txt", "x")
        with storage.staged_output(tmp_path / "out") as stage:
            (stage / "a.txt").write_text("a")
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "f.txt").stat().st_mode) == 0o644
    assert stat.S_IMODE((tmp_path / "out").stat().st_mode) == 0o755


def test_remove_file_and_folder_local_and_gcs(gcs_bucket, tmp_path):
    for root in (str(tmp_path / "local"), storage.join(gcs_bucket, "r")):
        storage.write_text(storage.join(root, "keep.txt"), "k")
        storage.write_text(storage.join(root, "dir/a.txt"), "a")
        storage.write_text(storage.join(root, "dir/sub/b.txt"), "b")
        storage.remove(storage.join(root, "dir"))
        storage.remove(storage.join(root, "absent"))  # missing is not an error
        assert storage.list_files(root) == [storage.join(root, "keep.txt")]
        storage.remove(storage.join(root, "keep.txt"))
        assert storage.list_files(root) == []


def test_parquet_tables_local_and_gcs_and_their_errors(gcs_bucket, tmp_path):
    import pandas as pd

    frame = pd.DataFrame({"sample": ["3", "4"], "value": [1.5, 2.5]})
    for uri in (str(tmp_path / "t.parquet"), f"{gcs_bucket}/t.parquet"):
        buffer = tmp_path / "buffer.parquet"
        frame.to_parquet(buffer)
        storage.upload_file(buffer, uri)
        assert storage.read_parquet(uri, "a table").equals(frame)
    storage.write_text(f"{gcs_bucket}/bad.parquet", "not parquet")
    with pytest.raises(InputError, match=rf"^{gcs_bucket}/bad.parquet: not a readable Parquet table .*; "
                                         "expected the split table$"):
        storage.read_parquet(f"{gcs_bucket}/bad.parquet", "the split table")
    with pytest.raises(InputError, match="missing.parquet: not found"):
        storage.read_parquet(f"{gcs_bucket}/missing.parquet", "the split table")


def test_an_unreachable_endpoint_fails_within_the_deadline(tmp_path):
    """Without the bound, the client retries each call for 120 s; with it, a wrong endpoint ends in one
    line naming the file (the subprocess's timeout is the bound this test holds)."""
    env = {**os.environ, "STORAGE_EMULATOR_HOST": "http://127.0.0.1:9", "HISTOXAI_GCS_DEADLINE_S": "3"}
    done = subprocess.run([sys.executable, "-m", "histoxai.cli", "ingest", "gs://nowhere/samples/3",
                           "--out", str(tmp_path / "out")], env=env, capture_output=True, text=True,
                          timeout=90)
    err = done.stderr.strip()
    assert done.returncode == 2 and len(err.splitlines()) == 1, err
    assert "gs://nowhere/samples/3/coreg_fine/ver1/MR.mat: storage unreachable (retried for up to 3 s" in err
    assert not (tmp_path / "out").exists()
