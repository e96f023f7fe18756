"""The KFP pipeline: the compiled package (KFP loader, Vertex AI PipelineJob built offline) and its
parameters. A whole local run is in tests/test_pipeline_local_run.py, submission in tests/test_submit.py."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from histoxai.cli import main as histoxai_main
from histoxai.errors import InputError

REPO = Path(__file__).resolve().parents[1]
PREDICT_EXECUTORS = ("exec-predict-model", "exec-predict-model-2", "exec-predict-model-3",
                     "exec-predict-model-4")
GPU_EXECUTORS = ("exec-train-model", "exec-train-model-2", "exec-tune-step", "exec-explain-model",
                 "exec-explain-model-2", *PREDICT_EXECUTORS)


@pytest.fixture(scope="module")
def package(tmp_path_factory) -> Path:
    """The pipeline compiled by the CLI in a fresh process, with images named by the environment."""
    out = tmp_path_factory.mktemp("compiled") / "pipeline.yaml"
    env = {**os.environ, "HISTOXAI_CPU_IMAGE": "registry.example/histoxai-cpu:t1",
           "HISTOXAI_GPU_IMAGE": "registry.example/histoxai-gpu:t1"}
    done = subprocess.run([sys.executable, "-m", "histoxai.cli", "compile", "--out", str(out),
                           "--accelerator-type", "NVIDIA_TESLA_T4", "--accelerator-count", "2"],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "NVIDIA_TESLA_T4 x 2 per GPU step" in done.stdout
    return out


def test_package_structure(package):
    spec = yaml.safe_load(package.read_text())
    executors = spec["deploymentSpec"]["executors"]
    images = {name: e["container"]["image"] for name, e in executors.items()}
    for name, executor in executors.items():
        resources = executor["container"]["resources"]
        if name in GPU_EXECUTORS:
            assert resources["accelerator"] == {"resourceType": "NVIDIA_TESLA_T4", "resourceCount": "2",
                                                "type": "NVIDIA_TESLA_T4", "count": "2"}
            assert images[name] == "registry.example/histoxai-gpu:t1"
            assert resources["resourceMemoryLimit"] == "32G"
        else:
            assert "accelerator" not in resources, name
            assert images[name] == "registry.example/histoxai-cpu:t1"
        env = {e["name"]: e["value"] for e in executor["container"]["env"]}
        assert env["HISTOXAI_CODE_VERSION"].startswith("0.1.0")
    assert set(GPU_EXECUTORS) <= set(executors)

    components = spec["components"]
    loops = {name: c for name, c in components.items() if name.startswith("comp-for-loop")}
    root_tasks = spec["root"]["dag"]["tasks"]
    iterators = {name: task["parameterIterator"]["items"]["inputParameter"]
                 for name, task in root_tasks.items() if "parameterIterator" in task}
    assert sorted(iterators.values()) == ["pipelinechannel--explain_shard_ranges"] * 2 + [
        "pipelinechannel--samples"]
    assert len(loops) == 3
    ingest_loop = next(n for n, t in root_tasks.items()
                       if iterators.get(n) == "pipelinechannel--samples")
    assert "ingest" in components[f"comp-{ingest_loop}"]["dag"]["tasks"]
    # tuning is a condition; both branches feed the trainings through two OneOf outputs: the config, and
    # the best trial's model to reuse (the tuning-off branch's resolve gives an empty one)
    (branches,) = [c["dag"] for name, c in components.items() if name.startswith("comp-condition-branches")]
    by_name = {t["taskInfo"]["name"]: t for t in branches["tasks"].values()}
    assert by_name["tuning-on"]["triggerPolicy"]["condition"] == \
        "inputs.parameter_values['pipelinechannel--tuning'] == true"
    tuning_on = components[by_name["tuning-on"]["componentRef"]["name"]]["dag"]["tasks"]
    assert tuning_on["tune-step"]["inputs"]["artifacts"]["split"]
    oneof = branches["outputs"]["parameters"]
    assert [len(o["valueFromOneof"]["parameterSelectors"]) for o in oneof.values()] == [2]
    [(reusable_key, reusable)] = branches["outputs"]["artifacts"].items()
    assert sorted(s["outputArtifactKey"] for s in reusable["artifactSelectors"]) == [
        "pipelinechannel--resolve-config-3-finished_training", "pipelinechannel--tune-step-best_model"]
    for task in ("train-model", "train-model-2"):
        assert root_tasks[task]["inputs"]["artifacts"]["tuned_model"]["taskOutputArtifact"][
            "outputArtifactKey"] == reusable_key
        assert root_tasks[task]["retryPolicy"]["maxRetryCount"] == 2
        assert root_tasks[task]["cachingOptions"]["enableCache"] is True
        outputs = components[f"comp-{task}"]["outputDefinitions"]["artifacts"]
        assert outputs["metrics"]["artifactType"]["schemaTitle"] == "system.Metrics"
        assert outputs["model"]["artifactType"]["schemaTitle"] == "system.Model"
    assert components["comp-evaluate-models"]["outputDefinitions"]["artifacts"]["metrics"][
        "artifactType"]["schemaTitle"] == "system.Metrics"
    # every patch is predicted on the GPU image, by each model and champion, and evaluate reads them
    predicts = {t["taskInfo"]["name"]: t for n, t in root_tasks.items() if n.startswith("predict-model")}
    assert set(predicts) == {"predict multitask", "predict single-task", "predict multitask-champion",
                             "predict single-task-champion"}
    assert all(t["retryPolicy"]["maxRetryCount"] == 2 for t in predicts.values())
    assert all(images[e] == "registry.example/histoxai-gpu:t1" for e in PREDICT_EXECUTORS)
    evaluate_inputs = root_tasks["evaluate-models"]["inputs"]["artifacts"]
    fed = {name: spec["taskOutputArtifact"]["producerTask"] for name, spec in evaluate_inputs.items()
           if name.endswith("_predictions")}
    assert {name: root_tasks[task]["taskInfo"]["name"] for name, task in fed.items()} == {
        "multitask_predictions": "predict multitask", "single_task_predictions": "predict single-task",
        "multitask_champion_predictions": "predict multitask-champion",
        "single_task_champion_predictions": "predict single-task-champion"}
    report_outputs = components["comp-report"]["outputDefinitions"]["artifacts"]
    assert report_outputs["report_html"]["artifactType"]["schemaTitle"] == "system.HTML"
    assert report_outputs["report_markdown"]["artifactType"]["schemaTitle"] == "system.Markdown"


def test_package_loads_in_kfp_and_in_a_vertex_pipeline_job(package):
    from google.auth.credentials import AnonymousCredentials
    from google.cloud import aiplatform
    from kfp import components

    loaded = components.load_component_from_file(str(package))
    inputs = loaded.component_spec.inputs
    assert not inputs["samples_uri"].optional
    assert inputs["samples"].default == [str(n) for n in range(1, 17)]
    assert inputs["train_samples"].default == ["3", "4"]
    assert "EfficientNetV2S" in inputs["config"].default and "\n" not in inputs["config"].default
    assert set(loaded.component_spec.outputs) == {"report", "summary"}

    job = aiplatform.PipelineJob(
        display_name="offline", template_path=str(package), pipeline_root="gs://bucket/root",
        parameter_values={"samples_uri": "gs://bucket/samples", "samples": ["3", "4", "5"], "tuning": True,
                          "config_overrides": ["batch_size=8"]},
        enable_caching=False, project="histoxai-test", location="europe-west4",
        credentials=AnonymousCredentials(), labels={"team": "histo"})
    request = job._gca_resource  # the PipelineJob message submit() would send; nothing was sent
    values = request.runtime_config.parameter_values
    assert values["samples_uri"] == "gs://bucket/samples"
    assert list(values["samples"]) == ["3", "4", "5"] and values["tuning"] is True
    assert request.runtime_config.gcs_output_directory == "gs://bucket/root"
    assert request.labels == {"team": "histo"}
    assert request.pipeline_spec["pipelineInfo"]["name"] == "histoxai"


def test_compile_without_accelerators_and_small_resources(tmp_path):
    from histoxai.pipelines.pipeline import CompileOptions, compile_package

    out = tmp_path / "cpu.yaml"
    compile_package(str(out), CompileOptions(accelerator_type="none", resources="small", retries=0,
                                             caching=False, code_version="test-version"))
    spec = yaml.safe_load(out.read_text())
    executors = spec["deploymentSpec"]["executors"]
    assert not any("accelerator" in e["container"]["resources"] for e in executors.values())
    assert executors["exec-train-model"]["container"]["resources"]["resourceMemoryLimit"] == "4G"
    tasks = spec["root"]["dag"]["tasks"]
    assert "retryPolicy" not in tasks["train-model"]
    assert tasks["train-model"]["cachingOptions"] == {}  # caching off
    assert {e["value"] for e in executors["exec-report"]["container"]["env"]} == {"test-version"}


def test_compile_errors_are_one_line(tmp_path, capsys):
    assert histoxai_main(["compile", "--out", str(tmp_path / "p.yaml"), "--accelerator-count", "0"]) == 2
    assert capsys.readouterr().err.strip() == \
        "histoxai compile: error: --accelerator-count 0: expected an integer >= 1"
    assert histoxai_main(["compile", "--out", str(tmp_path / "p.yaml"), "--config", "nonesuch"]) == 2
    err = capsys.readouterr().err
    assert "--config nonesuch: no such file" in err and "demo, thesis" in err and len(err.splitlines()) == 1
    assert not (tmp_path / "p.yaml").exists()


def _compile_in_a_fresh_process(out: Path, images: dict) -> str:
    """`histoxai compile` in a process whose environment names `images` (none: the dev defaults); stdout."""
    env = {k: v for k, v in os.environ.items() if k not in ("HISTOXAI_CPU_IMAGE", "HISTOXAI_GPU_IMAGE")}
    done = subprocess.run([sys.executable, "-m", "histoxai.cli", "compile", "--out", str(out)],
                          cwd=REPO, env={**env, **images}, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_compile_prints_its_images(tmp_path):
    out = _compile_in_a_fresh_process(tmp_path / "dev.yaml", {})
    line = out.strip().splitlines()[-1]
    assert line.startswith("images: cpu histoxai-cpu:dev, gpu histoxai-gpu:dev (warning: "), line
    assert "Vertex AI cannot pull" in line and "make build" in line
    assert "HISTOXAI_CPU_IMAGE" in line and "HISTOXAI_GPU_IMAGE" in line
    out = _compile_in_a_fresh_process(tmp_path / "registry.yaml", {
        "HISTOXAI_CPU_IMAGE": "registry.example/histoxai-cpu:t2",
        "HISTOXAI_GPU_IMAGE": "registry.example/histoxai-gpu:t2"})
    assert out.strip().splitlines()[-1] == \
        "images: cpu registry.example/histoxai-cpu:t2, gpu registry.example/histoxai-gpu:t2"


def test_compile_checks_accelerator_names(tmp_path, capsys):
    out = tmp_path / "p.yaml"
    for given, hint in [("NVIDIA_T4", " (did you mean NVIDIA_TESLA_T4?)"),
                        ("nvidia_a100", " (did you mean NVIDIA_TESLA_A100 or NVIDIA_A100_80GB?)"),
                        ("nvidia.gpu", " (did you mean nvidia.com/gpu?)"), ("GPU", "")]:
        assert histoxai_main(["compile", "--out", str(out), "--accelerator-type", given]) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1, err
        assert err.startswith(f"histoxai compile: error: --accelerator-type {given}: not an accelerator "
                              f"Vertex AI knows{hint}; expected one of NVIDIA_TESLA_K80, "), err
        assert "NVIDIA_L4, " in err and err.endswith(
            ", a Kubernetes resource such as nvidia.com/gpu, or none")
        assert not out.exists()
    from histoxai.pipelines.pipeline import CompileOptions

    names = [("NVIDIA_L4", "NVIDIA_L4"), ("nvidia_tesla_t4", "NVIDIA_TESLA_T4"),
             ("nvidia.com/gpu", "nvidia.com/gpu"), ("amd.com/gpu", "amd.com/gpu"), ("none", "none")]
    for given, named in names:
        assert CompileOptions(accelerator_type=given).accelerator_type == named, given
    # one compile per kind of name (each builds the whole graph, seconds in a busy test process)
    for given, compiled in [("nvidia_tesla_t4", "NVIDIA_TESLA_T4"), ("nvidia.com/gpu", "nvidia.com/gpu"),
                            ("none", None)]:
        assert histoxai_main(["compile", "--out", str(out), "--accelerator-type", given]) == 0, given
        assert "images: cpu " in capsys.readouterr().out
        executor = yaml.safe_load(out.read_text())["deploymentSpec"]["executors"]["exec-train-model"]
        assert executor["container"]["resources"].get("accelerator", {}).get("resourceType") == compiled


def test_vertex_accelerators_include_the_ones_the_docs_name():
    from histoxai.pipelines.pipeline import vertex_accelerators

    names = vertex_accelerators()
    assert {"NVIDIA_L4", "NVIDIA_TESLA_T4", "NVIDIA_A100_80GB"} <= set(names)
    assert "ACCELERATOR_TYPE_UNSPECIFIED" not in names


def test_parameters_are_checked_against_the_pipeline(tmp_path):
    import argparse

    from kfp import components

    from histoxai.pipelines.params import add_parameter_arguments, check_parameters, parameters_from_args
    from histoxai.pipelines.pipeline import compile_package

    out = tmp_path / "p.yaml"
    compile_package(str(out))
    spec = components.load_component_from_file(str(out)).component_spec
    parser = argparse.ArgumentParser()
    add_parameter_arguments(parser)

    def parameters(*argv):
        return check_parameters(parameters_from_args(parser.parse_args(argv)), spec)

    got = parameters("--samples-uri", "gs://b/s", "--samples", "3, 4", "--config", "demo", "--set",
                     "batch_size=8", "--param", "patch_size=64", "--param", "explain_samples=5",
                     "--param", "tuning=true", "--param", "split_fractions=[0.7, 0.15, 0.15]")
    assert got["samples"] == ["3", "4"] and got["patch_size"] == 64 and got["explain_samples"] == "5"
    assert got["tuning"] is True and got["split_fractions"] == [0.7, 0.15, 0.15]
    assert got["config_overrides"] == ["batch_size=8"]
    assert yaml.safe_load(got["config"])["backbone"] == "tiny" and "\n" not in got["config"]
    got = parameters("--samples-uri", "x", "--tuning-trials", "3", "--search-space", "search_space_demo")
    assert got["tuning"] is True and got["tuning_trials"] == 3
    assert got["tuning_search_space"]["fixed"]["finetune_epochs"] == 5
    for argv, message in [
        (["--samples-uri", "x", "--param", "patch_sise=64"], "pipeline parameter 'patch_sise': unknown"),
        (["--samples-uri", "x", "--param", "patch_size=big"], "patch_size='big': expected a integer"),
        (["--samples-uri", "x", "--param", "tuning=3"], "tuning=3: expected a boolean"),
        (["--samples-uri", "x", "--param", "samples=3,4"], "samples='3,4': expected a list"),
        (["--samples", "3"], "samples_uri: required; give --samples-uri"),
        (["--samples-uri", "x", "--set", "batch_sise=8"], "unknown key 'batch_sise'"),
        (["--samples-uri", "x", "--samples", "3,,4"], "--samples '3,,4': expected a comma-separated list"),
        (["--samples-uri", "x", "--param", "tuning"], "--param 'tuning': expected NAME=VALUE"),
        (["--samples-uri", "x", "--tuning-trials", "0"], "--tuning-trials 0: expected a number of trials"),
        (["--samples-uri", "x", "--search-space", "nonesuch"], "--search-space nonesuch: no such file"),
    ]:
        with pytest.raises(InputError, match=re.escape(message)):
            parameters(*argv)


def test_the_cheap_caller_lookup_names_the_kfp_method_that_refuses():
    """TaskSettings replaces kfp's inspect.stack() lookup of a set_* method's name: a set_* on a task
    that is not a single step must still be refused with its own name."""
    from kfp import dsl

    from histoxai.pipelines.pipeline import _cheap_caller_names

    @dsl.component(base_image="python:3.11", install_kfp_package=False)
    def step():  # no annotations: this module's are strings (from __future__), which kfp cannot read
        pass

    @dsl.pipeline(name="inner")
    def inner():
        step()

    refused = []

    @dsl.pipeline(name="outer")
    def outer():
        task = inner()
        with _cheap_caller_names(), pytest.raises(ValueError) as error:
            task.set_cpu_request("1")
        refused.append(str(error.value))

    assert refused and refused[0].startswith("set_cpu_request can only be used on single-step components")
