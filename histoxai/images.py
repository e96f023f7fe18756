"""Container images the pipeline's components run in, chosen by configuration, never hard-coded.

Set HISTOXAI_CPU_IMAGE and HISTOXAI_GPU_IMAGE (e.g. the tags `make build` prints) before compiling;
the defaults are the local tags that the minikube scripts build, which Vertex AI cannot pull (it pulls
from a registry). Local runs (kfp.local's subprocess runner) ignore images and use the current
environment. CPU_IMAGE and GPU_IMAGE are read once, when this module is first imported (the components'
decorators take them then); cpu_image() and gpu_image() read the environment again when called.
"""

import os

CPU_ENV, GPU_ENV = "HISTOXAI_CPU_IMAGE", "HISTOXAI_GPU_IMAGE"
DEV_CPU_IMAGE, DEV_GPU_IMAGE = "histoxai-cpu:dev", "histoxai-gpu:dev"  # minikube's local tags
DEV_IMAGES = (DEV_CPU_IMAGE, DEV_GPU_IMAGE)
DEV_HINT = f"run `make build` and set {CPU_ENV} and {GPU_ENV} to the tags it prints before compiling"


def cpu_image() -> str:
    """The CPU steps' image the environment names now (ingest, split, evaluate, report)."""
    return os.environ.get(CPU_ENV) or DEV_CPU_IMAGE


def gpu_image() -> str:
    """The GPU steps' image the environment names now (tune, train, predict, explain)."""
    return os.environ.get(GPU_ENV) or DEV_GPU_IMAGE


def dev_images(images) -> list[str]:
    """Those of `images` that are the local dev tags (sorted, each once)."""
    return sorted({image for image in images if image in DEV_IMAGES})


CPU_IMAGE = cpu_image()  # ingest, split, evaluate, report
GPU_IMAGE = gpu_image()  # tune, train, predict, explain
