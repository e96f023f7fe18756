"""Retraining on new samples: the function behind the samples bucket's upload trigger, and its steps.

A new sample is uploaded to <samples>/<id>/ in the dataset layout, with a READY marker written last.
For that marker, and for nothing else, `retrain_sample`:
1. checks that the sample is complete (`check_upload`: every file present, MR.mat valid, slide and
   mask MATLAB headers, the nuclei table's columns; the slide itself is not downloaded);
2. adds it to the registry <samples>/histoxai-registry.json by read-modify-write with the object's
   generation as precondition, so two concurrent uploads never lose an entry, and in the same write
   claims the run for this marker (keyed by the marker's object generation);
3. submits one Vertex AI pipeline run over every registered sample and records it in the registry.
The same event delivered again finds its run claimed or recorded and submits nothing. If a delivery
dies after its claim, a redelivery takes the claim over once it is CLAIM_TIMEOUT old, and Vertex AI
refuses a second run with the marker's job id. Uploading READY again (a new generation) retrains.

`on_sample_uploaded` is the CloudEvent entry point (infra/retrain/main.py, deployed by Terraform);
`histoxai retrain` (cli_retrain.py) runs the same steps by hand.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import hashlib
import json
import os
import random
import re
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import functions_framework

from histoxai import storage
from histoxai.errors import InputError

READY = "READY"
REGISTRY = "histoxai-registry.json"
CLAIM_TIMEOUT = dt.timedelta(minutes=15)  # well above the function's 300 s timeout
_WRITE_ATTEMPTS = 30


class SampleRejected(InputError):
    """The uploaded sample is incomplete or unreadable; retrying the event cannot help."""


class SubmissionInProgress(InputError):
    """Another delivery of the same upload holds the claim and is submitting its run right now."""


@dataclass(frozen=True)
class Settings:
    """Where the samples, the compiled pipeline and Vertex AI are."""

    samples_uri: str  # gs://BUCKET[/PREFIX]: one folder per sample
    pipeline_root: str
    project: str | None = None  # default: GOOGLE_CLOUD_PROJECT or the credentials' project
    region: str = "us-central1"
    template: str = ""  # compiled pipeline YAML (gs:// or local); empty: compile the installed code
    service_account: str | None = None
    parameters: dict[str, Any] = field(default_factory=dict)  # other run parameters, e.g. config
    api_endpoint: str | None = None

    @classmethod
    def from_env(cls, env=os.environ) -> Settings:
        """The settings the trigger's Terraform sets (infra/terraform/retrain.tf)."""
        samples = env.get("HISTOXAI_SAMPLES_BUCKET", "")
        if not storage.is_gcs(samples):
            raise InputError(f"HISTOXAI_SAMPLES_BUCKET {samples!r}: expected gs://BUCKET[/PREFIX], the "
                             "folder the trigger watches")
        return cls(samples_uri=samples.rstrip("/"), pipeline_root=env.get("HISTOXAI_PIPELINE_ROOT", ""),
                   project=env.get("HISTOXAI_PROJECT") or None,
                   region=env.get("HISTOXAI_REGION", "us-central1"),
                   template=env.get("HISTOXAI_PIPELINE_TEMPLATE", ""),
                   service_account=env.get("HISTOXAI_SERVICE_ACCOUNT") or None,
                   parameters=run_parameters(env.get("HISTOXAI_RUN_PARAMETERS", "")),
                   api_endpoint=env.get("HISTOXAI_VERTEX_ENDPOINT") or None)


def run_parameters(text: str) -> dict[str, Any]:
    """HISTOXAI_RUN_PARAMETERS: a JSON object of more run parameters, e.g. {"train_samples": ["3", "4"]}."""
    try:
        values = json.loads(text) if text.strip() else {}
    except ValueError as err:
        raise InputError(f"HISTOXAI_RUN_PARAMETERS: not valid JSON ({err}); expected an object of run "
                         "parameters") from None
    if not isinstance(values, dict):
        raise InputError("HISTOXAI_RUN_PARAMETERS: expected a JSON object of run parameters")
    return values


@dataclass
class Outcome:
    """What happened to one upload: registered, submitted (a new run) or duplicate (its run exists)."""

    sample: str
    status: str
    samples: list[str]
    run: str = ""
    url: str = ""


def marker_sample(samples_uri: str, bucket: str, name: str) -> str | None:
    """The sample id when gs://BUCKET/NAME is a sample's READY marker under samples_uri, else None."""
    root_bucket, prefix = storage.split_gcs(samples_uri)
    prefix = prefix.strip("/")
    if bucket != root_bucket or (prefix and not name.startswith(prefix + "/")):
        return None
    parts = name[len(prefix) + 1 if prefix else 0:].split("/")
    return parts[0] if len(parts) == 2 and parts[0] and parts[1] == READY else None


