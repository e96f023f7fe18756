"""Container images the pipeline's components run in, chosen by configuration, never hard-coded.

Set HISTOXAI_CPU_IMAGE and HISTOXAI_GPU_IMAGE (e.g. the tags `make build` prints) before compiling;
the defaults are the local tags that the minikube scripts build. Local runs (kfp.local's subprocess
runner) ignore images and use the current environment.
"""

import os

CPU_IMAGE = os.environ.get("HISTOXAI_CPU_IMAGE", "histoxai-cpu:dev")  # ingest, split, evaluate, report
GPU_IMAGE = os.environ.get("HISTOXAI_GPU_IMAGE", "histoxai-gpu:dev")  # tune, train, explain
