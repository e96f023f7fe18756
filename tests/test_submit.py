"""`histoxai submit` to Vertex AI and to a KFP endpoint, against local HTTP servers that stand in for the
services: the real clients (aiplatform over REST, google-auth, kfp.Client) build and send the requests,
and the tests read what arrived."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from histoxai.cli import main as histoxai_main
from tests.fake_service import FakeService
from tests.vertex_recorder import service_account_key

pytestmark = pytest.mark.slow  # a long file: it starts first (tests/conftest.py)

REPO = Path(__file__).resolve().parents[1]
IMAGE_VARIABLES = ("HISTOXAI_CPU_IMAGE", "HISTOXAI_GPU_IMAGE")
REGISTRY = "europe-west4-docker.pkg.dev/histoxai-test/histoxai"
REGISTRY_IMAGES = {"HISTOXAI_CPU_IMAGE": f"{REGISTRY}/histoxai-cpu:t1",
                   "HISTOXAI_GPU_IMAGE": f"{REGISTRY}/histoxai-gpu:t1"}


def _histoxai(argv, images: dict, timeout=120) -> subprocess.CompletedProcess:
    """`histoxai ARGV` in a fresh process whose environment names `images` (none: the dev defaults).
    A fresh process, because the components bind their images when they are first imported."""
    env = {k: v for k, v in os.environ.items() if k not in IMAGE_VARIABLES}
    return subprocess.run([sys.executable, "-m", "histoxai.cli", *argv], cwd=REPO, env={**env, **images},
                          capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def package(tmp_path_factory):
    """The pipeline compiled with images from a registry (what Vertex AI can pull)."""
    out = tmp_path_factory.mktemp("compiled") / "pipeline.yaml"
    done = _histoxai(["compile", "--out", str(out)], REGISTRY_IMAGES)
    assert done.returncode == 0, done.stderr
    return out


@pytest.fixture(scope="module")
def dev_package(tmp_path_factory):
    """The pipeline compiled without HISTOXAI_*_IMAGE: minikube's local tags histoxai-*:dev."""
    out = tmp_path_factory.mktemp("compiled-dev") / "pipeline.yaml"
    done = _histoxai(["compile", "--out", str(out)], {})
    assert done.returncode == 0, done.stderr
    return out



VERTEX = "/v1/projects/histoxai-test/locations/europe-west4"
RUNNER = "runner@histoxai-test.iam.gserviceaccount.com"
METADATA = "projects/histoxai-test/locations/europe-west4/metadataStores/default"
REFUSED_EXPERIMENT = "not-allowed"


@pytest.fixture
def vertex(tmp_path, monkeypatch, gcs_emulator):
    """A stand-in for Vertex AI and Google's token endpoint, and credentials that point at it."""
    state = {"final": "PIPELINE_STATE_SUCCEEDED", "running": 0}
    polls = {}

    def created(match, body, query):
        job_id = query["pipelineJobId"][0]
        polls[job_id] = 0  # (two runs in one second share a job id here)
        return {**body, "name": f"projects/123/locations/europe-west4/pipelineJobs/{job_id}",
                "state": "PIPELINE_STATE_PENDING"}

    def fetched(match, body, query):
        name = match.group(1)
        polls[name] = polls.get(name, 0) + 1  # the first state["running"] answers: still running
        running = polls[name] <= state["running"]
        return {"name": f"projects/123/locations/europe-west4/pipelineJobs/{name}",
                "state": "PIPELINE_STATE_RUNNING" if running else state["final"],
                "error": {"code": 9, "message": "step train failed"},
                # the run's own metadata context, which an experiment takes in as a child
                "jobDetail": {"pipelineRunContext": {"name": f"{METADATA}/contexts/{name}",
                                                     "schemaTitle": "system.PipelineRun"}}}

    contexts = {}  # the metadata store's contexts by id (experiments, created on first use)

    def context(match, body, query):
        found = contexts.get(match.group(1))
        return found or (404, {"error": {"code": 404, "status": "NOT_FOUND", "message": "no context"}})

    def create_context(match, body, query):
        name = query["contextId"][0]
        if name == REFUSED_EXPERIMENT:
            return 403, {"error": {"code": 403, "status": "PERMISSION_DENIED",
                                   "message": "Permission 'aiplatform.contexts.create' denied"}}
        contexts[name] = {**body, "name": f"{METADATA}/contexts/{name}"}
        return contexts[name]

    service = FakeService({
        ("POST", "/token"): lambda m, b, q: {"access_token": "token-1", "expires_in": 3600,
                                             "token_type": "Bearer"},
        ("POST", f"{VERTEX}/pipelineJobs"): created,
        ("GET", r".*/pipelineJobs/([\w-]+)"): fetched,
        ("POST", f"{VERTEX}/schedules"): lambda m, b, q: {
            **b, "name": "projects/123/locations/europe-west4/schedules/77", "state": "ACTIVE"},
        ("GET", f"{VERTEX}/metadataStores/default"): lambda m, b, q: {"name": METADATA},
        ("GET", rf"{VERTEX}/metadataStores/default/contexts/([\w-]+)"): context,
        ("POST", f"{VERTEX}/metadataStores/default/contexts"): create_context,
        ("POST", r".*/metadataStores/default/contexts/([\w-]+):addContextChildren"): lambda m, b, q: {},
    })
    # a service account key whose token endpoint is the stand-in (it names no project)
    credentials = service_account_key(tmp_path / "key.json", f"{service.url}/token")
    monkeypatch.setenv("GOOGLE_APPLICATION_CREDENTIALS", str(credentials))
    for name in ("HISTOXAI_PROJECT", "HISTOXAI_PIPELINE_ROOT", "HISTOXAI_SERVICE_ACCOUNT", "HISTOXAI_REGION"):
        monkeypatch.delenv(name, raising=False)
    service.state = state
    yield service
    service.close()


