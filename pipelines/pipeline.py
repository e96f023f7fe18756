"""The histoxai pipeline (KFP v2): ingest per sample, split, [tune], train x2, predict x4, evaluate,
[register], explain, report.

DAG: the config is checked first (resolve config); ingest fans out over the samples (ParallelFor);
split pools the training samples; with `tuning` on, an Optuna study (the tune step) picks the config,
else the given one is used (dsl.If / dsl.Else joined by dsl.OneOf); the multi-task (MD, FA) and the
single-task (CC) models train in parallel, and with tuning the one whose targets were tuned publishes
the study's best trial instead of training that config again (histoxai/reuse.py); the predict steps
(GPU image) predict every patch with each model and with the registry's champions (fetched by the
champion steps; none when `model_registry` is ""); evaluate scores them all on every sample from those
predictions, loading no model; with a registry, the register steps add each model as a new version
and promote it only when it beats its champion (components/register); explain runs per model, fanned
out over shard ranges; the report sums up the run.

`build_pipeline(options)` returns the @dsl.pipeline function. What a run may change is a pipeline
parameter; what KFP fixes when it compiles is a CompileOptions field: CPU and memory requests, the
accelerator type and count, retries, caching, and the parameters' defaults.

Accelerators are compile-time constants (CompileOptions.accelerator_type / accelerator_count) on the
GPU steps (tune, train, predict, explain). KFP 2.17 would accept pipeline parameters there, but its compiler
does not hand them into ParallelFor and dsl.If sub-DAGs (the explain fan-out, the tune branch): the
compiled task reads an input its loop never declares and the run fails with "Parent pipeline input
argument 'pipelinechannel--accelerator_count' not found". Vertex AI names accelerators NVIDIA_L4,
NVIDIA_TESLA_T4, ...; open-source KFP wants a Kubernetes resource such as nvidia.com/gpu;
"none" compiles no accelerator requests (CPU-only clusters).
"""

# No `from __future__ import annotations`: KFP reads the pipeline signature's types at runtime.
import contextlib
import dataclasses
import functools
import inspect
import re
import sys
from pathlib import Path
from typing import NamedTuple

from kfp import dsl
from kfp.dsl import HTML, Artifact

from histoxai import storage
from histoxai.artifacts import CODE_VERSION_ENV, code_version
from histoxai.errors import InputError, did_you_mean

PIPELINE_NAME = "histoxai"
DESCRIPTION = "Explainable CNNs on H&E histology that predict diffusion-MRI MD, FA and the cell count"
ALL_SAMPLES = tuple(str(n) for n in range(1, 17))  # the 16 samples of Brabec et al. 2023
DEFAULT_CONFIG = "thesis"  # shipped in histoxai/configs/
NO_ACCELERATOR = "none"
KUBERNETES_ACCELERATOR_EXAMPLE = "nvidia.com/gpu"  # open-source KFP: a Kubernetes resource name has a '/'
MODELS = ("multitask", "single_task")

# (cpu, memory) per step class; Vertex AI picks the machine from these, Kubernetes schedules by them.
RESOURCE_PROFILES = {
    "cloud": {"ingest": ("4", "16G"), "light": ("1", "4G"), "evaluate": ("4", "16G"), "gpu": ("8", "32G")},
    "small": {"ingest": ("1", "2G"), "light": ("0.5", "1G"), "evaluate": ("1", "4G"), "gpu": ("1", "4G")},
}


