"""Register a new sample and submit a run over every registered sample (what the upload trigger does).

--sample gs://BUCKET/[PREFIX/]ID names a sample folder in the dataset layout whose READY marker was
written after its files. The sample is checked without downloading its slide, added to the registry
gs://BUCKET/[PREFIX/]histoxai-registry.json, and one Vertex AI run is submitted with samples_uri =
gs://BUCKET/[PREFIX] and samples = every registered sample. Running it again for the same upload (the
same READY marker) submits nothing and prints the run already started; writing READY again retrains.
--register-only adds complete samples without a run and without needing READY: upload the initial
dataset without markers and register it this way, so that only later uploads start runs.

The registry lists every sample as active or quarantined (left out of runs, with the reason): a sample
that fails the upload check is quarantined by it. --list shows the registry; --quarantine ID --reason
TEXT leaves a sample out of later runs (e.g. one the run's own ingestion refused); --release ID checks
the sample again and, when it passes, lets it train again. These take --samples-uri (default
$HISTOXAI_SAMPLES_BUCKET), the folder the registry describes.

Vertex AI settings default to the variables the trigger itself reads (HISTOXAI_PROJECT,
HISTOXAI_REGION, HISTOXAI_PIPELINE_ROOT, HISTOXAI_PIPELINE_TEMPLATE, HISTOXAI_SERVICE_ACCOUNT,
HISTOXAI_RUN_PARAMETERS, HISTOXAI_EXPERIMENT, HISTOXAI_MODEL_REGISTRY, HISTOXAI_TENSORBOARD);
`terraform -chdir=infra/terraform output` shows their values.

Examples:
  histoxai retrain --register-only --sample gs://my-proj-histoxai-samples/3 \\
      --sample gs://my-proj-histoxai-samples/4
  histoxai retrain --sample gs://my-proj-histoxai-samples/17 --pipeline-root gs://my-proj-runs/root \\
      --package gs://my-proj-runs/templates/histoxai.yaml --param train_samples='["3", "4"]'
  histoxai retrain --list --samples-uri gs://my-proj-histoxai-samples
  histoxai retrain --quarantine 17 --reason "ingest: HE.mat chunk 12 unreadable"
"""

from __future__ import annotations

import argparse
import os

from histoxai import storage
from histoxai.errors import InputError
from histoxai.pipelines.cli_submit import add_vertex_arguments


def add_arguments(parser: argparse.ArgumentParser) -> None:
    what = parser.add_mutually_exclusive_group(required=True)
    what.add_argument("--sample", action="append", metavar="gs://BUCKET/[PREFIX/]ID",
                      help="the uploaded sample folder (repeatable with --register-only)")
    what.add_argument("--list", action="store_true", help="list the registered samples and their states")
    what.add_argument("--quarantine", metavar="ID", help="leave a registered sample out of later runs")
    what.add_argument("--release", metavar="ID", help="check a quarantined sample again and let it train")
    parser.add_argument("--reason", default="", help="why (with --quarantine; recorded in the registry)")
    parser.add_argument("--samples-uri", default=os.environ.get("HISTOXAI_SAMPLES_BUCKET", ""),
                        metavar="gs://BUCKET[/PREFIX]", help="the registry's samples folder (with --list, "
                        "--quarantine, --release; default $HISTOXAI_SAMPLES_BUCKET)")
    parser.add_argument("--register-only", action="store_true",
                        help="add the samples to the registry without submitting a run")
    parser.add_argument("--package", default=os.environ.get("HISTOXAI_PIPELINE_TEMPLATE", ""),
                        help="compiled pipeline YAML, local or gs:// (default $HISTOXAI_PIPELINE_TEMPLATE; "
                             "none: compile the installed code)")
    add_vertex_arguments(parser.add_argument_group("Vertex AI"))
    deployment = parser.add_argument_group("what the deployment adds to every run")
    deployment.add_argument("--experiment", default=os.environ.get("HISTOXAI_EXPERIMENT") or None,
                            help="Vertex AI experiment the run joins, created when missing (default "
                                 "$HISTOXAI_EXPERIMENT, else none)")
    deployment.add_argument("--model-registry", default=os.environ.get("HISTOXAI_MODEL_REGISTRY", ""),
                            metavar="LOCATION", help="run parameter model_registry unless --param or "
                            "$HISTOXAI_RUN_PARAMETERS sets it (default $HISTOXAI_MODEL_REGISTRY)")
    deployment.add_argument("--tensorboard", default=os.environ.get("HISTOXAI_TENSORBOARD", ""),
                            metavar="RESOURCE", help="run parameter tensorboard unless --param or "
                            "$HISTOXAI_RUN_PARAMETERS sets it (default $HISTOXAI_TENSORBOARD)")
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