def _vertex_args(package, bucket, url, *extra):
    # A pipeline root in a bucket that does not exist yet: aiplatform creates it (in the emulator). For an
    # existing bucket it would ask Resource Manager who owns it, which no test can reach.
    _vertex_args.runs = getattr(_vertex_args, "runs", 0) + 1
    root = f"{bucket}-{_vertex_args.runs}/root"
    return ["submit", "--package", str(package), "--project", "histoxai-test", "--region", "europe-west4",
            "--pipeline-root", root, "--service-account", RUNNER,
            "--label", "team=histo", "--samples-uri", f"{bucket}/samples", "--samples", "3,4,5",
            "--set", "batch_size=8", "--api-endpoint", url, *extra]


def test_submit_to_vertex(package, vertex, gcs_bucket, capsys):
    assert histoxai_main(_vertex_args(package, gcs_bucket, vertex.url, "--no-cache", "--wait",
                                      "--run-name", "nightly")) == 0
    (create,) = vertex.find("POST", f"{VERTEX}/pipelineJobs")
    assert create["headers"]["authorization"].startswith("Bearer ")
    assert create["query"]["pipelineJobId"][0].startswith("histoxai-")
    job = create["body"]
    assert job["displayName"] == "nightly" and job["labels"] == {"team": "histo"}
    assert job["serviceAccount"] == RUNNER
    runtime = job["runtimeConfig"]
    assert re.fullmatch(rf"{gcs_bucket}-\d+/root", runtime["gcsOutputDirectory"])
    assert runtime["parameterValues"]["samples"] == ["3", "4", "5"]
    assert runtime["parameterValues"]["config_overrides"] == ["batch_size=8"]
    assert runtime["parameterValues"]["samples_uri"] == f"{gcs_bucket}/samples"
    tasks = job["pipelineSpec"]["root"]["dag"]["tasks"]
    assert tasks["train-model"]["cachingOptions"] == {"enableCache": False}  # --no-cache
    assert vertex.find("GET", r".*/pipelineJobs/histoxai-.*")  # --wait polled the run
    out = capsys.readouterr().out
    assert "state           PIPELINE_STATE_SUCCEEDED" in out
    assert "console.cloud.google.com/vertex-ai/locations/europe-west4/pipelines/runs/histoxai-" in out

    vertex.state["final"] = "PIPELINE_STATE_FAILED"
    assert histoxai_main(_vertex_args(package, gcs_bucket, vertex.url, "--wait")) == 2
    err = capsys.readouterr().err
    assert "histoxai submit: error: run projects/123/locations/europe-west4/pipelineJobs/histoxai-" in err
    assert "did not succeed" in err and "step train failed" in err


def test_submit_a_vertex_schedule(package, vertex, gcs_bucket, capsys):
    cron = "TZ=Europe/Prague 0 3 * * 1"
    assert histoxai_main(_vertex_args(package, gcs_bucket, vertex.url, "--schedule", cron)) == 0
    (schedule,) = vertex.find("POST", f"{VERTEX}/schedules")
    assert schedule["body"]["cron"] == cron
    assert schedule["body"]["maxConcurrentRunCount"] == "1"
    request = schedule["body"]["createPipelineJobRequest"]
    assert request["parent"] == "projects/histoxai-test/locations/europe-west4"
    assert request["pipelineJob"]["serviceAccount"] == RUNNER
    assert request["pipelineJob"]["runtimeConfig"]["parameterValues"]["samples"] == ["3", "4", "5"]
    assert not vertex.find("POST", f"{VERTEX}/pipelineJobs")
    assert "projects/123/locations/europe-west4/schedules/77" in capsys.readouterr().out