@dataclasses.dataclass(frozen=True)
class CompileOptions:
    """What is fixed in the compiled pipeline; a run can change everything else."""

    accelerator_type: str = "NVIDIA_L4"  # "none": no accelerator requests
    accelerator_count: int = 1
    resources: str = "cloud"
    retries: int = 2  # per ingest and GPU task: preemptible workers come back after a preemption
    caching: bool = True
    config_text: str = ""  # default of the `config` parameter (one line of YAML); "" = shipped `thesis`
    code_version: str = ""  # "" = the package version and git commit now

    def __post_init__(self):
        if self.resources not in RESOURCE_PROFILES:
            raise InputError(f"--resources {self.resources}: expected one of {', '.join(RESOURCE_PROFILES)}")
        if isinstance(self.accelerator_count, bool) or not isinstance(self.accelerator_count, int) \
                or self.accelerator_count < 1:
            raise InputError(f"--accelerator-count {self.accelerator_count}: expected an integer >= 1")
        if not self.accelerator_type.strip():
            raise InputError("--accelerator-type: empty; expected e.g. NVIDIA_L4 (Vertex AI), "
                             f"{KUBERNETES_ACCELERATOR_EXAMPLE} (Kubeflow) or {NO_ACCELERATOR}")
        object.__setattr__(self, "accelerator_type", accelerator_name(self.accelerator_type))
        if isinstance(self.retries, bool) or not isinstance(self.retries, int) or self.retries < 0:
            raise InputError(f"--retries {self.retries}: expected an integer >= 0")

    @property
    def gpu(self) -> bool:
        return self.accelerator_type.lower() != NO_ACCELERATOR


def vertex_accelerators() -> tuple[str, ...]:
    """The accelerator names Vertex AI accepts: the installed google-cloud-aiplatform's AcceleratorType
    (imported when asked, about 0.5 s: only a name that is neither `none` nor a Kubernetes resource)."""
    from google.cloud.aiplatform_v1.types import AcceleratorType

    return tuple(m.name for m in AcceleratorType if m.name != "ACCELERATOR_TYPE_UNSPECIFIED")


def accelerator_name(given: str) -> str:
    """`given` as the compiled package names it: `none`, a Kubernetes resource (has a '/'), or a Vertex AI
    accelerator (upper-cased when only that makes it known); anything else is one InputError."""
    name = given.strip()
    if name.lower() == NO_ACCELERATOR:
        return NO_ACCELERATOR
    if "/" in name:
        return name
    known = vertex_accelerators()
    if name in known:
        return name
    if name.upper() in known:
        return name.upper()
    raise InputError(f"--accelerator-type {given}: not an accelerator Vertex AI knows"
                     f"{_accelerator_hint(name, known)}; expected one of {', '.join(known)}, "
                     f"a Kubernetes resource such as {KUBERNETES_ACCELERATOR_EXAMPLE}, or {NO_ACCELERATOR}")


def _accelerator_hint(name: str, known: tuple[str, ...]) -> str:
    """The known names that share the model (T4, A100, ...) with `name`, else the closest spelling:
    plain closeness alone offers NVIDIA_L4 for NVIDIA_T4."""
    if "." in name:  # a Kubernetes resource without its '/'
        return f" (did you mean {KUBERNETES_ACCELERATOR_EXAMPLE}?)"
    models = set(re.split(r"[_\-\s]+", name.upper())) - {"NVIDIA", "TESLA", ""}
    sharing = [k for k in known if models & set(k.split("_"))]
    if 1 <= len(sharing) <= 3:
        return f" (did you mean {' or '.join(sharing)}?)"
    return did_you_mean(name.upper(), sharing or known)


class _CallerName:
    """Stands in for the `inspect` module in kfp.dsl.pipeline_task, whose every PipelineTask.set_* call
    runs inspect.stack()[1][3] only to name itself in an error message. inspect.stack() reads every
    frame's source and module; in a process with TensorFlow and a test runner loaded that took about
    0.1 s per call, 100 calls per pipeline: 9 s per build in the test suite against 0.6 s in a fresh
    process. This returns the same name from the frame alone."""

    @staticmethod
    def stack():
        return [None, (None, None, None, sys._getframe(2).f_code.co_name)]

    def __getattr__(self, name):
        return getattr(inspect, name)


@contextlib.contextmanager
def _cheap_caller_names():
    from kfp.dsl import pipeline_task

    real = pipeline_task.inspect
    pipeline_task.inspect = _CallerName()
    try:
        yield
    finally:
        pipeline_task.inspect = real


