"""Retraining submissions sent for real: the aiplatform client posts each run over HTTP to a loopback
stand-in for Vertex AI, which refuses a repeated pipeline-job id with 409 ALREADY_EXISTS as Vertex AI
does; the trigger takes that refusal as proof that the run exists (pipelines/retrain.py)."""

from __future__ import annotations

import uuid

import pytest

from histoxai import storage
from histoxai.pipelines import registry, retrain
from tests.fake_service import FakeService
from tests.test_retrain import PROJECT, RUNNER, cloud, read_registry, sample_files, upload_sample  # noqa: F401
from tests.vertex_recorder import service_account_key

VERTEX = f"/v1/projects/{PROJECT}/locations/europe-west4"


@pytest.fixture
def vertex(tmp_path, monkeypatch):
    """A stand-in for Vertex AI's pipelineJobs.create and Google's token endpoint. It keeps the jobs it
    created, answers a job id it has (or one listed in `refuse`, with that status) with a 409 JSON error
    as Google's REST APIs send it, and notes every answer's status."""
    jobs, answers, refuse = {}, [], {}

    def create(match, body, query):
        job_id = query["pipelineJobId"][0]
        status = "ALREADY_EXISTS" if job_id in jobs else refuse.get(job_id)
        if status:
            answers.append(409)
            return 409, {"error": {"code": 409, "status": status,
                                   "message": f"PipelineJob {VERTEX[4:]}/pipelineJobs/{job_id} "
                                              f"{'already exists' if job_id in jobs else 'aborted'}."}}
        answers.append(200)
        jobs[job_id] = {**body, "name": f"projects/123/locations/europe-west4/pipelineJobs/{job_id}",
                        "state": "PIPELINE_STATE_PENDING"}
        return jobs[job_id]

    service = FakeService({
        ("POST", "/token"): lambda m, b, q: {"access_token": "token-1", "expires_in": 3600,
                                             "token_type": "Bearer"},
        ("POST", f"{VERTEX}/pipelineJobs"): create,
    })
    service.jobs, service.answers, service.refuse = jobs, answers, refuse
    monkeypatch.setenv("HISTOXAI_VERTEX_ENDPOINT", service.url)
    key = service_account_key(tmp_path / "key.json", f"{service.url}/token")
    monkeypatch.setenv("GOOGLE_APPLICATION_CREDENTIALS", str(key))
    yield service
    service.close()


def _fresh_root(settings: retrain.Settings) -> retrain.Settings:
    """The settings with a pipeline root in a bucket not made yet, which aiplatform creates in the emulator
    (for a bucket that exists it asks Resource Manager who owns it, which no test can reach)."""
    return retrain.Settings(**{**settings.__dict__, "pipeline_root": f"gs://runs-{uuid.uuid4().hex[:12]}/root"})


def _ready(samples_uri: str, sample: str) -> str:
    return str(storage.stat(storage.join(samples_uri, sample, retrain.READY))[1])


def test_a_repeated_job_id_is_refused_over_http_and_counts_as_submitted(cloud, sample_files, vertex,  # noqa: F811
                                                                        monkeypatch):
    for name, value in cloud["env"].items():
        if name != "GOOGLE_APPLICATION_CREDENTIALS":  # the stand-in's key
            monkeypatch.setenv(name, value)
    samples_uri = f"gs://{cloud['bucket']}/http"
    settings = retrain.Settings(**{**retrain.Settings.from_env().__dict__, "samples_uri": samples_uri})
    upload_sample(sample_files, f"{samples_uri}/51")

    # an upload: one run, created over HTTP with the marker's job id
    first = _ready(samples_uri, "51")
    first_id = retrain.job_id(samples_uri, "51", first)
    outcome = retrain.retrain_sample(_fresh_root(settings), "51", first)
    assert outcome.status == "submitted"
    assert outcome.run == f"projects/123/locations/europe-west4/pipelineJobs/{first_id}"  # Vertex AI's answer
    (create,) = vertex.find("POST", f"{VERTEX}/pipelineJobs")
    assert create["query"]["pipelineJobId"] == [first_id]
    assert create["headers"]["authorization"].startswith("Bearer ")  # signed with the key file
    assert create["body"]["serviceAccount"] == RUNNER
    assert create["body"]["runtimeConfig"]["parameterValues"]["samples"] == ["51"]

    # READY again, and a delivery that created its run but died before recording it: its claim goes stale,
    # a redelivery takes it over, and Vertex AI's 409 for the job id says the run exists
    storage.write_bytes(f"{samples_uri}/51/{retrain.READY}", b"")
    second = _ready(samples_uri, "51")
    second_id, key = retrain.job_id(samples_uri, "51", second), f"51@{second}"
    stale = {"state": "submitting", "claimed": "2020-01-01T00:00:00+00:00", "samples": ["51"],
             "job_id": second_id}
    registry.update_registry(samples_uri, lambda r: r["runs"].__setitem__(key, stale))
    retrain.submit_run(_fresh_root(settings), ["51"], "51", second_id)  # what the dead delivery got through
    outcome = retrain.retrain_sample(_fresh_root(settings), "51", second)
    assert outcome.status == "submitted"
    assert outcome.run == f"projects/{PROJECT}/locations/europe-west4/pipelineJobs/{second_id}"
    assert second_id in outcome.url
    creates = [r["query"]["pipelineJobId"][0] for r in vertex.find("POST", f"{VERTEX}/pipelineJobs")]
    assert creates == [first_id, second_id, second_id] and vertex.answers == [200, 200, 409]
    assert sorted(vertex.jobs) == sorted([first_id, second_id])  # no second run
    state = read_registry(samples_uri)["runs"][key]
    assert state["state"] == "submitted" and state["run"] == outcome.run

    # a 409 that is no ALREADY_EXISTS (ABORTED: a concurrent change) proves nothing: the delivery fails
    storage.write_bytes(f"{samples_uri}/51/{retrain.READY}", b"")
    third = _ready(samples_uri, "51")
    vertex.refuse[retrain.job_id(samples_uri, "51", third)] = "ABORTED"
    with pytest.raises(retrain.InputError, match="Vertex AI refused the request: 409 "):
        retrain.retrain_sample(_fresh_root(settings), "51", third)
    assert read_registry(samples_uri)["runs"][f"51@{third}"]["state"] == "failed"
    assert vertex.answers[-1] == 409 and len(vertex.jobs) == 2

