"""Retraining on new samples: the function behind the samples bucket's upload trigger, and its steps.

A new sample is uploaded to <samples>/<id>/ in the dataset layout, with a READY marker written last.
For that marker, and for nothing else, `retrain_sample`:
1. ignores it when the sample id is unusable (characters, length) or when a newer READY of the same
   sample exists or is registered (events can arrive late and out of order);
2. checks the sample with ingestion's own checks (`check_upload`: MR maps and their physical ranges,
   slide type and shape, masks on both grids, the nuclei table; a v7.3 slide is read in place by
   ranges, not downloaded); a sample that fails is registered as quarantined with the reason, and
   no run starts;
3. adds it to the registry <samples>/histoxai-registry.json by read-modify-write with the object's
   generation as precondition, so two concurrent uploads never lose an entry, and in the same write
   claims the run for this marker (keyed by the marker's object generation);
4. submits one Vertex AI pipeline run over every active (not quarantined) registered sample and
   records it in the registry; the run joins the deployment's Vertex AI experiment and takes its model
   registry and TensorBoard as run parameters (HISTOXAI_EXPERIMENT, HISTOXAI_MODEL_REGISTRY,
   HISTOXAI_TENSORBOARD), unless HISTOXAI_RUN_PARAMETERS sets those parameters itself.
   `histoxai retrain --list / --quarantine / --release` manage the states.
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
import re
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import functions_framework

from histoxai import storage
from histoxai.errors import InputError
from histoxai.pipelines import registry as sample_registry
from histoxai.pipelines.registry import ACTIVE, RetryLater, active, newer, now, update_registry

READY = "READY"
CLAIM_TIMEOUT = dt.timedelta(minutes=15)  # well above the function's 300 s timeout


class SampleRejected(InputError):
    """The uploaded sample is incomplete or unreadable; retrying the event cannot help."""


class SubmissionInProgress(RetryLater):
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
    experiment: str | None = None  # the Vertex AI experiment every run joins
    model_registry: str = ""  # run parameter model_registry unless `parameters` sets it
    tensorboard: str = ""  # run parameter tensorboard (a Vertex AI TensorBoard) unless `parameters` sets it

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
                   api_endpoint=env.get("HISTOXAI_VERTEX_ENDPOINT") or None,
                   experiment=env.get("HISTOXAI_EXPERIMENT") or None,
                   model_registry=env.get("HISTOXAI_MODEL_REGISTRY", ""),
                   tensorboard=env.get("HISTOXAI_TENSORBOARD", ""))


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
    note: str = ""  # why nothing happened (a stale event)


def marker_sample(samples_uri: str, bucket: str, name: str) -> str | None:
    """The sample id when gs://BUCKET/NAME is a sample's READY marker under samples_uri, else None."""
    root_bucket, prefix = storage.split_gcs(samples_uri)
    prefix = prefix.strip("/")
    if bucket != root_bucket or (prefix and not name.startswith(prefix + "/")):
        return None
    parts = name[len(prefix) + 1 if prefix else 0:].split("/")
    return parts[0] if len(parts) == 2 and parts[0] and parts[1] == READY else None


def job_id(samples_uri: str, sample: str, generation: str) -> str:
    """The Vertex AI job id of the run for one READY marker (Vertex AI: [a-z][-a-z0-9]{0,127})."""
    slug = re.sub(r"[^a-z0-9-]+", "-", sample.lower()).strip("-")[:40] or "sample"
    digest = hashlib.sha256(f"{samples_uri}/{sample}/{READY}#{generation}".encode()).hexdigest()[:10]
    return f"histoxai-retrain-{slug}-{generation}-{digest}"


# --- one upload ---------------------------------------------------------------------------------------

def check_sample_id(samples_uri: str, sample: str) -> None:
    """SampleRejected for an id that cannot name shard files and runs (nothing is registered)."""
    from histoxai.components.ingest.inputs import check_sample_id as check

    try:
        check(sample, f"{storage.join(samples_uri, sample)}: folder name")
    except InputError as err:
        raise SampleRejected(f"sample id rejected: {err}") from err


def check_sample(settings: Settings, sample: str) -> dict[str, int]:
    """Sizes of the sample's files, or SampleRejected naming what is missing, unreadable or implausible."""
    from histoxai.components.ingest.inputs import check_upload

    check_sample_id(settings.samples_uri, sample)
    try:
        return check_upload(storage.join(settings.samples_uri, sample))
    except InputError as err:
        raise SampleRejected(f"sample {sample} rejected: {err}") from err


def _stale(settings: Settings, sample: str, generation: str) -> str:
    """Why an event for READY `generation` is out of date ('' when it is not): a newer READY exists."""
    current = storage.stat(storage.join(settings.samples_uri, sample, READY))[1]
    if current is not None and newer(str(current), generation):
        return f"READY was written again (generation {current})"
    entry = sample_registry.samples(settings.samples_uri).get(sample, {})
    if newer(entry.get("ready_generation", ""), generation):
        return f"generation {entry['ready_generation']} is registered"
    return ""


