"""Register a new sample and submit a run over every registered sample (what the upload trigger does).

--sample gs://BUCKET/[PREFIX/]ID names a sample folder in the dataset layout whose READY marker was
written after its files. The sample is checked without downloading its slide, added to the registry
gs://BUCKET/[PREFIX/]histoxai-registry.json, and one Vertex AI run is submitted with samples_uri =
gs://BUCKET/[PREFIX] and samples = every registered sample. Running it again for the same upload (the
same READY marker) submits nothing and prints the run already started; writing READY again retrains.
--register-only adds complete samples without a run and without needing READY: upload the initial
dataset without markers and register it this way, so that only later uploads start runs.

Vertex AI settings default to the variables the trigger itself reads (HISTOXAI_PROJECT,
HISTOXAI_REGION, HISTOXAI_PIPELINE_ROOT, HISTOXAI_PIPELINE_TEMPLATE, HISTOXAI_SERVICE_ACCOUNT,
HISTOXAI_RUN_PARAMETERS); `terraform -chdir=infra/terraform output` shows their values.

Examples:
  histoxai retrain --register-only --sample gs://my-proj-histoxai-samples/3 \\
      --sample gs://my-proj-histoxai-samples/4
  histoxai retrain --sample gs://my-proj-histoxai-samples/17 --pipeline-root gs://my-proj-runs/root \\
      --package gs://my-proj-runs/templates/histoxai.yaml --param train_samples='["3", "4"]'
"""

from __future__ import annotations

import argparse
import os

from histoxai import storage
from histoxai.errors import InputError
from histoxai.pipelines.cli_submit import add_vertex_arguments


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--sample", action="append", required=True, metavar="gs://BUCKET/[PREFIX/]ID",
                        help="the uploaded sample folder (repeatable with --register-only)")
    parser.add_argument("--register-only", action="store_true",
                        help="add the samples to the registry without submitting a run")
    parser.add_argument("--package", default=os.environ.get("HISTOXAI_PIPELINE_TEMPLATE", ""),
                        help="compiled pipeline YAML, local or gs:// (default $HISTOXAI_PIPELINE_TEMPLATE; "
                             "none: compile the installed code)")
    add_vertex_arguments(parser.add_argument_group("Vertex AI"))
    parser.add_argument("--param", action="append", default=[], metavar="NAME=VALUE",
                        help="another run parameter (value in YAML), over $HISTOXAI_RUN_PARAMETERS; "
                             "samples_uri and samples come from the registry")


def _samples_root(samples: list[str]) -> tuple[str, list[str]]:
    """The common folder of the sample URIs and their ids."""
    roots, ids = set(), []
    for given in samples:
        uri = given.rstrip("/")
        root, _, sample = uri.rpartition("/")
        if not storage.is_gcs(uri) or not sample or root in ("gs:", "gs:/"):
            raise InputError(f"--sample {given}: expected gs://BUCKET/[PREFIX/]ID, a sample folder in Cloud "
                             "Storage (Vertex AI reads the samples from there)")
        roots.add(root)
        ids.append(sample)
    if len(roots) > 1:
        raise InputError(f"--sample: the samples lie in {len(roots)} folders ({', '.join(sorted(roots))}); "
                         "expected one folder of samples, which the registry describes")
    return roots.pop(), ids


def run(args: argparse.Namespace) -> None:
    from histoxai.pipelines.params import parse_param_pairs
    from histoxai.pipelines.retrain import READY, Settings, registry_uri, retrain_sample, run_parameters

    root, samples = _samples_root(args.sample)
    if len(samples) > 1 and not args.register_only:
        raise InputError(f"--sample given {len(samples)} times: one run starts per upload; give one "
                         "--sample, or add --register-only to register several")
    parameters = {**run_parameters(os.environ.get("HISTOXAI_RUN_PARAMETERS", "")),
                  **parse_param_pairs(args.param)}
    settings = Settings(samples_uri=root, pipeline_root=args.pipeline_root or "", project=args.project,
                        region=args.region, template=args.package, service_account=args.service_account,
                        parameters=parameters, api_endpoint=args.api_endpoint)
    for sample in samples:
        marker = storage.join(root, sample, READY)
        data, generation = storage.read_versioned(marker)
        if data is None and not args.register_only:
            raise InputError(f"{marker}: no READY marker; upload it after the sample's files (it tells "
                             "that the upload is complete)")
        outcome = retrain_sample(settings, sample, str(generation or ""), submit=not args.register_only)
        print(f"sample          {sample}: {outcome.status}")
    print(f"registry        {registry_uri(root)}")
    print(f"samples         {', '.join(outcome.samples)}")
    if outcome.run:
        print(f"run             {outcome.run}")
    if outcome.url:
        print(f"url             {outcome.url}")
