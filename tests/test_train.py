"""Training: config validation, tf.data input, the two-phase run, outputs, determinism, kill and resume."""

from __future__ import annotations

import json
import subprocess
import sys
import zlib
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from histoxai import config as configs
from histoxai import dataset, shards, storage
from histoxai.cli import main
from histoxai.errors import InputError
from histoxai.manifest import read_manifest
from histoxai.shards import ENCODINGS, ShardWriter, decode_image, iter_records
from histoxai.training import STOPPED_EXIT_CODE, train
from tests.train_data import write_blob_manifest

pytestmark = pytest.mark.slow  # a long file: it starts first (tests/conftest.py)

REPO = Path(__file__).resolve().parents[1]
QUICK = {"backbone": "tiny", "weights": None, "image_size": 32, "batch_size": 16, "frozen_epochs": 1,
         "finetune_epochs": 2, "patience": 5, "lr_schedule": "none", "learning_rate": 3e-3,
         "dense_units": 16, "feature_units": 8, "dropout": 0.1, "feature_dropout": 0.1}


@pytest.fixture(scope="module")
def blobs32(tmp_path_factory):
    return write_blob_manifest(tmp_path_factory.mktemp("blobs32"), n=96, size=32, seed=1)


# ---- config ----

def test_shipped_configs_validate_and_thesis_matches_table_3_3():
    thesis = configs.load_config("thesis")
    assert (thesis.backbone, thesis.weights, thesis.batch_size, thesis.finetune_epochs) == (
        "EfficientNetV2S", "imagenet", 16, 100)
    assert (thesis.lr_schedule, thesis.warmup_epochs, thesis.decay_epochs) == ("warmup_cosine", 17, 60)
    assert (thesis.initial_lr, thesis.warmup_target_lr) == (1e-5, 5e-5)
    assert (thesis.optimizer, thesis.weight_decay, thesis.dropout) == ("adamw", 0.008, 0.3)
    assert not (thesis.augment_flip or thesis.augment_rot90 or thesis.augment_rotation_degrees)
    demo = configs.load_config("demo", {"targets": "CC"})
    assert demo.backbone == "tiny" and demo.targets == ("CC",)
    assert configs.from_dict(yaml.safe_load(demo.to_yaml())) == demo  # resolved config round-trips


@pytest.mark.parametrize(("values", "message"), [
    ({"batchsize": 8}, r"unknown key 'batchsize'"),
    ({"batch_size": 0}, r"key 'batch_size': expected an integer in \[1"),
    ({"dropout": "high"}, r"key 'dropout': expected a number"),
    ({"backbone": "ResNet50"}, r"key 'backbone': expected one of \['MobileNet'"),
    ({"precision": "mixed_bfloat16"}, r"key 'precision': .*Grad-CAM\+\+"),
    ({"jit_compile": "yes"}, r"key 'jit_compile': expected auto, true or false"),
    ({"targets": ["MD", "MD"]}, r"key 'targets': expected distinct targets"),
    ({"targets": ["MD"], "loss_weights": {"CC": 2}}, r"key 'loss_weights': names targets \['CC'\]"),
    ({"backbone": "tiny"}, r"key 'weights': the tiny CNN has no ImageNet weights"),
])
def test_bad_config_is_rejected_naming_the_key(tmp_path, values, message):
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(values))
    with pytest.raises(InputError, match=message) as err:
        configs.load_config(str(path))
    assert str(path) in str(err.value)


def test_cli_rejects_bad_override_and_missing_data_in_one_line(tmp_path, capsys, blobs32):
    args = ["train", "--config", "demo", "--data", str(blobs32),
            "--targets", "CC", "--out", str(tmp_path / "out")]
    assert main(args + ["--set", "patience=-1"]) == 2
    err = capsys.readouterr().err.strip()
    assert "key 'patience'" in err and len(err.splitlines()) == 1
    assert main(args[:4] + [str(tmp_path / "absent.parquet")] + args[5:]) == 2
    assert "absent.parquet" in capsys.readouterr().err
    assert main(args[:6] + ["NOPE"] + args[7:]) == 2
    assert "no column 'NOPE'" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


# ---- input pipeline ----

