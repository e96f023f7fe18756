"""Submit the pipeline to Vertex AI Pipelines or to a Kubeflow Pipelines endpoint, once or on a schedule.

Vertex AI (the default): the run goes to --project (default $HISTOXAI_PROJECT or $GOOGLE_CLOUD_PROJECT)
in --region, writes its artifacts under --pipeline-root gs://..., runs as --service-account and
carries --label KEY=VALUE labels; --experiment NAME adds it to that Vertex AI experiment. Credentials
are Application Default Credentials (`gcloud auth application-default login`, or a service account).
Kubeflow Pipelines: --kfp-host URL (e.g. http://localhost:8888 after `make minikube-up`).
--schedule CRON creates a Vertex AI pipeline schedule or a KFP recurring run instead of one run;
--wait blocks until a single run ends. --no-cache turns step caching off for this run.

--package sends a compiled package (`histoxai compile`); without it the current code is compiled
with the compile options below. Vertex AI pulls the steps' images from a registry: a package with the
local dev tags (histoxai-cpu:dev, histoxai-gpu:dev, for minikube) is refused; set HISTOXAI_CPU_IMAGE
and HISTOXAI_GPU_IMAGE to the tags `make build` prints before compiling.
Run parameters as for `histoxai run-local`; --samples-uri must be a gs:// URI (Vertex AI) or a path
the cluster's pods can read.

Examples:
  histoxai submit --project my-proj --region europe-west4 --pipeline-root gs://my-proj-runs/root \\
      --service-account pipelines@my-proj.iam.gserviceaccount.com --samples-uri gs://my-proj-data/samples \\
      --samples 3,4,5,6 --label team=histo --wait
  histoxai submit --package pipeline.yaml --kfp-host http://localhost:8888 \\
      --samples-uri gs://b/samples --schedule '0 3 * * 1'
"""

from __future__ import annotations

import argparse
import contextlib
import os
import tempfile

from histoxai.errors import InputError
from histoxai.pipelines.cli_compile import COMPILE_OPTIONS, PIPELINES, add_compile_arguments, compile_options
from histoxai.pipelines.help import add_run_parameters_help
from histoxai.pipelines.params import add_parameter_arguments

KFP_EXPERIMENT = "histoxai"  # KFP files every run under an experiment


def add_vertex_arguments(group) -> None:
    """Where a Vertex AI run goes and as whom it runs (also `histoxai retrain`'s options)."""
    group.add_argument("--project", default=os.environ.get("HISTOXAI_PROJECT"),
                       help="Google Cloud project (default $HISTOXAI_PROJECT, $GOOGLE_CLOUD_PROJECT or "
                            "the credentials' project)")
    group.add_argument("--region", default=os.environ.get("HISTOXAI_REGION", "us-central1"),
                       help="Vertex AI region (default $HISTOXAI_REGION or us-central1)")
    group.add_argument("--pipeline-root", default=os.environ.get("HISTOXAI_PIPELINE_ROOT"),
                       help="gs:// folder for the run's artifacts (default $HISTOXAI_PIPELINE_ROOT)")
    group.add_argument("--service-account", default=os.environ.get("HISTOXAI_SERVICE_ACCOUNT"),
                       help="service account the steps run as (default $HISTOXAI_SERVICE_ACCOUNT)")
    group.add_argument("--api-endpoint", default=os.environ.get("HISTOXAI_VERTEX_ENDPOINT"),
                       help="another Vertex AI API endpoint, regional or private (default "
                            "$HISTOXAI_VERTEX_ENDPOINT)")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_run_parameters_help(parser, PIPELINES)  # --help lists both pipelines' run parameters
    parser.add_argument("--package", help="compiled pipeline YAML (local or gs://); default: compile now")
    parser.add_argument("--run-name", help="display name of the run (default: histoxai)")
    parser.add_argument("--schedule", metavar="CRON",
                        help="run on this 5-field cron schedule (e.g. '0 3 * * 1') instead of once")
    parser.add_argument("--wait", action="store_true", help="wait for a single run to end")
    parser.add_argument("--no-cache", action="store_true", help="turn step caching off for this run")
    parser.add_argument("--experiment", default=os.environ.get("HISTOXAI_EXPERIMENT"),
                        help="Vertex AI: the Vertex AI experiment the run joins, created when missing (its "
                             "parameters and metrics listed beside the other runs'); default "
                             "$HISTOXAI_EXPERIMENT, else none; not with --schedule, which Vertex AI "
                             "schedules cannot carry. KFP: the experiment the run or recurring run goes "
                             f"into (default $HISTOXAI_EXPERIMENT, else {KFP_EXPERIMENT})")
    vertex = parser.add_argument_group("Vertex AI")
    add_vertex_arguments(vertex)
    vertex.add_argument("--label", action="append", default=[], metavar="KEY=VALUE",
                        help="label on the run (repeatable)")
    kfp_group = parser.add_argument_group("Kubeflow Pipelines")
    kfp_group.add_argument("--kfp-host", help="KFP API endpoint; submits there instead of Vertex AI")
    kfp_group.add_argument("--namespace", help="KFP namespace (multi-user deployments)")
    add_parameter_arguments(parser)
    add_compile_arguments(parser, caching=False)