class TaskSettings:
    """How a pipeline's tasks run under `options`: resources by step class, caching, the code version,
    retries, and the accelerator of the GPU steps (shared by the training and prediction pipelines)."""

    def __init__(self, options: CompileOptions):
        self.options = options
        self.profile = RESOURCE_PROFILES[options.resources]
        self.version = options.code_version or code_version()

    def configure(self, task, kind: str, display_name: str, retry: bool = False):
        cpu, memory = self.profile[kind]
        with _cheap_caller_names():
            task.set_display_name(display_name).set_caching_options(self.options.caching)
            task.set_cpu_request(cpu).set_cpu_limit(cpu).set_memory_request(memory).set_memory_limit(memory)
            task.set_env_variable(CODE_VERSION_ENV, self.version)
            if retry and self.options.retries:
                task.set_retry(num_retries=self.options.retries, backoff_duration="60s", backoff_factor=2.0)
        return task

    def gpu_step(self, task, display_name: str):
        self.configure(task, "gpu", display_name, retry=True)
        if self.options.gpu:
            with _cheap_caller_names():
                task.set_accelerator_type(self.options.accelerator_type)
                task.set_accelerator_limit(self.options.accelerator_count)
        return task


class Outputs(NamedTuple):
    report: HTML
    summary: Artifact


