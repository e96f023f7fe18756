"""The prediction pipeline (KFP v2): maps for new slides from a trained or registered model.

DAG: list slides (the given ones, or every whole-slide file and sample folder in `slides_uri`) ->
ParallelFor over them: predict one slide on the GPU image (components/predict, `histoxai predict`) ->
each slide's maps, table and summary as a Dataset artifact in the pipeline root (gs:// on Vertex AI).
`model` is a training output folder or `registry:NAME@champion` (with `model_registry`), so a new
slide is always predicted by the serving model unless a run names another. Compiled and submitted like
the training pipeline: `histoxai compile --pipeline predict`, `histoxai submit --pipeline predict`.
"""

# No `from __future__ import annotations`: KFP reads the pipeline signature's types at runtime.
import functools

from kfp import dsl

from histoxai.pipelines.pipeline import CompileOptions, TaskSettings

PREDICT_PIPELINE_NAME = "histoxai-predict"
PREDICT_DESCRIPTION = "Predicted MD, FA and cell-count maps for new H&E slides, from histology alone"


@functools.lru_cache(maxsize=8)  # as build_pipeline: built once per options
def build_predict_pipeline(options: CompileOptions | None = None):
    """The prediction pipeline function for `options` (compile it, or call it under kfp.local)."""
    from histoxai.components.predict.component import list_slides, predict_slide
    from histoxai.components.predict.params import DEFAULTS as PREDICT

    tasks = TaskSettings(options or CompileOptions())

    @dsl.pipeline(name=PREDICT_PIPELINE_NAME, description=PREDICT_DESCRIPTION)
    def histoxai_predict(
        slides_uri: str,
        model: str,
        slides: list = [],  # noqa: B006 (KFP reads defaults from the signature)
        model_registry: str = "",
        voxel_um: float = PREDICT.voxel_um,
        mpp: float = PREDICT.mpp,
        batch_size: int = PREDICT.batch_size,
    ):
        listed = tasks.configure(list_slides(slides_uri=slides_uri, slides=slides), "light", "list slides")
        with dsl.ParallelFor(listed.output, name="slides") as slide:
            tasks.gpu_step(predict_slide(slide=slide, model=model, model_registry=model_registry,
                                         voxel_um=voxel_um, mpp=mpp, batch_size=batch_size), "predict slide")

    return histoxai_predict