@pytest.mark.parametrize("encoding", ENCODINGS)
def test_patch_dataset_yields_each_patch_with_its_targets(tmp_path, encoding):
    manifest = write_blob_manifest(tmp_path, n=20, size=32, encoding=encoding, seed=2)
    frame = dataset.reading_order(read_manifest(manifest))
    ds = dataset.patch_dataset(frame, image_size=32, batch_size=8, targets=["CC", "MD"])
    images, labels = (np.concatenate(parts) for parts in zip(*[(x, np.hstack([y["CC"], y["MD"]]))
                                                              for x, y in ds.as_numpy_iterator()],
                                                             strict=True))
    expected = np.stack([decode_image(p, encoding, 32) for shard in frame["shard_uri"].unique()
                         for p in iter_records(shard)])
    if encoding == "jpeg":  # TensorFlow's and Pillow's JPEG decoders differ by a few levels
        assert images.shape == expected.shape and np.abs(images - expected).mean() < 1.5
    else:
        np.testing.assert_array_equal(images, expected.astype(np.float32))
    np.testing.assert_allclose(labels, frame[["CC", "MD"]].to_numpy(np.float32))


def test_patch_dataset_keeps_any_frame_order_and_hands_a_model_uint8(tmp_path):
    """Records are read by offset, so a frame in no particular order comes out in its own order; the
    uint8 batches training feeds are the same pixels, and the model (which casts them to its float32
    input) predicts exactly what it predicts from float32 batches."""
    from histoxai import model as models

    manifest = write_blob_manifest(tmp_path, n=24, size=32, encoding="zlib", seed=3)
    frame = read_manifest(manifest).sample(frac=1.0, random_state=0)
    assert not frame.equals(dataset.reading_order(frame))
    expected = np.stack([decode_image(shards.read_record(r.shard_uri, r.offset), "zlib", 32)
                         for r in frame.itertuples()])

    def read(dtype):
        return dataset.patch_dataset(frame, image_size=32, batch_size=8, cache="none", dtype=dtype)

    floats, pixels = (np.concatenate(list(read(dtype).as_numpy_iterator())) for dtype in ("float32", "uint8"))
    assert floats.dtype == np.float32 and pixels.dtype == np.uint8
    np.testing.assert_array_equal(pixels, expected)
    np.testing.assert_array_equal(floats, expected.astype(np.float32))
    net = models.build_model(configs.from_dict({**QUICK, "targets": ["MD"]}, "test"))
    np.testing.assert_array_equal(net.predict(read("uint8"), verbose=0)["MD"],
                                  net.predict(read("float32"), verbose=0)["MD"])
    with pytest.raises(ValueError, match="dtype 'int8'"):
        read("int8")


def test_patch_dataset_reads_old_png_shards_beside_new_zlib_ones(tmp_path):
    """A manifest that pools samples ingested before and after the default encoding changed."""
    frames = [read_manifest(write_blob_manifest(tmp_path / enc, n=10, size=32, encoding=enc, seed=k))
              for k, enc in enumerate(("png", "zlib"))]
    frame = dataset.reading_order(pd.concat(frames, ignore_index=True))
    batches = dataset.patch_dataset(frame, image_size=32, batch_size=6).as_numpy_iterator()
    images = np.concatenate(list(batches))
    expected = [decode_image(list(iter_records(row.shard_uri))[row.index], row.encoding, 32)
                for row in frame.itertuples()]
    np.testing.assert_array_equal(images, np.stack(expected).astype(np.float32))