def _manage(args: argparse.Namespace) -> None:
    """--list, --quarantine, --release over the registry of --samples-uri."""
    from histoxai.pipelines import registry
    from histoxai.pipelines.retrain import Settings, check_sample

    root = args.samples_uri.rstrip("/")
    if not storage.is_gcs(root):
        raise InputError(f"--samples-uri {args.samples_uri!r}: expected gs://BUCKET[/PREFIX], the samples "
                         "folder whose registry to read (or set HISTOXAI_SAMPLES_BUCKET)")
    if args.quarantine:
        if not args.reason.strip():
            raise InputError("--reason: empty; say why the sample is quarantined (it is recorded)")
        registry.set_state(root, args.quarantine, registry.QUARANTINED, args.reason.strip())
    elif args.release:
        if registry.samples(root).get(args.release, {}).get("state") == registry.QUARANTINED:
            check_sample(Settings(samples_uri=root, pipeline_root=""), args.release)
        registry.set_state(root, args.release, registry.ACTIVE)
    entries = registry.samples(root)
    print(f"registry        {registry.registry_uri(root)}")
    for sample, entry in entries.items():
        state = entry.get("state", registry.ACTIVE)
        why = f"  {entry.get('reason', '')}" if state == registry.QUARANTINED else ""
        print(f"{sample:<15} {state:<12} generation {entry.get('ready_generation') or '-'}{why}")
    if not entries:
        print("(no samples registered)")


def run(args: argparse.Namespace) -> None:
    from histoxai.pipelines.params import parse_param_pairs
    from histoxai.pipelines.registry import registry_uri
    from histoxai.pipelines.retrain import READY, Settings, retrain_sample, run_parameters

    if not args.sample:
        _manage(args)
        return
    root, samples = _samples_root(args.sample)
    if len(samples) > 1 and not args.register_only:
        raise InputError(f"--sample given {len(samples)} times: one run starts per upload; give one "
                         "--sample, or add --register-only to register several")
    parameters = {**run_parameters(os.environ.get("HISTOXAI_RUN_PARAMETERS", "")),
                  **parse_param_pairs(args.param)}
    settings = Settings(samples_uri=root, pipeline_root=args.pipeline_root or "", project=args.project,
                        region=args.region, template=args.package, service_account=args.service_account,
                        parameters=parameters, api_endpoint=args.api_endpoint, experiment=args.experiment,
                        model_registry=args.model_registry, tensorboard=args.tensorboard)
    for sample in samples:
        marker = storage.join(root, sample, READY)
        data, generation = storage.read_versioned(marker)
        if data is None and not args.register_only:
            raise InputError(f"{marker}: no READY marker; upload it after the sample's files (it tells "
                             "that the upload is complete)")
        outcome = retrain_sample(settings, sample, str(generation or ""), submit=not args.register_only)
        print(f"sample          {sample}: {outcome.status}" + (f" ({outcome.note})" if outcome.note else ""))
    print(f"registry        {registry_uri(root)}")
    print(f"samples         {', '.join(outcome.samples)}")
    if outcome.run:
        print(f"run             {outcome.run}")
    if outcome.url:
        print(f"url             {outcome.url}")
