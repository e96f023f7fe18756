"""The SavedModel export of a trained `.keras` model: what a TensorFlow prediction container serves.

A registered version carries its model twice: `model.keras` for this project's own steps (saliency,
evaluation) and `saved_model/`, a TensorFlow SavedModel whose `serving_default` signature takes a batch
of images (float32, 0-255, [batch, size, size, 3]) and returns one output per target. Vertex AI's
prebuilt TensorFlow prediction containers serve that folder as it is, without this project's code:
the custom layers are traced into the graph, and augmentation layers are exported in inference mode.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

from histoxai.errors import InputError

SERVING_SIGNATURE = "serving_default"


def export_saved_model(model_file: Path, dest: Path) -> Path:
    """Write the SavedModel of the `.keras` model at `model_file` (local or gs://) to the local folder
    `dest` (replaced when it exists); returns `dest`."""
    from histoxai.console import import_tensorflow

    import_tensorflow()
    import keras

    from histoxai import model as _registers_custom_layers  # noqa: F401 (what the file names)
    from histoxai import storage

    dest = Path(dest)
    if dest.exists() and not dest.is_dir():
        raise InputError(f"{dest}: exists and is not a folder; expected a folder for the SavedModel")
    with storage.local_copy(str(model_file)) as local:
        try:  # no optimizer state: serving needs the weights and the graph only
            model = keras.models.load_model(local, compile=False)
        except (ValueError, OSError) as err:
            raise InputError(f"{model_file}: not a loadable .keras model ({err})") from err
    if not isinstance(model, keras.Model):
        raise InputError(f"{model_file}: holds a {type(model).__name__}, expected a Keras model")
    dest.parent.mkdir(parents=True, exist_ok=True)
    # built beside dest and renamed into place, so a failed export leaves no half-written folder
    stage = Path(tempfile.mkdtemp(dir=dest.parent, prefix=f".{dest.name}.partial-"))
    try:
        target = stage / "export"
        _write(model, target)
        if dest.exists():
            shutil.rmtree(dest)
        target.rename(dest)
    finally:
        shutil.rmtree(stage, ignore_errors=True)
    return dest


def _write(model, target: Path) -> None:
    """model.export(format="tf_saved_model") with the forward pass pinned to inference mode: a plain
    export calls the model with `training` unset, and Keras' RandomFlip then defaults to flipping."""
    import keras
    import tensorflow as tf

    if len(model.inputs) != 1:
        raise InputError(f"model with {len(model.inputs)} inputs; expected one image input to serve")
    (images,) = model.inputs
    spec = tf.TensorSpec(shape=tuple(images.shape), dtype=images.dtype, name=images.name.split(":")[0])
    archive = keras.export.ExportArchive()
    archive.track(model)
    archive.add_endpoint("serve", lambda batch: model(batch, training=False), input_signature=[spec])
    archive.write_out(str(target), verbose=False)
