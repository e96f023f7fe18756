"""Bad inputs and kills through the `histoxai` command: one clear line, exit 2, nothing half-written,
nothing the user had replaced without --overwrite, and no leftovers after a failure or a kill."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from histoxai import dataset, outputs
from histoxai.cli import main
from histoxai.errors import InputError
from histoxai.manifest import read_manifest
from histoxai.shards import ShardWriter, encode_image, iter_records
from tests.test_split import make_manifest
from tests.train_data import write_blob_manifest

REPO = Path(__file__).resolve().parents[1]
QUICK = {"backbone": "tiny", "weights": None, "image_size": 32, "batch_size": 16, "frozen_epochs": 1,
         "finetune_epochs": 1, "patience": 5, "lr_schedule": "none", "learning_rate": 3e-3,
         "dense_units": 8, "feature_units": 4, "dropout": 0.0, "feature_dropout": 0.0}
DAMAGED_SHARD, DAMAGED_RECORD = "sample2.tfrecord", 5


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    """A split manifest (two samples, 32 px), a copy with bytes flipped inside one record, a quick
    config, a tiny model, an ingest manifest for split, and files that are not what they claim."""
    from tests.test_explain import _build

    root = tmp_path_factory.mktemp("bad-inputs")
    data = write_blob_manifest(root / "data", n=48, size=32, seed=1)
    shutil.copytree(root / "data", root / "damaged")
    frame = pd.read_parquet(root / "damaged" / "split.parquet")
    record = frame[frame["shard"].str.endswith(DAMAGED_SHARD) & (frame["index"] == DAMAGED_RECORD)].iloc[0]
    shard = root / "damaged" / record["shard"]
    raw = bytearray(shard.read_bytes())
    raw[int(record["offset"]) + 40] ^= 0xFF  # inside the record's image data: its checksum fails
    shard.write_bytes(bytes(raw))
    (root / "quick.yaml").write_text(yaml.safe_dump(QUICK))
    (root / "latin1.yaml").write_bytes("backbone: tiny  # \xe9t\xe9\n".encode("latin-1"))
    (root / "a_folder").mkdir()
    (root / "a_file").write_text("not a folder\n")
    _build().save(root / "model.keras")
    (root / "ingest").mkdir()
    make_manifest("3", (12, 14)).to_parquet(root / "ingest" / "manifest.parquet", index=False)
    return {"root": root, "data": str(data), "damaged": str(root / "damaged"),
            "config": str(root / "quick.yaml"), "model": str(root / "model.keras"),
            "ingest": str(root / "ingest")}


def command(name: str, inputs: dict, out: str, *extra: str) -> list[str]:
    """A working command line of each step, writing to `out`."""
    if name == "train":
        args = ["train", "--config", inputs["config"], "--data", inputs["data"], "--targets", "CC"]
    elif name == "tune":
        args = ["tune", "--config", inputs["config"], "--search-space", "search_space_demo", "--data",
                inputs["data"], "--targets", "CC", "--tuning-trials", "1"]
    elif name == "split":
        args = ["split", inputs["ingest"], "--train-samples", "3"]
    else:
        args = ["explain", "--model", inputs["model"], "--data", inputs["data"], "--methods", "vanilla",
                "--trust-patches", "0", "--max-patches", "4"]
    return [*args, "--out", out, *extra]


def one_error_line(capsys, *needles: str) -> str:
    """stderr holds exactly one error line (and no traceback), naming every needle."""
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if "error:" in line]
    assert len(lines) == 1 and "Traceback" not in err, err
    for needle in needles:
        assert needle in lines[0], lines[0]
    return lines[0]


def leftovers(*folders: Path) -> list[str]:
    """The hidden .NAME.partial-* and .NAME.old-PID folders that staged outputs leave in these folders."""
    found = []
    for folder in folders:
        found += [p.name for p in folder.iterdir() if ".partial-" in p.name or ".old-" in p.name]
    return found


# ---- nothing a user had is replaced without --overwrite ----

@pytest.mark.parametrize("step", ["train", "tune", "split", "explain"])
def test_a_non_empty_out_is_kept_without_overwrite(inputs, tmp_path, capsys, step):
    out = tmp_path / "out"
    out.mkdir()
    (out / "model.keras").write_text("the user's own model\n")  # model.keras but no metrics.json
    assert main(command(step, inputs, str(out))) == 2
    one_error_line(capsys, str(out), "--overwrite")
    assert [p.name for p in out.iterdir()] == ["model.keras"]
    assert (out / "model.keras").read_text() == "the user's own model\n"
    assert not leftovers(tmp_path)


def test_train_with_overwrite_replaces_a_non_empty_out_once_its_results_are_complete(inputs, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "model.keras").write_text("the user's own model\n")
    assert main(command("train", inputs, str(out), "--overwrite")) == 0
    assert sorted(p.name for p in out.iterdir()) == ["config.yaml", "history.csv", "metrics.json",
                                                     "model.keras", "tensorboard"]
    assert (out / "model.keras").read_bytes()[:2] == b"PK" and not leftovers(tmp_path)


# ---- one line for a bad location or config ----

def _unwritable(kind: str, root: Path) -> str:
    if kind == "file as folder":
        return str(root / "a_file" / "out")
    if kind == "under /proc":  # a location root cannot write either
        return "/proc/histoxai-no-such-place/out"
    folder = root / "read-only"
    folder.mkdir(exist_ok=True)
    folder.chmod(0o555)
    if os.access(folder, os.W_OK):  # root ignores permission bits: the other cases cover root
        pytest.skip("this user can write in a 0o555 folder (root)")
    return str(folder / "out")


@pytest.mark.parametrize("kind", ["file as folder", "under /proc", "read-only parent"])
@pytest.mark.parametrize("step", ["train", "tune", "split", "explain"])
def test_an_unwritable_out_is_one_line(inputs, tmp_path, capsys, step, kind):
    (tmp_path / "a_file").write_text("x")
    out = _unwritable(kind, tmp_path)
    assert main(command(step, inputs, out)) == 2
    one_error_line(capsys, f"--out {out}", "expected an output folder")
    assert not leftovers(tmp_path)


@pytest.mark.parametrize("bad", ["latin1.yaml", "a_folder"])
@pytest.mark.parametrize(("step", "option"), [("train", "--config"), ("tune", "--config"),
                                              ("tune", "--search-space")])
def test_a_config_that_is_not_utf8_or_is_a_folder_is_one_line(inputs, tmp_path, capsys, step, option, bad):
    path = str(inputs["root"] / bad)
    args = command(step, inputs, str(tmp_path / "out"))
    args[args.index(option) + 1] = path
    assert main(args) == 2
    line = one_error_line(capsys, f"{option} {path}")
    assert ("not UTF-8" in line) if bad == "latin1.yaml" else ("is a folder" in line)
    assert not (tmp_path / "out").exists()


# ---- a damaged shard is named, and nothing is left behind ----

@pytest.mark.parametrize("step", ["train", "explain"])
def test_a_damaged_shard_is_named_in_one_line(inputs, tmp_path, capfd, step):
    """capfd: TensorFlow's own log lines (written to the process's stderr) count too, and hold no
    Python traceback."""
    out = tmp_path / "out"
    args = command(step, inputs, str(out))
    args[args.index("--data") + 1] = inputs["damaged"]
    if step == "explain":
        args[args.index("--max-patches") + 1] = "0"
        args += ["--splits", "", "--samples", "2"]  # every patch of the damaged shard
    assert main(args) == 2
    one_error_line(capfd, DAMAGED_SHARD, f"record {DAMAGED_RECORD} ", "checksum")
    assert not out.exists() and not leftovers(tmp_path)  # no OUT, no empty OUT/checkpoints


@pytest.mark.parametrize(("damage", "why"), [
    ("truncated", "shard ends inside this record"), ("length field", "length field fails its checksum"),
    ("not an image", "not a readable png image"), ("offset", "the manifest says"),
    ("negative offset", "the manifest says -5")])
def test_the_reader_names_the_damaged_record(inputs, tmp_path, damage, why):
    shutil.copytree(Path(inputs["data"]).parent, tmp_path / "d")
    frame = dataset.reading_order(read_manifest(tmp_path / "d" / "split.parquet"))
    rows = frame[frame["shard"].str.endswith(DAMAGED_SHARD)]
    shard, offset = Path(rows["shard_uri"].iloc[0]), int(rows["offset"].iloc[3])
    raw = bytes(shard.read_bytes())
    if damage == "truncated":
        shard.write_bytes(raw[:offset + 20])
    elif damage == "length field":
        shard.write_bytes(raw[:offset] + bytes([raw[offset] ^ 1]) + raw[offset + 1:])
    elif damage == "not an image":  # framed and checksummed like any record, but no PNG inside
        payloads = list(iter_records(shard))
        with ShardWriter(shard) as writer:
            offsets = [writer.append(b"garbage" if i == 3 else p)[1] for i, p in enumerate(payloads)]
        frame.loc[rows.index, "offset"] = [offsets[i] for i in rows["index"]]
    elif damage == "offset":  # the reader reads each record at the manifest's offset: one byte off fails
        frame.loc[rows.index[3], "offset"] = offset + 1
    else:  # an offset no file has (os.pread would raise OSError) is a damaged record, not a crash
        frame.loc[rows.index[3], "offset"] = -5
    ds = dataset.patch_dataset(frame, image_size=32, batch_size=8, cache="none")
    with pytest.raises(InputError, match=rf"{DAMAGED_SHARD}: record {int(rows['index'].iloc[3])} .*{why}"):
        with dataset.read_errors(frame):
            for _ in ds:
                pass


def test_a_length_field_past_the_shards_end_is_refused_before_it_is_read(tmp_path):
    """A record whose length field is consistent with its own checksum but names more bytes than the
    shard holds (a forged or mis-sized record) is refused, without reading (or allocating) that much."""
    import struct

    from histoxai.shards import _masked_crc, read_local_record, read_record

    shard = tmp_path / "forged.tfrecord"
    with ShardWriter(shard) as writer:
        writer.append(encode_image(np.zeros((32, 32, 3), np.uint8), "zlib"))
    length = struct.pack("<Q", 1 << 60)
    raw = shard.read_bytes()
    shard.write_bytes(length + struct.pack("<I", _masked_crc(length)) + raw[12:])
    with pytest.raises(ValueError, match="runs past the shard's end"):
        read_local_record(str(shard), 0)
    for read in (lambda: read_record(str(shard), 0), lambda: list(iter_records(shard))):
        with pytest.raises(ValueError, match="corrupt record"):
            read()
    frame = pd.DataFrame([{"shard_uri": str(shard), "index": 0, "offset": 0, "encoding": "zlib",
                           "patch_size": 32, "sample": "2", "row": 0, "col": 0}])
    with pytest.raises(InputError, match=r"forged.tfrecord: record 0 .*the shard ends inside this record"):
        with dataset.read_errors(frame):
            for _ in dataset.patch_dataset(frame, image_size=32, batch_size=4, cache="none"):
                pass


def test_a_zlib_record_that_does_not_inflate_is_named(tmp_path, capfd):
    # zlib records are inflated outside TensorFlow's graph (ISA-L): its error must still name the record
    shard, rows = tmp_path / "zlib.tfrecord", []
    with ShardWriter(shard) as writer:
        for k in range(6):
            payload = b"garbage" if k == 3 else encode_image(np.full((32, 32, 3), k, np.uint8), "zlib")
            index, offset = writer.append(payload)
            rows.append({"shard_uri": str(shard), "index": index, "offset": offset, "encoding": "zlib",
                         "patch_size": 32, "sample": "2", "row": 0, "col": k})
    frame = pd.DataFrame(rows)
    with pytest.raises(InputError, match=r"zlib.tfrecord: record 3 .*not a readable zlib image"):
        with dataset.read_errors(frame):
            for _ in dataset.patch_dataset(frame, image_size=32, batch_size=4, cache="none"):
                pass
    assert "Traceback" not in capfd.readouterr().err  # TensorFlow's log of the failed read is one line


# ---- implausible manifests ----

@pytest.mark.parametrize(("change", "field"), [
    (lambda f: f.drop(columns="MD"), "'MD'"),
    (lambda f: f.assign(CC=f["CC"].astype(str)), "'CC'"),
    (lambda f: f.assign(encoding="gif"), "'encoding'"),
    (lambda f: f.assign(offset=-1), "'offset'"),
])
def test_split_checks_the_manifest_schema(inputs, tmp_path, capsys, change, field):
    bad = tmp_path / "ingest" / "manifest.parquet"
    bad.parent.mkdir()
    change(pd.read_parquet(Path(inputs["ingest"]) / "manifest.parquet")).to_parquet(bad, index=False)
    out = tmp_path / "out"
    assert main(["split", str(bad.parent), "--train-samples", "3", "--out", str(out)]) == 2
    one_error_line(capsys, str(bad), field)
    assert not out.exists()


def test_split_of_a_file_that_is_not_a_manifest_is_one_line(inputs, tmp_path, capsys):
    out = tmp_path / "out"
    path = str(inputs["root"] / "quick.yaml")
    assert main(["split", path, "--train-samples", "3", "--out", str(out)]) == 2
    one_error_line(capsys, path, "a file, not a manifest")
    assert not out.exists()


# ---- leftovers of a failure or a kill ----

@pytest.fixture
def killed(python_forked):
    """`killed(code)` runs `code` in its own process (tests/conftest.py: python_forked), which kills
    itself with SIGKILL where the code says so."""
    prelude = "import os, signal\nkill = lambda *a, **k: os.kill(os.getpid(), signal.SIGKILL)\n"

    def run(code: str) -> subprocess.CompletedProcess:
        done = python_forked(["-c", prelude + code], cwd=REPO)
        assert done.returncode == -signal.SIGKILL, done.stderr[-3000:]
        return done

    return run


def test_split_killed_while_writing_leaves_a_partial_folder_the_next_run_removes(inputs, tmp_path, killed):
    out = tmp_path / "out"
    args = command("split", inputs, str(out))
    killed(f"import pandas\npandas.DataFrame.to_parquet = kill\n"
           f"from histoxai.cli import main\nmain({args!r})\n")
    assert leftovers(tmp_path) and not out.exists()
    assert main(args) == 0
    assert not leftovers(tmp_path) and (out / "split.parquet").exists()


def test_a_kill_between_the_two_renames_gives_the_previous_output_back(inputs, tmp_path, killed, capsys):
    out = tmp_path / "out"
    args = command("split", inputs, str(out))
    assert main(args) == 0
    before = (out / "split.parquet").read_bytes()
    # --overwrite: the old output moves to .out.old-PID, then the killed process never moves the new in
    killed("real = os.replace\n"
           "os.replace = lambda a, b: kill() if '.partial-' in str(a) else real(a, b)\n"
           f"from histoxai.cli import main\nmain({[*args, '--seed', '5', '--overwrite']!r})\n")
    assert not out.exists() and any(".old-" in name for name in leftovers(tmp_path))
    assert main(args) == 2  # the previous output is back, and kept without --overwrite
    assert "already exists" in capsys.readouterr().err
    assert (out / "split.parquet").read_bytes() == before and not leftovers(tmp_path)


def test_train_killed_in_its_first_epoch_leaves_checkpoints_the_next_run_clears(inputs, tmp_path, killed):
    out = tmp_path / "out"
    args = command("train", inputs, str(out))
    killed("from histoxai import checkpoint\ncheckpoint.CheckpointStore.save = kill\n"
           f"from histoxai.cli import main\nmain({args!r})\n")
    assert (out / "checkpoints").is_dir() and not (out / "checkpoints" / "state.json").exists()
    assert main(args) == 0
    assert sorted(p.name for p in out.iterdir()) == ["config.yaml", "history.csv", "metrics.json",
                                                     "model.keras", "tensorboard"]
    assert not leftovers(tmp_path)


def test_scratch_folders_of_dead_processes_are_removed(tmp_path, monkeypatch):
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                          text=True, check=True).stdout.strip()
    stale = tmp_path / f"histoxai-trial3-pid{dead}-abc"
    (stale / "checkpoints").mkdir(parents=True)
    unrelated = tmp_path / "histoxai-shards-old-naming"  # no PID: never guessed at
    unrelated.mkdir()
    with outputs.scratch_dir("trial0") as mine:
        assert outputs.clear_stale_scratch() == [str(stale)]
        assert mine.is_dir() and unrelated.is_dir()
    assert not mine.exists()
