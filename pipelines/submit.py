"""Submit a compiled pipeline to Vertex AI Pipelines (PipelineJob, PipelineJobSchedule) or a KFP endpoint.

Both take the YAML package `histoxai compile` writes and the run parameters, and turn the platforms'
failures (no credentials, no project, refused request, unreachable endpoint) into one InputError.
Vertex AI is reached over its REST transport; `api_endpoint` may name another endpoint (a regional
or private one). Schedules: a 5-field cron (Vertex AI's format, optionally with a TZ= prefix); KFP
recurring runs take 6 fields with seconds first, so a 5-field cron gets "0 " put in front. A Vertex AI
run may join a Vertex AI experiment; a Vertex AI schedule cannot carry one, so that pair is refused.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

from histoxai import gcp, storage
from histoxai.errors import InputError

_LABEL_KEY = re.compile(r"^[a-z][a-z0-9_-]{0,62}$")
_LABEL_VALUE = re.compile(r"^[a-z0-9_-]{0,63}$")
_EXPERIMENT = re.compile(r"^[a-z0-9][a-z0-9-]{0,127}$")
_TZ = re.compile(r"^(CRON_TZ|TZ)=\S+\s+")


def check_cron(cron: str) -> str:
    """A 5-field cron expression (minute hour day month weekday), optionally after TZ=Zone/Name."""
    fields = _TZ.sub("", cron.strip()).split()
    if len(fields) != 5:
        raise InputError(f"--schedule {cron!r}: expected a cron expression of 5 fields "
                         "(minute hour day-of-month month day-of-week), e.g. '0 3 * * 1'")
    return cron.strip()


def check_experiment(name: str) -> str:
    """A Vertex AI experiment name: it becomes a metadata context id ([a-z0-9][a-z0-9-]{0,127})."""
    if not _EXPERIMENT.match(name):
        raise InputError(f"--experiment {name!r}: expected lowercase letters, digits and '-', starting with "
                         "a letter or digit, at most 128 characters (Vertex AI's experiment names)")
    return name


def check_labels(labels: Mapping[str, str]) -> dict[str, str]:
    for key, value in labels.items():
        if not _LABEL_KEY.match(key) or not _LABEL_VALUE.match(value):
            raise InputError(f"--label {key}={value}: expected lowercase letters, digits, _ and -, the key "
                             "starting with a letter (Vertex AI's label rules)")
    return dict(labels)


def read_package(package: str, source: str | None = None) -> list:
    """The YAML documents of a compiled package (local or gs://; `source` names it in messages), read
    once for every check and the parameters' spec: libyaml's loader reads a 150 kB package in 16 ms,
    PyYAML's own in 220 ms."""
    import yaml

    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)  # PyYAML built without libyaml has only its own
    try:
        return list(yaml.load_all(storage.read_text(package), Loader=loader))
    except yaml.YAMLError as err:
        raise InputError(f"{source or package}: not a YAML pipeline package ({str(err).splitlines()[0]}); "
                         "expected what `histoxai compile` writes") from err


def _pipeline_spec(documents: list, source: str) -> dict:
    for document in documents:  # a package may add a platform spec after the pipeline spec
        if isinstance(document, dict) and "deploymentSpec" in document:
            return document
    raise InputError(f"{source}: no deploymentSpec; expected a pipeline package that `histoxai compile` "
                     "writes")


def package_inputs(documents: list, source: str):
    """kfp's ComponentSpec of the package's pipeline (its inputs), as kfp's load_component_from_file
    builds it from the same documents."""
    from kfp.dsl import structures

    pipeline = _pipeline_spec(documents, source)
    platform = next((d for d in documents if isinstance(d, dict) and d is not pipeline), {})
    return structures.ComponentSpec.from_ir_dicts(pipeline, platform)


def package_images(documents: list, source: str) -> dict[str, str]:
    """Executor name -> container image of a compiled package, from its deploymentSpec (`source` names
    the package in messages)."""
    executors = _pipeline_spec(documents, source)["deploymentSpec"].get("executors") or {}
    return {name: executor["container"]["image"] for name, executor in executors.items()
            if "image" in (executor.get("container") or {})}


def check_vertex_images(documents: list, source: str) -> dict[str, str]:
    """Refuse a package whose steps run the local dev images (histoxai-cpu:dev, histoxai-gpu:dev):
    Vertex AI pulls images from a registry and cannot find them. `source` names the package in the
    messages. Returns the package's images. `histoxai submit` calls it for Vertex AI (not for
    --kfp-host: minikube runs the local tags), and so does the retraining trigger."""
    from histoxai.images import DEV_HINT, dev_images

    images = package_images(documents, source)
    dev = dev_images(images.values())
    if dev:
        plural = "s" if len(dev) > 1 else ""
        raise InputError(f"{source}: its steps run the local dev image{plural} "
                         f"{', '.join(dev)}, which Vertex AI cannot pull; {DEV_HINT} "
                         "(or run it on minikube with --kfp-host)")
    return images


class RunExists(InputError):
    """Vertex AI already has a run with this job id (a retried submission that went through before)."""


def _google_errors(what: str):
    return gcp.vertex_errors(what, exists=RunExists, thing="this run")