def ordered(samples) -> list[str]:
    """Sample ids in natural order (2 before 10)."""
    return sorted(samples, key=lambda s: (0, int(s), "") if s.isdigit() else (1, 0, s))


def job_id(samples_uri: str, sample: str, generation: str) -> str:
    """The Vertex AI job id of the run for one READY marker (Vertex AI: [a-z][-a-z0-9]{0,127})."""
    slug = re.sub(r"[^a-z0-9-]+", "-", sample.lower()).strip("-")[:40] or "sample"
    digest = hashlib.sha256(f"{samples_uri}/{sample}/{READY}#{generation}".encode()).hexdigest()[:10]
    return f"histoxai-retrain-{slug}-{generation}-{digest}"


# --- the registry ------------------------------------------------------------------------------------

def registry_uri(samples_uri: str) -> str:
    return storage.join(samples_uri, REGISTRY)


def update_registry(samples_uri: str, change: Callable[[dict], Any]) -> Any:
    """Apply `change` (mutates the registry dict, returns a result) by read-modify-write.

    The write carries the generation that was read as precondition; when another writer came first,
    the registry is read again and `change` applied again, so `change` must depend only on what it reads.
    Returns change's result; writes nothing when the registry is unchanged.
    """
    uri = registry_uri(samples_uri)
    for attempt in range(_WRITE_ATTEMPTS):
        data, generation = storage.read_versioned(uri)
        try:
            registry = json.loads(data) if data else {}
        except ValueError as err:
            raise InputError(f"{uri}: not valid JSON ({err}); expected the sample registry histoxai writes "
                             "(repair it, or delete it and register the samples again)") from None
        before = json.dumps(registry, sort_keys=True)
        result = change(registry)
        if json.dumps(registry, sort_keys=True) == before:
            return result
        text = json.dumps(registry, indent=1, sort_keys=True)
        if storage.write_if_generation(uri, text.encode(), generation, content_type="application/json"):
            return result
        time.sleep(random.uniform(0.02, 0.1) * (attempt + 1))  # back off from the other writer
    raise InputError(f"{uri}: other writers kept changing it during {_WRITE_ATTEMPTS} attempts; try again")


def _now() -> str:
    return dt.datetime.now(dt.UTC).isoformat(timespec="seconds")


# --- one upload ---------------------------------------------------------------------------------------

def check_sample(settings: Settings, sample: str) -> dict[str, int]:
    """Sizes of the sample's files, or SampleRejected naming what is missing or unreadable."""
    from histoxai.components.ingest.inputs import check_sample_id, check_upload

    sample_dir = storage.join(settings.samples_uri, sample)
    try:
        check_sample_id(sample, f"{sample_dir}: folder name")
        return check_upload(sample_dir)
    except InputError as err:
        raise SampleRejected(f"sample {sample} rejected: {err}") from err


def retrain_sample(settings: Settings, sample: str, generation: str, *, submit: bool = True,
                   event: str = "") -> Outcome:
    """Check, register and (with submit) start one run for the upload whose READY has `generation`."""
    sizes = check_sample(settings, sample)
    generation = str(generation)
    key, now = f"{sample}@{generation}", _now()
    run_id = job_id(settings.samples_uri, sample, generation)

    def register_and_claim(registry: dict) -> tuple[str, dict]:
        samples = registry.setdefault("samples", {})
        first = samples.get(sample, {}).get("registered", now)
        samples[sample] = {"ready_generation": generation, "files": sizes, "registered": first}
        if not submit:
            return "registered", {"samples": ordered(samples)}
        runs = registry.setdefault("runs", {})
        run = runs.get(key)
        if run and run["state"] == "submitted":
            return "duplicate", run
        if run and run["state"] == "submitting":
            age = dt.datetime.fromisoformat(now) - dt.datetime.fromisoformat(run["claimed"])
            if age < CLAIM_TIMEOUT:
                return "in-progress", run
        runs[key] = {"state": "submitting", "claimed": now, "event": event, "job_id": run_id,
                     "samples": ordered(samples)}
        return "claimed", runs[key]

    status, run = update_registry(settings.samples_uri, register_and_claim)
    if status == "in-progress":
        raise SubmissionInProgress(f"sample {sample}: another delivery claimed this upload's run at "
                                   f"{run['claimed']} and is submitting it; try again later")
    if status != "claimed":
        return Outcome(sample, status, run["samples"], run.get("run", ""), run.get("url", ""))

    try:
        submitted = submit_run(settings, run["samples"], sample, run_id)
    except BaseException as err:
        _record_run(settings, key, state="failed", error=str(err) or type(err).__name__)
        raise
    _record_run(settings, key, state="submitted", run=submitted["run"], url=submitted.get("url", ""))
    return Outcome(sample, "submitted", run["samples"], submitted["run"], submitted.get("url", ""))


