"""Compile the pipeline to a KFP v2 YAML package, which Vertex AI Pipelines and Kubeflow Pipelines run.

--pipeline predict compiles the prediction pipeline instead: maps for every slide in a folder (or a
list) with a trained model or the registry's champion (run parameters slides_uri, model,
model_registry, slides, voxel_um, mpp, batch_size).

The package holds every step (ingest per sample, split, optional tuning, training of the multi-task
MD+FA and the single-task CC model, evaluation, saliency maps per model, report) and the run
parameters with their defaults; `histoxai submit --package` sends it, and the pipeline UI of either
platform accepts it as a pipeline template.

The GPU steps (tune, train, predict, explain) request ACCELERATOR_TYPE x COUNT, fixed in the package (KFP
2.17 cannot pass run parameters to accelerators inside ParallelFor and dsl.If; recompile to change
them). Vertex AI names accelerators NVIDIA_L4, NVIDIA_TESLA_T4, NVIDIA_A100_80GB, ...; open-source
Kubeflow wants the Kubernetes resource, nvidia.com/gpu. `--accelerator-type none` compiles without
accelerator requests (CPU-only clusters, e.g. minikube). Container images come from
HISTOXAI_CPU_IMAGE and HISTOXAI_GPU_IMAGE (the tags `make build` prints); without them the package
names the local dev tags histoxai-cpu:dev and histoxai-gpu:dev, which only minikube runs (compile
says so, and `histoxai submit` refuses them for Vertex AI).

Examples:
  histoxai compile --out pipeline.yaml
  histoxai compile --out gs://BUCKET/templates/histoxai.yaml --accelerator-type NVIDIA_TESLA_T4
  histoxai compile --out minikube.yaml --accelerator-type none --resources small --config demo
  histoxai compile --pipeline predict --out gs://BUCKET/templates/histoxai-predict.yaml
"""

from __future__ import annotations

import argparse

from histoxai.errors import InputError
from histoxai.pipelines.help import add_run_parameters_help

PIPELINES = ("train", "predict")  # what pipelines/pipeline.py compile_package builds


def add_compile_arguments(parser: argparse.ArgumentParser, caching: bool = True) -> None:
    """The options fixed at compile time; `caching=False` leaves out --no-cache (submit has its own)."""
    group = parser.add_argument_group("compile options (fixed in the package)")
    group.add_argument("--accelerator-type",
                       help="GPU steps' accelerator (default NVIDIA_L4; nvidia.com/gpu on Kubeflow; "
                            "none: no accelerator requests)")
    group.add_argument("--accelerator-count", type=int, help="accelerators per GPU step (default 1)")
    group.add_argument("--resources", choices=("cloud", "small"),
                       help="CPU and memory requests: cloud (ingest 4 CPU/16G, GPU steps 8 CPU/32G) or "
                            "small (minikube, laptops) (default cloud)")
    group.add_argument("--retries", type=int,
                       help="retries of the ingest and GPU steps, e.g. after a preemption (default 2)")
    group.add_argument("--pipeline", choices=PIPELINES, default="train",
                       help="train: the training DAG (default); predict: maps for new slides with a "
                            "trained or registered model (pipelines/predict_pipeline.py)")
    if caching:
        group.add_argument("--no-cache", action="store_true",
                           help="compile with step caching off (default on; submit can turn it off per run)")


COMPILE_OPTIONS = ("accelerator_type", "accelerator_count", "resources", "retries")


def compile_options(args: argparse.Namespace, config: str | None = None):
    """CompileOptions from the options given (the others keep CompileOptions' defaults)."""
    from histoxai.pipelines.params import config_text
    from histoxai.pipelines.pipeline import CompileOptions

    given = {name: getattr(args, name) for name in COMPILE_OPTIONS if getattr(args, name) is not None}
    return CompileOptions(**given, caching=not args.no_cache,
                          config_text=config_text(config) if config else "")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_run_parameters_help(parser, PIPELINES)  # --help lists both pipelines' run parameters
    parser.add_argument("--out", required=True, help="the YAML package to write, local or gs://")
    parser.add_argument("--config", help="default of the run parameter `config`: a YAML file, gs:// URI or "
                                         "a shipped name: demo, thesis (default: thesis)")
    add_compile_arguments(parser)


def run(args: argparse.Namespace) -> None:
    from histoxai.pipelines.pipeline import compile_package

    if args.config and args.pipeline != "train":
        raise InputError(f"--config: the {args.pipeline} pipeline trains nothing; leave out --config")
    options = compile_options(args, args.config)
    inputs = compile_package(args.out, options, pipeline=args.pipeline)
    required = [name for name, spec in inputs.items() if not spec.optional]
    gpu = (f"{options.accelerator_type} x {options.accelerator_count} per GPU step" if options.gpu
           else "no accelerator requests")
    print(f"wrote {args.out}: {len(inputs)} run parameters (required: {', '.join(required) or 'none'}); "
          f"{gpu}; caching {'on' if options.caching else 'off'}")
    print(images_line())


def images_line() -> str:
    """Which images the components were compiled with (bound when they were imported), and a warning
    when they are the local dev tags Vertex AI cannot pull."""
    from histoxai import images

    line = f"images: cpu {images.CPU_IMAGE}, gpu {images.GPU_IMAGE}"
    if images.dev_images((images.CPU_IMAGE, images.GPU_IMAGE)):
        line += (" (warning: local dev tags for minikube; Vertex AI cannot pull them: "
                 f"{images.DEV_HINT})")
    return line