def test_submit_joins_a_vertex_experiment(package, vertex, gcs_bucket, capsys):
    vertex.state["running"] = 1  # the run's context is there once it runs, as aiplatform expects
    assert histoxai_main(_vertex_args(package, gcs_bucket, vertex.url, "--experiment", "histo-nightly")) == 0
    (create,) = vertex.find("POST", f"{VERTEX}/metadataStores/default/contexts")
    assert create["query"]["contextId"] == ["histo-nightly"]
    assert create["body"]["schemaTitle"] == "system.Experiment"
    (job,) = vertex.find("POST", f"{VERTEX}/pipelineJobs")
    (child,) = vertex.find("POST", r".*/contexts/histo-nightly:addContextChildren")
    run_id = job["query"]["pipelineJobId"][0]
    assert child["body"]["childContexts"] == [f"{METADATA}/contexts/{run_id}"]
    out = capsys.readouterr().out
    assert "experiment      histo-nightly" in out and run_id in out

    # the same experiment again: found, not created a second time; the new run joins it too
    assert histoxai_main(_vertex_args(package, gcs_bucket, vertex.url, "--experiment", "histo-nightly")) == 0
    assert len(vertex.find("POST", f"{VERTEX}/metadataStores/default/contexts")) == 1
    assert len(vertex.find("POST", r".*/contexts/histo-nightly:addContextChildren")) == 2
    capsys.readouterr()

    # a run that cannot join (it ended before its context showed): it exists, so it is reported, not failed
    vertex.state["running"] = 0
    assert histoxai_main(_vertex_args(package, gcs_bucket, vertex.url, "--experiment", "histo-nightly")) == 0
    assert "experiment      histo-nightly (not joined: Cannot associate PipelineJob to Experiment" in \
        capsys.readouterr().out
    assert len(vertex.find("POST", r".*/contexts/histo-nightly:addContextChildren")) == 2

    # refused by Vertex AI, a bad name, or with a schedule: one line, and no run
    for extra, message in [
        (["--experiment", REFUSED_EXPERIMENT], "Vertex AI refused the request: 403 Permission "
                                               "'aiplatform.contexts.create' denied"),
        (["--experiment", "Nightly_Runs"], "--experiment 'Nightly_Runs': expected lowercase letters"),
        (["--experiment", "histo-nightly", "--schedule", "0 3 * * 1"],
         "--experiment histo-nightly: Vertex AI pipeline schedules take no experiment"),
    ]:
        assert histoxai_main(_vertex_args(package, gcs_bucket, vertex.url, *extra)) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and message in err, err
    assert len(vertex.find("POST", f"{VERTEX}/pipelineJobs")) == 3
    assert not vertex.find("POST", f"{VERTEX}/schedules")


def test_submit_explains_missing_credentials_and_project(package, vertex, gcs_bucket, monkeypatch, tmp_path,
                                                          capsys):
    working = os.environ["GOOGLE_APPLICATION_CREDENTIALS"]
    monkeypatch.setenv("GOOGLE_APPLICATION_CREDENTIALS", str(tmp_path / "missing.json"))
    assert histoxai_main(_vertex_args(package, gcs_bucket, vertex.url)) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith(
        "histoxai submit: error: submit: no Google Cloud credentials; run `gcloud auth application-default "
        "login`")
    monkeypatch.setenv("GOOGLE_APPLICATION_CREDENTIALS", working)
    monkeypatch.delenv("GOOGLE_CLOUD_PROJECT", raising=False)
    args = [a for a in _vertex_args(package, gcs_bucket, vertex.url)
            if a not in ("--project", "histoxai-test")]
    assert histoxai_main(args) == 2
    assert capsys.readouterr().err.strip() == ("histoxai submit: error: submit: no Google Cloud project; "
                                               "pass --project or set GOOGLE_CLOUD_PROJECT")
    assert not vertex.find("POST", f"{VERTEX}/pipelineJobs")


