"""Shard reader benchmark: patches/s of histoxai.dataset at 360 px for each encoding, on the first
READER_PATCHES patches of the real-scale slide's ingest (the `ingest` section's phantom, rendered once
per `make bench`), beside the reader before; and each zlib codec's time per patch on one core."""

from __future__ import annotations

import shutil
import statistics
import sys
import time
from pathlib import Path

from tests.bench.common import real_scale_phantom, run_measured

READER_PATCHES = 1000  # patches re-encoded per encoding for the reader comparison
READER_BATCH = 32
READER_PASSES = 9  # timed passes per encoding; the median is reported (single passes move by 30 %)


def bench_reader(work: Path) -> dict:
    work.mkdir(parents=True, exist_ok=True)
    try:
        sample, _ = real_scale_phantom(work)
        run_measured([sys.executable, "-m", "histoxai.cli", "ingest", str(sample), "--out",
                      str(work / "ingest"), "--patch-size", "360"])
        reader, codecs = _reader_throughput(work / "ingest", work)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return {"case": f"the first {READER_PATCHES} patches (360 px) of sample 3's 80 x 80 voxel slide, "
                    f"batches of {READER_BATCH}, no cache, median of {READER_PASSES} passes",
            "reader_360px": reader, "codecs_360px": codecs}


def _reader_throughput(ingest_dir: Path, work: Path) -> tuple[dict, dict]:
    """patches/s of histoxai.dataset.patch_dataset (read, decode, batch; no cache) per encoding, on the
    same patches re-encoded: uint8 batches, as training and prediction read them (the model casts on
    its device); for zlib also float32 batches (the cast on the host, as saliency reads them) and the
    reader before (TFRecordDataset in record order, float32 batches), with the CPU time (all threads)
    per patch of those three. Each the median of READER_PASSES timed passes after one untimed one (the
    files then sit in the page cache). The passes go round the readers in turn, so a slow spell of
    this shared machine (single passes moved by up to 2x) falls on all of them alike instead of on
    one; CPU time per patch moves less than the rate when the machine is shared."""
    import pandas as pd

    from histoxai import shards
    from histoxai.dataset import patch_dataset
    from histoxai.manifest import read_manifest

    source = read_manifest(ingest_dir).head(READER_PATCHES)
    images = [shards.decode_image(shards.read_record(r.shard_uri, r.offset), r.encoding, r.patch_size)
              for r in source.itertuples()]
    size = int(source["patch_size"].iloc[0])
    frames, readers, sizes = {}, {}, {}
    for encoding in shards.ENCODINGS:
        path = work / f"reader-{encoding}.tfrecord"
        rows = []
        with shards.ShardWriter(path) as writer:
            for image in images:
                index, offset = writer.append(shards.encode_image(image, encoding))
                rows.append({"shard_uri": str(path), "index": index, "offset": offset,
                             "encoding": encoding, "patch_size": size})
        sizes[encoding] = path.stat().st_size / len(images)
        frames[encoding] = frame = pd.DataFrame(rows)
        readers[encoding] = (lambda f=frame: patch_dataset(f, image_size=size, batch_size=READER_BATCH,
                                                           cache="none", dtype="uint8"))
    readers["zlib_float32"] = lambda: patch_dataset(frames["zlib"], image_size=size, batch_size=READER_BATCH,
                                                    cache="none", dtype="float32")
    readers["zlib_before"] = lambda: _reader_before(frames["zlib"])
    timings = {name: [] for name in readers}
    cpu = {name: [] for name in readers}
    for _ in range(1 + READER_PASSES):
        for name, reader in readers.items():
            start, start_cpu = time.perf_counter(), time.process_time()
            for _batch in reader():
                pass
            timings[name].append(time.perf_counter() - start)
            cpu[name].append(time.process_time() - start_cpu)
    rate = {name: len(images) / statistics.median(t[1:]) for name, t in timings.items()}
    cpu_ms = {name: 1000 * statistics.median(t[1:]) / len(images) for name, t in cpu.items()}
    results = {encoding: {"patches_per_s": rate[encoding], "bytes_per_patch": sizes[encoding]}
               for encoding in shards.ENCODINGS}
    results["zlib"]["patches_per_s_float32"] = rate["zlib_float32"]
    results["zlib"]["patches_per_s_reader_before"] = rate["zlib_before"]
    results["zlib"]["cpu_ms_per_patch"] = {"uint8": cpu_ms["zlib"], "float32": cpu_ms["zlib_float32"],
                                           "reader_before": cpu_ms["zlib_before"]}
    return results, _codecs(images)


def _reader_before(frame):
    """The reader of commit 65603c9, for the ratio: one shard's records in record order through
    TensorFlow's TFRecordDataset (one thread), ISA-L inflating in tf.data's parallel calls, float32
    batches cast on the host."""
    import numpy as np
    import tensorflow as tf

    from histoxai import shards

    size = int(frame["patch_size"].iloc[0])

    def inflate(record):
        return np.frombuffer(shards.inflate(record), np.uint8)

    def decode(record):
        pixels = tf.numpy_function(inflate, [record], tf.uint8, stateful=False)
        return tf.reshape(pixels, (size, size, 3))

    (path,) = frame["shard_uri"].unique()
    return (tf.data.TFRecordDataset(path, buffer_size=1 << 20).take(len(frame))
            .map(decode, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
            .batch(READER_BATCH).map(lambda images: tf.cast(images, tf.float32),
                                     num_parallel_calls=tf.data.AUTOTUNE).prefetch(tf.data.AUTOTUNE))


def _codecs(images: list) -> dict:
    """Per patch on one core: CPython's zlib at level 1 (the encoder before) against the shards' own
    codec (histoxai.shards: ISA-L); both streams are zlib, so either inflater reads either."""
    import zlib

    import numpy as np

    from histoxai import shards

    results = {}
    for name, compress, decompress in (
            ("zlib level 1", lambda image: zlib.compress(np.ascontiguousarray(image).tobytes(), 1),
             zlib.decompress),
            (f"ISA-L level {shards.ZLIB_LEVEL}", lambda image: shards.encode_image(image, "zlib"),
             shards.inflate)):
        start = time.process_time()
        packed = [compress(image) for image in images]
        encode = time.process_time() - start
        start = time.process_time()
        for payload in packed:
            decompress(payload)
        decode = time.process_time() - start
        results[name] = {"encode_ms": 1000 * encode / len(images), "decode_ms": 1000 * decode / len(images),
                         "bytes_per_patch": sum(map(len, packed)) / len(images)}
    return results
