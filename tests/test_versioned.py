"""Outputs on gs:// switch from old to new at one moment (histoxai.versioned): an overwrite with fewer
files leaves none of the old ones visible, a writer killed mid-upload leaves the old output whole,
and a file replaced behind the output's record is refused by name."""

from __future__ import annotations

import signal
import subprocess
import sys

import pytest

from histoxai import storage, versioned
from histoxai.errors import InputError


def write_output(uri: str, files: dict[str, str], *, overwrite: bool = False) -> None:
    with storage.staged_output(uri, overwrite=overwrite) as stage:
        for rel, text in files.items():
            (stage / rel).parent.mkdir(parents=True, exist_ok=True)
            (stage / rel).write_text(text)


def test_an_overwrite_with_fewer_files_leaves_none_of_the_old(gcs_bucket):
    out = f"{gcs_bucket}/ingest/3"
    write_output(out, {"manifest.parquet": "old", "ingest.json": "16 px", "shards/3-00000": "a",
                       "shards/3-00001": "b"})
    with pytest.raises(InputError, match="already exists; pass --overwrite"):
        write_output(out, {"manifest.parquet": "new"})
    write_output(out, {"manifest.parquet": "new", "ingest.json": "24 px", "shards/3-00000": "c"},
                 overwrite=True)
    assert storage.list_files(out) == [f"{out}/{name}" for name in ("ingest.json", "manifest.parquet",
                                                                    "shards/3-00000")]
    assert storage.read_text(f"{out}/ingest.json") == "24 px"
    assert not storage.exists(f"{out}/shards/3-00001")
    record = versioned._record(out)
    physical = storage.list_files(out, physical=True)
    assert len(physical) == 4 and all(f"/{versioned.VERSIONS}/{record['version']}/" in p
                                      for p in physical if not p.endswith(versioned.RECORD))
    with storage.local_copy(out) as copy:  # a folder download sees the same files
        assert sorted(p.relative_to(copy).as_posix() for p in copy.rglob("*") if p.is_file()) == [
            "ingest.json", "manifest.parquet", "shards/3-00000"]


# The writer dies (SIGKILL, no clean-up) when every new file is up and the record is about to be written.
WRITER = """
import os, signal, sys
from histoxai import storage
storage.write_if_generation = lambda *args, **kwargs: os.kill(os.getpid(), signal.SIGKILL)
with storage.staged_output(sys.argv[1], overwrite=True) as stage:
    (stage / "ingest.json").write_text("newer")
    (stage / "manifest.parquet").write_text("newer")
"""


def test_a_writer_killed_mid_upload_leaves_the_old_output_whole(gcs_bucket):
    out = f"{gcs_bucket}/ingest/4"
    write_output(out, {"manifest.parquet": "old", "ingest.json": "old"})
    killed = subprocess.run([sys.executable, "-c", WRITER, out], capture_output=True, text=True, timeout=120)
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    assert sum("manifest.parquet" in p for p in storage.list_files(out, physical=True)) == 2  # old + new
    versioned.forget()
    assert [storage.read_text(f"{out}/{name}") for name in ("ingest.json", "manifest.parquet")] == ["old"] * 2
    assert storage.list_files(out) == [f"{out}/ingest.json", f"{out}/manifest.parquet"]

    write_output(out, {"manifest.parquet": "next"}, overwrite=True)  # the next commit clears the orphan
    assert len(storage.list_files(out, physical=True)) == 2 and storage.list_files(out) == [
        f"{out}/manifest.parquet"]


def test_a_file_replaced_behind_the_record_is_refused_by_name(gcs_bucket):
    out = f"{gcs_bucket}/split"
    write_output(out, {"split.json": '{"counts": {}}', "split.parquet": "table"})
    physical = next(p for p in storage.list_files(out, physical=True) if p.endswith("/split.json"))
    storage.write_text(physical, '{"counts": {"3": 1}}')  # e.g. a hand edit in the console
    with pytest.raises(InputError, match=r"split/split.json: its content .* differs from the output's"):
        storage.read_text(f"{out}/split.json")
    assert storage.read_text(f"{out}/split.parquet") == "table"  # the others still read