@pytest.fixture
def kfp_api():
    service = FakeService({
        ("GET", "/apis/v2beta1/healthz"): lambda m, b, q: {"multi_user": False},
        ("GET", "/apis/v2beta1/experiments"): lambda m, b, q: {},
        ("POST", "/apis/v2beta1/experiments"): lambda m, b, q: {**b, "experiment_id": "exp-1"},
        ("POST", "/apis/v2beta1/runs"): lambda m, b, q: {**b, "run_id": "run-1", "state": "PENDING"},
        ("GET", "/apis/v2beta1/runs/run-1"): lambda m, b, q: {"run_id": "run-1", "state": "SUCCEEDED"},
        ("POST", "/apis/v2beta1/recurringruns"): lambda m, b, q: {**b, "recurring_run_id": "rr-1"},
    })
    yield service
    service.close()


def test_submit_to_kfp(package, kfp_api, capsys):
    args = ["submit", "--kfp-host", kfp_api.url, "--experiment", "minikube",
            "--run-name", "demo-1", "--samples-uri", "/data/samples", "--samples", "3,4"]
    assert histoxai_main([*args, "--package", str(package), "--wait"]) == 0
    (experiment,) = kfp_api.find("POST", "/apis/v2beta1/experiments")
    assert experiment["body"]["display_name"] == "minikube"
    (run,) = kfp_api.find("POST", "/apis/v2beta1/runs")
    assert run["body"]["display_name"] == "demo-1" and run["body"]["experiment_id"] == "exp-1"
    assert run["body"]["runtime_config"]["parameters"]["samples"] == ["3", "4"]
    assert run["body"]["pipeline_spec"]["pipelineInfo"]["name"] == "histoxai"
    out = capsys.readouterr().out
    assert f"{kfp_api.url}/#/runs/details/run-1" in out and "SUCCEEDED" in out

    # without --package: compiled now, here for a Kubeflow cluster's GPU resource
    assert histoxai_main([*args, "--schedule", "30 2 * * *", "--accelerator-type", "nvidia.com/gpu"]) == 0
    (recurring,) = kfp_api.find("POST", "/apis/v2beta1/recurringruns")
    executors = recurring["body"]["pipeline_spec"]["deploymentSpec"]["executors"]
    assert executors["exec-train-model"]["container"]["resources"]["accelerator"]["resourceType"] == \
        "nvidia.com/gpu"
    assert recurring["body"]["trigger"]["cron_schedule"]["cron"] == "0 30 2 * * *"
    assert recurring["body"]["max_concurrency"] == 1
    assert recurring["body"]["runtime_config"]["parameters"]["samples_uri"] == "/data/samples"
    assert "rr-1" in capsys.readouterr().out


def test_submit_errors_are_one_line(package, tmp_path, capsys):
    closed = FakeService({})
    closed.close()  # nothing listens on this port any more
    broken, bare = tmp_path / "broken.yaml", tmp_path / "bare.yaml"
    broken.write_text("pipelineInfo: [unclosed\n")
    bare.write_text("pipelineInfo: {name: p}\n")
    base = ["submit", "--package", str(package), "--samples-uri", "/data"]
    for argv, message in [
        ([*base, "--kfp-host", closed.url], f"--kfp-host {closed.url}: endpoint unreachable"),
        ([*base, "--kfp-host", closed.url, "--schedule", "daily"], "--schedule 'daily': expected a cron"),
        ([*base, "--accelerator-type", "NVIDIA_L4"], "--accelerator-type: compile options do not change"),
        ([*base], "--pipeline-root: not given"),
        ([*base, "--param", "nonesuch=1"], "pipeline parameter 'nonesuch': unknown"),
        ([*base[:2], str(broken), *base[3:]], f"--package {broken}: not a YAML pipeline package"),
        ([*base[:2], str(bare), *base[3:]], f"--package {bare}: no deploymentSpec"),
    ]:
        assert histoxai_main(argv) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and message in err, err


def test_the_package_is_read_once_as_kfp_reads_it(package):
    """Submitting parses the package once with libyaml's loader and builds the inputs' spec from it: the
    same documents as PyYAML's own loader gives, the same spec as kfp's load_component_from_file."""
    import dataclasses

    import yaml
    from kfp import components

    from histoxai.pipelines.submit import package_images, package_inputs, read_package

    documents = read_package(str(package))
    assert documents == list(yaml.safe_load_all(package.read_text()))
    theirs = components.load_component_from_file(str(package)).component_spec
    ours = package_inputs(documents, str(package))
    assert "samples_uri" in ours.inputs
    # kfp takes the description from the file's leading comments, which libyaml drops; the parameters'
    # check reads only the inputs
    assert dataclasses.replace(ours, description=theirs.description) == theirs
    assert set(package_images(documents, str(package)).values()) == _images(documents[0])


