"""tf.data input from the patch manifest: read shard records, decode in parallel, cache, shuffle, batch.

Used by training (one split at a time) and by evaluate/explain to predict on any subset of patches.
Each record is read by the byte offset the manifest gives, in tf.data's parallel calls, and patches
come out in the frame's own order; `reading_order` (each shard's patches together, in record order,
as manifests are written) keeps the reads sequential on disk, and `predict` hands results back
aligned to the caller's rows.
"""

from __future__ import annotations

import atexit
import contextlib
import functools
import gc
import os
import re
from collections.abc import Iterator, Sequence

import numpy as np
import pandas as pd

from histoxai import shards, storage
from histoxai.errors import InputError
from histoxai.manifest import SPLITS

CACHE_MEMORY_FRACTION = 0.25  # cache="auto" keeps decoded patches in memory below this share of free RAM
LOCAL_SHARD = "shard_path"    # column added by `local_shards`: a local path TensorFlow can open
DECODE_ERROR = re.compile(r"image|PNG|JPEG|decode|reshape|zlib|inflate", re.IGNORECASE)  # a patch failed
IMAGE_DTYPES = ("float32", "uint8")


def select_split(frame: pd.DataFrame, split: str, source: str = "manifest") -> pd.DataFrame:
    """The rows of one split ('train', 'val', ...), in manifest order."""
    if "split" not in frame.columns:
        raise InputError(f"{source}: no 'split' column; expected the output of `histoxai split`")
    if split not in SPLITS:
        raise InputError(f"split {split!r}: expected one of {list(SPLITS)}")
    return frame[frame["split"] == split]


def check_targets(frame: pd.DataFrame, targets: Sequence[str], source: str = "manifest") -> None:
    for target in targets:
        if target not in frame.columns:
            raise InputError(f"{source}: no column {target!r}; expected a target column "
                             f"(manifest columns: {sorted(frame.columns)})")
        if not pd.api.types.is_numeric_dtype(frame[target]):
            raise InputError(f"{source}: column {target!r} is {frame[target].dtype}; expected numbers")


def _reading_positions(frame: pd.DataFrame) -> np.ndarray:
    shard_rank = pd.factorize(frame["shard_uri"])[0]
    return np.lexsort((frame["index"].to_numpy(), shard_rank))


def reading_order(frame: pd.DataFrame) -> pd.DataFrame:
    """The frame sorted as the records are read: shards in order of first appearance, then index."""
    return frame.iloc[_reading_positions(frame)]


@contextlib.contextmanager
def local_shards(frame: pd.DataFrame) -> Iterator[pd.DataFrame]:
    """The frame with a `shard_path` column: local shards as they are, gs:// shards downloaded
    to a temporary folder that lives as long as the block."""
    from histoxai.outputs import scratch_dir

    uris = list(dict.fromkeys(frame["shard_uri"]))
    with scratch_dir("shards") as tmp:
        paths = {}
        for i, uri in enumerate(uris):
            if storage.is_gcs(uri):
                paths[uri] = os.path.join(tmp, f"{i:05d}.tfrecord")
                storage.download_file(uri, paths[uri])
            elif not os.path.exists(uri):
                raise InputError(f"{uri}: shard named by the manifest not found")
            else:
                paths[uri] = uri
        yield frame.assign(**{LOCAL_SHARD: frame["shard_uri"].map(paths)})


# A record that is not intact comes back empty instead of raising: TensorFlow would print the Python
# traceback of every failed call; the graph's reshape turns the empty patch into one short error, which
# `read_errors` then replaces by one line naming the record. (A graph assert instead would make the
# map stateful, and tf.data would run it on one thread.)
_DAMAGED = np.empty(0, np.uint8)


def _read_pixels(path: bytes, offset: np.int64, inflate: bool) -> np.ndarray:
    # ISA-L inflates without holding the GIL, so tf.data's parallel calls use every core (docs/steps.md,
    # shard format: faster than the graph's tf.io.decode_compressed)
    try:
        payload = shards.read_local_record(path, int(offset))
        return np.frombuffer(shards.inflate(payload) if inflate else payload, np.uint8)
    except ValueError:
        return _DAMAGED


def _read_payload(path: bytes, offset: np.int64) -> bytes:
    try:
        return shards.read_local_record(path, int(offset))
    except ValueError:
        return b""  # not an image: decode_image fails with one line


