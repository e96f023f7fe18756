"""KFP components of the predict step, on the GPU image: a model's predictions of every patch of a split
(the training pipeline), and the maps of new slides (the prediction pipeline)."""

from kfp import dsl
from kfp.dsl import HTML, Dataset, Input, Model, Output

from histoxai.images import CPU_IMAGE, GPU_IMAGE


@dsl.component(base_image=GPU_IMAGE, install_kfp_package=False)
def predict_model(
    model: Input[Model],
    data: Input[Dataset],
    name: str,
    batch_size: int,
    predictions: Output[Dataset],
):
    """Predict every patch of every sample of the split `data` with `model` (a training output folder,
    or a champion the champion step fetched) for the evaluate step, which then loads no model.
    predictions: <sample>.parquet per sample, stamped with the model's hash (the file the evaluate step
    writes as predictions/<name>/<sample>.parquet) and predictions.json; a champion folder naming no
    version gives only predictions.json. A retried task reuses its earlier attempt's files.
    Defaults: components/predict/params.py (the pipeline passes every value).
    """
    from histoxai.artifacts import location
    from histoxai.components.predict.split import predict_split

    # overwrite: a retried task may find an earlier attempt's output (its valid files are reused)
    info = predict_split(location(model), location(data), location(predictions), name=name,
                         batch_size=batch_size, overwrite=True, progress=False)
    predictions.metadata.update({"model": name, "model_sha256": info["model_sha256"],
                                 "samples": info["samples"], "n": info["n"], "reused": info["reused"]})


@dsl.component(base_image=CPU_IMAGE, install_kfp_package=False)
def list_slides(slides_uri: str, slides: list) -> list:
    """The slides to predict: `slides` (names within `slides_uri`, or full paths / gs:// URIs) when
    given, else every whole-slide file and sample folder directly in `slides_uri`."""
    from histoxai import storage
    from histoxai.errors import InputError
    from histoxai.slides import find_slides

    if not slides:
        return find_slides(slides_uri)
    named = [s if storage.is_gcs(s) or s.startswith("/") else storage.join(slides_uri, s) for s in slides]
    missing = [s for s in named if not storage.exists(s)]
    if missing:
        raise InputError(f"slides {', '.join(missing)}: not found; expected files or sample folders in "
                         f"{slides_uri}")
    return named


@dsl.component(base_image=GPU_IMAGE, install_kfp_package=False)
def predict_slide(
    slide: str,
    model: str,
    model_registry: str,
    voxel_um: float,
    mpp: float,
    batch_size: int,
    maps: Output[Dataset],
    summary: Output[HTML],
):
    """Predicted maps of one slide (a whole-slide file or a sample folder, local or gs://) by `model`: a
    training output folder, or registry:NAME@champion / registry:NAME@N with `model_registry`.
    maps: <slide id>/ with each target's map (.npz, .png, .tif in the slide's geometry), the table,
    the tissue mask and the summary, and prediction.json; summary: the slide's HTML summary.
    Defaults: components/predict/params.py (the pipeline passes every value)."""
    from histoxai import storage
    from histoxai.artifacts import location
    from histoxai.components.predict.outputs import SUMMARY_HTML
    from histoxai.components.predict.slides import predict_slides
    from histoxai.console import import_tensorflow

    import_tensorflow()
    info = predict_slides([slide], model, location(maps), voxel_um=voxel_um, mpp=mpp, batch_size=batch_size,
                          overwrite=True, progress=False, registry=model_registry)
    (entry,) = info["slides"]
    page = storage.join(location(maps), entry["id"], SUMMARY_HTML)
    storage.write_bytes(location(summary), storage.read_bytes(page))
    maps.metadata.update({"slide": slide, "model": model, "targets": info["model"]["targets"],
                          "grid": entry["grid"], "predicted": entry["predicted"]})