def _labels(pairs: list[str]) -> dict[str, str]:
    labels = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep:
            raise InputError(f"--label {pair!r}: expected KEY=VALUE")
        labels[key] = value
    return labels


@contextlib.contextmanager
def _package(args: argparse.Namespace):
    """A local copy of the package to send (compiled now when --package is not given)."""
    from histoxai import storage
    from histoxai.pipelines.pipeline import compile_package

    if args.package:
        fixed = [f"--{n.replace('_', '-')}" for n in COMPILE_OPTIONS if getattr(args, n) is not None]
        if args.pipeline != "train":
            fixed.append("--pipeline")
        if fixed:
            raise InputError(f"{', '.join(fixed)}: compile options do not change a compiled --package; "
                             "recompile it with `histoxai compile`, or leave out --package")
        with storage.local_copy(args.package) as path:
            yield str(path)
        return
    with tempfile.TemporaryDirectory(prefix="histoxai-submit-") as tmp:
        path = os.path.join(tmp, "pipeline.yaml")
        compile_package(path, compile_options(args), pipeline=args.pipeline)
        yield path


def run(args: argparse.Namespace) -> None:
    from histoxai.gcp import default_credentials
    from histoxai.pipelines.params import check_parameters, parameters_from_args
    from histoxai.pipelines.submit import (
        check_cron,
        check_experiment,
        check_vertex_images,
        package_inputs,
        read_package,
        submit_kfp,
        submit_vertex,
        vertex_job,
    )

    if args.schedule:
        check_cron(args.schedule)
    if args.experiment and not args.kfp_host:  # before anything is compiled or sent
        check_experiment(args.experiment)
        if args.schedule:
            raise InputError(f"--experiment {args.experiment}: Vertex AI pipeline schedules take no "
                             "experiment; leave out --experiment or --schedule")
    values = parameters_from_args(args)
    caching = False if args.no_cache else None  # None: the compiled per-step settings
    with _package(args) as package:
        source = f"--package {args.package}" if args.package else "the pipeline compiled now"
        documents = read_package(package, source)
        parameters = check_parameters(values, package_inputs(documents, source))
        if args.kfp_host:
            result = submit_kfp(package, host=args.kfp_host, parameters=parameters,
                                experiment=args.experiment or KFP_EXPERIMENT, run_name=args.run_name,
                                caching=caching,
                                schedule=args.schedule, namespace=args.namespace,
                                service_account=args.service_account, wait=args.wait)
        else:
            # before anything is sent: Vertex AI cannot pull minikube's local image tags
            check_vertex_images(documents, source)
            if not args.pipeline_root:
                raise InputError("--pipeline-root: not given; expected gs://BUCKET/PATH "
                                 "(or set HISTOXAI_PIPELINE_ROOT)")
            credentials, project = default_credentials(args.project)
            job = vertex_job(package, project=project, region=args.region, pipeline_root=args.pipeline_root,
                             parameters=parameters, labels=_labels(args.label), caching=caching,
                             run_name=args.run_name, credentials=credentials, api_endpoint=args.api_endpoint)
            result = submit_vertex(job, service_account=args.service_account, schedule=args.schedule,
                                   wait=args.wait, run_name=args.run_name, experiment=args.experiment)
    for key, value in result.items():
        print(f"{key:15s} {value}")