def _decoder(frame: pd.DataFrame, image_size: int):
    """A graph function (position in frame, shard path, byte offset) -> uint8 (size, size, 3) image."""
    import tensorflow as tf

    encodings = frame["encoding"].astype(str)
    unknown = sorted(set(encodings) - set(shards.ENCODINGS))
    if unknown:
        raise InputError(f"manifest column 'encoding': values {unknown}; "
                         f"expected one of {list(shards.ENCODINGS)}")
    codes = tf.constant(encodings.map(shards.ENCODINGS.index).to_numpy().astype(np.int32))
    sizes = tf.constant(frame["patch_size"].to_numpy().astype(np.int32))
    need_resize = bool((frame["patch_size"] != image_size).any())

    def decode(position, path, offset):
        size = sizes[position]

        def pixels(inflate: bool):
            flat = tf.numpy_function(_read_pixels, [path, offset, inflate], tf.uint8, stateful=False)
            return tf.reshape(flat, tf.stack([size, size, 3]))  # an empty (damaged) patch fails here

        def image_file():
            payload = tf.numpy_function(_read_payload, [path, offset], tf.string, stateful=False)
            return tf.io.decode_image(tf.reshape(payload, []), channels=3, expand_animations=False)

        branches = {"zlib": lambda: pixels(True), "png": image_file, "jpeg": image_file,
                    "raw": lambda: pixels(False)}
        image = tf.switch_case(codes[position], [branches[name] for name in shards.ENCODINGS])
        if need_resize:
            image = tf.image.resize(image, (image_size, image_size), antialias=True)
            image = tf.cast(tf.clip_by_value(tf.round(image), 0, 255), tf.uint8)
        return tf.ensure_shape(image, (image_size, image_size, 3))

    return decode


def _locations(frame: pd.DataFrame):
    """(position in frame, local shard path, byte offset) for each of the frame's rows, in its order."""
    import tensorflow as tf

    path_column = LOCAL_SHARD if LOCAL_SHARD in frame.columns else "shard_uri"
    paths = frame[path_column].astype(str)
    if paths.str.startswith(storage.GS_PREFIX).any():
        raise InputError("gs:// shards must be copied first: wrap the call in dataset.local_shards(frame)")
    return tf.data.Dataset.from_tensor_slices((np.arange(len(frame)), paths.to_numpy(),
                                               frame["offset"].to_numpy(np.int64)))


def _release_iterators_at_exit() -> None:
    """Frees every tf.data iterator still alive, while Python can still run the reader's calls.

    An iterator freed during interpreter finalization waits for its in-flight `numpy_function` reads,
    but those threads can no longer take the GIL: the process hangs, or aborts ("terminate called
    without an active exception") after its outputs were written (tests/test_train.py holds an
    iterator to the end of a process). Dropping the iterator's resource here frees it normally.
    """
    from tensorflow.python.data.ops import iterator_ops

    gc.collect()
    for obj in gc.get_objects():
        # type(), not isinstance(): isinstance reads __class__, which a dead weakref proxy raises on
        if issubclass(type(obj), iterator_ops.OwnedIterator):
            obj.__dict__.pop("_iterator_resource", None)


_release_at_exit = functools.cache(lambda: atexit.register(_release_iterators_at_exit))


def _fits_in_memory(n: int, image_size: int) -> bool:
    import psutil

    return n * image_size * image_size * 3 <= CACHE_MEMORY_FRACTION * psutil.virtual_memory().available