def vertex_job(package: str, *, project: str, region: str, pipeline_root: str, parameters: Mapping,
               labels: Mapping[str, str] | None = None, caching: bool | None = None,
               run_name: str | None = None, credentials=None, api_endpoint: str | None = None,
               job_id: str | None = None):
    """An aiplatform.PipelineJob for the package, built (and validated) without any network call.
    `job_id` fixes the run's id, so a second submission of the same run is refused (RunExists)."""
    from google.cloud import aiplatform

    if not project:
        raise InputError("--project: no Google Cloud project; pass --project or set GOOGLE_CLOUD_PROJECT")
    if not region:
        raise InputError("--region: empty; expected a Vertex AI region such as us-central1")
    if not storage.is_gcs(pipeline_root):
        raise InputError(f"--pipeline-root {pipeline_root!r}: expected a gs://BUCKET/PATH URI")
    aiplatform.init(project=project, location=region, credentials=credentials, api_endpoint=api_endpoint,
                    api_transport="rest")
    with _google_errors("submit"):
        return aiplatform.PipelineJob(
            display_name=run_name or "histoxai", template_path=package, pipeline_root=pipeline_root,
            parameter_values=dict(parameters), enable_caching=caching, labels=check_labels(labels or {}),
            project=project, location=region, credentials=credentials, job_id=job_id)


def submit_vertex(job, *, service_account: str | None = None, schedule: str | None = None,
                  wait: bool = False, run_name: str | None = None, experiment: str | None = None) -> dict:
    """Create the run (or, with `schedule`, a PipelineJobSchedule); returns its resource name and link.
    With `experiment`, the run joins that Vertex AI experiment (created when it does not exist), which
    lists its parameters and metrics beside the other runs'."""
    from google.cloud import aiplatform

    if experiment:
        check_experiment(experiment)
        if schedule:  # PipelineJobSchedule.create takes no experiment: say so rather than drop it
            raise InputError(f"--experiment {experiment}: Vertex AI pipeline schedules take no experiment; "
                             "leave out --experiment or --schedule")
    with _google_errors("submit"):
        if schedule:
            planned = aiplatform.PipelineJobSchedule(pipeline_job=job, display_name=run_name or "histoxai",
                                                     credentials=job.credentials)
            planned.create(cron=check_cron(schedule), max_concurrent_run_count=1,
                           service_account=service_account)
            return {"schedule": planned.resource_name, "cron": schedule}
        # the experiment first (created when missing): a name Vertex AI refuses stops before the run
        joined = experiment and aiplatform.Experiment.get_or_create(
            experiment, project=job.project, location=job.location, credentials=job.credentials)
        try:
            job.submit(service_account=service_account, experiment=joined or None)
        except RuntimeError as err:  # aiplatform's way of saying the run could not join the experiment
            if not _created(job):
                raise InputError(f"--experiment {experiment}: {err}") from err
            # the run exists and goes ahead: report, do not fail (a retry would find the run taken)
            joined = None
            note = gcp.first_line(err.__cause__ or err)
        result = {"run": job.resource_name,
                  "url": f"https://console.cloud.google.com/vertex-ai/locations/{job.location}/pipelines/runs/"
                         f"{job.name}?project={job.project}"}
        if experiment:
            result["experiment"] = experiment if joined else f"{experiment} (not joined: {note})"
        if wait:
            try:
                job.wait()
            except RuntimeError as err:  # aiplatform's way of saying the run failed
                raise InputError(f"run {job.resource_name} did not succeed: {err}") from err
            result["state"] = job.state.name
        return result


def _created(job) -> bool:
    try:
        return bool(job.resource_name)
    except RuntimeError:  # aiplatform: the resource has no name yet
        return False


def _kfp_cron(cron: str) -> str:
    cron = check_cron(cron)
    zone = _TZ.match(cron)
    if zone:
        raise InputError(f"--schedule {cron!r}: KFP recurring runs take no time zone; "
                         "give the time in the cluster's zone")
    return f"0 {cron}"


def submit_kfp(package: str, *, host: str, parameters: Mapping, experiment: str = "histoxai",
               run_name: str | None = None, caching: bool | None = None, schedule: str | None = None,
               namespace: str | None = None, service_account: str | None = None,
               wait: bool = False) -> dict:
    """Create a run (or a recurring run) on the KFP endpoint at `host`; returns its id and link."""
    import kfp
    import urllib3
    from kfp_server_api import ApiException

    try:
        client = kfp.Client(host=host, namespace=namespace or "kubeflow")
        name = run_name or "histoxai"
        if schedule:
            found = client.create_experiment(experiment, namespace=namespace)
            job = client.create_recurring_run(
                experiment_id=found.experiment_id, job_name=name, cron_expression=_kfp_cron(schedule),
                pipeline_package_path=package, params=dict(parameters), enable_caching=caching,
                service_account=service_account, max_concurrency=1)
            return {"recurring_run": job.recurring_run_id, "cron": schedule}
        run = client.create_run_from_pipeline_package(
            package, arguments=dict(parameters), run_name=name, experiment_name=experiment,
            namespace=namespace, enable_caching=caching, service_account=service_account)
        result = {"run": run.run_id, "url": f"{host.rstrip('/')}/#/runs/details/{run.run_id}"}
        if wait:
            done = client.wait_for_run_completion(run.run_id, timeout=7 * 24 * 3600)
            result["state"] = str(done.state)
            if result["state"] != "SUCCEEDED":
                raise InputError(f"run {run.run_id} ended {result['state']}; see {result['url']}")
        return result
    except ApiException as err:
        raise InputError(f"--kfp-host {host}: the endpoint refused the request: {err.status} {err.reason}"
                         ) from err
    except (urllib3.exceptions.HTTPError, ConnectionError) as err:
        raise InputError(f"--kfp-host {host}: endpoint unreachable ({type(err).__name__}); "
                         "expected the KFP API, e.g. http://localhost:8888") from err