def _images(spec: dict) -> set[str]:
    return {e["container"]["image"] for e in spec["deploymentSpec"]["executors"].values()}


def _bucket_exists(uri: str) -> bool:
    from google.cloud import storage as gcs

    name = uri.removeprefix("gs://").split("/")[0]
    return gcs.Client(project="histoxai-test").lookup_bucket(name) is not None


def test_vertex_refuses_a_package_with_the_dev_images(dev_package, package, vertex, gcs_bucket, capsys):
    args = _vertex_args(dev_package, gcs_bucket, vertex.url)
    assert histoxai_main(args) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    assert err.startswith(f"histoxai submit: error: --package {dev_package}: its steps run the local dev "
                          "images histoxai-cpu:dev, histoxai-gpu:dev, which Vertex AI cannot pull; run "
                          "`make build` and set HISTOXAI_CPU_IMAGE and HISTOXAI_GPU_IMAGE"), err
    assert not vertex.requests  # not even a token
    assert not _bucket_exists(args[args.index("--pipeline-root") + 1])  # nor the pipeline root made

    # the same run with registry images goes through, and they are what Vertex AI gets
    assert histoxai_main(_vertex_args(package, gcs_bucket, vertex.url)) == 0
    (create,) = vertex.find("POST", f"{VERTEX}/pipelineJobs")
    assert _images(create["body"]["pipelineSpec"]) == set(REGISTRY_IMAGES.values())


def test_vertex_refuses_the_dev_images_compiled_now(vertex, gcs_bucket):
    """Without --package, in a process whose environment names no images: refused before any request."""
    args = _vertex_args("unused", gcs_bucket, vertex.url)
    args = args[:1] + args[3:]  # no --package: compile now
    assert "--package" not in args
    done = _histoxai(args, {})
    assert done.returncode == 2, done.stderr
    err = done.stderr.strip()
    assert len(err.splitlines()) == 1, err
    assert err.startswith("histoxai submit: error: the pipeline compiled now: its steps run the local dev "
                          "images histoxai-cpu:dev, histoxai-gpu:dev, which Vertex AI cannot pull"), err
    assert "make build" in err and "HISTOXAI_CPU_IMAGE" in err and "HISTOXAI_GPU_IMAGE" in err
    assert not vertex.requests


def test_kfp_takes_the_dev_images(dev_package, kfp_api, capsys):
    """minikube runs the local tags: --kfp-host sends a dev package as it is."""
    assert histoxai_main(["submit", "--kfp-host", kfp_api.url, "--package", str(dev_package),
                          "--samples-uri", "/data/samples"]) == 0
    (run,) = kfp_api.find("POST", "/apis/v2beta1/runs")
    assert _images(run["body"]["pipeline_spec"]) == {"histoxai-cpu:dev", "histoxai-gpu:dev"}
    assert f"{kfp_api.url}/#/runs/details/run-1" in capsys.readouterr().out


def test_submit_the_prediction_pipeline_to_vertex(vertex, gcs_bucket, tmp_path, capsys):
    """`histoxai compile --pipeline predict` then submit: the run names the slides and the champion."""
    package = tmp_path / "predict.yaml"
    done = _histoxai(["compile", "--pipeline", "predict", "--out", str(package)], REGISTRY_IMAGES)
    assert done.returncode == 0, done.stderr
    args = ["submit", "--package", str(package), "--project", "histoxai-test", "--region", "europe-west4",
            "--pipeline-root", f"{gcs_bucket}-predict/root", "--service-account", RUNNER,
            "--api-endpoint", vertex.url,
            "--param", f"slides_uri={gcs_bucket}/new-slides",
            "--param", "model=registry:histoxai-multitask@champion",
            "--param", "model_registry=vertex://histoxai-test/europe-west4"]
    assert histoxai_main(args) == 0, capsys.readouterr().err
    (create,) = vertex.find("POST", f"{VERTEX}/pipelineJobs")
    job = create["body"]
    assert job["pipelineSpec"]["pipelineInfo"]["name"] == "histoxai-predict"
    values = job["runtimeConfig"]["parameterValues"]
    assert values["model"] == "registry:histoxai-multitask@champion"
    assert values["slides_uri"] == f"{gcs_bucket}/new-slides"
    assert histoxai_main([*args[:3], "--pipeline", "predict", *args[3:]]) == 2  # a compiled package is fixed
    assert "--pipeline: compile options do not change a compiled --package" in capsys.readouterr().err