@functools.lru_cache(maxsize=8)  # kfp builds the graph in seconds; a built pipeline can be called again
def build_pipeline(options: CompileOptions = CompileOptions()):
    """The pipeline function for `options` (compile it, or call it under kfp.local)."""
    from histoxai.components.evaluate.component import evaluate_models
    from histoxai.components.evaluate.params import DEFAULTS as EVALUATE
    from histoxai.components.explain.component import explain_model
    from histoxai.components.explain.params import DEFAULTS as EXPLAIN
    from histoxai.components.ingest.component import ingest
    from histoxai.components.ingest.params import DEFAULTS as INGEST
    from histoxai.components.predict.component import predict_model
    from histoxai.components.predict.params import DEFAULTS as PREDICT
    from histoxai.components.register.component import champion_model, register_model
    from histoxai.components.register.params import DEFAULTS as REGISTER
    from histoxai.components.report.component import report
    from histoxai.components.split.component import split
    from histoxai.components.split.params import DEFAULTS as SPLIT
    from histoxai.components.train.component import resolve_config, train_model
    from histoxai.components.train.params import DEFAULTS as TRAIN
    from histoxai.components.tune.component import tune_step
    from histoxai.components.tune.params import DEFAULTS as TUNE
    from histoxai.pipelines.params import config_text, search_space

    config_default = options.config_text or config_text(DEFAULT_CONFIG)
    space_default = search_space(TUNE.search_space)
    tasks = TaskSettings(options)
    configure, gpu_step = tasks.configure, tasks.gpu_step

    @dsl.pipeline(name=PIPELINE_NAME, description=DESCRIPTION)
    def histoxai_pipeline(
        samples_uri: str,
        samples: list = list(ALL_SAMPLES),  # noqa: B006 (KFP reads defaults from the signature)
        train_samples: list = list(SPLIT.train_samples),  # noqa: B006
        patch_size: int = INGEST.patch_size,
        erosion: int = INGEST.erosion,
        encoding: str = INGEST.encoding,
        shard_size: int = INGEST.shard_size,
        split_strategy: str = SPLIT.strategy,
        split_fractions: list = list(SPLIT.fractions),  # noqa: B006
        split_seed: int = SPLIT.seed,
        split_block_size: int = SPLIT.block_size,
        split_guard: int = SPLIT.guard,
        config: str = config_default,
        config_overrides: list = [],  # noqa: B006
        multitask_targets: str = TRAIN.multitask_targets,
        single_task_targets: str = TRAIN.single_task_targets,
        tensorboard: str = TRAIN.tensorboard,
        tuning: bool = False,
        tuning_trials: int = TUNE.tuning_trials,
        tuning_timeout_s: float = TUNE.timeout_s,
        tuning_targets: str = TUNE.targets,
        tuning_startup_trials: int = TUNE.startup_trials,
        tuning_search_space: dict = space_default,
        evaluate_baseline_summary: str = EVALUATE.baseline_summary,
        evaluate_baseline_repeats: int = EVALUATE.baseline_repeats,
        predict_batch_size: int = PREDICT.batch_size,
        explain_methods: list = list(EXPLAIN.methods),  # noqa: B006
        explain_scores: str = ",".join(EXPLAIN.scores),
        explain_splits: str = ",".join(EXPLAIN.splits),
        explain_samples: str = ",".join(EXPLAIN.samples),
        explain_max_patches: int = EXPLAIN.max_patches,
        explain_shard_ranges: list = [EXPLAIN.shard_range],  # noqa: B006 ("0:4", "4:8": one task each)
        explain_phantom_dir: str = EXPLAIN.phantom_dir,
        explain_trust_patches: int = EXPLAIN.trust_patches,
        explain_nuclei: bool = EXPLAIN.nuclei,
        explain_nuclei_voxels: int = EXPLAIN.nuclei_voxels,
        model_registry: str = REGISTER.model_registry,
        multitask_model_name: str = REGISTER.multitask_model_name,
        single_task_model_name: str = REGISTER.single_task_model_name,
        promotion_metric: str = REGISTER.promotion_metric,
        promotion_margin: float = REGISTER.promotion_margin,
        promotion_tolerance: float = REGISTER.promotion_tolerance,
    ) -> Outputs:
        checked = configure(resolve_config(config=config, overrides=config_overrides), "light",
                            "check config")
        with dsl.ParallelFor(samples) as sample:
            ingested = configure(
                ingest(samples_uri=samples_uri, sample=sample, patch_size=patch_size, erosion=erosion,
                       encoding=encoding, shard_size=shard_size),
                "ingest", "ingest", retry=True)
        ingested.after(checked)  # a bad config fails the run before the long ingestion
        data = configure(
            split(manifests=dsl.Collected(ingested.outputs["data"]), train_samples=train_samples,
                  strategy=split_strategy, fractions=split_fractions, seed=split_seed,
                  block_size=split_block_size, guard=split_guard),
            "light", "split").outputs["data"]

        with dsl.If(tuning == True, name="tuning-on"):  # noqa: E712 (a KFP condition, not a Python test)
            study = gpu_step(
                tune_step(split=data, base_config=checked.outputs["values"], search_space=tuning_search_space,
                          targets=tuning_targets, objective_targets=TUNE.objective_targets,
                          tuning_trials=tuning_trials, timeout_s=tuning_timeout_s,
                          startup_trials=tuning_startup_trials, warmup_epochs=TUNE.warmup_epochs),
                "tune")
            tuned = configure(resolve_config(config_file=study.outputs["best_config"]), "light",
                              "tuned config")
        with dsl.Else(name="tuning-off"):
            given = configure(resolve_config(config=checked.outputs["config"]), "light", "given config")
        chosen = dsl.OneOf(tuned.outputs["config"], given.outputs["config"])
        # the best trial's training, which the training of the tuned targets publishes instead of
        # repeating it; without tuning an empty artifact: nothing to reuse
        reusable = dsl.OneOf(study.outputs["best_model"], given.outputs["finished_training"])

        models = {}
        for name, targets in zip(MODELS, (multitask_targets, single_task_targets), strict=True):
            trained = train_model(data=data, config=chosen, targets=targets, tensorboard=tensorboard,
                                  run_name=dsl.PIPELINE_JOB_NAME_PLACEHOLDER, tuned_model=reusable)
            models[name] = gpu_step(trained, f"train {name.replace('_', '-')}").outputs["model"]
        model_names = {"multitask": multitask_model_name, "single_task": single_task_model_name}
        # the champions are fetched before the trainings end and scored in the same evaluate step
        champions = {
            name: configure(champion_model(model_registry=model_registry, model_name=model_names[name]),
                            "light", f"champion {name.replace('_', '-')}").outputs["champion"]
            for name in MODELS}
        # every patch is predicted on the GPU; evaluate (CPU) then only reads the stamped files
        predicted = {}
        for name in MODELS:
            for key, model in ((name, models[name]), (f"{name}_champion", champions[name])):
                task = predict_model(model=model, data=data, name=key, batch_size=predict_batch_size)
                predicted[key] = gpu_step(task, f"predict {key.replace('_', '-')}").outputs["predictions"]
        evaluation = configure(
            evaluate_models(split=data, multitask_model=models["multitask"],
                            single_task_model=models["single_task"],
                            multitask_champion=champions["multitask"],
                            single_task_champion=champions["single_task"],
                            multitask_predictions=predicted["multitask"],
                            single_task_predictions=predicted["single_task"],
                            multitask_champion_predictions=predicted["multitask_champion"],
                            single_task_champion_predictions=predicted["single_task_champion"],
                            baseline_summary=evaluate_baseline_summary,
                            baseline_repeats=evaluate_baseline_repeats, seed=split_seed),
            "evaluate", "evaluate").outputs["evaluation"]
        with dsl.If(model_registry != "", name="registry-on"):
            for name in MODELS:
                registration = register_model(
                    model=models[name], split=data, evaluation=evaluation, evaluated_as=name,
                    model_registry=model_registry, model_name=model_names[name],
                    promotion_metric=promotion_metric, promotion_margin=promotion_margin,
                    promotion_tolerance=promotion_tolerance, run_name=dsl.PIPELINE_JOB_NAME_PLACEHOLDER)
                configure(registration, "evaluate", f"register {name.replace('_', '-')}")
        maps = {}
        for name in MODELS:
            with dsl.ParallelFor(explain_shard_ranges) as shard_range:
                explained = gpu_step(
                    explain_model(model=models[name], split=data, methods=explain_methods,
                                  targets=",".join(EXPLAIN.targets), scores=explain_scores,
                                  splits=explain_splits, samples=explain_samples,
                                  max_patches=explain_max_patches, shard_range=shard_range,
                                  phantom_dir=explain_phantom_dir, batch_size=EXPLAIN.batch_size,
                                  gradient_batch=EXPLAIN.gradient_batch,
                                  trust_patches=explain_trust_patches, nuclei=explain_nuclei,
                                  nuclei_voxels=explain_nuclei_voxels, seed=EXPLAIN.seed),
                    f"explain {name.replace('_', '-')}")
            maps[name] = dsl.Collected(explained.outputs["maps"])
        summary = configure(
            report(ingested=dsl.Collected(ingested.outputs["data"]), split=data,
                   multitask_model=models["multitask"], single_task_model=models["single_task"],
                   evaluation=evaluation, multitask_maps=maps["multitask"],
                   single_task_maps=maps["single_task"], samples=samples, train_samples=train_samples,
                   multitask_targets=multitask_targets, single_task_targets=single_task_targets,
                   tuning=tuning, config=chosen),
            "light", "report")
        return Outputs(report=summary.outputs["report_html"], summary=summary.outputs["summary"])

    return histoxai_pipeline