def patch_dataset(frame: pd.DataFrame, *, image_size: int, batch_size: int,
                  targets: Sequence[str] | None = None, shuffle_seed: int | None = None,
                  cache: str = "auto", repeat: bool = False, dtype: str = "float32"):
    """Batches of images (0-255) in the frame's order, with a dict of float32 targets when `targets`
    is given.

    dtype 'float32' suits code that perturbs or differentiates the pixels (saliency); 'uint8' hands a
    model the stored pixels, which the model casts to its float32 input on its own device: a quarter
    of the bytes to copy to an accelerator, and no cast on the host's cores (training and `predict`).
    shuffle_seed=None keeps the frame's order; a seed reshuffles every epoch, the same way on every
    run. cache: 'memory', 'none' or 'auto' (memory when the decoded patches take under a quarter of
    the free RAM).
    """
    import tensorflow as tf

    if len(frame) == 0:
        raise InputError("no patches to read (the selected split is empty)")
    if dtype not in IMAGE_DTYPES:
        raise ValueError(f"dtype {dtype!r}: expected one of {IMAGE_DTYPES}")
    labels = None
    if targets:
        check_targets(frame, targets)
        values = frame[list(targets)].to_numpy(dtype=np.float32)
        if not np.isfinite(values).all():
            raise InputError(f"targets {list(targets)}: NaN or infinite values among the selected patches; "
                             "expected finite numbers (drop those rows first)")
        labels = tf.constant(values)
    decode = _decoder(frame, image_size)
    _release_at_exit()
    ds = _locations(frame).map(lambda position, path, offset: (position, decode(position, path, offset)),
                               num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    cached = cache == "memory" or (cache == "auto" and _fits_in_memory(len(frame), image_size))
    if cached:
        ds = ds.cache()
    if shuffle_seed is not None:
        # A full shuffle when the patches sit in memory anyway; otherwise a bounded buffer.
        ds = ds.shuffle(len(frame) if cached else min(len(frame), 1024), seed=shuffle_seed,
                        reshuffle_each_iteration=True)
    if repeat:
        ds = ds.repeat()
    ds = ds.batch(batch_size)

    def to_model(positions, images):
        if dtype == "float32":
            images = tf.cast(images, tf.float32)
        if labels is None:
            return images
        rows = tf.gather(labels, positions)
        return images, {t: rows[:, i:i + 1] for i, t in enumerate(targets)}

    ds = ds.map(to_model, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    return ds.prefetch(tf.data.AUTOTUNE)


def predict(model, frame: pd.DataFrame, *, batch_size: int = 64) -> pd.DataFrame:
    """One column per model output, row for row with `frame`: predictions for any subset of patches."""
    positions = _reading_positions(frame)
    ordered = frame.iloc[positions]
    image_size = int(model.input_shape[1])
    with local_shards(ordered) as local, read_errors(local):
        ds = patch_dataset(local, image_size=image_size, batch_size=batch_size, cache="none", dtype="uint8")
        outputs = model.predict(ds, verbose=0)
    if not isinstance(outputs, dict):
        outputs = dict(zip(model.output_names, outputs if isinstance(outputs, list) else [outputs],
                           strict=True))
    columns = {}
    for name, values in outputs.items():
        values = np.asarray(values, dtype=np.float64).reshape(-1)
        if len(values) != len(frame):
            raise InputError(f"read {len(values)} patches but the manifest lists {len(frame)}; "
                             "a shard is shorter than its manifest says")
        columns[name] = np.empty(len(frame))
        columns[name][positions] = values
    return pd.DataFrame(columns, index=frame.index)


def damaged_record(frame: pd.DataFrame, decode: bool = True) -> InputError | None:
    """One InputError naming the shard, record and patch of the first damaged record among the frame's
    shards (framing and checksums read from each shard's start, record offsets against the manifest's,
    then, with `decode`, image decoding), or None when every record is sound."""
    path_column = LOCAL_SHARD if LOCAL_SHARD in frame.columns else "shard_uri"
    groups = list(frame.groupby(path_column, sort=False))

    def error(rows: pd.DataFrame, index: int, offset: int, why: str) -> InputError:
        patch = rows[rows["index"] == index]
        where = (f"; sample {patch['sample'].iloc[0]}, row {patch['row'].iloc[0]}, col {patch['col'].iloc[0]}"
                 if len(patch) else "")
        return InputError(f"{rows['shard_uri'].iloc[0]}: record {index} (byte offset {offset}{where}) is "
                          f"damaged: {why}; expected an intact shard as `histoxai ingest` writes it "
                          "(ingest that sample again)")

    for path, rows in groups:
        offsets = dict(zip(rows["index"].astype(int), rows["offset"].astype(int), strict=True))
        found = shards.find_damage(path, int(rows["index"].max()) + 1, offsets)
        if found is not None:
            return error(rows, *found)
    for path, rows in groups if decode else ():  # framing intact: look for a payload that does not decode
        with open(path, "rb") as fh:
            for index, offset, encoding, size in zip(rows["index"], rows["offset"], rows["encoding"],
                                                     rows["patch_size"], strict=True):
                fh.seek(int(offset))
                (length,) = np.frombuffer(fh.read(8), "<u8")
                fh.seek(4, os.SEEK_CUR)
                why = shards.undecodable(fh.read(int(length)), str(encoding), int(size))
                if why is not None:
                    return error(rows, int(index), int(offset), why)
    return None


@contextlib.contextmanager
def read_errors(frame: pd.DataFrame) -> Iterator[None]:
    """Around code that reads the frame's patches through tf.data: TensorFlow's error on a damaged or
    short shard becomes one InputError naming the shard file, the record and its patch (found by
    re-reading the frame's shards record by record); any other error passes unchanged."""
    import tensorflow as tf

    try:
        yield
    except (tf.errors.DataLossError, tf.errors.InvalidArgumentError, tf.errors.FailedPreconditionError,
            tf.errors.OutOfRangeError) as err:
        # Decoding every patch again is worth it only when TensorFlow failed on an image.
        decode = isinstance(err, tf.errors.InvalidArgumentError) and bool(DECODE_ERROR.search(str(err)))
        found = damaged_record(frame, decode=decode)
        if found is None:
            raise
        raise found from err