def retrain_sample(settings: Settings, sample: str, generation: str, *, submit: bool = True,
                   event: str = "") -> Outcome:
    """Check, register and (with submit) start one run for the upload whose READY has `generation`."""
    generation = str(generation)
    check_sample_id(settings.samples_uri, sample)
    stale = _stale(settings, sample, generation)
    if stale:
        return Outcome(sample, "stale", [], note=stale)
    try:
        sizes = check_sample(settings, sample)
    except SampleRejected as err:
        sample_registry.quarantine(settings.samples_uri, sample, generation, str(err), by="check")
        raise
    key, when = f"{sample}@{generation}", now()
    run_id = job_id(settings.samples_uri, sample, generation)

    def register_and_claim(registry: dict) -> tuple[str, dict]:
        samples = registry.setdefault("samples", {})
        entry = samples.get(sample, {})
        if newer(entry.get("ready_generation", ""), generation):
            return "stale", {"samples": []}
        samples[sample] = {"ready_generation": generation, "files": sizes, "state": ACTIVE,
                           "registered": entry.get("registered", when)}
        if not submit:
            return "registered", {"samples": active(registry)}
        runs = registry.setdefault("runs", {})
        run = runs.get(key)
        if run and run["state"] == "submitted":
            return "duplicate", run
        if run and run["state"] == "submitting":
            age = dt.datetime.fromisoformat(when) - dt.datetime.fromisoformat(run["claimed"])
            if age < CLAIM_TIMEOUT:
                return "in-progress", run
        runs[key] = {"state": "submitting", "claimed": when, "event": event, "job_id": run_id,
                     "samples": active(registry)}
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


def _deployment_parameters(settings: Settings, spec) -> dict[str, str]:
    """The run parameters the deployment sets (the model registry, the TensorBoard), for a pipeline that
    takes them; an older compiled pipeline without them runs as it was compiled."""
    inputs = spec.inputs or {}
    given = {"model_registry": settings.model_registry, "tensorboard": settings.tensorboard}
    return {name: value for name, value in given.items() if value and name in inputs}


def submit_run(settings: Settings, samples: list[str], sample: str, run_id: str) -> dict:
    """Submit the pipeline over `samples` to Vertex AI as job `run_id`; a run of that id already there
    (an earlier delivery got through) is returned as is."""
    from histoxai.config import config_from_yaml, parse_overrides
    from histoxai.gcp import default_credentials
    from histoxai.pipelines.params import check_parameters
    from histoxai.pipelines.submit import (
        RunExists,
        check_vertex_images,
        package_inputs,
        read_package,
        submit_vertex,
        vertex_job,
    )

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
        source = settings.template or "the pipeline compiled from the installed code"
        documents = read_package(package, source)
        check_vertex_images(documents, source)
        spec = package_inputs(documents, source)
        parameters = check_parameters({**_deployment_parameters(settings, spec), **values}, spec)
        job = vertex_job(package, project=project, region=settings.region,
                         pipeline_root=settings.pipeline_root, parameters=parameters,
                         labels={"trigger": "retrain", "sample": label},
                         run_name=f"histoxai-retrain-{sample}", credentials=credentials,
                         api_endpoint=settings.api_endpoint, job_id=run_id)
        try:
            return submit_vertex(job, service_account=settings.service_account,
                                 experiment=settings.experiment)
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

    Returns normally (the event is done) for other objects, rejected or stale samples, repeated
    deliveries and every permanent error (logged as one structured line: retrying cannot help, and
    Eventarc would retry for a day); raises (the event comes again later) only when the run cannot be
    handled yet (RetryLater) or the cause may pass (network, service errors).
    """
    data = event.data or {}
    bucket, name, generation = data.get("bucket", ""), data.get("name", ""), str(data.get("generation", ""))
    try:
        settings = Settings.from_env()
    except InputError as err:  # the function's own settings: fix the deployment, not the upload
        _log("ERROR", f"no run started: {err}", permanent=True, marker=f"gs://{bucket}/{name}")
        return
    sample = marker_sample(settings.samples_uri, bucket, name)
    if sample is None:
        return  # a sample's data file, the registry, anything but a READY marker
    context = {"sample": sample, "marker": f"gs://{bucket}/{name}", "generation": generation,
               "event": event["id"]}
    try:
        outcome = retrain_sample(settings, sample, generation, event=event["id"])
    except SampleRejected as err:
        _log("WARNING", str(err), permanent=True, **context)
        return
    except RetryLater as err:
        _log("INFO", f"{err}; asking for a later delivery", **context)
        raise
    except InputError as err:
        _log("ERROR", f"sample {sample}: no run started: {err}", permanent=True, **context)
        return
    if outcome.status == "stale":
        _log("INFO", f"sample {sample}: an out-of-date event ignored: {outcome.note}", **context)
    elif outcome.status == "duplicate":
        _log("INFO", f"sample {sample}: this upload's run was already submitted: {outcome.run}", **context)
    else:
        _log("INFO", f"sample {sample}: registered; submitted run {outcome.run} over samples "
                     f"{', '.join(outcome.samples)}", url=outcome.url, **context)