def test_a_process_exits_while_an_iterator_is_still_reading(tmp_path):
    """An iterator alive at exit, its reads in flight: the process must end (it used to hang forever
    in finalization, or abort after writing its outputs), with exit code 0."""
    manifest = write_blob_manifest(tmp_path, n=200, size=64, encoding="zlib")
    code = ("from histoxai import dataset\nfrom histoxai.manifest import read_manifest\n"
            f"ds = dataset.patch_dataset(read_manifest({str(manifest)!r}), image_size=64, batch_size=8, "
            "cache='none', repeat=True)\n"
            "reading = iter(ds)\nnext(reading)\nprint('read one batch', flush=True)\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "read one batch" in done.stdout


def test_zlib_shards_written_by_cpythons_zlib_read_the_same(tmp_path):
    """Shards from before ISA-L (CPython's zlib at level 1) read unchanged: both are zlib streams."""
    frame = dataset.reading_order(read_manifest(write_blob_manifest(tmp_path / "new", n=10, size=32,
                                                                    encoding="zlib", seed=4)))
    def read(manifest):
        batches = dataset.patch_dataset(manifest, image_size=32, batch_size=4).as_numpy_iterator()
        return np.concatenate(list(batches))

    expected = read(frame)
    old_offsets = {}
    for shard in frame["shard_uri"].unique():
        payloads = list(iter_records(shard))
        with ShardWriter(shard) as writer:
            for index, payload in enumerate(payloads):
                old_offsets[(shard, index)] = writer.append(zlib.compress(shards.inflate(payload), 1))[1]
    old = frame.assign(offset=[old_offsets[(r.shard_uri, r.index)] for r in frame.itertuples()])
    assert (old["offset"] != frame["offset"]).any()  # other bytes: the records really were rewritten
    np.testing.assert_array_equal(read(old), expected)
    assert dataset.damaged_record(old) is None


def test_predict_returns_rows_in_the_callers_order_and_reads_gcs(tmp_path, gcs_bucket):
    import keras

    manifest = write_blob_manifest(tmp_path / "local", n=30, size=32, seed=3)
    remote = storage.join(gcs_bucket, "data")
    for path in sorted(Path(manifest).parent.rglob("*")):
        if path.is_file():
            storage.upload_file(path, storage.join(remote, path.relative_to(manifest.parent).as_posix()))
    frame = read_manifest(storage.join(remote, "split.parquet"))
    subset = frame.sample(frac=0.7, random_state=0)  # shuffled: shards interleaved, indices unordered
    inputs = keras.Input((16, 16, 3))  # also exercises resizing 32 -> 16 px
    mean_pixel = keras.layers.GlobalAveragePooling2D()(inputs)
    net = keras.Model(inputs, {"m": keras.layers.Lambda(lambda t: keras.ops.mean(t, axis=1,
                                                                              keepdims=True))(mean_pixel)})
    got = dataset.predict(net, subset, batch_size=4)
    local = read_manifest(manifest).loc[subset.index]
    expected = [decode_image(list(iter_records(shard))[i], "png", 32).mean()
                for shard, i in zip(local["shard_uri"], local["index"], strict=True)]
    assert list(got.index) == list(subset.index)
    np.testing.assert_allclose(got["m"], expected, atol=1.0)  # antialiased resize keeps the mean


# ---- training ----

def test_demo_config_learns_cell_count_and_writes_every_output(tmp_path, capsys):
    # 32 px and 15 epochs: test R² 0.90 in 13 s here (48 px and 25 epochs: 0.89 in 32 s)
    manifest = write_blob_manifest(tmp_path / "data", n=400, size=32, seed=4)
    config = configs.load_config("demo",
                                 {"targets": ["CC"], "image_size": 32, "finetune_epochs": 15})
    metrics = train(config, str(manifest), str(tmp_path / "out"))
    out = tmp_path / "out"
    assert sorted(p.name for p in out.iterdir()) == ["config.yaml", "history.csv", "metrics.json",
                                                     "model.keras", "tensorboard"]
    assert json.loads((out / "metrics.json").read_text()) == metrics
    assert metrics["r2"]["test"]["CC"] >= 0.8, metrics
    split_sizes = read_manifest(manifest)["split"].value_counts()
    assert metrics["n"] == {s: int(split_sizes[s]) for s in ("train", "val", "test")}
    history = pd.read_csv(out / "history.csv")
    assert list(history["epoch"]) == list(range(1, len(history) + 1))
    assert list(history["phase"].unique()) == ["frozen", "finetune"]
    assert {"loss", "CC_r2", "val_loss", "val_CC_r2", "learning_rate"} <= set(history.columns)
    assert configs.load_config(str(out / "config.yaml")) == config
    assert any((out / "tensorboard" / "validation").iterdir())
    assert "[finetune] epoch 3/15" in capsys.readouterr().out
    with pytest.raises(InputError, match="already holds a finished training"):
        train(config, str(manifest), str(out))


def test_same_config_twice_gives_the_same_metrics(tmp_path, blobs32, monkeypatch):
    from keras.src.backend.tensorflow.trainer import TensorFlowTrainer

    traces = []  # the train step's Python body runs once per trace of the train function
    original = TensorFlowTrainer.train_step
    monkeypatch.setattr(TensorFlowTrainer, "train_step",
                        lambda net, data: traces.append(1) or original(net, data))
    frame = read_manifest(blobs32)
    frame.loc[frame.index[::7], "FAIP"] = np.nan  # a target missing for some patches is left out
    manifest = tmp_path / "faip.parquet"
    frame.to_parquet(manifest)
    config = configs.from_dict({**QUICK, "targets": ["MD", "FAIP"], "monitor": "val_r2"})
    first = train(config, str(manifest), str(tmp_path / "a"))
    second = train(config, str(manifest), str(tmp_path / "b"))
    assert first == second
    # one trace per phase and training (histoxai.training.build_training_state): Keras alone traces twice
    assert len(traces) == 2 * 2
    assert first["n"]["train"] == int(((frame["split"] == "train") & frame["FAIP"].notna()).sum())
    pd.testing.assert_frame_equal(pd.read_csv(tmp_path / "a" / "history.csv").drop(columns="seconds"),
                                  pd.read_csv(tmp_path / "b" / "history.csv").drop(columns="seconds"))


def test_killed_run_resumes_after_its_last_epoch_on_gcs(tmp_path, gcs_bucket, blobs32, capsys,
                                                         python_forked):
    out = storage.join(gcs_bucket, "models", "cc")
    config_path = tmp_path / "quick.yaml"
    config_path.write_text(yaml.safe_dump({**QUICK, "frozen_epochs": 2, "finetune_epochs": 3,
                                           "patience": 10}))
    # --data may name the split folder instead of its split.parquet
    args = ["train", "--config", str(config_path), "--data", str(blobs32.parent), "--targets", "CC",
            "--out", out]
    killed = python_forked(["-m", "histoxai.cli", *args, "--stop-after-epochs", "3"])
    assert killed.returncode == STOPPED_EXIT_CODE, killed.stderr[-3000:]
    assert "[finetune] epoch 1/3 (#3)" in killed.stdout
    assert not storage.exists(storage.join(out, "metrics.json"))
    state = json.loads(storage.read_text(storage.join(out, "checkpoints", "state.json")))
    assert (state["epoch"], state["phase"], state["phase_epochs"]) == (3, "finetune", 1)

    # A changed config cannot silently continue these checkpoints.
    assert main(args + ["--set", "learning_rate=0.01"]) == 2
    assert "another config (keys ['learning_rate']" in capsys.readouterr().err

    assert main(args) == 0
    printed = capsys.readouterr().out
    assert "resuming after epoch 3 (finetune phase, epoch 1)" in printed
    assert "[frozen]" not in printed and "epoch 1/3" not in printed and "[finetune] epoch 2/3 (#4)" in printed
    with storage.local_copy(storage.join(out, "history.csv")) as local:
        history = pd.read_csv(local)
    assert list(history["epoch"]) == [1, 2, 3, 4, 5]
    assert list(history["phase"]) == ["frozen", "frozen", "finetune", "finetune", "finetune"]
    assert list(history["phase_epoch"]) == [1, 2, 1, 2, 3]
    assert json.loads(storage.read_text(storage.join(out, "metrics.json")))["epochs"] == {
        "frozen": 2, "finetune": 3}


def test_killed_while_publishing_resumes_with_its_trained_weights(tmp_path, blobs32, capsys,
                                                                  python_forked):
    """A kill after the last epoch (while the results are written) leaves the checkpoints and a hidden
    partial folder; the next run clears the folder and publishes the trained weights, not fresh ones."""
    config_path = tmp_path / "quick.yaml"
    config_path.write_text(yaml.safe_dump(QUICK))
    out = tmp_path / "out"
    args = ["train", "--config", str(config_path), "--data", str(blobs32), "--targets", "CC",
            "--out", str(out)]
    code = ("import os, signal\nfrom histoxai import model\n"
            "model.inference_model = lambda net: os.kill(os.getpid(), signal.SIGKILL)\n"
            f"from histoxai.cli import main\nmain({args!r})\n")
    killed = python_forked(["-c", code], cwd=REPO)
    assert killed.returncode == -9, killed.stderr[-3000:]
    assert [p.name for p in out.iterdir()] == ["checkpoints"]
    assert any(p.name.startswith(".out.partial-") for p in tmp_path.iterdir())

    assert main(args) == 0
    assert "resuming after epoch 3 (finetune phase, finished)" in capsys.readouterr().out
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".out.")]
    metrics = json.loads((out / "metrics.json").read_text())
    history = pd.read_csv(out / "history.csv").set_index("epoch")
    # the published model is the best epoch's: its validation R² is the one that epoch logged
    assert metrics["r2"]["val"]["CC"] == pytest.approx(history.loc[metrics["best_epoch"], "val_CC_r2"],
                                                       abs=1e-4)