def _record_run(settings: Settings, key: str, **fields) -> None:
    def record(registry: dict) -> None:
        registry.setdefault("runs", {}).setdefault(key, {}).update(fields)

    update_registry(settings.samples_uri, record)


@contextlib.contextmanager
def _template(settings: Settings) -> Iterator[str]:
    """A local copy of the compiled pipeline (compiled now from the installed code when none is set)."""
    if settings.template:
        with storage.local_copy(settings.template) as path:
            yield str(path)
        return
    from histoxai.pipelines.pipeline import compile_package

    with tempfile.TemporaryDirectory(prefix="histoxai-retrain-") as tmp:
        path = os.path.join(tmp, "pipeline.yaml")
        compile_package(path)
        yield path


def submit_run(settings: Settings, samples: list[str], sample: str, run_id: str) -> dict:
    """Submit the pipeline over `samples` to Vertex AI as job `run_id`; a run of that id already there
    (an earlier delivery got through) is returned as is."""
    from kfp import components

    from histoxai.config import config_from_yaml, parse_overrides
    from histoxai.pipelines.params import check_parameters
    from histoxai.pipelines.submit import RunExists, default_credentials, submit_vertex, vertex_job

    if not settings.pipeline_root:
        raise InputError("--pipeline-root: not given; expected gs://BUCKET/PATH "
                         "(or set HISTOXAI_PIPELINE_ROOT)")
    credentials, project = default_credentials(settings.project, "retrain")
    values = {**settings.parameters, "samples_uri": settings.samples_uri, "samples": samples}
    if "config" in values or "config_overrides" in values:  # fail here, not in the run's first step
        overrides = parse_overrides(values.get("config_overrides") or [], "run parameter config_overrides")
        config_from_yaml(str(values.get("config") or ""), overrides, "run parameter config")
    label = re.sub(r"[^a-z0-9_-]+", "-", sample.lower())[:63]
    with _template(settings) as package:
        parameters = check_parameters(values, components.load_component_from_file(package).component_spec)
        job = vertex_job(package, project=project, region=settings.region,
                         pipeline_root=settings.pipeline_root, parameters=parameters,
                         labels={"trigger": "retrain", "sample": label},
                         run_name=f"histoxai-retrain-{sample}", credentials=credentials,
                         api_endpoint=settings.api_endpoint, job_id=run_id)
        try:
            return submit_vertex(job, service_account=settings.service_account)
        except RunExists:
            name = f"projects/{project}/locations/{settings.region}/pipelineJobs/{run_id}"
            return {"run": name, "url": f"https://console.cloud.google.com/vertex-ai/locations/"
                                        f"{settings.region}/pipelines/runs/{run_id}?project={project}"}


# --- the Cloud Run function -------------------------------------------------------------------------------

def _log(severity: str, message: str, **fields) -> None:
    """One structured log line (Cloud Logging reads JSON lines on stdout)."""
    print(json.dumps({"severity": severity, "message": message, **fields}), file=sys.stdout, flush=True)


@functions_framework.cloud_event
def on_sample_uploaded(event) -> None:
    """Handle google.cloud.storage.object.v1.finalized for the samples bucket.

    Returns normally (the event is done) for other objects, rejected samples and repeated deliveries;
    raises (Eventarc delivers the event again later) when the run could not be submitted yet.
    """
    data = event.data or {}
    bucket, name, generation = data.get("bucket", ""), data.get("name", ""), str(data.get("generation", ""))
    settings = Settings.from_env()
    sample = marker_sample(settings.samples_uri, bucket, name)
    if sample is None:
        return  # a sample's data file, the registry, anything but a READY marker
    context = {"sample": sample, "marker": f"gs://{bucket}/{name}", "generation": generation,
               "event": event["id"]}
    try:
        outcome = retrain_sample(settings, sample, generation, event=event["id"])
    except SampleRejected as err:
        _log("WARNING", str(err), **context)
        return
    except SubmissionInProgress as err:
        _log("INFO", f"{err}; asking for a later delivery", **context)
        raise
    except InputError as err:
        _log("ERROR", f"sample {sample}: no run started: {err}", **context)
        raise
    if outcome.status == "duplicate":
        _log("INFO", f"sample {sample}: this upload's run was already submitted: {outcome.run}", **context)
    else:
        _log("INFO", f"sample {sample}: registered; submitted run {outcome.run} over samples "
                     f"{', '.join(outcome.samples)}", url=outcome.url, **context)
