"""Retraining on new samples (pipelines/retrain.py, `histoxai retrain`).

The function runs as deployed (infra/retrain/main.py under functions-framework, on loopback) and gets
real CloudEvent requests for objects in the GCS emulator, whose metadata is the event's data, as with
Eventarc. Credentials, template loading, parameter checks and the aiplatform PipelineJob are real; only
its final submit call is recorded instead of sent (tests/vertex_recorder.py).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import uuid
from pathlib import Path

import pytest

from histoxai import layout, storage
from histoxai.cli import main as histoxai_main
from histoxai.pipelines import registry, retrain
from tests import vertex_recorder
from tests.function_server import PROJECT, FunctionServer
from tests.samples import make_sample, write_sample

pytestmark = pytest.mark.slow  # a long file: it starts first (tests/conftest.py)

REPO = Path(__file__).resolve().parents[1]
RUNNER = "runner@histoxai-test.iam.gserviceaccount.com"
REGISTRY = "europe-west4-docker.pkg.dev/histoxai-test/histoxai"


@pytest.fixture(scope="module")
def sample_files(tmp_path_factory) -> Path:
    return write_sample(tmp_path_factory.mktemp("upload") / "sample", make_sample(seed=11))


@pytest.fixture(scope="module")
def cloud(gcs_emulator, tmp_path_factory):
    """A samples bucket and a pipeline-root bucket in the emulator, the compiled pipeline in it, a
    service account key, and the environment the trigger's Terraform sets."""
    from google.cloud import storage as gcs

    client = gcs.Client(project=PROJECT)
    samples = client.create_bucket(f"samples-{uuid.uuid4().hex[:10]}").name
    root = f"runs-{uuid.uuid4().hex[:10]}"  # created by aiplatform at the first submission
    work = tmp_path_factory.mktemp("retrain")
    template = f"gs://{samples}-templates/histoxai.yaml"
    client.create_bucket(f"{samples}-templates")
    # compiled in a fresh process with registry images, as `make template` does (Vertex AI refuses the
    # local dev tags, and the components bind their images when first imported)
    images = {"HISTOXAI_CPU_IMAGE": f"{REGISTRY}/histoxai-cpu:t1",
              "HISTOXAI_GPU_IMAGE": f"{REGISTRY}/histoxai-gpu:t1"}
    done = subprocess.run([sys.executable, "-m", "histoxai.cli", "compile", "--out", template],
                          env={**os.environ, **images}, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    env = {"HISTOXAI_SAMPLES_BUCKET": f"gs://{samples}/incoming", "HISTOXAI_PROJECT": PROJECT,
           "HISTOXAI_REGION": "europe-west4", "HISTOXAI_PIPELINE_ROOT": f"gs://{root}/root",
           "HISTOXAI_PIPELINE_TEMPLATE": template, "HISTOXAI_SERVICE_ACCOUNT": RUNNER,
           "HISTOXAI_RUN_PARAMETERS": json.dumps({"config": "{finetune_epochs: 1}", "train_samples": ["7"]}),
           "GOOGLE_APPLICATION_CREDENTIALS": str(vertex_recorder.service_account_key(work / "key.json"))}
    return {"bucket": samples, "env": env, "work": work, "samples_uri": env["HISTOXAI_SAMPLES_BUCKET"]}


def upload_sample(folder: Path, target: str, *, skip: tuple[str, ...] = (), ready: bool = True) -> None:
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        rel = path.relative_to(folder).as_posix()
        if rel not in skip:
            storage.upload_file(path, storage.join(target, rel))
    if ready:
        storage.write_bytes(storage.join(target, retrain.READY), b"")


def read_registry(samples_uri: str) -> dict:
    return json.loads(storage.read_text(registry.registry_uri(samples_uri)))


@pytest.fixture(scope="module")
def servers(cloud):
    """Two instances of the function (Cloud Run may run several), recording into one file."""
    record = cloud["work"] / "submitted.jsonl"
    started = [FunctionServer(cloud["env"], record, cloud["work"] / f"function-{i}.log") for i in range(2)]
    yield started, record
    for server in started:  # both stop at once: gunicorn's graceful stop takes a second or two each
        server.proc.terminate()
    for server in started:
        server.close()


def test_registry_update_survives_a_concurrent_writer(gcs_bucket):
    samples_uri = f"{gcs_bucket}/samples"
    calls = []

    def add_seven(entries):
        calls.append(json.dumps(entries))
        if len(calls) == 1:  # another writer gets in between this read and this write
            storage.write_text(registry.registry_uri(samples_uri), json.dumps({"samples": {"8": {}}}))
        entries.setdefault("samples", {})["7"] = {}

    registry.update_registry(samples_uri, add_seven)
    assert len(calls) == 2 and json.loads(calls[1]) == {"samples": {"8": {}}}  # re-read, re-applied
    assert set(read_registry(samples_uri)["samples"]) == {"7", "8"}

    def register(sample):
        registry.update_registry(samples_uri, lambda r: r.setdefault("samples", {}).__setitem__(sample, {}))

    threads = [threading.Thread(target=register, args=(f"s{i}",)) for i in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert set(read_registry(samples_uri)["samples"]) == {"7", "8"} | {f"s{i}" for i in range(8)}

    storage.write_text(registry.registry_uri(samples_uri), "{not json")
    with pytest.raises(retrain.InputError, match="histoxai-registry.json: not valid JSON"):
        register("9")


def test_marker_and_job_id():
    assert retrain.marker_sample("gs://b/incoming", "b", "incoming/17/READY") == "17"
    for bucket, name in [("b", "incoming/17/coreg_fine/ver1/MR.mat"), ("b", "incoming/17/READY.txt"),
                         ("b", "incoming/histoxai-registry.json"), ("c", "incoming/17/READY"),
                         ("b", "other/17/READY"), ("b", "incoming/a/17/READY")]:
        assert retrain.marker_sample("gs://b/incoming", bucket, name) is None
    assert retrain.marker_sample("gs://b", "b", "17/READY") == "17"
    assert registry.ordered(["10", "b", "2", "a"]) == ["2", "10", "a", "b"]
    one = retrain.job_id("gs://b/incoming", "Tumour_7", "1700000000000001")
    assert one.startswith("histoxai-retrain-tumour-7-1700000000000001-") and len(one) <= 128
    assert one != retrain.job_id("gs://b/other", "Tumour_7", "1700000000000001")
    assert one != retrain.job_id("gs://b/incoming", "Tumour_7", "1700000000000002")


def test_trigger_registers_and_submits_once_per_upload(cloud, servers, sample_files):
    (first, second), record = servers
    bucket, samples_uri = cloud["bucket"], cloud["samples_uri"]
    registry_file = registry.registry_uri(samples_uri)

    # A data file's event and an incomplete sample's marker: acknowledged, no run started; the incomplete
    # sample is registered as quarantined, with the reason.
    upload_sample(sample_files, f"{samples_uri}/7", ready=False)
    assert first.deliver(bucket, f"incoming/7/{layout.MR_MAT}").status_code == 200
    upload_sample(sample_files, f"{samples_uri}/8", skip=(layout.NUCLEI_TSV,))
    assert first.deliver(bucket, "incoming/8/READY").status_code == 200
    assert not vertex_recorder.recorded(record)
    (rejected,) = [line for line in first.lines() if line["severity"] == "WARNING"]
    assert rejected["permanent"] is True
    assert registry.samples(samples_uri)["8"]["state"] == "quarantined"
    assert registry.samples(samples_uri)["8"]["reason"] == rejected["message"]
    assert rejected["message"] == (f"sample 8 rejected: {samples_uri}/8/{layout.NUCLEI_TSV}: file not found; "
                                   f"expected {layout.NUCLEI_TSV} inside the sample folder (the dataset "
                                   "layout: coreg_fine/ver1/{MR,HE,HE_mask}.mat, "
                                   "cell_density/QuPath/measurements.tsv)")

    # A complete sample: registered, one run over the registered samples.
    storage.write_bytes(f"{samples_uri}/7/{retrain.READY}", b"")
    event = first.deliver(bucket, "incoming/7/READY", event_id="event-7")
    assert event.status_code == 200, first.log.read_text()
    (run,) = vertex_recorder.recorded(record)
    job = run["job"]
    assert run["service_account"] == RUNNER
    assert run["job_id"].startswith("histoxai-retrain-7-")
    assert job["runtimeConfig"]["gcsOutputDirectory"] == cloud["env"]["HISTOXAI_PIPELINE_ROOT"]
    values = job["runtimeConfig"]["parameterValues"]
    assert values["samples"] == ["7"] and values["samples_uri"] == samples_uri
    assert values["train_samples"] == ["7"] and values["config"] == "{finetune_epochs: 1}"
    assert job["labels"] == {"trigger": "retrain", "sample": "7"}
    assert job["displayName"] == "histoxai-retrain-7"
    assert "train-model" in job["pipelineSpec"]["root"]["dag"]["tasks"]
    state = json.loads(storage.read_text(registry_file))
    assert registry.active(state) == ["7"]
    assert state["samples"]["7"]["files"][layout.HE_MAT] == (sample_files / layout.HE_MAT).stat().st_size
    (claim,) = state["runs"].values()
    assert claim["state"] == "submitted" and claim["event"] == "event-7"
    assert claim["run"] == f"projects/{PROJECT}/locations/europe-west4/pipelineJobs/{run['job_id']}"

    # The same event again, to either instance: no second run.
    for server in (first, second):
        assert server.deliver(bucket, "incoming/7/READY", event_id="event-7").status_code == 200
    assert len(vertex_recorder.recorded(record)) == 1
    assert any("already submitted" in line["message"] for line in second.lines())

    # Two samples at once on two instances: both registered, each run includes the other samples so far.
    upload_sample(sample_files, f"{samples_uri}/9")
    upload_sample(sample_files, f"{samples_uri}/10")
    results = {}

    def deliver(server, sample):
        results[sample] = server.deliver(bucket, f"incoming/{sample}/READY")

    threads = [threading.Thread(target=deliver, args=pair) for pair in ((first, "9"), (second, "10"))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert [results[n].status_code for n in ("9", "10")] == [200, 200]
    runs = vertex_recorder.recorded(record)[1:]
    assert len(runs) == 2
    by_sample = {r["job"]["labels"]["sample"]: r["job"]["runtimeConfig"]["parameterValues"]["samples"]
                 for r in runs}
    assert {"7", "9"} <= set(by_sample["9"]) and {"7", "10"} <= set(by_sample["10"])
    assert max(by_sample.values(), key=len) == ["7", "9", "10"]  # the later claim saw both
    assert registry.active(json.loads(storage.read_text(registry_file))) == ["7", "9", "10"]

    # READY written again (a corrected upload): a new run over every registered sample.
    storage.write_bytes(f"{samples_uri}/7/{retrain.READY}", b"")
    assert first.deliver(bucket, "incoming/7/READY").status_code == 200
    last = vertex_recorder.recorded(record)[-1]
    assert last["job"]["runtimeConfig"]["parameterValues"]["samples"] == ["7", "9", "10"]
    assert last["job_id"] != run["job_id"]


def test_failed_submission_is_retried_and_stale_claims_taken_over(cloud, sample_files, tmp_path, monkeypatch):
    for name, value in cloud["env"].items():
        monkeypatch.setenv(name, value)
    record = tmp_path / "submitted.jsonl"
    vertex_recorder.install(record, monkeypatch.setattr)
    samples_uri = f"gs://{cloud['bucket']}/by-hand"
    upload_sample(sample_files, f"{samples_uri}/21")
    good = retrain.Settings.from_env()
    settings = retrain.Settings(**{**good.__dict__, "samples_uri": samples_uri})

    ready = f"{samples_uri}/21/{retrain.READY}"
    first = str(storage.stat(ready)[1])
    broken = retrain.Settings(**{**settings.__dict__, "template": f"gs://{cloud['bucket']}/missing.yaml"})
    with pytest.raises(retrain.InputError, match="missing.yaml"):
        retrain.retrain_sample(broken, "21", first)
    (failed,) = read_registry(samples_uri)["runs"].values()
    assert failed["state"] == "failed" and "missing.yaml" in failed["error"]
    outcome = retrain.retrain_sample(settings, "21", first)  # the redelivery: claims again, submits
    assert outcome.status == "submitted" and len(vertex_recorder.recorded(record)) == 1

    # A claim held by a live delivery: wait. A claim older than CLAIM_TIMEOUT whose run went through
    # (the delivery died before recording it): taken over, and Vertex AI's refusal of the job id
    # tells that the run exists.
    storage.write_bytes(ready, b"")  # the sample uploaded again: a new READY generation
    second = str(storage.stat(ready)[1])
    key = f"21@{second}"
    fresh = {"state": "submitting", "claimed": registry.now(), "samples": ["21"]}
    registry.update_registry(samples_uri, lambda r: r["runs"].__setitem__(key, fresh))
    with pytest.raises(retrain.SubmissionInProgress, match="another delivery claimed"):
        retrain.retrain_sample(settings, "21", second)
    registry.update_registry(samples_uri,
                             lambda r: r["runs"][key].update(claimed="2020-01-01T00:00:00+00:00"))
    retrain.submit_run(settings, ["21"], "21", retrain.job_id(samples_uri, "21", second))
    outcome = retrain.retrain_sample(settings, "21", second)
    assert outcome.status == "submitted" and outcome.run.endswith(retrain.job_id(samples_uri, "21", second))
    assert len(vertex_recorder.recorded(record)) == 2
    assert read_registry(samples_uri)["runs"][key]["state"] == "submitted"


def test_retrain_command(cloud, sample_files, tmp_path, monkeypatch, capsys):
    for name, value in cloud["env"].items():
        monkeypatch.setenv(name, value)
    record = tmp_path / "submitted.jsonl"
    vertex_recorder.install(record, monkeypatch.setattr)
    samples_uri = f"gs://{cloud['bucket']}/cli"
    for sample in ("3", "4", "11"):
        upload_sample(sample_files, f"{samples_uri}/{sample}", ready=sample != "4")

    assert histoxai_main(["retrain", "--register-only", "--sample", f"{samples_uri}/3",
                          "--sample", f"{samples_uri}/4/"]) == 0
    assert "samples         3, 4" in capsys.readouterr().out and not vertex_recorder.recorded(record)
    assert read_registry(samples_uri)["samples"]["4"]["ready_generation"] == ""  # no marker needed

    args = ["retrain", "--sample", f"{samples_uri}/11", "--param", "train_samples=['3', '4']"]
    assert histoxai_main(args) == 0
    out = capsys.readouterr().out
    (run,) = vertex_recorder.recorded(record)
    values = run["job"]["runtimeConfig"]["parameterValues"]
    assert values["samples"] == ["3", "4", "11"] and values["train_samples"] == ["3", "4"]
    assert "sample          11: submitted" in out and run["job_id"] in out
    assert histoxai_main(args) == 0  # the same upload again: nothing new
    assert "sample          11: duplicate" in capsys.readouterr().out
    assert len(vertex_recorder.recorded(record)) == 1

    for bad, expected in [
        (["--sample", str(sample_files)], f"--sample {sample_files}: expected gs://BUCKET/[PREFIX/]ID"),
        (["--sample", f"{samples_uri}/3", "--sample", f"{samples_uri}/11"], "--sample given 2 times"),
        (["--sample", f"{samples_uri}/4"], f"{samples_uri}/4/READY: no READY marker"),
        (["--sample", f"{samples_uri}/3", "--param", "no_such=1"], "pipeline parameter 'no_such': unknown"),
        (["--sample", f"{samples_uri}/3", "--param", "config_overrides=['epochs=3']"],
         "run parameter config (with overrides ['epochs']): unknown key 'epochs'"),
    ]:
        assert histoxai_main(["retrain", *bad]) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and err.startswith("histoxai retrain: error: ") and expected in err
    storage.write_bytes(f"{samples_uri}/12/{layout.MR_MAT}", b"not a mat file")
    upload_sample(sample_files, f"{samples_uri}/12", skip=(layout.MR_MAT,))
    assert histoxai_main(["retrain", "--sample", f"{samples_uri}/12"]) == 2
    assert (f"sample 12 rejected: {samples_uri}/12/{layout.MR_MAT}: not a MATLAB file"
            in capsys.readouterr().err)
    assert len(vertex_recorder.recorded(record)) == 1


@pytest.fixture
def metadata(tmp_path, monkeypatch):
    """A stand-in for Vertex AI's metadata store (experiments are contexts in it) and Google's token
    endpoint, with credentials and HISTOXAI_VERTEX_ENDPOINT pointing at it."""
    from tests.fake_service import FakeService

    contexts = {}
    store = f"projects/{PROJECT}/locations/europe-west4/metadataStores/default"

    def create(match, body, query):
        contexts[query["contextId"][0]] = {**body, "name": f"{store}/contexts/{query['contextId'][0]}"}
        return contexts[query["contextId"][0]]

    service = FakeService({
        ("POST", "/token"): lambda m, b, q: {"access_token": "t", "expires_in": 3600, "token_type": "Bearer"},
        ("GET", rf"/v1/{store}"): lambda m, b, q: {"name": store},
        ("GET", rf"/v1/{store}/contexts/([\w-]+)"): lambda m, b, q: contexts.get(m.group(1)) or (
            404, {"error": {"code": 404, "status": "NOT_FOUND", "message": "no such context"}}),
        ("POST", rf"/v1/{store}/contexts"): create,
    })
    monkeypatch.setenv("HISTOXAI_VERTEX_ENDPOINT", service.url)
    key = vertex_recorder.service_account_key(tmp_path / "metadata-key.json", f"{service.url}/token")
    monkeypatch.setenv("GOOGLE_APPLICATION_CREDENTIALS", str(key))
    yield service
    service.close()


def test_runs_join_the_experiment_and_take_the_registry_and_tensorboard(cloud, sample_files, tmp_path,
                                                                        monkeypatch, metadata):
    """What Terraform sets (HISTOXAI_EXPERIMENT, HISTOXAI_MODEL_REGISTRY, HISTOXAI_TENSORBOARD) reaches
    the submitted run, unless the run parameters name a registry or TensorBoard themselves."""
    from google.cloud import aiplatform

    from histoxai.pipelines.pipeline import build_pipeline

    inputs = build_pipeline().component_spec.inputs
    assert "model_registry" in inputs and "tensorboard" in inputs
    for name, value in cloud["env"].items():
        if name != "GOOGLE_APPLICATION_CREDENTIALS":
            monkeypatch.setenv(name, value)
    tensorboard = f"projects/{PROJECT}/locations/europe-west4/tensorboards/77"
    monkeypatch.setenv("HISTOXAI_EXPERIMENT", "histoxai-retrain")
    monkeypatch.setenv("HISTOXAI_MODEL_REGISTRY", f"vertex://{PROJECT}/europe-west4")
    monkeypatch.setenv("HISTOXAI_TENSORBOARD", tensorboard)
    record = tmp_path / "submitted.jsonl"
    vertex_recorder.install(record, monkeypatch.setattr)
    recorded_submit, experiments = aiplatform.PipelineJob.submit, []

    def submit(self, service_account=None, experiment=None, **rest):  # the experiment the run would join
        experiments.append(experiment.name if experiment else None)
        return recorded_submit(self, service_account=service_account, **rest)

    monkeypatch.setattr(aiplatform.PipelineJob, "submit", submit)
    samples_uri = f"gs://{cloud['bucket']}/deployed"
    for sample in ("31", "32"):
        upload_sample(sample_files, f"{samples_uri}/{sample}")
    settings = retrain.Settings(**{**retrain.Settings.from_env().__dict__, "samples_uri": samples_uri})
    assert retrain.retrain_sample(settings, "31", str(storage.stat(f"{samples_uri}/31/READY")[1])).status \
        == "submitted"
    (run,) = vertex_recorder.recorded(record)
    values = run["job"]["runtimeConfig"]["parameterValues"]
    assert values["model_registry"] == f"vertex://{PROJECT}/europe-west4"
    assert values["tensorboard"] == tensorboard
    assert experiments == ["histoxai-retrain"]
    (created,) = metadata.find("POST", r".*/metadataStores/default/contexts")
    assert created["query"]["contextId"] == ["histoxai-retrain"]
    assert created["body"]["schemaTitle"] == "system.Experiment"

    # run parameters that name a registry keep it; no experiment: none joined
    monkeypatch.setenv("HISTOXAI_RUN_PARAMETERS", json.dumps({"model_registry": "gs://elsewhere/models"}))
    monkeypatch.delenv("HISTOXAI_EXPERIMENT")
    settings = retrain.Settings(**{**retrain.Settings.from_env().__dict__, "samples_uri": samples_uri})
    retrain.retrain_sample(settings, "32", str(storage.stat(f"{samples_uri}/32/READY")[1]))
    values = vertex_recorder.recorded(record)[-1]["job"]["runtimeConfig"]["parameterValues"]
    assert values["model_registry"] == "gs://elsewhere/models" and values["tensorboard"] == tensorboard
    assert experiments == ["histoxai-retrain", None]