def compile_package(out: str, options: CompileOptions = CompileOptions(), pipeline: str = "train") -> dict:
    """Compile to a YAML package at OUT (local or gs://, written whole); returns the pipeline's inputs."""
    import tempfile

    from kfp import compiler

    if pipeline not in ("train", "predict"):
        raise InputError(f"--pipeline {pipeline}: expected train or predict")
    if pipeline == "predict":
        from histoxai.pipelines.predict_pipeline import build_predict_pipeline

        pipeline_func = build_predict_pipeline(options)
    else:
        pipeline_func = build_pipeline(options)
    with tempfile.TemporaryDirectory(prefix="histoxai-compile-") as tmp:
        package = Path(tmp) / "pipeline.yaml"
        compiler.Compiler().compile(pipeline_func, str(package))
        storage.write_bytes(out, package.read_bytes())
    return dict(pipeline_func.component_spec.inputs)


def task_count(arguments: dict, pipeline_func) -> int:
    """How many tasks a run with `arguments` executes (a local run's progress bar counts them)."""
    def value(name):
        return arguments.get(name, pipeline_func.component_spec.inputs[name].default)

    # check config, ingest per sample, split, [tune +] chosen config, two trainings, two champions,
    # four predictions (each model and champion), evaluate, [two registrations], explain per model and
    # shard range, report
    return (len(value("samples")) + 2 + (2 if value("tuning") else 1) + 2 + 2 + 2 * len(MODELS) + 1
            + (len(MODELS) if value("model_registry") else 0)
            + len(MODELS) * len(value("explain_shard_ranges")) + 1)
